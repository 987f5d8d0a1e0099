"""ONNX Runtime against PyTorch eager on the same input, in one run: the
RetinaNet Wave-ViT-S detector (random weights, the head's raw outputs) and
its Wave-ViT-S backbone alone, each exported as the deployment tool exports it
(``wavevit_mm.tools.deployment.onnx_model``) and run in the session it
uses (``onnx_session``: every graph optimisation, CUDA where
onnxruntime-gpu offers it).

An export *variant* is what is done to the file before the session:

- ``dynamic``: dynamic height and width, as ``pytorch2onnx.py --dynamic``;
- ``fixed``: the size fixed at export, so shapes are constants the runtime
  can fold;
- ``fused``: ``fixed`` with ONNX Runtime's fused operators, as
  ``pytorch2onnx.py --fuse`` writes them (``tools.deployment.fusion``):
  attention as MultiHeadAttention (a flash attention on the CPU), GELU as
  ``Gelu`` (ORT's own session optimiser fuses neither here), and each FFN
  on the token map, which ORT's CPU runs whole in its NCHWc layout.

The calls are interleaved (PyTorch, then each variant's session, repeat
after repeat) so that a loaded machine slows every column alike.
"""
import contextlib
import os.path as osp
import statistics
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from torch import nn

from wavevit_mm.errors import InputError
from wavevit_mm.tools import build_model
from wavevit_mm.tools.deployment import (BackboneFeatures, DenseHeadOutputs,
                                        default_shape, differences,
                                        import_onnxruntime, onnx_model,
                                        onnx_session, run_session)

from .report import failed_row, format_shape, print_markdown
from .timing import time_call

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
DETECTOR_CONFIG = osp.join(ROOT, 'configs', 'retinanet_wavevit_s_coco.py')
VARIANTS = ('dynamic', 'fixed', 'fused')
#: The benchmark's export: what measured fastest with the same outputs.
DEFAULT_VARIANTS = ('fused', )
CPU = torch.device('cpu')


def check_variants(variants: Sequence[str]) -> None:
    """Refuse an export variant this table does not know."""
    for variant in variants:
        if variant not in VARIANTS:
            raise InputError(f'unknown ONNX export variant {variant!r}; one '
                             f'of {", ".join(VARIANTS)}')


def padded(shape: Tuple[int, int], divisor: int) -> Tuple[int, int]:
    """``shape`` padded up to multiples of ``divisor``, as mmdet's data
    preprocessor pads a batch."""
    return tuple(-(-side // divisor) * divisor for side in shape)


def detector_module(config: str, shape: Optional[Tuple[int, int]]
                    ) -> Tuple[nn.Module, Tuple[int, int]]:
    """The detector of ``config`` with random weights as its raw head
    outputs, and the input size: ``shape`` (default: the test pipeline's
    scale, 800x1333 for COCO) padded to the preprocessor's size divisor,
    as the model sees it (800x1344)."""
    cfg = Config.fromfile(config)
    if shape is None:
        shape = default_shape(cfg)
    divisor = (cfg.model.get('data_preprocessor') or {}).get(
        'pad_size_divisor') or 1
    return DenseHeadOutputs(build_model(cfg)).eval(), padded(shape, divisor)


def export_variants(module: nn.Module, shape: Tuple[int, int],
                    variants: Sequence[str], directory: str
                    ) -> Dict[str, Tuple[str, float]]:
    """Each variant's file in ``directory``, with the seconds its export
    took."""
    import onnx
    files = {}
    for variant in variants:
        start = time.perf_counter()
        proto = onnx_model(module, shape, dynamic=variant == 'dynamic',
                           fuse=variant == 'fused')
        path = osp.join(directory, f'{module.part}_{variant}.onnx')
        onnx.save(proto, path)
        files[variant] = path, time.perf_counter() - start
    return files


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch on ``threads`` threads in the block, as many as the session
    has, then back to what it had."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def compare(name: str, module: nn.Module, shape: Tuple[int, int],
            variants: Sequence[str], repeat: int, threads: int,
            device: torch.device) -> List[Dict]:
    """One row per variant: PyTorch eager (no gradients) and the variant's
    session on one random input, timed in turn, and their differences."""
    torch.manual_seed(0)
    image = torch.randn(1, 3, *shape)
    with tempfile.TemporaryDirectory() as directory:
        files = export_variants(module, shape, variants, directory)
        module = module.to(device)
        on_device = image.to(device)
        with torch.no_grad():
            expected = [out.cpu() for out in module(on_device)]

        def eager() -> None:
            with torch.no_grad():
                module(on_device)

        sessions = {}
        for variant, (path, _) in files.items():
            start = time.perf_counter()
            session = onnx_session(path, threads)
            sessions[variant] = (
                session, time.perf_counter() - start)
    calls: List[Tuple[str, Callable[[], object], torch.device]] = [
        ('pytorch', eager, device)]
    calls += [(variant, (lambda s=session: run_session(s, image)), CPU)
              for variant, (session, _) in sessions.items()]
    times: Dict[str, List[float]] = {key: [] for key, _, _ in calls}
    # the outputs compared are the warm-up calls'
    outputs = {variant: run_session(session, image)
               for variant, (session, _) in sessions.items()}
    time_call(eager, 0, device)  # PyTorch's warm-up
    for _ in range(repeat):
        for key, fn, on in calls:
            times[key] += time_call(fn, 1, on, warmup=0)
    torch_min, torch_median = min(times['pytorch']), statistics.median(
        times['pytorch'])
    rows = []
    for variant, (session, session_s) in sessions.items():
        ort_min, ort_median = min(times[variant]), statistics.median(
            times[variant])
        max_abs, max_rel = differences(outputs[variant], expected)
        rows.append(dict(
            name=name, variant=variant, input=[1, 3, *shape],
            threads=threads, provider=session.get_providers()[0],
            pytorch_min=torch_min, pytorch_median=torch_median,
            ort_min=ort_min, ort_median=ort_median,
            ratio_min=ort_min / torch_min,
            ratio_median=ort_median / torch_median,
            max_abs_diff=max_abs, max_rel_diff=max_rel,
            export_s=files[variant][1], session_s=session_s))
    return rows


def onnxruntime_table(backbone_shape: Tuple[int, int],
                      detector_shape: Optional[Tuple[int, int]],
                      repeat: int, threads: int = 2,
                      device: torch.device = CPU,
                      variants: Sequence[str] = DEFAULT_VARIANTS,
                      config: str = DETECTOR_CONFIG) -> List[Dict]:
    """The rows of the RetinaNet detector of ``config`` (Wave-ViT-S by
    default) at ``detector_shape`` (padded as its preprocessor pads;
    default from its test pipeline) and of its backbone alone at
    ``backbone_shape``, for each export variant, with ``threads`` threads
    in PyTorch and ONNX Runtime."""
    import_onnxruntime()
    check_variants(variants)
    name = osp.splitext(osp.basename(config))[0]
    rows = []
    with torch_threads(threads):
        try:
            detector, shape = detector_module(
                config, detector_shape and tuple(detector_shape))
            models = [(f'{name} backbone', BackboneFeatures(detector.model),
                       tuple(backbone_shape)), (name, detector, shape)]
        except (InputError, RuntimeError, MemoryError) as error:
            return [failed_row(dict(name=name, variant=variant,
                                    dtype=f'({variant} export)'), error,
                               device) for variant in variants]
        for row_name, module, shape in models:
            try:
                rows += compare(row_name, module.eval(), shape, variants,
                                repeat, threads, device)
            except (InputError, RuntimeError, MemoryError) as error:
                rows += [failed_row(dict(name=row_name, variant=variant,
                                         dtype=f'({variant} export)'), error,
                                    device) for variant in variants]
    return rows


def print_onnxruntime_table(rows: List[Dict]) -> None:
    print_markdown(
        ['model', 'input', 'export', 'threads', 'provider',
         'PyTorch min / median (s)', 'ONNX Runtime min / median (s)',
         'ORT / PyTorch (min, median)', 'max abs diff', 'max rel diff'],
        rows, lambda row: [
            row['name'], format_shape(row['input']), row['variant'],
            str(row['threads']), row['provider'].replace(
                'ExecutionProvider', ''),
            f'{row["pytorch_min"]:.3f} / {row["pytorch_median"]:.3f}',
            f'{row["ort_min"]:.3f} / {row["ort_median"]:.3f}',
            f'{row["ratio_min"]:.2f}x, {row["ratio_median"]:.2f}x',
            f'{row["max_abs_diff"]:.1e}', f'{row["max_rel_diff"]:.1e}'])
