"""tools/analysis_tools/benchmark.py and the benchmarking/ modules beside
it: the official formulation it times against, the tables it prints, the
precisions, the one backbone training step, the memory, training-step and
operator-count measurements, the JSON of a run (speed itself is measured,
never asserted)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY, wavevit_multiply_adds
from wavevit_mm.errors import InputError
from wavevit_mm.models import WaveViT
from wavevit_mm.ops import DWT2D, IDWT2D

RIG = os.path.join(ROOT, 'tools', 'analysis_tools')
sys.path.insert(0, RIG)
from benchmarking import (backbones, detector, haar, latency,  # noqa: E402
                          official_formulation, operators, report, timing)


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


@pytest.mark.parametrize('size', [(12, 16), (7, 9), (1, 5)])
def test_reference_haar_transforms_match_pytorch_wavelets(size):
    """The reference network's convolutional transforms against
    pytorch_wavelets in 'zero' mode: odd sides zero-padded at the
    bottom/right before the DWT, the inverse cropped back. pytorch_wavelets
    keeps its filters as float32 values (1e-7 from the float64 ones): the
    transforms agree to 1e-6, and the reference reconstructs its input to
    1e-12."""
    from pytorch_wavelets import DWTForward, DWTInverse
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    low, (high, ) = DWTForward(J=1, wave='haar', mode='zero').double()(x)
    oracle = torch.cat([low] + list(high.unbind(2)), dim=1)
    bands = official_formulation.conv_haar_dwt(x)
    torch.testing.assert_close(bands, oracle, atol=1e-6, rtol=0)
    channels = x.shape[1]
    inverse = DWTInverse(wave='haar', mode='zero').double()((
        bands[:, :channels], [torch.stack(bands[:, channels:].split(
            channels, dim=1), dim=2)]))[..., :size[0], :size[1]]
    reconstructed = official_formulation.conv_haar_idwt(bands, size)
    torch.testing.assert_close(reconstructed, inverse, atol=1e-6, rtol=0)
    torch.testing.assert_close(reconstructed, x, atol=1e-12, rtol=0)


def test_wavelet_table_reports_equality_and_every_implementation():
    rows = haar.wavelet_table([(1, 4, 16, 24)], repeat=1,
                              device=torch.device('cpu'))
    (row, ) = rows
    assert row['max_abs_diff'] < 1e-6
    for key in ('wavevit_mm DWT2D+IDWT2D', 'wavevit_mm, torch.compile',
                'convolutional (official)', 'pytorch_wavelets'):
        assert row[key] > 0


@pytest.mark.slow
def test_backbone_table_row_compares_outputs_with_the_official_formulation():
    rates, rows = latency.backbone_table(
        ['Wave-ViT-S', 'Wave-ViT-S (official formulation)'], [1], (64, 64),
        repeat=1, device=torch.device('cpu'))
    assert rates['fp32'] > 0
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
from benchmarking import memory
if sys.argv[1] == "retain":
    assert memory.retain_freed_memory()
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
    result = detector.train_throughput(config, (128, 160), batch_size=1,
                                       repeat=2, device=torch.device('cpu'))
    assert result['images_per_second'] > 0
    assert len(result['losses']) == 3   # warm-up + 2 timed steps
    assert all(torch.isfinite(torch.tensor(result['losses'])))
    assert len(set(result['losses'])) == 3  # same batch, updated weights


CPU = torch.device('cpu')


def record_linear_output_dtypes(model):
    """The dtype of every nn.Linear output the model computes."""
    dtypes = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(
                lambda module, args, out: dtypes.append(out.dtype))
    return dtypes


def test_bf16_runs_the_backbone_under_autocast_and_fp32_without_tf32():
    model = WaveViT(TINY).eval()
    dtypes = record_linear_output_dtypes(model)
    image = torch.randn(1, 3, 64, 64)
    tf32 = torch.backends.cudnn.allow_tf32
    with torch.no_grad(), timing.precision('bf16', CPU):
        model(image)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    with torch.no_grad(), timing.precision('fp32', CPU):
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
        model(image)
    assert dtypes and set(dtypes) == {torch.float32}
    assert torch.backends.cudnn.allow_tf32 == tf32  # restored


@pytest.mark.parametrize('dtype', ['tf32', 'fp16'])
def test_precisions_the_cpu_cannot_run_are_refused(dtype):
    with pytest.raises(InputError, match=f'--dtype {dtype} needs a CUDA'):
        with timing.precision(dtype, CPU):
            pass


class TwoMaps(torch.nn.Module):
    """A backbone's shape of output: a tuple of feature maps."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3, bias=False)

    def forward(self, x):
        y = self.linear(x)
        return y, 2 * y


def test_training_step_backpropagates_the_sum_of_the_outputs():
    model = TwoMaps()
    image = torch.randn(5, 4)
    backbones.train_step(model, image)
    # d/dW of sum(y) + sum(2y), y = x W^T: 3 * x.sum(0) in every row
    expected = 3 * image.sum(0).expand(3, 4)
    torch.testing.assert_close(model.linear.weight.grad, expected)
    backbones.train_step(model, image, dtype='bf16')
    # gradients accumulate, as in training; the bf16 forward rounds the
    # input and the gradient: at most 0.48% of the gradient's bound
    # 3 * max sum|x| over 300 random inputs (measured); 1.2% allowed
    bound = 3 * image.abs().sum(0).max().item()
    torch.testing.assert_close(model.linear.weight.grad, 2 * expected,
                               atol=0.012 * bound, rtol=0)


def test_backbone_is_built_with_checkpointing_where_asked():
    def flags(model):
        return {m.with_cp for m in model.modules() if hasattr(m, 'with_cp')}
    assert flags(backbones.build_backbone('Wave-ViT-S')) == {False}
    assert flags(backbones.build_backbone('Wave-ViT-S', with_cp=True)) == {
        True}


def test_table_prints_measured_rows_then_why_the_others_were_not(capsys):
    rows = [dict(name='A', value=1),
            report.failed_row(dict(name='B', dtype='bf16'),
                              ImportError('no module named b'), CPU)]
    report.print_markdown(['backbone', 'value'], rows,
                          lambda row: [row['name'], str(row['value'])])
    assert capsys.readouterr().out.splitlines() == [
        '| backbone | value |', '|---|---|', '| A | 1 |',
        'B bf16: not measured: ImportError: no module named b']


def test_backbone_training_step_is_timed_with_backward_and_no_cpu_memory():
    model = WaveViT(TINY)
    dtypes = record_linear_output_dtypes(model)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(image)
    per_forward = len(dtypes)
    dtypes.clear()
    result = latency.time_train_step(model, image, repeat=2, device=CPU,
                                     dtype='bf16')
    assert 0 < result['min'] <= result['median']
    assert result['peak_mem'] is None  # the allocator's peak is CUDA's
    # one warm-up and two timed steps, each forward in bfloat16
    assert len(dtypes) == 3 * per_forward
    assert set(dtypes) == {torch.bfloat16}
    # backward reached every weight
    assert all(p.grad is not None for p in model.parameters())


def test_aten_operators_of_one_call_are_counted():
    a, b, c = torch.ones(3), torch.ones(3), torch.ones(3)
    assert operators.count_aten_ops(lambda: torch.add(a, b)) == 1
    assert operators.count_aten_ops(lambda: a.add(b).mul(c)) == 2
    # nested ones too: ones is empty, then fill_
    assert operators.count_aten_ops(lambda: torch.ones(3)) == 3


def test_backbone_issues_fewer_operators_in_eval_than_in_training():
    (row, ) = operators.operator_counts(['Wave-ViT-S'], (1, 3, 64, 64), CPU)
    assert row['name'] == 'Wave-ViT-S' and 'error' not in row
    # the backward pass adds at least one operator per differentiable one
    assert 0 < 1.5 * row['eval'] < row['train']


@pytest.mark.slow
def test_benchmark_json_holds_every_figure_of_the_run(tmp_path):
    out = tmp_path / 'figures.json'
    run = subprocess.run(
        [sys.executable, os.path.join(RIG, 'benchmark.py'), '--device', 'cpu',
         '--backbones', 'Wave-ViT-S', '--shape', '64', '64',
         '--batch-size', '2', '1', '--dtypes', 'fp32', 'bf16', '--repeat',
         '1', '--wavelet-shape', '1', '4', '16', '24',
         '--train-step-shape', '1', '64', '64',
         '--count-ops', '--count-shape', '1', '3', '64', '64', '--json',
         str(out)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    figures = json.loads(out.read_text())
    assert figures['environment']['torch'] == torch.__version__
    assert set(figures['matmul_rates']) == {'fp32', 'bf16'}
    (haar, ) = figures['wavelets']
    assert haar['shape'] == [1, 4, 16, 24] and haar['max_abs_diff'] < 1e-6
    rows = figures['backbones']
    assert sorted((r['dtype'], r['batch']) for r in rows) == [
        ('bf16', 1), ('bf16', 2), ('fp32', 1), ('fp32', 2)]
    assert all(r['name'] == 'Wave-ViT-S' and r['median'] > 0 for r in rows)
    steps = figures['train_step']
    assert [(r['dtype'], r['input']) for r in steps] == [
        ('fp32', [1, 3, 64, 64]), ('bf16', [1, 3, 64, 64])]
    assert all(r['median'] > 0 and r['peak_mem'] is None for r in steps)
    (counts, ) = figures['operator_counts']
    assert 0 < counts['eval'] < counts['train']
    # the same figures as the printed table
    assert '| Wave-ViT-S | bf16 | 2 |' in run.stdout


@pytest.mark.onnx_export
@pytest.mark.slow
def test_onnxruntime_table_times_both_models_with_the_same_outputs():
    """On the toy RetinaNet (the table's rows are the detector of a config
    and its backbone; Wave-ViT-S's by default)."""
    pytest.importorskip('onnxruntime')  # the deploy extras
    from benchmarking import onnx_runtime
    config = os.path.join(ROOT, 'projects', 'toy_shapes', 'configs',
                          'retinanet_wavevit_toy_coco.py')
    rows = onnx_runtime.onnxruntime_table((64, 96), (60, 90), repeat=1,
                                          threads=2, config=config)
    assert [(row['name'], row['variant'], row['input']) for row in rows] == [
        ('retinanet_wavevit_toy_coco backbone', 'fused', [1, 3, 64, 96]),
        ('retinanet_wavevit_toy_coco', 'fused', [1, 3, 64, 96])]
    for row in rows:
        assert 'error' not in row
        assert row['pytorch_min'] > 0 and row['ort_min'] > 0
        assert row['ratio_min'] == row['ort_min'] / row['pytorch_min']
        assert row['max_rel_diff'] < 1e-4
        assert 0 <= row['max_abs_diff'] < 1e-3
        assert row['threads'] == 2
    assert torch.get_num_threads() == THREADS  # restored


THREADS = torch.get_num_threads()


class GeluBlock(torch.nn.Module):
    """A transformer FFN's patterns: Linear, GELU, residual, LayerNorm."""

    part = 'block'
    output_names = ['out']

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x):
        x = x.flatten(2)  # (1, 3, 8): 3 tokens of 8 channels
        return self.norm(x + torch.nn.functional.gelu(self.fc(x)))


@pytest.mark.onnx_export
@pytest.mark.slow
def test_fused_onnx_export_has_the_runtime_gelu_and_a_plain_layernorm(
        tmp_path):
    pytest.importorskip('onnxruntime')  # the deploy extras
    from benchmarking import onnx_runtime
    module = GeluBlock().eval()
    files = onnx_runtime.export_variants(module, (2, 4), ['fixed', 'fused'],
                                         str(tmp_path))
    import onnx
    ops = {variant: {node.op_type for node in onnx.load(path).graph.node}
           for variant, (path, _) in files.items()}
    assert 'Erf' in ops['fixed'] and 'Gelu' not in ops['fixed']
    # a bias before the GELU goes into it where the Linear is MatMul + Add
    assert ops['fused'] & {'Gelu', 'BiasGelu'}
    # the residual Add and the LayerNorm stay two nodes
    assert 'SkipLayerNormalization' not in ops['fused']
    assert 'LayerNormalization' in ops['fused']
    assert 'Erf' not in ops['fused']
    from wavevit_mm.tools.deployment import onnx_session, run_session
    image = torch.randn(1, 3, 2, 4)
    with torch.no_grad():
        expected = module(image)
    for path, _ in files.values():
        (out, ) = run_session(onnx_session(path, 1), image)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_detector_input_is_padded_as_its_preprocessor_pads():
    from benchmarking import onnx_runtime
    assert onnx_runtime.padded((800, 1333), 32) == (800, 1344)
    assert onnx_runtime.padded((64, 96), 32) == (64, 96)


def test_onnxruntime_flag_without_onnxruntime_is_one_paragraph(
        monkeypatch, capsys):
    import benchmark
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # ImportError
    with pytest.raises(SystemExit) as exit:
        benchmark.main(['--onnxruntime', '--skip-wavelets',
                        '--skip-backbones'])
    assert exit.value.code == 1
    captured = capsys.readouterr()
    (line, ) = captured.err.splitlines()
    assert line.startswith('benchmark.py: error: Exporting to ONNX')
    assert 'pip install -e .[deploy]' in line
    assert 'ONNX Runtime against' not in captured.out
