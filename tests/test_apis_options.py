"""wavevit_mm.apis.options, what tools/train.py sets up from its switches
before a run: the checkpoint --resume picks (never one that does not read
back), load_from read first, --amp."""
import time

import pytest
import torch
from mmengine.config import Config

from wavevit_mm.apis import apply_train_options, find_resume_checkpoint
from wavevit_mm.checkpoint import CheckpointError


def checkpoint(folder, name, broken=False):
    path = folder / name
    torch.save(dict(state_dict={'w': torch.zeros(64)}, meta=dict(epoch=1)),
               path)
    if broken:  # cut short, as by a process killed while writing it
        path.write_bytes(path.read_bytes()[:200])
    time.sleep(0.01)  # distinct modification times
    return str(path)


def point_to(folder, path):
    (folder / 'last_checkpoint').write_text(path)


# ------------------------------------------------------------ --resume

def test_resume_picks_the_last_checkpoint(tmp_path):
    checkpoint(tmp_path, 'epoch_1.pth')
    last = checkpoint(tmp_path, 'epoch_2.pth')
    point_to(tmp_path, last)
    assert find_resume_checkpoint(str(tmp_path)) == last


def test_resume_never_picks_a_truncated_checkpoint(tmp_path,
                                                    warnings_logged):
    good = checkpoint(tmp_path, 'epoch_2.pth')
    broken = checkpoint(tmp_path, 'epoch_3.pth', broken=True)
    point_to(tmp_path, broken)
    checkpoint(tmp_path, '.epoch_4.pth.tmp')  # temporary: no candidate
    assert find_resume_checkpoint(str(tmp_path)) == good
    warning, = warnings_logged
    assert f'{broken} could not be read' in warning
    assert f'Resuming from {good} instead' in warning


@pytest.mark.parametrize('pointer', ['missing', 'empty', 'deleted_file'])
def test_resume_without_a_usable_pointer_takes_the_newest_readable(
        tmp_path, pointer):
    checkpoint(tmp_path, 'epoch_1.pth')
    newest = checkpoint(tmp_path, 'epoch_10.pth')  # numbers, not names
    checkpoint(tmp_path, 'epoch_9.pth')
    if pointer == 'empty':
        point_to(tmp_path, '')
    elif pointer == 'deleted_file':
        point_to(tmp_path, str(tmp_path / 'epoch_11.pth'))
    assert find_resume_checkpoint(str(tmp_path)) == newest


def test_resume_with_only_broken_checkpoints_is_an_error(tmp_path):
    broken = checkpoint(tmp_path, 'iter_500.pth', broken=True)
    (tmp_path / 'iter_1000.pth').write_bytes(b'')
    with pytest.raises(CheckpointError) as error:
        find_resume_checkpoint(str(tmp_path))
    message = str(error.value)
    assert message.startswith(f'Cannot resume from {tmp_path}: no checkpoint '
                              f'there reads back.')
    assert broken in message and 'iter_1000.pth is empty' in message
    assert '\n' not in message


def test_resume_in_an_empty_work_dir_trains_from_the_start(tmp_path):
    cfg = Config(dict(work_dir=str(tmp_path / 'new')))
    apply_train_options(cfg, resume='auto')
    assert cfg.load_from is None and cfg.resume is False


def test_resume_auto_sets_the_picked_checkpoint(tmp_path):
    last = checkpoint(tmp_path, 'epoch_3.pth')
    cfg = Config(dict(work_dir=str(tmp_path)))
    apply_train_options(cfg, resume='auto')
    assert cfg.load_from == last and cfg.resume is True


def test_load_from_is_read_before_the_run(tmp_path):
    cfg = Config(dict(work_dir=str(tmp_path),
                      load_from=str(tmp_path / 'nowhere.pth')))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        apply_train_options(cfg)


# ---------------------------------------------------------------- --amp

def test_amp_switch_selects_the_cpu_wrapper_without_a_gpu():
    cfg = Config(dict(optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))))
    apply_train_options(cfg, amp=True)
    if torch.cuda.is_available():
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    else:
        assert cfg.optim_wrapper.type == 'CPUAutocastOptimWrapper'
        assert 'loss_scale' not in cfg.optim_wrapper


def gpu_amp(monkeypatch, bf16, **wrapper):
    """The optim_wrapper ``--amp`` gives on a GPU with or without bfloat16
    support (the GPU's answers stubbed: the switch only reads them)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda: bf16)
    cfg = Config(dict(optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4),
        **wrapper)))
    apply_train_options(cfg, amp=True)
    return cfg.optim_wrapper


def test_amp_on_a_gpu_with_bfloat16_needs_no_loss_scaling(monkeypatch):
    wrapper = gpu_amp(monkeypatch, bf16=True)
    assert wrapper.type == 'AmpOptimWrapper'
    assert wrapper.dtype == 'bfloat16'
    assert wrapper.loss_scale == dict(enabled=False)


def test_amp_on_an_older_gpu_is_float16_with_dynamic_loss_scaling(
        monkeypatch):
    wrapper = gpu_amp(monkeypatch, bf16=False)
    assert (wrapper.type, wrapper.dtype, wrapper.loss_scale) == (
        'AmpOptimWrapper', 'float16', 'dynamic')


def test_amp_keeps_the_dtype_and_loss_scale_the_config_states(monkeypatch):
    wrapper = gpu_amp(monkeypatch, bf16=True, dtype='float16',
                      loss_scale=512.)
    assert (wrapper.dtype, wrapper.loss_scale) == ('float16', 512.)
    wrapper = gpu_amp(monkeypatch, bf16=True, dtype='float16')
    assert wrapper.loss_scale == 'dynamic'
