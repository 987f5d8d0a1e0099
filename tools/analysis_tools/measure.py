"""Speed, memory and operator counts behind ``benchmark.py`` (beside it).

Everything a table row needs is measured in the same process (peak memory
on the CPU in a fresh child process), so ratios between rows, and against
the machine's matmul rate in the same precision, are free of
machine-to-machine noise. On a GPU, times come from CUDA events after each
configuration has been warmed up on its own.
"""
import contextlib
import ctypes
import ctypes.util
import importlib
import multiprocessing
import resource
import statistics
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from pytorch_wavelets import DWTForward, DWTInverse
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from official_formulation import (OfficialFormulation, conv_haar_dwt,
                                  conv_haar_idwt)
from wavevit_mm import DWT2D, IDWT2D, WaveViT
from wavevit_mm.apis import apply_train_options, build_model, synthetic_inputs
from wavevit_mm.apis.complexity import count_complexity
from wavevit_mm.errors import InputError, one_paragraph


# ------------------------------------------------------------- backbones

def _mmdet_backbone(cfg: Dict) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from mmdet.registry import MODELS  # needs mmcv's compiled ops
        init_default_scope('mmdet')
        return MODELS.build(cfg)
    return build


def _official(arch: str) -> nn.Module:
    model = WaveViT(arch)
    model.init_weights()  # as build_backbone does for the other rows
    return OfficialFormulation(model)


def _timm_pvt_v2_b2() -> nn.Module:
    """timm's PVTv2-b2, the same network as mmdet's, as a backbone (the
    four stages' feature maps); needs no mmcv ops."""
    import timm
    return timm.create_model('pvt_v2_b2', pretrained=False,
                             features_only=True)


class TorchvisionResNetStages(nn.Module):
    """torchvision's ResNet-50 as a backbone: the feature maps of its four
    stages, as mmdet's ``ResNet(depth=50)`` gives them (no pooling, no
    classifier); needs no mmcv ops."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision
        net = torchvision.models.resnet50()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList(
            [net.layer1, net.layer2, net.layer3, net.layer4])

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return tuple(outs)


BACKBONES: Dict[str, Callable[[], nn.Module]] = {
    'Wave-ViT-S': lambda: WaveViT('s'),
    'Wave-ViT-S (compiled)': lambda: WaveViT('s', compile=True),
    'Wave-ViT-S (official formulation)': lambda: _official('s'),
    'Wave-ViT-B': lambda: WaveViT('b'),
    'Wave-ViT-B (official formulation)': lambda: _official('b'),
    'Swin-T (mmdet)': _mmdet_backbone(dict(type='SwinTransformer')),
    'PVTv2-b2 (mmdet)': _mmdet_backbone(dict(
        type='PyramidVisionTransformerV2', embed_dims=64,
        num_layers=[3, 4, 6, 3])),
    'PVTv2-b2 (timm)': _timm_pvt_v2_b2,
    'ResNet-50 (mmdet)': _mmdet_backbone(dict(type='ResNet', depth=50)),
    'ResNet-50 (torchvision)': TorchvisionResNetStages,
}

#: The rows of a run without --backbones; a network's name alone stands for
#: the first of its rows whose library can be imported here.
DEFAULT_BACKBONES = ('Wave-ViT-S', 'Wave-ViT-S (official formulation)',
                     'Wave-ViT-B', 'Wave-ViT-B (official formulation)',
                     'Swin-T', 'PVTv2-b2', 'ResNet-50')

#: What a row from another library needs to build (mmdet's models import
#: mmcv's compiled ops).
_LIBRARIES = {'mmdet': 'mmdet.models', 'timm': 'timm',
              'torchvision': 'torchvision'}


def _library(row: str) -> Optional[str]:
    return _LIBRARIES.get(row.rpartition(' (')[2].rstrip(')'))


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def resolve_backbones(names: Sequence[str]) -> List[str]:
    """Row names for ``names``: each a row name as printed, or a network's
    name alone (``PVTv2-b2``), which picks the first of its rows whose
    library imports here (mmdet's, else timm's or torchvision's, the same
    networks), or else the first, whose row then shows why it failed."""
    rows = []
    for name in names:
        variants = [name] if name in BACKBONES else [
            row for row in BACKBONES
            if row.startswith(name + ' (') and _library(row)]
        if not variants:
            raise InputError(
                f'unknown backbone {name!r}: give one of {sorted(BACKBONES)} '
                f'or a network name alone (Swin-T, PVTv2-b2, ResNet-50)')
        usable = [row for row in variants
                  if _library(row) is None or _importable(_library(row))]
        rows.append((usable or variants)[0])
    return rows


def build_backbone(name: str, seed: int = 0) -> nn.Module:
    if name not in BACKBONES:
        raise InputError(f'unknown backbone {name!r}; one of '
                         f'{sorted(BACKBONES)}')
    torch.manual_seed(seed)
    model = BACKBONES[name]()
    if hasattr(model, 'init_weights'):
        model.init_weights()
    return model


def _failed_row(row: Dict, error: BaseException, device: torch.device
                ) -> Dict:
    """A row whose measurement could not be made (a library that does not
    import, memory that ran out): the error goes into the row and the
    table goes on with the next one."""
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return dict(row, error=f'{type(error).__name__}: {one_paragraph(error)}')


# -------------------------------------------------------------- precision

#: autocast dtypes; fp32 and tf32 compute in float32, TF32 off or on.
_AUTOCAST = {'bf16': torch.bfloat16, 'fp16': torch.float16}
DTYPES = ('fp32', 'tf32', 'bf16', 'fp16')
CPU_DTYPES = ('fp32', 'bf16')


def check_dtypes(dtypes: Sequence[str], device: torch.device) -> None:
    """Refuse precisions the device cannot run: TF32 is a GPU mode, and the
    CPU measurements are of float32 and bfloat16 only."""
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise InputError(f'unknown dtype {dtype!r}; one of {DTYPES}')
        if device.type == 'cpu' and dtype not in CPU_DTYPES:
            raise InputError(f'--dtype {dtype} needs a CUDA device: on the '
                             f'CPU only {" and ".join(CPU_DTYPES)} are '
                             f'measured')


@contextlib.contextmanager
def precision(dtype: str, device: torch.device) -> Iterator[None]:
    """Run the block in ``dtype``: fp32 is float32 with TF32 off for
    matmuls and cuDNN convolutions, tf32 the same with TF32 on, bf16 and
    fp16 are ``torch.autocast`` to that dtype (TF32 off for what stays in
    float32). The TF32 switches are restored afterwards."""
    check_dtypes([dtype], device)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = dtype == 'tf32'
    autocast = (torch.autocast(device.type, dtype=_AUTOCAST[dtype])
                if dtype in _AUTOCAST else contextlib.nullcontext())
    try:
        with autocast:
            yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


# ----------------------------------------------------------------- timing

def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse (this process only).

    By default every large CPU tensor is a fresh ``mmap`` that the kernel
    page-faults in and zeroes on first touch, and hands back when freed; at
    800x1216 that costs Wave-ViT-S about a fifth of its forward time in
    page faults. With mmap off and heap trimming raised, freed blocks are
    reused instead (what ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``
    do for a whole program, and what jemalloc/tcmalloc do better). The heap
    may then hold somewhat more than the live tensors (a freed block is not
    always reusable for the next aligned request), which suits a benchmark
    rather than a long job. Returns False where the C library has no
    ``mallopt`` (not glibc).
    """
    m_trim_threshold, m_mmap_max = -1, -4
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c'))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(m_mmap_max, 0)
                and mallopt(m_trim_threshold, 2**31 - 1))


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


#: Warm-up before timing, per device type: at least this many calls, and
#: calls for at least this many seconds (a GPU's first calls of a new
#: configuration include cuDNN's algorithm search and the clocks rising).
WARMUP = {'cpu': (1, 0.0), 'cuda': (3, 0.5)}


def time_call(fn: Callable[[], object], repeat: int, device: torch.device,
              warmup: Optional[int] = None) -> List[float]:
    """Seconds taken by each of ``repeat`` calls of ``fn`` after warm-up
    calls (``warmup`` of them if given, else as :data:`WARMUP` says).

    On CUDA each call is timed between two CUDA events with the GPU idle
    before it, so the time covers the kernels it issued and any gaps in
    which the GPU waited for the host: a launch-bound call is timed as it
    runs. On the CPU it is wall-clock time.
    """
    calls, seconds = (WARMUP.get(device.type, (1, 0.0)) if warmup is None
                      else (warmup, 0.0))
    start, done = time.perf_counter(), 0
    while done < calls or time.perf_counter() - start < seconds:
        fn()
        synchronize(device)  # no queue of warm-up work left behind
        done += 1
    times = []
    for _ in range(repeat):
        if device.type == 'cuda':
            stream = torch.cuda.current_stream(device)
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return times


def matmul_rate(device: torch.device, dtype: str = 'fp32', size: int = 4096,
                repeat: int = 5) -> float:
    """FLOP/s of a size^3 matmul in ``dtype`` (as :func:`precision`), best
    of ``repeat``."""
    tensor_dtype = _AUTOCAST.get(dtype, torch.float32)
    a = torch.randn(size, size, device=device, dtype=tensor_dtype)
    b = torch.randn(size, size, device=device, dtype=tensor_dtype)
    with precision(dtype, device):
        best = min(time_call(lambda: a @ b, repeat, device))
    return 2 * size**3 / best


def multiply_adds(model: nn.Module, image: Tensor) -> int:
    with torch.no_grad():
        return int(count_complexity(model, (image, ))['flops'])


# ----------------------------------------------------------------- memory

def _train_step(model: nn.Module, image: Tensor) -> None:
    outputs = model(image)
    sum(o.float().square().mean() for o in outputs).backward()


def _resident_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_child(name: str, shape: Tuple[int, ...], with_cp: bool,
                    queue) -> None:
    """Peak resident memory above the baseline during one training step,
    sampled every 0.2 ms by a thread (large tensors are mmap'ed, so the
    resident size follows the live tensors)."""
    model = build_backbone(name)
    model.train()
    if with_cp:
        for module in model.modules():
            if hasattr(module, 'with_cp'):
                module.with_cp = True
    image = torch.randn(shape)
    _train_step(model, image)  # warm up: one-time allocations, grads
    model.zero_grad(set_to_none=False)
    baseline = peak = _resident_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes())
            time.sleep(0.0002)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _train_step(model, image)
    done.set()
    sampler.join()
    queue.put(peak - baseline)


def peak_train_memory(name: str, shape: Tuple[int, ...], with_cp: bool,
                      device: torch.device) -> int:
    """Bytes above the baseline at the peak of one forward + backward.

    CUDA: the allocator's peak. CPU: the peak resident size of a fresh
    process during the step, above its size just before (after a warm-up
    step, with the gradients allocated).
    """
    if device.type == 'cuda':
        model = build_backbone(name).to(device)
        model.train()
        if with_cp:
            for module in model.modules():
                if hasattr(module, 'with_cp'):
                    module.with_cp = True
        image = torch.randn(shape, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _train_step(model, image)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    context = multiprocessing.get_context('spawn')
    queue = context.Queue()
    process = context.Process(target=_peak_rss_child,
                              args=(name, tuple(shape), with_cp, queue))
    process.start()
    result = queue.get(timeout=1800)
    process.join()
    return result


# ----------------------------------------------------------------- tables

def backbone_table(names: Sequence[str], batch_sizes: Sequence[int],
                   size: Tuple[int, int], repeat: int, device: torch.device,
                   dtypes: Sequence[str] = ('fp32', ),
                   memory_shape: Optional[Tuple] = None
                   ) -> Tuple[Dict[str, float], List[Dict]]:
    """Inference latency of each backbone for each batch size and dtype.

    A row: name, dtype, batch, min and median seconds, params,
    multiply-adds, the fraction of the matmul rate in the same dtype
    achieved, for an official formulation the largest difference from the
    outputs of its network in the same setting, and, with ``memory_shape``
    (B, H, W), the peak memory of one fp32 forward + backward of the
    Wave-ViT rows. Returns the matmul rate per dtype and the rows.
    """
    check_dtypes(dtypes, device)
    rates = {dtype: matmul_rate(device, dtype) for dtype in dtypes}
    rows = []
    reference_outputs: Dict[Tuple, Tuple[Tensor, ...]] = {}
    for name in names:
        try:
            model = build_backbone(name).to(device)
        except (ImportError, RuntimeError) as error:
            rows.append(_failed_row(dict(name=name), error, device))
            continue
        model.eval()  # some mmdet backbones' train() returns None
        # linear in the batch size: counted once, at batch 1, on the CPU
        macs_per_image = multiply_adds(model.cpu(), torch.randn(1, 3, *size))
        model.to(device)
        params = sum(p.numel() for p in model.parameters())
        keep = f'{name} (official formulation)' in names
        base = name.split(' (official')[0]
        for batch in batch_sizes:
            image = torch.randn(batch, 3, *size, device=device)
            for dtype in dtypes:
                row = dict(name=name, dtype=dtype, batch=batch,
                           input=[batch, 3, *size])
                try:
                    with torch.no_grad(), precision(dtype, device):
                        times = time_call(lambda: model(image), repeat,
                                          device)
                        outputs = model(image)
                except RuntimeError as error:
                    rows.append(_failed_row(row, error, device))
                    continue
                macs = macs_per_image * batch
                row.update(min=min(times), median=statistics.median(times),
                           params=params, macs=macs, matmul_fraction=2 *
                           macs / min(times) / rates[dtype])
                reference = reference_outputs.get((base, batch, dtype))
                if name != base and reference is not None:
                    row['max_abs_diff_to_' + base] = max(
                        (a.float() - b.float()).abs().max().item()
                        for a, b in zip(reference, outputs))
                if keep:
                    reference_outputs[(name, batch, dtype)] = outputs
                del outputs
                rows.append(row)
        del model
        if memory_shape is not None and name.startswith('Wave-ViT'):
            peaks = dict(peak_mem=peak_train_memory(name, memory_shape, False,
                                                    device))
            if 'official' not in name:
                peaks['peak_mem_cp'] = peak_train_memory(
                    name, memory_shape, True, device)
            for row in rows:
                if row['name'] == name and 'error' not in row:
                    row.update(peaks)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return rates, rows


def time_train_step(model: nn.Module, image: Tensor, repeat: int,
                    device: torch.device, dtype: str = 'fp32') -> Dict:
    """Seconds (min, median) of one training step of a backbone alone:
    forward in ``dtype``, the sum of its outputs as the loss, backward, the
    gradients of the previous step released first (as ``zero_grad`` does);
    on CUDA also ``peak_mem``, the most memory allocated during the timed
    steps (weights, gradients and activations; None on the CPU). Behind a
    final LayerNorm the gradients of such a loss are zero in value, but
    autograd computes them all the same, which is what is timed."""
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with precision(dtype, device):
            loss = sum(out.float().sum() for out in model(image))
        loss.backward()

    time_call(step, 0, device)  # warm-up only, before the peak is reset
    peak = None
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = time_call(step, repeat, device, warmup=0)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device)
    return dict(min=min(times), median=statistics.median(times),
                peak_mem=peak)


def train_step_table(names: Sequence[str], shape: Tuple[int, ...],
                     repeat: int, device: torch.device,
                     dtypes: Sequence[str] = ('fp32', )) -> List[Dict]:
    """:func:`time_train_step` of each backbone in each dtype at ``shape``
    (B, 3, H, W)."""
    check_dtypes(dtypes, device)
    rows = []
    for name in names:
        for dtype in dtypes:
            row = dict(name=name, dtype=dtype, input=list(shape))
            try:
                model = build_backbone(name).to(device)
                image = torch.randn(shape, device=device)
                row.update(time_train_step(model, image, repeat, device,
                                           dtype))
            except (ImportError, RuntimeError) as error:
                row = _failed_row(row, error, device)
            model = image = None  # the next configuration starts empty
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            rows.append(row)
    return rows


# ------------------------------------------------------- operator counts

def count_aten_ops(fn: Callable[[], object]) -> int:
    """aten operators ``fn`` calls: the profiler events whose name starts
    with ``aten::``, nested ones included (an ``aten::linear`` and the
    ``aten::addmm`` it calls are two), after one warm-up call."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn()
    return sum(event.name.startswith('aten::')
               for event in profiler.events())


def operator_counts(names: Sequence[str], shape: Tuple[int, ...],
                    device: torch.device, compile_names: Sequence[str] = ()
                    ) -> List[Dict]:
    """aten operators per call of each backbone at ``shape``: ``eval``, one
    forward in eval mode without gradients, and ``train``, forward and
    backward in train mode with the sum of the outputs as the loss; also
    for the ``torch.compile``'d models of ``compile_names``, whose warm-up
    call compiles them, with the graph breaks ``torch._dynamo.explain``
    finds in each mode. How many operators the host issues is what a GPU
    waits for when a step is launch-bound."""
    image = torch.randn(shape, device=device)
    rows = []
    for name, compiled in [(n, False) for n in names] + [
            (n, True) for n in compile_names]:
        row = dict(name=f'{name} (torch.compile)' if compiled else name,
                   input=list(shape))
        try:
            model = build_backbone(name).to(device)
            run = torch.compile(model) if compiled else model

            def forward() -> None:
                with torch.no_grad():
                    run(image)

            def forward_backward() -> None:
                model.zero_grad(set_to_none=True)
                sum(out.sum() for out in run(image)).backward()

            for mode in ('eval', 'train'):
                getattr(model, mode)()
                row[mode] = count_aten_ops(
                    forward if mode == 'eval' else forward_backward)
                if compiled:  # what torch.compile could not trace
                    row[f'{mode}_graph_breaks'] = torch._dynamo.explain(
                        model)(image).graph_break_count
        except (ImportError, RuntimeError) as error:
            row = _failed_row(row, error, device)
        model = run = None
        rows.append(row)
    return rows


def wavelet_table(shapes: List[Tuple[int, ...]], repeat: int,
                  device: torch.device) -> List[Dict]:
    """DWT2D + IDWT2D forward and backward against pytorch_wavelets and the
    convolutional formulation (min and median seconds; the speed-up compares
    minima, the least noisy), and the max deviation from pytorch_wavelets.

    At these sizes a step is a few large allocations and a few passes over
    memory, so the times depend on how the allocator recycles memory as
    much as on the kernels."""
    oracle_dwt = DWTForward(J=1, wave='haar', mode='zero').to(device)
    oracle_idwt = DWTInverse(wave='haar', mode='zero').to(device)

    def pytorch_wavelets_pair(x: Tensor) -> Tensor:
        low, (high, ) = oracle_dwt(x)
        return oracle_idwt((low, [high]))

    ours_dwt, ours_idwt = DWT2D(), IDWT2D()

    def ours(x: Tensor) -> Tensor:
        return ours_idwt(ours_dwt(x))

    candidates = {
        'wavevit_mm DWT2D+IDWT2D': ours,
        # what a compiled backbone runs: the operators where the one-pass
        # CPU kernels serve the tensor, else one fused kernel per transform
        'wavevit_mm, torch.compile': torch.compile(ours),
        'convolutional (official)': lambda x: conv_haar_idwt(
            conv_haar_dwt(x)),
        'pytorch_wavelets': pytorch_wavelets_pair,
    }
    rows = []
    for shape in shapes:
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        row = dict(shape=tuple(shape))
        for label, pair in candidates.items():
            def step() -> None:
                x.grad = None
                pair(x).backward(grad)
            times = time_call(step, repeat, device)
            row[label] = min(times)
            row[label + ' median'] = statistics.median(times)
        # equality of the transform itself against the oracle
        low, (high, ) = oracle_dwt(x)
        expected = torch.cat([low] + [high[:, :, k] for k in range(3)], 1)
        row['max_abs_diff'] = (ours_dwt(x) - expected).abs().max().item()
        row['speedup'] = row['pytorch_wavelets'] / row[
            'wavevit_mm DWT2D+IDWT2D']
        row['speedup compiled'] = row['pytorch_wavelets'] / row[
            'wavevit_mm, torch.compile']
        rows.append(row)
    return rows


# ------------------------------------------------------ training throughput

def train_throughput(config: str, shape: Tuple[int, int], batch_size: int,
                     repeat: int, device: torch.device, amp: bool = False,
                     compile: bool = False) -> Dict:
    """Images per second of full training steps (forward, losses, backward,
    optimizer step) of the detector in ``config`` on a synthetic batch, with
    the config's optimizer; ``amp`` and ``compile`` as ``tools/train.py
    --amp --compile``."""
    cfg = Config.fromfile(config)
    apply_train_options(cfg, amp=amp, compile=compile)
    model = build_model(cfg).to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    head = cfg.model.get('roi_head', cfg.model).get('bbox_head')
    if head is None or 'num_classes' not in head:
        raise ValueError(f'{config}: no bbox_head with num_classes in the '
                         f'model (model.roi_head.bbox_head or '
                         f'model.bbox_head); is it a detector config?')
    num_classes = head.num_classes
    inputs, samples = synthetic_inputs('mmdet', shape, batch_size,
                                       num_objects=8, num_classes=num_classes)
    inputs = inputs.to(device)
    samples = [sample.to(device) for sample in samples]
    losses = []

    def step() -> None:
        with optim_wrapper.optim_context(model):
            loss, _ = model.parse_losses(model.loss(inputs, samples))
        optim_wrapper.update_params(loss)
        losses.append(loss.item())

    times = time_call(step, repeat, device)
    return dict(images_per_second=batch_size / statistics.median(times),
                median=statistics.median(times), min=min(times),
                losses=losses)
