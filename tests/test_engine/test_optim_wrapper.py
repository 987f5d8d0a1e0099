"""wavevit_mm.engine.optim_wrapper, ``--amp`` without a GPU: the backbone
in bfloat16, the rest in float32. (The switch itself:
tests/test_tools/test_options.py.)"""
import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

from helpers import TINY
from wavevit_mm.models import WaveViT


class TinyDetector(nn.Module):
    """A backbone and a head that records the dtype it is given."""

    def __init__(self):
        super().__init__()
        self.backbone = WaveViT(TINY)
        self.head = nn.Conv2d(TINY['embed_dims'][-1], 1, 1)
        self.head_input_dtypes = []

    def forward(self, image):
        feats = self.backbone(image)
        self.head_input_dtypes.append(feats[-1].dtype)
        return self.head(feats[-1]).float().square().mean()


def test_backbone_runs_in_bfloat16_and_hands_float32_on():
    torch.manual_seed(0)
    model = TinyDetector()
    wrapper = build_optim_wrapper(model, dict(
        type='CPUAutocastOptimWrapper',
        optimizer=dict(type='AdamW', lr=1e-3)))
    stage_dtypes = []
    model.backbone.stages[1].register_forward_hook(
        lambda module, args, out: stage_dtypes.append(out.dtype))
    image = torch.randn(2, 3, 64, 64)
    before = model.head.weight.detach().clone()
    with wrapper.optim_context(model):
        loss = model(image)
    wrapper.update_params(loss)
    assert stage_dtypes == [torch.bfloat16]
    assert model.head_input_dtypes == [torch.float32]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(before, model.head.weight)
    # outside the context the model is plain float32 again
    model(image)
    assert stage_dtypes[-1] == torch.float32


def test_autocast_ends_when_the_backbone_fails():
    model = TinyDetector()
    wrapper = build_optim_wrapper(model, dict(
        type='CPUAutocastOptimWrapper', optimizer=dict(type='SGD', lr=0.1)))
    with pytest.raises(ValueError, match=r'expects a \(B, C, H, W\) image'):
        with wrapper.optim_context(model):
            model(torch.randn(2, 3, 64))   # not an image batch
    try:
        enabled = torch.is_autocast_enabled('cpu')
    except TypeError:  # before torch 2.4: no device argument
        enabled = torch.is_autocast_cpu_enabled()
    assert not enabled
    assert 'forward' not in vars(model.backbone)
