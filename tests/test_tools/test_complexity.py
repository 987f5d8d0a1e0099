"""wavevit_mm.tools.complexity: multiply-adds as mmengine counts them
(with fused attention, which its counter does not know), against the
architecture written out by hand in tests/helpers.py; the synthetic
batches the benchmark and the config tests feed models."""
import pytest
import torch

from helpers import wavevit_multiply_adds
from wavevit_mm import WaveViT
from wavevit_mm.tools import synthetic_inputs
from wavevit_mm.tools.complexity import count_complexity, format_count


@pytest.mark.parametrize('arch,size,compile', [
    ('s', (64, 64), False), ('s', (33, 47), False), ('b', (64, 96), False),
    pytest.param('s', (64, 64), True, marks=pytest.mark.backbone_compile)])
def test_backbone_multiply_adds_follow_the_architecture(arch, size, compile):
    """Convolutions, linear layers and both attention products; the
    counter adds normalisation (0.5%), nothing else. A backbone set to
    compile is traced as it is written (the tracer cannot follow
    torch.compile)."""
    model = WaveViT(arch, compile=compile).eval()
    with torch.no_grad():
        counted = count_complexity(model, (torch.randn(1, 3, *size), ))
    expected = wavevit_multiply_adds(arch, *size)
    assert expected <= counted['flops'] < 1.01 * expected
    assert counted['params'] == sum(p.numel() for p in model.parameters())


def test_synthetic_detection_batch_masks_fill_their_boxes():
    inputs, samples = synthetic_inputs('mmdet', (64, 96), batch_size=2,
                                       num_objects=8, num_classes=3)
    assert inputs.shape == (2, 3, 64, 96)
    for sample in samples:
        gt = sample.gt_instances
        assert len(gt) == 8 and gt.labels.max() < 3
        masks = torch.from_numpy(gt.masks.masks)
        for box, mask in zip(gt.bboxes.long(), masks):
            x1, y1, x2, y2 = box.tolist()
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 64
            assert mask.sum() == (x2 - x1) * (y2 - y1)


@pytest.mark.parametrize('count,text', [
    (4_126_000_000, '4.126G'), (27_900_000, '27.9M'), (150, '0.15K'),
    (99, '99'), (120_000_000_000_000, '0.12P'), (1_000_000, '1M')])
def test_counts_read_as_mmengine_prints_them(count, text):
    """In the largest unit of which the count is more than a tenth, with
    at most three decimals, as in mmengine's complexity tables."""
    assert format_count(count) == text
