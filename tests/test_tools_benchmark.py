"""tools/analysis_tools/benchmark.py's pieces (measure.py and
official_formulation.py beside it): the official formulation it times
against, the tables it prints, the memory and training-step measurements
(speed itself is measured, never asserted)."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, wavevit_multiply_adds
from wavevit_mm.models import WaveViT
from wavevit_mm.ops import DWT2D, IDWT2D

RIG = os.path.join(ROOT, 'tools', 'analysis_tools')
sys.path.insert(0, RIG)
import measure as benchmark  # noqa: E402
import official_formulation  # noqa: E402


def test_official_formulation_gives_the_same_feature_maps():
    torch.manual_seed(0)
    model = WaveViT('s', out_indices=(0, 2, 3))
    model.init_weights()
    model.eval()
    image = torch.randn(1, 3, 128, 96)
    official = official_formulation.OfficialFormulation(model).eval()
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
    official = official_formulation.OfficialFormulation(WaveViT('s'))
    with pytest.raises(ValueError, match='divisible by 32'):
        official(torch.randn(1, 3, 100, 96))


def test_convolutional_haar_matches_the_fast_transforms():
    x = torch.randn(2, 8, 12, 16, dtype=torch.float64)
    bands = DWT2D()(x)
    torch.testing.assert_close(official_formulation.conv_haar_dwt(x), bands)
    torch.testing.assert_close(official_formulation.conv_haar_idwt(bands),
                               IDWT2D()(bands))


def test_wavelet_table_reports_equality_and_every_implementation():
    rows = benchmark.wavelet_table([(1, 4, 16, 24)], repeat=1,
                                   device=torch.device('cpu'))
    (row, ) = rows
    assert row['max_abs_diff'] < 1e-6
    for key in ('wavevit_mm DWT2D+IDWT2D', 'convolutional (official)',
                'pytorch_wavelets'):
        assert row[key] > 0


@pytest.mark.slow
def test_backbone_table_row_compares_outputs_with_the_official_formulation():
    rate, rows = benchmark.backbone_table(
        ['Wave-ViT-S', 'Wave-ViT-S (official formulation)'], (1, 3, 64, 64),
        repeat=1, device=torch.device('cpu'))
    assert rate > 0
    ours, official = rows
    assert ours['params'] == official['params']
    # the multiply-adds of the convolutions, linear layers and attention,
    # plus normalisation, which mmengine's counter also counts (0.5%)
    expected = wavevit_multiply_adds('s', 64, 64)
    assert expected <= ours['macs'] < 1.01 * expected
    assert official['max_abs_diff_to_Wave-ViT-S'] < 1e-4


RECYCLE_PROBE = '''
import resource, sys, torch
sys.path.insert(0, sys.argv[2])
import measure
if sys.argv[1] == "retain":
    assert measure.retain_freed_memory()
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
    out = subprocess.run([sys.executable, '-c', RECYCLE_PROBE, malloc, RIG],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_retained_memory_is_reused_without_page_faults():
    # five steps of two fresh 64 MB tensors: 10 x 16384 pages of 4 kB
    assert page_faults_of_five_steps('default') > 100_000
    assert page_faults_of_five_steps('retain') < 40_000


@pytest.mark.slow
def test_mask_rcnn_training_steps_are_timed_and_update_the_model():
    config = os.path.join(ROOT, 'configs', 'mask_rcnn_wavevit_s_coco.py')
    result = benchmark.train_throughput(config, (128, 160), batch_size=1,
                                        repeat=2, device=torch.device('cpu'))
    assert result['images_per_second'] > 0
    assert len(result['losses']) == 3   # warm-up + 2 timed steps
    assert all(torch.isfinite(torch.tensor(result['losses'])))
    assert len(set(result['losses'])) == 3  # same batch, updated weights
