"""``--amp`` without a GPU: the backbone in bfloat16, the rest in float32."""
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import nn

from wavevit_mm.models import WaveViT
from wavevit_mm.runner import apply_train_options

TINY = dict(stem_width=8, embed_dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2),
            mlp_ratios=(2, 2, 2, 2), depths=(1, 1, 1, 1),
            sr_ratios=(4, 2, 1, 1))


class TinyDetector(nn.Module):
    """A backbone and a head that records the dtype it is given."""

    def __init__(self):
        super().__init__()
        self.backbone = WaveViT(TINY)
        self.head = nn.Conv2d(32, 1, 1)
        self.head_input_dtypes = []

    def forward(self, image):
        feats = self.backbone(image)
        self.head_input_dtypes.append(feats[-1].dtype)
        return self.head(feats[-1]).float().square().mean()


def test_amp_switch_selects_the_cpu_wrapper_without_a_gpu():
    cfg = Config(dict(optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))))
    apply_train_options(cfg, amp=True)
    if torch.cuda.is_available():
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    else:
        assert cfg.optim_wrapper.type == 'CPUAutocastOptimWrapper'
        assert 'loss_scale' not in cfg.optim_wrapper


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
    try:
        with wrapper.optim_context(model):
            model(torch.randn(2, 3, 64))   # not an image batch
    except ValueError:
        pass
    assert not torch.is_autocast_enabled('cpu')
    assert 'forward' not in vars(model.backbone)
