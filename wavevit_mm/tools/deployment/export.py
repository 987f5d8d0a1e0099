"""Export to ONNX (torch.export, then its translation) with the
checkpoint loaded strictly, written atomically and kept only after the
check in ONNX Runtime passes."""
import contextlib
import logging
import os.path as osp
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import torch
from mmengine.config import Config
from torch import nn

from ...checkpoint import atomic_write
from ...compat import require_onnx_export
from ...errors import ConfigError
from ...models.pretrained import check_fits, read_model_weights
from ..complexity import build_model
from ..config import check_backbone_config, inference_dataset, load_config
from .exportable import (check_deployable, default_shape, exportable,
                         second_size)
from .fusion import (attention_translations, convolution_ffns,
                     fuse_patterns)
from .probe import check_input, probe_image
from .runtime import ExportError, import_onnxruntime, onnx_session
from .two_stage import onnx_translations
from .verification import (ENOUGH_DETECTIONS, Check, check_file,
                           thresholds)

#: ONNX opset of the exported files.
OPSET = 18
#: Smallest side a dynamic export is traced at.
TRACE_SIDE = 320


class ExportReport(NamedTuple):
    """What :func:`export_onnx` wrote and how it was checked."""
    out: str
    model: str
    part: str
    dynamic: bool
    checks: List[Check]
    image: str = ''


def onnx_model(module: nn.Module, shape: Tuple[int, int], dynamic: bool,
               fuse: bool = False):
    """The ONNX model (a ModelProto) of ``module``: torch.export, then its
    translation to ONNX. A dynamic export may take no branch on the height
    or width: torch.export refuses instead of fixing the size into the
    graph. ``fuse`` writes ONNX Runtime's fused operators and the
    feed-forwards on maps (:mod:`.fusion`): a file for ONNX Runtime
    alone."""
    require_onnx_export()  # one paragraph on an older torch
    example = (torch.zeros(1, 3, *shape), )
    dynamic_shapes = None
    if dynamic:
        # torch.export fixes every size that is 1 when traced: traced at a
        # size where even a stride-128 level is 2x2 or more, no size is
        example = (torch.zeros(1, 3, *(max(side, TRACE_SIDE)
                                       for side in shape)), )
        dynamic_shapes = ({2: torch.export.Dim.DYNAMIC,
                           3: torch.export.Dim.DYNAMIC}, )
    translations = onnx_translations()
    if fuse:
        translations.update(attention_translations())
    layout = convolution_ffns(module) if fuse else contextlib.nullcontext()
    try:
        with torch.no_grad(), layout:
            program = torch.export.export(module, example,
                                          dynamic_shapes=dynamic_shapes)
            model = torch.onnx.export(
                program, dynamo=True, external_data=False,
                input_names=['input'], output_names=list(module.output_names),
                opset_version=OPSET, optimize=True, verbose=False,
                custom_translation_table=translations).model_proto
        return fuse_patterns(model) if fuse else model
    except Exception as error:  # the exporters' errors share no type
        raise ExportError(
            f'the {module.part} could not be exported '
            f'({type(error).__name__}: '
            f'{" ".join(str(error).split())[:400]}).') from error


#: Levels ``--log-level`` takes.
LOG_LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR')


@contextlib.contextmanager
def log_level(level: str = 'WARNING') -> Iterator[None]:
    """Let what mmengine logs (its per-parameter initialisation report is
    at INFO) reach the console from ``level`` on, restoring the current
    MMLogger's levels afterwards."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    handlers = [h for h in logger.handlers
                if not isinstance(h, logging.FileHandler)]
    before = logger.level, [h.level for h in handlers]
    logger.setLevel(level)
    for handler in handlers:
        handler.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before[0])
        for handler, old in zip(handlers, before[1]):
            handler.setLevel(old)


def load_model(config: str, checkpoint: str,
               cfg_options: Optional[dict] = None) -> Tuple[Config, nn.Module]:
    """The config's model in eval mode with the checkpoint's weights,
    loaded strictly: a file that does not fit is a CheckpointError. The
    config is checked first, with the test pipeline the check needs."""
    cfg = load_config(config, cfg_options)
    check_deployable(cfg, config)
    check_backbone_config(cfg)
    inference_dataset(cfg)
    weights, _ = read_model_weights(checkpoint)
    model = build_model(cfg)
    check_fits(weights, model, checkpoint)
    model.load_state_dict(weights, strict=True)
    return cfg, model.eval()


def export_onnx(config: str, checkpoint: str, out: str,
                shape: Optional[Tuple[int, int]] = None,
                dynamic: bool = False, backbone_only: bool = False,
                force: bool = False, cfg_options: Optional[dict] = None,
                log: Callable[[str], None] = print,
                fuse: bool = False,
                image: Optional[str] = None) -> ExportReport:
    """Export the model of ``config`` with the weights of ``checkpoint`` to
    ``out`` and check the file in ONNX Runtime against PyTorch.

    ``fuse`` writes ONNX Runtime's fused operators (:mod:`.fusion`), for
    ONNX Runtime alone. The check runs on ``image`` (a path; by default
    the config's first validation image or a picture the package draws,
    see :mod:`.probe`) through the config's test pipeline. The file is
    written beside ``out`` and replaces it only after the checks pass (an
    existing ``out`` only with ``force``); a file that fails them, or whose
    check compared nothing, is removed and the failure is an ExportError.
    """
    require_onnx_export()
    out = str(out)
    if osp.exists(out) and not force:
        raise ExportError(
            f'{out} already exists; pass --force (force=True) to overwrite '
            f'it.')
    import_onnxruntime()
    cfg, model = load_model(config, checkpoint, cfg_options)
    probe = probe_image(cfg, image)
    module = exportable(model, config, backbone_only, dynamic)
    shape = tuple(shape) if shape else default_shape(cfg)
    if min(shape) < 32:
        raise ConfigError(f'--shape {shape[0]} {shape[1]}: each side must be '
                          f'at least 32 pixels')
    log(f'Exporting the {module.part} of {config} at {shape[0]}x{shape[1]}'
        f'{" (dynamic height and width)" if dynamic else ""}'
        f'{" with ONNX Runtime fused operators" if fuse else ""} ...')
    proto = onnx_model(module, shape, dynamic, fuse)
    for key, value in (('part', module.part),
                       ('config', osp.basename(config)),
                       ('dynamic', str(dynamic)), ('fused', str(fuse))):
        proto.metadata_props.add(key=f'wavevit_mm.{key}', value=value)
    sizes = [shape, second_size(shape)] if dynamic else [shape]
    log(f'Checking in ONNX Runtime against PyTorch on {probe.source}')
    with atomic_write(out) as tmp:
        with open(tmp, 'wb') as file:
            file.write(proto.SerializeToString())
        del proto
        session = onnx_session(tmp)
        checks = []
        for size in sizes:
            check = check_file(session, module,
                               check_input(model, cfg, probe.image, size))
            checks.append(check)
            log(f'  {size[0]}x{size[1]}: {check.describe()}')
            if check.proposals and check.detections[1] < ENOUGH_DETECTIONS:
                log(f'  {size[0]}x{size[1]}: {check.detections[1]} '
                    f'detections above the score threshold, fewer than '
                    f'{ENOUGH_DETECTIONS}: the check rests on the '
                    f'{check.proposals[1]} proposals and their class '
                    f'scores before the threshold as well')
        failed = [c for c in checks if not c.passed]
        if failed and failed[0].elements == 0:
            raise ExportError(
                f'the check of the exported file compared nothing at '
                f'{failed[0].size[0]}x{failed[0].size[1]}: every output is '
                f'empty in ONNX Runtime and in PyTorch on {probe.source}; '
                f'pass --image with a picture the model finds something in. '
                f'{out} was not written.')
        if failed:
            raise ExportError(
                f'the exported file does not reproduce PyTorch at '
                f'{failed[0].size[0]}x{failed[0].size[1]} '
                f'({failed[0].describe()}; a file is kept at '
                f'{thresholds()}); '
                f'{out} was not written.')
        del session
    return ExportReport(out, osp.splitext(osp.basename(config))[0],
                        module.part, dynamic, checks, probe.source)


def format_checks(report: ExportReport) -> str:
    """The verification table: model, size, difference; then the image
    checked on."""
    lines = ['| model | part | size | difference (ONNX Runtime vs PyTorch) |',
             '|---|---|---|---|']
    for check in report.checks:
        kind = 'dynamic' if report.dynamic else 'fixed'
        lines.append(f'| {report.model} | {report.part}, {kind} | '
                     f'{check.size[0]}x{check.size[1]} | {check.describe()} |')
    if report.image:
        lines.append(f'Checked on {report.image}.')
    return '\n'.join(lines)
