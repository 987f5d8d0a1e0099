"""The real tools on the toy datasets: in this process (for what fails or
finishes within seconds) or as a process of their own."""
import contextlib
import io
import os
import re
import runpy
import signal
import subprocess
import sys
import threading
from typing import Dict, List, NamedTuple, Sequence

from helpers import ROOT

TOY = os.path.join(ROOT, 'projects', 'toy_shapes')
DET_CONFIG = os.path.join(TOY, 'configs', 'mask_rcnn_wavevit_toy_coco.py')
SEG_CONFIG = os.path.join(TOY, 'configs', 'upernet_wavevit_toy_ade20k.py')
ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1',
           PYTHONUNBUFFERED='1', PYTHON=sys.executable)

sys.path.insert(0, TOY)
import toy_shapes  # noqa: E402


def tool(name: str) -> str:
    return os.path.join(ROOT, 'tools', name)


def make_toy_data(root: str) -> None:
    """``root/data/toy_coco`` and ``root/data/toy_ade20k``, 8 training and 4
    validation images each, where the toy configs look for them."""
    toy_shapes.make_coco(os.path.join(root, 'data', 'toy_coco'),
                         num_train=8, num_val=4, seed=1)
    toy_shapes.make_ade20k(os.path.join(root, 'data', 'toy_ade20k'),
                           num_train=8, num_val=4, seed=1)


class ToolResult(NamedTuple):
    code: int
    stderr: str


def _reopen_log_stream() -> None:
    """Point mmengine's current logger back at stdout where its stream is
    closed: made during an earlier test under ``capsys``, it still writes
    to the stream pytest closed since (a tool in a process of its own
    starts with a fresh one)."""
    from mmengine.logging import MMLogger
    for handler in MMLogger.get_current_instance().handlers:
        if getattr(getattr(handler, 'stream', None), 'closed', False):
            handler.stream = sys.stdout  # setStream would flush the closed one


def run_tool(name: str, args: Sequence[str], cwd: str) -> ToolResult:
    """Run ``tools/<name>`` in this process as from the command line; the
    exit status and what it wrote to stderr."""
    path = tool(name)
    _reopen_log_stream()
    old_argv, old_cwd = sys.argv, os.getcwd()
    stderr = io.StringIO()
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = [path] + [str(a) for a in args]
        with contextlib.redirect_stderr(stderr):
            runpy.run_path(path, run_name='__main__')
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return ToolResult(code, stderr.getvalue())


def run_process(args: List[str], cwd: str, timeout: float = 600
                ) -> subprocess.CompletedProcess:
    """Run a command to its end, stdout and stderr kept apart."""
    return subprocess.run([str(a) for a in args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def kill_when_logged(args: List[str], cwd: str, marker: str,
                     timeout: float = 300) -> str:
    """Start a command and SIGKILL it as soon as it prints a line holding
    ``marker``; that line. Fails if it ends (or ``timeout`` passes) first."""
    process = subprocess.Popen([str(a) for a in args], cwd=cwd, env=ENV,
                               text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    killed_at = None
    for line in process.stdout:
        if marker in line:
            process.send_signal(signal.SIGKILL)
            killed_at = line
            break
    process.stdout.read()
    watchdog.cancel()
    assert killed_at and process.wait() == -signal.SIGKILL, (
        f'{marker!r} was never printed')
    return killed_at


def final_metrics(output: str, mode: str) -> Dict[str, str]:
    """The metrics of the last validation or test (``mode``) a run logged:
    name -> value as printed (COCO's, mmseg's aAcc, mIoU and mAcc)."""
    found = [dict(re.findall(r'(coco/\w+|aAcc|mIoU|mAcc): (-?[\d.]+)', line))
             for line in re.findall(rf'(?:Epoch|Iter)\({mode}\).*', output)]
    found = [metrics for metrics in found if metrics]
    assert found, f'no {mode} metrics logged: {output[-3000:]}'
    return found[-1]
