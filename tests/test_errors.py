"""How the tools report a mistake in their input: one paragraph and exit
status 1; a bug keeps its traceback."""
import pytest

from wavevit_mm.checkpoint import CheckpointError
from wavevit_mm.errors import (ConfigError, DataError, TrainingDivergedError,
                               one_paragraph, report_errors)


def test_build_prefixes_of_mmengine_registries_are_shortened():
    error = FileNotFoundError(
        'class `CocoDataset` in mmdet/datasets/coco.py: no file x.json')
    assert one_paragraph(error) == 'CocoDataset: no file x.json'


def test_os_errors_say_what_and_which_file():
    error = FileNotFoundError(2, 'No such file or directory', 'a/b.json')
    assert one_paragraph(error) == 'No such file or directory: a/b.json'


def test_dataloader_worker_errors_lose_the_worker_traceback():
    message = ('Caught FileNotFoundError in DataLoader worker process 0.\n'
               'Original Traceback (most recent call last):\n'
               '  File "x.py", line 1, in f\n    open(path)\n'
               "FileNotFoundError: [Errno 2] No such file or directory: "
               "'data/train/1.jpg'\n")
    assert one_paragraph(FileNotFoundError(message)) == (
        "[Errno 2] No such file or directory: 'data/train/1.jpg'")


def test_multi_line_messages_become_one_paragraph():
    assert one_paragraph(DataError('first line\n\n  second')) == \
        'first line second'


@pytest.mark.parametrize('error', [
    CheckpointError('x.pth is empty'), ConfigError('model.backbone: bad'),
    DataError('no images'), FileNotFoundError('no x'),
    TrainingDivergedError('loss is nan')])
def test_user_errors_exit_1_with_one_line_on_stderr(error, capsys):
    with pytest.raises(SystemExit) as exit_:
        with report_errors('train.py'):
            raise error
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert captured.err == f'train.py: error: {error}\n'
    assert captured.out == ''


@pytest.mark.parametrize('error', [RuntimeError('bug'), KeyError('k'),
                                   ValueError('not ours'),
                                   KeyboardInterrupt()])
def test_other_exceptions_keep_their_traceback(error, capsys):
    """The exception itself goes through, its traceback down to the line
    that raised it, and nothing is written in its place."""
    def buggy():
        raise error

    with pytest.raises(type(error)) as raised:
        with report_errors('train.py'):
            buggy()
    assert raised.value is error
    assert raised.traceback[-1].name == 'buggy'
    assert 'raise error' in str(raised.traceback[-1].statement)
    assert capsys.readouterr().err == ''
