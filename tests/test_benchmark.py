"""The benchmark's pieces: the official formulation it times against, and
the tables it prints (speed itself is measured, never asserted)."""
import pytest
import torch

from wavevit_mm import benchmark
from wavevit_mm.models import WaveViT
from wavevit_mm.ops import DWT2D, IDWT2D


def test_official_formulation_gives_the_same_feature_maps():
    torch.manual_seed(0)
    model = WaveViT('s', out_indices=(0, 2, 3))
    model.init_weights()
    model.eval()
    image = torch.randn(1, 3, 128, 96)
    official = benchmark.OfficialFormulation(model).eval()
    # a different computation, not our modules run again: our wavelet
    # transform modules are never called by it
    calls = []
    for module in model.modules():
        if isinstance(module, (DWT2D, IDWT2D)):
            module.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        theirs = official(image)
        assert not calls
        ours = model(image)
        assert calls
    assert len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_official_formulation_refuses_sizes_it_cannot_compute():
    official = benchmark.OfficialFormulation(WaveViT('s'))
    with pytest.raises(ValueError, match='divisible by 32'):
        official(torch.randn(1, 3, 100, 96))


def test_convolutional_haar_matches_the_fast_transforms():
    x = torch.randn(2, 8, 12, 16, dtype=torch.float64)
    bands = DWT2D()(x)
    torch.testing.assert_close(benchmark.conv_haar_dwt(x), bands)
    torch.testing.assert_close(benchmark.conv_haar_idwt(bands), IDWT2D()(bands))


def test_wavelet_table_reports_equality_and_every_implementation():
    rows = benchmark.wavelet_table([(1, 4, 16, 24)], repeat=1,
                                   device=torch.device('cpu'))
    (row, ) = rows
    assert row['max_abs_diff'] < 1e-6
    for key in ('wavevit_mm DWT2D+IDWT2D', 'convolutional (official)',
                'pytorch_wavelets'):
        assert row[key] > 0


def test_backbone_table_row_compares_outputs_with_the_official_formulation():
    rate, rows = benchmark.backbone_table(
        ['Wave-ViT-S', 'Wave-ViT-S (official formulation)'], (1, 3, 64, 64),
        repeat=1, device=torch.device('cpu'))
    assert rate > 0
    ours, official = rows
    assert ours['params'] == official['params']
    assert 1e9 < ours['macs'] / (64 * 64 / (800 * 1216)) < 3e11
    assert official['max_abs_diff_to_Wave-ViT-S'] < 1e-4


RECYCLE_PROBE = '''
import resource, sys, torch
from wavevit_mm import benchmark
if sys.argv[1] == "retain":
    assert benchmark.retain_freed_memory()
def step():
    x = torch.ones(16 * 2**20)    # 64 MB: above any mmap threshold of glibc
    return (x * 2).sum()          # and a second one
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def page_faults_of_five_steps(malloc):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, '-c', RECYCLE_PROBE, malloc],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_retained_memory_is_reused_without_page_faults():
    # five steps of two fresh 64 MB tensors: 10 x 16384 pages of 4 kB
    assert page_faults_of_five_steps('default') > 100_000
    assert page_faults_of_five_steps('retain') < 40_000


def test_synthetic_detection_batch_masks_fill_their_boxes():
    inputs, samples = benchmark.synthetic_detection_batch(
        2, (64, 96), num_classes=3, device=torch.device('cpu'))
    assert inputs.shape == (2, 3, 64, 96)
    for sample in samples:
        gt = sample.gt_instances
        assert len(gt) == 8 and gt.labels.max() < 3
        masks = torch.from_numpy(gt.masks.masks)
        for box, mask in zip(gt.bboxes.long(), masks):
            x1, y1, x2, y2 = box.tolist()
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 64
            assert mask.sum() == (x2 - x1) * (y2 - y1)


def test_mask_rcnn_training_steps_are_timed_and_update_the_model():
    import os
    config = os.path.join(os.path.dirname(__file__), '..', 'configs',
                          'mask_rcnn_wavevit_s_coco.py')
    result = benchmark.train_throughput(config, (128, 160), batch_size=1,
                                        repeat=2, device=torch.device('cpu'))
    assert result['images_per_second'] > 0
    assert len(result['losses']) == 3   # warm-up + 2 timed steps
    assert all(torch.isfinite(torch.tensor(result['losses'])))
    assert len(set(result['losses'])) == 3  # same batch, updated weights
