"""Training throughput of a whole detector: full steps of a config's model
(forward, losses, backward, optimizer step) on a synthetic batch, built
and wrapped as ``tools/train.py`` builds them."""
import statistics
from typing import Dict, Tuple

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from wavevit_mm.tools import apply_train_options, build_model, synthetic_inputs

from .timing import time_call


def train_throughput(config: str, shape: Tuple[int, int], batch_size: int,
                     repeat: int, device: torch.device, amp: bool = False,
                     compile: bool = False) -> Dict:
    """Images per second of training steps of the detector in ``config``
    with the config's optimizer, on a batch of ``batch_size`` images of
    ``shape`` (H, W) with 8 boxes and masks each; ``amp`` and ``compile``
    as ``tools/train.py --amp --compile``. The losses of every step,
    warm-up included, come back too: the weights must change."""
    cfg = Config.fromfile(config)
    apply_train_options(cfg, amp=amp, compile=compile)
    model = build_model(cfg).to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    head = cfg.model.get('roi_head', cfg.model).get('bbox_head')
    if head is None or 'num_classes' not in head:
        raise ValueError(f'{config}: no bbox_head with num_classes in the '
                         f'model (model.roi_head.bbox_head or '
                         f'model.bbox_head); is it a detector config?')
    inputs, samples = synthetic_inputs('mmdet', shape, batch_size,
                                       num_objects=8,
                                       num_classes=head.num_classes)
    inputs = inputs.to(device)
    samples = [sample.to(device) for sample in samples]
    losses = []

    def step() -> None:
        with optim_wrapper.optim_context(model):
            loss, _ = model.parse_losses(model.loss(inputs, samples))
        optim_wrapper.update_params(loss)
        losses.append(loss.item())

    times = time_call(step, repeat, device)
    median = statistics.median(times)
    return dict(images_per_second=batch_size / median, median=median,
                min=min(times), losses=losses, config=config, amp=amp,
                compile=compile, batch=batch_size, shape=list(shape))


def print_train_throughput(result: Dict, device: torch.device,
                           repeat: int) -> None:
    print(f'training {result["config"]} on {device} '
          f'({"amp" if result["amp"] else "fp32"}'
          f'{", backbone compiled" if result["compile"] else ""}), batch '
          f'{result["batch"]} x {tuple(result["shape"])}: '
          f'{result["images_per_second"]:.3f} images/s (step median '
          f'{result["median"]:.3f} s, min {result["min"]:.3f} s over '
          f'{repeat} steps after the warm-up)')
