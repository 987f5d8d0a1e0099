"""Attacks on the ways a checkpoint enters the process, each refused: the
model-zoo schemes and storage backends, the download cache, the allow-list's
HistoryBuffer, the work-dir lock and the file writers. Servers run on
127.0.0.1 only; every process started here is ended here."""
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio.backends import PetrelBackend
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

from helpers import ROOT, RunsCode
from wavevit_mm.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                   atomic_write, load_checkpoint)
from wavevit_mm.checkpoint import allow_list, url_cache
from wavevit_mm.engine.hooks import work_dir_lock_hook
from wavevit_mm.engine.hooks.work_dir_lock_hook import (lock_work_dir,
                                                        unlock_work_dir)
from wavevit_mm.errors import InputError, WorkDirInUseError

GOOD = {'state_dict': {'w': torch.arange(4.)}}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=['torch', 'restricted'])
def unpickler(request, monkeypatch):
    """Both readers: torch's weights-only unpickler with the allow-list
    registered (torch 2.6+), and the restricted unpickler older torch uses."""
    if request.param == 'restricted':
        monkeypatch.setattr(allow_list, 'REGISTERED_WITH_TORCH', False)
    return request.param


@pytest.fixture
def payload(tmp_path):
    """A checkpoint that runs ``touch MARKER`` when unpickled, and the
    marker."""
    marker = tmp_path / 'payload_ran'
    return dict(state_dict={'w': torch.zeros(2)},
                meta=RunsCode(f'touch {marker}')), marker


def no_traceback_paragraph(error):
    message = str(error.value)
    assert '\n' not in message and 'Traceback' not in message
    return message


# ------------------------------------------------- model zoo and storage

@pytest.fixture
def zoo(tmp_path, monkeypatch, server):
    """mmengine's open-mmlab:// table extended (``$MMENGINE_HOME/
    open_mmlab.json``, mmengine's own way) with names served here."""
    base, served, requests = server
    home = tmp_path / 'mmengine_home'
    home.mkdir()
    monkeypatch.setenv('MMENGINE_HOME', str(home))

    def add(name, target):
        table = home / 'open_mmlab.json'
        entries = json.loads(table.read_text()) if table.exists() else {}
        entries[name] = target
        table.write_text(json.dumps(entries))
    return add, base, served, requests


def test_zoo_name_of_a_malicious_file_is_refused(zoo, payload):
    add, base, served, _ = zoo
    torch.save(payload[0], served / 'evil.pth')
    add('evil_net', f'{base}/evil.pth')
    with pytest.raises(UnsafeCheckpointError, match='posix.system'):
        CheckpointLoader.load_checkpoint('open-mmlab://evil_net')
    assert not payload[1].exists()


def test_zoo_name_of_a_local_file_is_read_weights_only(zoo, payload,
                                                       tmp_path):
    add, *_ = zoo
    torch.save(payload[0], tmp_path / 'mmengine_home' / 'local.pth')
    add('local_net', 'local.pth')  # mmengine: a file in its home
    with pytest.raises(UnsafeCheckpointError, match='posix.system'):
        CheckpointLoader.load_checkpoint('openmmlab://local_net')
    assert not payload[1].exists()


def test_refused_download_does_not_poison_a_zoo_name(zoo, payload,
                                                     tmp_path):
    """A refused file under a stock model's name, then that model by its
    zoo name: the zoo's own (intact) file is loaded, never the refused
    one, wherever torch hub would have cached it."""
    add, base, served, _ = zoo
    (served / 'evil').mkdir()
    (served / 'pretrain').mkdir()
    torch.save(GOOD, served / 'pretrain' / 'good.pth')
    name = f'resnet50_v1c-{sha256(served / "pretrain" / "good.pth")[:8]}.pth'
    os.rename(served / 'pretrain' / 'good.pth', served / 'pretrain' / name)
    torch.save(payload[0], served / 'evil' / name)
    with pytest.raises(CheckpointError):
        load_checkpoint(f'{base}/evil/{name}')
    # where torch hub keeps files by name alone
    hub = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(payload[0], hub / name)
    add('resnet50_v1c', f'{base}/pretrain/{name}')
    checkpoint = CheckpointLoader.load_checkpoint('open-mmlab://resnet50_v1c')
    assert torch.equal(checkpoint['state_dict']['w'], GOOD['state_dict']['w'])
    assert not payload[1].exists()


def test_unknown_zoo_name_and_torchvision_without_it_are_one_paragraph(zoo):
    with pytest.raises(CheckpointError,
                       match="names no model mmengine knows under "
                       "open-mmlab://") as error:
        CheckpointLoader.load_checkpoint('open-mmlab://no_such_net')
    no_traceback_paragraph(error)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(CheckpointError, match='needs torchvision'):
            CheckpointLoader.load_checkpoint('torchvision://resnet50')


class FolderAsBucket(LocalBackend):
    """mmengine's local backend answering ``s3://bucket/NAME`` with the
    file NAME of a folder (a storage service for the test)."""

    folder = ''

    def get(self, filepath):
        return super().get(os.path.join(
            self.folder, str(filepath).split('://', 1)[1].split('/', 1)[1]))


@pytest.fixture
def bucket(tmp_path):
    FolderAsBucket.folder = str(tmp_path)
    register_backend('petrel', FolderAsBucket, force=True)
    try:
        yield tmp_path
    finally:
        register_backend('petrel', PetrelBackend, force=True)


@pytest.mark.parametrize('prefix', ['s3://', 'petrel://', 'open-mmlab:s3://'])
def test_storage_is_read_weights_only_whatever_the_environment(
        bucket, payload, monkeypatch, unpickler, prefix):
    """mmengine's own s3/petrel loader calls torch.load without
    weights_only, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns into
    full unpickling."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    torch.save(payload[0], bucket / 'evil.pth')
    torch.save(GOOD, bucket / 'good.pth')
    with pytest.raises(UnsafeCheckpointError,
                       match=f'Refusing to load {prefix}bucket/evil.pth: '):
        CheckpointLoader.load_checkpoint(f'{prefix}bucket/evil.pth')
    assert not payload[1].exists()
    good = CheckpointLoader.load_checkpoint(f'{prefix}bucket/good.pth')
    assert torch.equal(good['state_dict']['w'], GOOD['state_dict']['w'])


@pytest.mark.parametrize('url', ['pavi://model/1', 'ftp://127.0.0.1/a.pth',
                                 'file:///tmp/a.pth'])
def test_other_schemes_are_refused_in_one_paragraph(url):
    with pytest.raises(CheckpointError,
                       match=f'Refusing to read {url}: '
                       f'{url.split(":")[0]}:// is not a source') as error:
        CheckpointLoader.load_checkpoint(url)
    no_traceback_paragraph(error)


def test_upper_case_http_is_downloaded(server):
    base, served, requests = server
    torch.save(GOOD, served / 'good.pth')
    url = base.replace('http://', 'HTTP://') + '/good.pth'
    checkpoint = CheckpointLoader.load_checkpoint(url)
    assert torch.equal(checkpoint['state_dict']['w'], GOOD['state_dict']['w'])
    assert requests == ['/good.pth']


# ------------------------------------------------------- download cache

def test_each_url_has_its_own_cache_entry(server):
    base, served, _ = server
    for folder, value in (('a', 1.), ('b', 2.)):
        (served / folder).mkdir()
        torch.save({'w': torch.tensor(value)}, served / folder / 'model.pth')
    assert load_checkpoint(f'{base}/a/model.pth')['w'] == 1.
    assert load_checkpoint(f'{base}/b/model.pth')['w'] == 2.


def test_a_name_with_a_hash_is_checked_against_the_file(server, tmp_path):
    base, served, _ = server
    torch.save(GOOD, served / 'model-00000000.pth')
    url = f'{base}/model-00000000.pth'
    with pytest.raises(CheckpointError,
                       match=r'has sha256 [0-9a-f]{8}, not the 00000000 its '
                       r'name promises') as error:
        load_checkpoint(url)
    no_traceback_paragraph(error)
    assert not os.path.exists(url_cache.cache_path(url))
    right = f'model-{sha256(served / "model-00000000.pth")[:8]}.pth'
    os.rename(served / 'model-00000000.pth', served / right)
    assert torch.equal(load_checkpoint(f'{base}/{right}')['state_dict']['w'],
                       GOOD['state_dict']['w'])


def test_a_cut_download_is_not_kept(server):
    base, served, _ = server
    torch.save(GOOD, served / 'model.pth')
    size = (served / 'model.pth').stat().st_size
    url = f'{base}/cut/model.pth'
    for _ in range(2):  # the second try downloads again
        with pytest.raises(CheckpointError,
                           match=f'ended after {size // 2} of its {size} '
                           f'bytes'):
            load_checkpoint(url)
        assert not os.listdir(os.path.dirname(url_cache.cache_path(url)))


def test_a_refused_download_is_removed_from_the_cache(server, payload):
    base, served, requests = server
    torch.save(payload[0], served / 'model.pth')
    url = f'{base}/model.pth'
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(url)
    assert not os.path.exists(url_cache.cache_path(url))
    torch.save(GOOD, served / 'model.pth')  # the server is mended
    assert torch.equal(load_checkpoint(url)['state_dict']['w'],
                       GOOD['state_dict']['w'])
    assert requests == ['/model.pth', '/model.pth']
    assert not payload[1].exists()


def test_a_download_over_the_size_limit_is_refused(server, monkeypatch):
    base, served, _ = server
    torch.save(GOOD, served / 'model.pth')
    monkeypatch.setattr(url_cache, 'MAX_DOWNLOAD_BYTES', 100)
    url = f'{base}/model.pth'
    with pytest.raises(CheckpointError,
                       match=f'{url} is larger than the 100 bytes a '
                       f'checkpoint may be downloaded with'):
        load_checkpoint(url)
    assert not os.path.exists(url_cache.cache_path(url))


def test_a_url_naming_no_file_writes_nothing(server, tmp_path):
    base, _, _ = server
    for url in (f'{base}/evil/..', f'{base}/', f'{base}/a/%2E%2E'):
        with pytest.raises(CheckpointError, match='names no file'):
            load_checkpoint(url)
    assert not (tmp_path / 'torch_home').exists()


def test_a_long_name_downloads(server):
    base, served, _ = server
    name = 'w' * 240 + '.pth'
    torch.save(GOOD, served / name)
    assert torch.equal(load_checkpoint(f'{base}/{name}')['state_dict']['w'],
                       GOOD['state_dict']['w'])


# --------------------------------------------------------- HistoryBuffer

def save_buffer_with(path, monkeypatch, **state):
    """A HistoryBuffer pickled by mmengine's own class with the state
    given (as a file written to attack it would hold)."""
    buffer = HistoryBuffer([1.0, 3.0], [1, 1], max_length=10)
    crafted = dict(vars(buffer), **state)
    with monkeypatch.context() as patch:
        patch.setattr(HistoryBuffer, '__getstate__', lambda self: crafted)
        torch.save(dict(message_hub=dict(log=buffer)), path)


@pytest.mark.parametrize('state', [
    dict(statistics_methods={'mean': HistoryBuffer.max}),
    dict(statistics_methods={'median': HistoryBuffer.max}),
    dict(statistics_methods={}, mean=HistoryBuffer.max),
], ids=['mean_is_max', 'new_name', 'extra_attribute'])
def test_a_buffer_cannot_change_the_statistics_of_the_process(
        tmp_path, monkeypatch, unpickler, state):
    path = tmp_path / 'checkpoint.pth'
    save_buffer_with(path, monkeypatch, **state)
    with pytest.raises(UnsafeCheckpointError,
                       match=f'Refusing to load {path}: it holds a '
                       f'HistoryBuffer ') as error:
        load_checkpoint(str(path))
    no_traceback_paragraph(error)
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean
    assert 'median' not in HistoryBuffer._statistics_methods
    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    assert buffer.statistics('mean') == 2.0


def test_a_buffer_as_mmengine_writes_it_loads(tmp_path, unpickler):
    written = HistoryBuffer([1.0, 3.0], [1, 1])
    path = tmp_path / 'checkpoint.pth'
    torch.save(dict(log=written), path)
    buffer = load_checkpoint(str(path))['log']
    assert type(buffer) is HistoryBuffer
    assert buffer.statistics('mean') == 2.0 and buffer.max() == 3.0


def test_restricted_unpickler_reads_runner_checkpoints(runner_checkpoint,
                                                       monkeypatch):
    monkeypatch.setattr(allow_list, 'REGISTERED_WITH_TORCH', False)
    checkpoint = load_checkpoint(runner_checkpoint)
    lr = checkpoint['message_hub']['log_scalars']['train/lr']
    assert type(lr) is HistoryBuffer
    assert lr.mean() == pytest.approx(5.5e-4)


@pytest.mark.parametrize('legacy', [False, True])
def test_restricted_unpickler_refuses_a_payload(tmp_path, payload, legacy,
                                                monkeypatch):
    monkeypatch.setattr(allow_list, 'REGISTERED_WITH_TORCH', False)
    path = str(tmp_path / 'checkpoint.pth')
    torch.save(payload[0], path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match='posix.system'):
        load_checkpoint(path)
    assert not payload[1].exists()


def test_restricted_unpickler_is_the_fallback_where_torch_lacks_aliases():
    """torch 2.6+ takes (object, name) pairs: the list is registered with
    it; the check that decides this leaves torch's list unchanged when it
    fails."""
    if not hasattr(torch.serialization, 'add_safe_globals'):
        assert not allow_list.REGISTERED_WITH_TORCH
        return
    assert allow_list.REGISTERED_WITH_TORCH
    assert set(map(repr, allow_list.SAFE_GLOBALS)) <= set(
        map(repr, torch.serialization.get_safe_globals()))
    probe = io.BytesIO()
    torch.save(HistoryBuffer.mean, probe)
    probe.seek(0)
    assert torch.load(probe, weights_only=True) is HistoryBuffer.mean


# ------------------------------------------------------------- the lock

HOLD = textwrap.dedent('''
    import os, sys, time
    from wavevit_mm.engine.hooks import lock_work_dir
    lock_work_dir(sys.argv[1])
    if sys.argv[2] == 'fork' and os.fork() == 0:
        time.sleep(120)  # a DataLoader worker, outliving its parent
        os._exit(0)
    print('held', flush=True)
    time.sleep(120)
''')


def hold(folder, mode='plain'):
    process = subprocess.Popen(
        [sys.executable, '-c', HOLD, str(folder), mode], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
        text=True)
    assert process.stdout.readline().strip() == 'held'
    return process


def test_the_lock_file_is_never_followed_through_a_link(tmp_path):
    precious = tmp_path / 'precious.txt'
    precious.write_text('keep me')
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / 'train.lock').symlink_to(precious)
    with pytest.raises(InputError, match='train.lock is a symbolic link'):
        lock_work_dir(str(work_dir))
    assert precious.read_text() == 'keep me'


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    work_dir = tmp_path / 'work'
    parent = hold(work_dir, 'fork')
    child_pids = subprocess.run(['pgrep', '-P', str(parent.pid)],
                                capture_output=True, text=True).stdout.split()
    try:
        with pytest.raises(WorkDirInUseError, match=f'pid {parent.pid} '):
            lock_work_dir(str(work_dir))
        parent.kill()
        parent.wait()
        assert child_pids  # the child lives on
        lock_work_dir(str(work_dir))
        unlock_work_dir(str(work_dir))
    finally:
        parent.kill()
        parent.wait()
        for pid in child_pids:
            os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(params=['system lock', 'no fcntl'])
def locking(request, monkeypatch):
    """The system's lock, and the owner record alone (a system without
    fcntl or msvcrt)."""
    if request.param == 'no fcntl':
        monkeypatch.setattr(work_dir_lock_hook, 'fcntl', None)
        monkeypatch.setattr(work_dir_lock_hook, 'msvcrt', None)
    return request.param


def test_a_live_holder_is_refused_and_a_dead_one_taken_over(
        tmp_path, locking, warnings_logged):
    work_dir = tmp_path / 'work'
    holder = hold(work_dir)
    try:
        with pytest.raises(WorkDirInUseError, match=f'pid {holder.pid} '):
            lock_work_dir(str(work_dir))
    finally:
        holder.kill()
        holder.wait()
    lock_work_dir(str(work_dir))
    assert any(f'pid {holder.pid} ' in message and 'taking it over' in
               message for message in warnings_logged)
    assert json.loads((work_dir / 'train.lock').read_text())['pid'] == \
        os.getpid()
    unlock_work_dir(str(work_dir))
    assert (work_dir / 'train.lock').read_text() == ''


def test_the_package_imports_without_fcntl():
    result = subprocess.run(
        [sys.executable, '-c', 'import sys; sys.modules["fcntl"] = None; '
         'import wavevit_mm; print("imported")'], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
        text=True, timeout=300)
    assert result.stdout.strip() == 'imported', result.stderr[-2000:]


def test_the_checkpoint_folder_of_out_dir_is_locked_too(tmp_path):
    """Two work dirs of the same name with one out_dir would write the
    same checkpoint folder (mmengine's CheckpointHook writes to
    out_dir/<work dir's name>)."""
    from mmengine.runner import Runner
    from wavevit_mm.engine.hooks import WorkDirLockHook
    out_dir = tmp_path / 'checkpoints'
    holder = hold(out_dir / 'exp')  # a run of work dir a/exp
    try:
        runner = Runner(
            model=torch.nn.Linear(2, 2), work_dir=str(tmp_path / 'b' / 'exp'),
            default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                               out_dir=str(out_dir))))
        hook = WorkDirLockHook()
        with pytest.raises(WorkDirInUseError,
                           match=f'{out_dir / "exp"} is in use by another '
                           f'training run \\(pid {holder.pid} .*Two runs in '
                           f'one checkpoint folder'):
            hook.before_train(runner)
    finally:
        holder.kill()
        holder.wait()
    # the work dir it took first was given back
    lock_work_dir(str(tmp_path / 'b' / 'exp'))
    unlock_work_dir(str(tmp_path / 'b' / 'exp'))


# ------------------------------------------------------------ the writers

def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / 'secret.pth'
    path.write_text('old')
    os.chmod(path, 0o600)
    with atomic_write(str(path)) as tmp, open(tmp, 'w') as file:
        file.write('new')
    assert path.read_text() == 'new'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_overwrite_is_decided_when_the_file_is_moved(tmp_path):
    """A file that appears while the new one is written (another process)
    is kept: no window between a check and the move."""
    path = tmp_path / 'model.pth'
    with pytest.raises(FileExistsError, match='already exists'):
        with atomic_write(str(path), replace=False) as tmp:
            with open(tmp, 'w') as file:
                file.write('ours')
            path.write_text('theirs')
    assert path.read_text() == 'theirs'
    assert os.listdir(tmp_path) == ['model.pth']


def test_a_long_name_is_written(tmp_path):
    path = tmp_path / ('w' * 250 + '.pth')
    with atomic_write(str(path)) as tmp, open(tmp, 'w') as file:
        file.write('data')
    assert path.read_text() == 'data'


def test_no_tool_executes_a_config_stored_in_a_checkpoint():
    """A checkpoint's meta['cfg'] is Python code (mmengine's
    Config.fromstring runs it); our tools take the config from the command
    line, and nothing in the package or the tools builds one from a
    string."""
    for folder in ('wavevit_mm', 'tools'):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith('.py'):
                    with open(os.path.join(base, name)) as file:
                        assert 'fromstring' not in file.read(), name
