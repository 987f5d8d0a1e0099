"""Export to ONNX and the check in ONNX Runtime that keeps a file, behind
``tools/deployment/pytorch2onnx.py`` and ``tools/deployment/onnx_demo.py``.

What is exported takes the normalised, padded image batch the model's data
preprocessor makes (``input``, 1x3xHxW) and returns raw tensors, decoded
afterwards by mmdet's and mmseg's own code:

- the backbone alone: its feature maps (``stage0`` ... ``stage3``);
- one-stage detectors (RetinaNet, ATSS, GFL): the dense head's outputs per
  pyramid level (``cls_score_0`` ..., ``bbox_pred_0`` ..., ATSS also
  ``score_factor_0`` ...), decoded by the head's ``predict_by_feat``;
- segmentors: the decode head's logits at the input size (``seg_logits``).

The graph comes from ``torch.onnx.export`` (torch.export underneath), so
the network exports through the code it runs in PyTorch; a file is kept
only after ONNX Runtime reproduces PyTorch on it, at the export size and,
for a dynamic file, at a second, odd size.
"""
import copy
import os
import os.path as osp
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from torch import Tensor, nn

from ..checkpoint import atomic_write
from ..errors import ConfigError, InputError
from .complexity import build_model
from .config import check_backbone_config, load_config, scope_of
from .model_checkpoint import check_model_fits, read_model_weights

#: How to install what export and inference need.
DEPLOY_INSTALL = 'pip install -e .[deploy]'
#: ONNX opset of the exported files.
OPSET = 18
#: One-stage detection heads whose raw outputs are exported and decoded by
#: their own ``predict_by_feat``.
DENSE_HEADS = ('RetinaHead', 'ATSSHead', 'GFLHead')
#: Names of the head outputs, in the order of ``predict_by_feat``'s
#: arguments.
HEAD_OUTPUTS = ('cls_score', 'bbox_pred', 'score_factor')
#: What a kept file must reach against PyTorch: the largest difference of
#: a raw output relative to that output's largest magnitude; the share of
#: the top detections found again (same label, IoU >= 0.99); the share of
#: pixels given the same class.
MAX_RELATIVE_DIFFERENCE = 1e-3
MIN_DETECTIONS_MATCHED = 0.98
MIN_PIXEL_AGREEMENT = 0.999
MATCH_IOU = 0.99
#: Smallest side a dynamic export is traced at.
TRACE_SIDE = 320
TOP_DETECTIONS = 100


class ExportError(InputError):
    """A model or file that cannot be exported, or whose exported file does
    not reproduce PyTorch."""


def import_onnxruntime():
    """The ``onnxruntime`` module, or an ExportError saying what to
    install. onnx and onnxscript (the exporter's) are checked too."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(
            f'Exporting to ONNX and running the file need the optional '
            f'packages onnx, onnxscript and onnxruntime ({error}). Install '
            f'them with `{DEPLOY_INSTALL}` (the versions pinned in '
            f'requirements.txt); training, testing and the other tools do '
            f'not need them.') from None
    return onnxruntime


# ----------------------------------------------------------- what exports

class BackboneFeatures(nn.Module):
    """The backbone's feature maps, ``stage{i}`` for each out index."""

    part = 'backbone'

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = getattr(model, 'backbone', model)
        self.output_names = [f'stage{i}' for i in self.backbone.out_indices]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.backbone(x))


class DenseHeadOutputs(nn.Module):
    """A one-stage detector's head outputs, flattened level by level: the
    arguments of ``bbox_head.predict_by_feat``."""

    part = 'detector'

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = model.bbox_head
        levels = len(head.prior_generator.strides)
        groups = 3 if type(head).__name__ == 'ATSSHead' else 2
        self.output_names = [f'{name}_{level}'
                             for name in HEAD_OUTPUTS[:groups]
                             for level in range(levels)]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        outputs = self.model.bbox_head(self.model.extract_feat(x))
        return tuple(t for group in outputs for t in group)


class SegmentationLogits(nn.Module):
    """A segmentor's class logits at the input size, as its decode head's
    ``predict_by_feat`` resizes them."""

    part = 'segmentor'
    output_names = ['seg_logits']

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        head = self.model.decode_head
        logits = head(self.model.extract_feat(x))
        return head.predict_by_feat(logits, [dict(img_shape=x.shape[2:])])


def head_output_groups(outputs: Sequence[Tensor], names: Sequence[str]
                       ) -> List[List[Tensor]]:
    """Flat head outputs back into ``predict_by_feat``'s per-level lists."""
    groups: Dict[str, List[Tensor]] = {}
    for name, output in zip(names, outputs):
        groups.setdefault(name.rsplit('_', 1)[0], []).append(output)
    return [groups[name] for name in HEAD_OUTPUTS if name in groups]


_TWO_STAGE_REFUSAL = (
    '{config}: {detector} is not exported: its second stage runs on the '
    'boxes the first one keeps (proposals after non-maximum suppression, '
    'RoIAlign on them, suppression per class, the mask head on what '
    'survives), and mmdet computes those steps in Python over InstanceData '
    'with mmcv\'s compiled nms and RoIAlign, which torch.export does not '
    'turn into ONNX NonMaxSuppression and RoiAlign without a rewrite of '
    'the heads. Export the backbone alone (--backbone-only) and run the '
    'heads in PyTorch, or deploy a one-stage detector (RetinaNet, ATSS, '
    'GFL), which exports whole.')

_PYRAMID_POOLING_REFUSAL = (
    '{config}: a dynamic export of {segmentor} would be wrong at every size '
    'but the export size, silently: its pyramid pooling '
    '(nn.AdaptiveAvgPool2d to {sizes} cells) is written into ONNX as '
    'average pooling with kernels computed from the export size, and the '
    'graph keeps no check of the size. Export it at a fixed size instead '
    '(without --dynamic: the crop size by default, or --shape H W), and '
    'resize or pad images to that size.')


def _adaptive_pool_sizes(model: nn.Module) -> List[str]:
    """Output sizes of adaptive poolings other than global ones."""
    sizes = []
    for module in model.modules():
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = module.output_size
            if size not in (1, (1, 1)):
                sizes.append(str(size))
    return sizes


def exportable(model: nn.Module, config: str, backbone_only: bool = False,
               dynamic: bool = False) -> nn.Module:
    """The module to export for ``model`` (built from ``config``), or an
    ExportError of one paragraph saying why it cannot be."""
    if backbone_only:
        return BackboneFeatures(model).eval()
    name = type(model).__name__
    if hasattr(model, 'decode_head'):
        sizes = _adaptive_pool_sizes(model)
        if dynamic and sizes:
            raise ExportError(_PYRAMID_POOLING_REFUSAL.format(
                config=config, segmentor=f'{name} with '
                f'{type(model.decode_head).__name__}',
                sizes=', '.join(sizes)))
        return SegmentationLogits(model).eval()
    if hasattr(model, 'roi_head'):
        raise ExportError(_TWO_STAGE_REFUSAL.format(config=config,
                                                    detector=name))
    head = getattr(model, 'bbox_head', None)
    if type(head).__name__ in DENSE_HEADS:
        return DenseHeadOutputs(model).eval()
    raise ExportError(
        f'{config}: {name} with {type(head).__name__} is not among the '
        f'models that export (one-stage detectors with '
        f'{", ".join(DENSE_HEADS)}; segmentors; any backbone with '
        f'--backbone-only).')


def default_shape(cfg: Config) -> Tuple[int, int]:
    """The export size (H, W): a segmentor's crop size, else the test
    pipeline's resize scale padded to the preprocessor's size divisor."""
    if cfg.get('crop_size') is not None:
        height, width = cfg.crop_size
        return int(height), int(width)
    preprocessor = cfg.model.get('data_preprocessor') or {}
    divisor = preprocessor.get('pad_size_divisor') or 32
    for step in cfg.test_dataloader.dataset.get('pipeline', []):
        if step.get('type', '').split('.')[-1] == 'Resize' and 'scale' in step:
            width, height = sorted(step['scale'], reverse=True)
            return (-(-height // divisor) * divisor,
                    -(-width // divisor) * divisor)
    raise ConfigError(f'the config has no crop_size and no Resize step in '
                      f'its test pipeline to take the export size from; '
                      f'pass --shape H W')


def second_size(shape: Tuple[int, int]) -> Tuple[int, int]:
    """An odd size, neither side a multiple of 2, to check a dynamic file
    at a size other than the export size."""
    height, width = shape
    return (height + height // 4) | 1, (width - width // 4) | 1


# --------------------------------------------------------------- the check

class Check(NamedTuple):
    """ONNX Runtime against PyTorch on one input."""
    size: Tuple[int, int]
    max_abs: float
    max_rel: float
    detections: Optional[Tuple[int, int]] = None  # matched, of
    pixel_agreement: Optional[float] = None

    @property
    def passed(self) -> bool:
        if not self.max_rel <= MAX_RELATIVE_DIFFERENCE:
            return False
        if self.detections is not None:
            matched, total = self.detections
            if matched < MIN_DETECTIONS_MATCHED * total:
                return False
        return (self.pixel_agreement is None
                or self.pixel_agreement >= MIN_PIXEL_AGREEMENT)

    def describe(self) -> str:
        text = (f'max abs difference {self.max_abs:.2e}, relative '
                f'{self.max_rel:.2e}')
        if self.detections is not None:
            text += (f', detections matched {self.detections[0]} of '
                     f'{self.detections[1]}')
        if self.pixel_agreement is not None:
            text += f', pixel agreement {100 * self.pixel_agreement:.3f}%'
        return text


def onnx_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime session on ``path`` with every graph optimisation,
    on the GPU where onnxruntime-gpu offers one, else the CPU with
    ``threads`` (torch's thread count by default)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    providers = [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider')
                 if p in ort.get_available_providers()]
    return ort.InferenceSession(path, options, providers=providers)


def run_session(session, x: Tensor) -> List[Tensor]:
    """The session's outputs on ``x`` as CPU tensors, in graph order."""
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: x.detach().cpu().numpy()})
    return [torch.from_numpy(np.asarray(output)) for output in outputs]


def _differences(outputs: Sequence[Tensor], expected: Sequence[Tensor]
                 ) -> Tuple[float, float]:
    """Largest absolute difference, and the largest relative to each
    expected output's largest magnitude."""
    max_abs = max_rel = 0.
    for output, reference in zip(outputs, expected):
        if output.shape != reference.shape:
            return float('inf'), float('inf')
        difference = (output.double() - reference.double()).abs().max().item()
        scale = reference.double().abs().max().item() or 1.
        max_abs, max_rel = max(max_abs, difference), max(max_rel,
                                                        difference / scale)
    return max_abs, max_rel


def image_metas(shape: Tuple[int, int]) -> List[Dict]:
    """Meta data of one image of ``shape`` that was neither resized nor
    padded, as the heads' ``predict_by_feat`` reads them."""
    return [dict(img_shape=tuple(shape), ori_shape=tuple(shape),
                 pad_shape=tuple(shape), batch_input_shape=tuple(shape),
                 scale_factor=(1., 1.))]


def decode_detections(head: nn.Module, outputs: Sequence[Tensor],
                      names: Sequence[str], metas: List[Dict],
                      cfg: Optional[Config] = None, rescale: bool = False):
    """mmdet's own decoding (``predict_by_feat``) of raw head outputs:
    one InstanceData of boxes, scores and labels per image."""
    return head.predict_by_feat(*head_output_groups(outputs, names),
                                batch_img_metas=metas, cfg=cfg,
                                rescale=rescale)


def matched_detections(found, expected, top: int = TOP_DETECTIONS
                       ) -> Tuple[int, int]:
    """How many of the ``top`` best detections of ``found`` have one in
    ``expected`` with the same label and IoU >= 0.99, and of how many."""
    from mmdet.structures.bbox import bbox_overlaps
    found, expected = found[:top], expected[:top]
    if len(found) == 0 or len(expected) == 0:
        return 0, max(len(found), len(expected))
    overlaps = bbox_overlaps(found.bboxes, expected.bboxes)
    same = found.labels[:, None] == expected.labels[None, :]
    matched = ((overlaps >= MATCH_IOU) & same).any(dim=1).sum().item()
    return int(matched), max(len(found), len(expected))


def _check_score_free(head: nn.Module) -> Config:
    """The head's test config keeping the top detections whatever their
    score: a check must compare boxes even of a barely trained model."""
    cfg = copy.deepcopy(head.test_cfg)
    cfg.score_thr = 0.
    cfg.max_per_img = TOP_DETECTIONS
    return cfg


def check_file(session, module: nn.Module, size: Tuple[int, int],
               seed: int = 0) -> Check:
    """Run the file and ``module`` (PyTorch) on one random input of
    ``size`` and compare: raw outputs, and the decoded detections or the
    predicted classes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, *size, generator=generator)
    with torch.no_grad():
        expected = module(x)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    outputs = run_session(session, x)
    max_abs, max_rel = _differences(outputs, expected)
    if not np.isfinite(max_abs):
        return Check(tuple(size), max_abs, max_rel)
    if module.part == 'detector':
        head = module.model.bbox_head
        cfg, metas = _check_score_free(head), image_metas(size)
        with torch.no_grad():
            found = decode_detections(head, outputs, module.output_names,
                                      metas, cfg)[0]
            reference = decode_detections(head, expected,
                                          module.output_names, metas, cfg)[0]
        return Check(tuple(size), max_abs, max_rel,
                     detections=matched_detections(found, reference))
    if module.part == 'segmentor':
        agreement = (outputs[0].argmax(1) == expected[0].argmax(1))
        return Check(tuple(size), max_abs, max_rel,
                     pixel_agreement=agreement.double().mean().item())
    return Check(tuple(size), max_abs, max_rel)


# -------------------------------------------------------------- the export

class ExportReport(NamedTuple):
    """What :func:`export_onnx` wrote and how it was checked."""
    out: str
    model: str
    part: str
    dynamic: bool
    checks: List[Check]


def _onnx_program(module: nn.Module, shape: Tuple[int, int], dynamic: bool):
    """torch.export, then its translation to ONNX. A dynamic export may
    take no branch on the height or width: torch.export refuses instead of
    fixing the size into the graph."""
    example = (torch.zeros(1, 3, *shape), )
    dynamic_shapes = None
    if dynamic:
        # torch.export fixes every size that is 1 when traced: traced at a
        # size where even a stride-128 level is 2x2 or more, no size is
        example = (torch.zeros(1, 3, *(max(side, TRACE_SIDE)
                                       for side in shape)), )
        dynamic_shapes = ({2: torch.export.Dim.DYNAMIC,
                           3: torch.export.Dim.DYNAMIC}, )
    try:
        with torch.no_grad():
            program = torch.export.export(module, example,
                                          dynamic_shapes=dynamic_shapes)
            return torch.onnx.export(
                program, dynamo=True, external_data=False,
                input_names=['input'], output_names=list(module.output_names),
                opset_version=OPSET, optimize=True, verbose=False)
    except Exception as error:  # the exporters' errors share no type
        raise ExportError(
            f'the {module.part} could not be exported '
            f'({type(error).__name__}: '
            f'{" ".join(str(error).split())[:400]}).') from error


def load_model(config: str, checkpoint: str,
               cfg_options: Optional[dict] = None) -> Tuple[Config, nn.Module]:
    """The config's model in eval mode with the checkpoint's weights,
    loaded strictly: a file that does not fit is a CheckpointError."""
    cfg = load_config(config, cfg_options)
    scope_of(cfg)
    check_backbone_config(cfg)
    weights = read_model_weights(checkpoint)
    model = build_model(cfg)
    check_model_fits(weights, model, checkpoint)
    model.load_state_dict(weights, strict=True)
    return cfg, model.eval()


def export_onnx(config: str, checkpoint: str, out: str,
                shape: Optional[Tuple[int, int]] = None,
                dynamic: bool = False, backbone_only: bool = False,
                force: bool = False, cfg_options: Optional[dict] = None,
                log: Callable[[str], None] = print) -> ExportReport:
    """Export the model of ``config`` with the weights of ``checkpoint`` to
    ``out`` and check the file in ONNX Runtime against PyTorch.

    The file is written beside ``out`` and replaces it only after the
    checks pass (an existing ``out`` only with ``force``); a file that
    fails them is removed and the failure is an ExportError.
    """
    out = str(out)
    if osp.exists(out) and not force:
        raise ExportError(
            f'{out} already exists; pass --force (force=True) to overwrite '
            f'it.')
    import_onnxruntime()
    cfg, model = load_model(config, checkpoint, cfg_options)
    module = exportable(model, config, backbone_only, dynamic)
    shape = tuple(shape) if shape else default_shape(cfg)
    if min(shape) < 32:
        raise ConfigError(f'--shape {shape[0]} {shape[1]}: each side must be '
                          f'at least 32 pixels')
    log(f'Exporting the {module.part} of {config} at {shape[0]}x{shape[1]}'
        f'{" (dynamic height and width)" if dynamic else ""} ...')
    program = _onnx_program(module, shape, dynamic)
    program.model.metadata_props.update({
        'wavevit_mm.part': module.part,
        'wavevit_mm.config': osp.basename(config),
        'wavevit_mm.dynamic': str(dynamic)})
    sizes = [shape, second_size(shape)] if dynamic else [shape]
    with atomic_write(out) as tmp:
        program.save(tmp)
        session = onnx_session(tmp)
        checks = [check_file(session, module, size) for size in sizes]
        for check in checks:
            log(f'  {check.size[0]}x{check.size[1]}: {check.describe()}')
        failed = [c for c in checks if not c.passed]
        if failed:
            raise ExportError(
                f'the exported file does not reproduce PyTorch at '
                f'{failed[0].size[0]}x{failed[0].size[1]} '
                f'({failed[0].describe()}; a file is kept at relative '
                f'differences up to {MAX_RELATIVE_DIFFERENCE:g}, '
                f'{100 * MIN_DETECTIONS_MATCHED:g}% of the top '
                f'{TOP_DETECTIONS} detections matched and '
                f'{100 * MIN_PIXEL_AGREEMENT:g}% pixel agreement); '
                f'{out} was not written.')
        del session
    return ExportReport(out, osp.splitext(osp.basename(config))[0],
                        module.part, dynamic, checks)


def format_checks(report: ExportReport) -> str:
    """The verification table: model, size, difference."""
    lines = ['| model | part | size | difference (ONNX Runtime vs PyTorch) |',
             '|---|---|---|---|']
    for check in report.checks:
        kind = 'dynamic' if report.dynamic else 'fixed'
        lines.append(f'| {report.model} | {report.part}, {kind} | '
                     f'{check.size[0]}x{check.size[1]} | {check.describe()} |')
    return '\n'.join(lines)


# ---------------------------------------------------- inference from a file

def test_pipeline(cfg: Config):
    """The config's test pipeline on an image array, without the
    annotation loading (as mmdet's and mmseg's inference APIs build it)."""
    from mmcv.transforms import Compose
    scope = scope_of(cfg)
    steps = [step for step in copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
             if step['type'].split('.')[-1] != 'LoadAnnotations']
    steps[0]['type'] = f'{scope}.LoadImageFromNDArray'
    return Compose(steps)


def dataset_meta(cfg: Config) -> Dict:
    """Class names and palette of the config's test set: the dataset
    class's, with the config's ``metainfo`` over them."""
    from mmengine.registry import DATASETS
    dataset = cfg.test_dataloader.dataset
    meta = dict(DATASETS.get(f'{scope_of(cfg)}.{dataset.type}').METAINFO)
    meta.update(dataset.get('metainfo') or {})
    return meta


def _fit_fixed_input(session, inputs: Tensor, sample) -> Tensor:
    """Zero-pad ``inputs`` at the bottom/right to a fixed-size file's size
    (noting the padding for mmseg's post-processing); dynamic files take
    any size."""
    height, width = session.get_inputs()[0].shape[2:]
    if not (isinstance(height, int) and isinstance(width, int)):
        return inputs
    pad_h, pad_w = height - inputs.shape[2], width - inputs.shape[3]
    if pad_h < 0 or pad_w < 0:
        raise InputError(
            f'the image is {inputs.shape[2]}x{inputs.shape[3]} after the '
            f'test pipeline, larger than the {height}x{width} the file was '
            f'exported at; export it at this size (--shape) or resize the '
            f'image.')
    sample.set_metainfo(dict(padding_size=[0, pad_w, 0, pad_h]))
    return torch.nn.functional.pad(inputs, (0, pad_w, 0, pad_h))


def predict_image_onnx(image: np.ndarray, config: str, model_file: str,
                       cfg_options: Optional[dict] = None):
    """Predict on an RGB image with an exported detector or segmentor:
    the config's test pipeline and data preprocessor, the file in ONNX
    Runtime, then mmdet's or mmseg's own decoding. Returns
    ``(prediction, model)``: a DetDataSample or SegDataSample, and the
    model built from the config (not its weights, which are in the file),
    with the config as ``model.cfg`` (as mmdet's ``init_detector`` sets
    it), for :func:`draw_prediction`."""
    session = onnx_session(model_file)
    part = session.get_modelmeta().custom_metadata_map.get('wavevit_mm.part')
    if part not in ('detector', 'segmentor'):
        raise InputError(
            f'{model_file} holds {"a " + part if part else "no model"} '
            f'exported by pytorch2onnx.py; the demo runs detectors and '
            f'segmentors exported by it (without --backbone-only).')
    cfg = load_config(config, cfg_options)
    model = build_model(cfg)
    model.cfg = cfg
    data = test_pipeline(cfg)(dict(img=image[..., ::-1].copy(), img_id=0))
    with torch.no_grad():
        data = model.data_preprocessor(
            dict(inputs=[data['inputs']], data_samples=[data['data_samples']]),
            False)
        sample = data['data_samples'][0]
        if part == 'segmentor':
            if not hasattr(model, 'decode_head'):
                raise InputError(f'{model_file} holds a segmentor, {config} '
                                 f'a detector.')
            inputs = _fit_fixed_input(session, data['inputs'], sample)
            logits = run_session(session, inputs)[0]
            return model.postprocess_result(logits, [sample])[0], model
        if not hasattr(model, 'bbox_head'):
            raise InputError(f'{model_file} holds a detector, {config} a '
                             f'segmentor.')
        outputs = run_session(session, data['inputs'])
        names = [output.name for output in session.get_outputs()]
        results = decode_detections(model.bbox_head, outputs, names,
                                    [sample.metainfo], rescale=True)
        return model.add_pred_to_datasample([sample], results)[0], model


def draw_prediction(model: nn.Module, image: np.ndarray, prediction,
                    out_file: str, score_thr: float = 0.3,
                    opacity: float = 0.5) -> None:
    """Draw a prediction of :func:`predict_image_onnx` on the RGB image
    with mmdet's or mmseg's visualizer, as ``tools/image_demo.py`` does."""
    cfg = model.cfg
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    model.dataset_meta = dataset_meta(cfg)
    if scope_of(cfg) == 'mmdet':
        from mmdet.registry import VISUALIZERS
        visualizer = VISUALIZERS.build(cfg.visualizer)
        visualizer.dataset_meta = model.dataset_meta
        visualizer.add_datasample(
            'result', image, data_sample=prediction, draw_gt=False,
            show=False, out_file=out_file, pred_score_thr=score_thr)
    else:
        from mmseg.apis import show_result_pyplot
        show_result_pyplot(model, image, prediction, opacity=opacity,
                           show=False, draw_gt=False, out_file=out_file,
                           save_dir=None)
