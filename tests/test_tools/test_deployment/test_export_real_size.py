"""One shipped config at its real size, exported as a user runs the tool
(a process of its own) with the weights the config initialises: UperNet
Wave-ViT-S at its 512x512 crop size, the cheapest of the shipped exports
(the others: tools/deployment/export_shipped_configs.py, docs/deployment.md).
"""
import os
import sys

import pytest
import torch
from mmseg.structures import SegDataSample

from deployment_models import run
from helpers import ROOT
from toy_runs import run_process, tool
from wavevit_mm.tools import build_model, load_config
from wavevit_mm.tools.deployment import check_input, synthetic_image

pytestmark = pytest.mark.slow

CONFIG = os.path.join(ROOT, 'configs', 'upernet_wavevit_s_ade20k.py')
SIZE = (512, 512)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The config's model as it initialises it, saved, then exported by
    pytorch2onnx.py; the model, the config, the file, the tool's run."""
    folder = tmp_path_factory.mktemp('real_size')
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg)
    checkpoint = folder / 'upernet.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    out = folder / 'upernet.onnx'
    result = run_process([sys.executable, tool('deployment/pytorch2onnx.py'),
                          CONFIG, checkpoint, '--out', out],
                         cwd=str(folder))
    return model, cfg, str(out), result


def test_the_tool_prints_its_table_and_its_own_lines_only(exported):
    _, _, out, result = exported
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(out)
    (row, ) = [line for line in result.stdout.splitlines()
               if line.startswith('| upernet_wavevit_s_ade20k | segmentor, '
                                  'fixed | 512x512 |')]
    agreement = float(row.split('pixel agreement ')[1].split('%')[0])
    assert agreement >= 99.9
    assert 'Checked on a picture of shapes the package draws' in (
        result.stdout)
    # its own lines: the export, the check, the table, the file written
    assert len(result.stdout.splitlines()) <= 8
    assert 'Initialized by' not in result.stdout + result.stderr


def test_the_file_gives_mmsegs_logits_on_another_picture(exported):
    """mmseg's own predict on the model against the file, on a picture
    the check did not see."""
    model, cfg, out, _ = exported
    x = check_input(model, cfg, synthetic_image(seed=1), SIZE)
    sample = SegDataSample(metainfo=dict(img_shape=SIZE, ori_shape=SIZE))
    with torch.no_grad():
        expected = model.predict(x, [sample])[0]
    logits = run(out, x)[0][0]
    reference = expected.seg_logits.data
    assert logits.shape == reference.shape == (150, *SIZE)
    difference = (logits - reference).abs().max() / reference.abs().max()
    assert difference < 1e-3
    agreement = logits.argmax(0) == expected.pred_sem_seg.data[0]
    assert agreement.double().mean() >= 0.999
