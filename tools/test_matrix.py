"""Run the test suite on another torch: ``make test-matrix TORCH=2.1.2``.

Builds ``.venv-torch<TORCH>`` once (that torch from the package index,
mmcv 2.1.0 compiled with its ops against it, the rest of
requirements.txt), installs a copy of the working tree into it under
``build/matrix/torch-<TORCH>`` (so its compiled Haar kernels are built for
that torch without touching the in-place build of the checkout), runs the
suite there and prints one row: torch, Python, mmcv, tests passed, failed
and skipped, and the minutes it took. Every skip reason is listed.

Runs with the interpreter it is started with (``PYTHON`` in the Makefile).
"""
import argparse
import collections
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MMCV = 'mmcv==2.1.0'
# installed before mmcv, whose build imports them (--no-build-isolation)
BUILD_FIRST = ('numpy', 'setuptools', 'wheel', 'ninja', 'psutil')


def run(command, cwd=ROOT, env=None, quiet=False):
    """Run ``command``, stop with its output when it fails."""
    print('+', ' '.join(command), flush=True)
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None, text=True)
    if result.returncode:
        if quiet:
            print(result.stdout[-4000:])
        sys.exit(f'test_matrix: `{" ".join(command)}` failed '
                 f'(exit status {result.returncode})')
    return result.stdout


def pinned_requirements(torch_version):
    """requirements.txt with ``torch==<torch_version>`` in place of the
    pinned torch, as a file in a temporary folder, and the pins of the
    packages mmcv's build needs first."""
    lines, first = [], []
    with open(osp.join(ROOT, 'requirements.txt')) as file:
        for line in file:
            name = line.split('#')[0].strip()
            if name.startswith('torch=='):
                line = f'torch=={torch_version}\n'
            elif name.split('=')[0].split('<')[0] in BUILD_FIRST:
                first.append(name)
            lines.append(line)
    folder = tempfile.mkdtemp(prefix='matrix-')
    path = osp.join(folder, 'requirements.txt')
    with open(path, 'w') as file:
        file.writelines(lines)
    return path, first


def cxx20_compiler(venv):
    """mmcv 2.1.0 compiles its ops with ``-std=c++17``; where the torch
    headers need C++20 (torch 2.14), the environment for ``CXX`` of a
    compiler that asks for C++20 instead, else none."""
    (header, ) = glob.glob(osp.join(venv, 'lib', 'python*', 'site-packages',
                                    'torch', 'include', 'ATen', 'ATen.h'))
    with open(header) as file:
        if 'C++20 or later' not in file.read():
            return {}
    path = osp.join(venv, 'bin', 'c++20')
    with open(path, 'w') as file:
        file.write('#!/bin/sh\n'
                   'for arg; do shift; [ "$arg" = -std=c++17 ] && '
                   'arg=-std=c++20; set -- "$@" "$arg"; done\n'
                   'exec c++ "$@"\n')
    os.chmod(path, 0o755)
    return {'CXX': path}


def build_venv(venv, torch_version):
    """The environment: torch first, mmcv built against it, the rest; a
    stamp marks it complete."""
    stamp = osp.join(venv, '.matrix-installed')
    if osp.exists(stamp):
        return
    if not osp.exists(osp.join(venv, 'bin', 'python')):
        run([sys.executable, '-m', 'venv', venv])
    pip = [osp.join(venv, 'bin', 'python'), '-m', 'pip', 'install']
    requirements, first = pinned_requirements(torch_version)
    # ask for exactly this torch: an unpinned one pulls the newest
    run(pip + ['-c', requirements, f'torch=={torch_version}', 'wheel',
               'ninja', 'psutil'] + first)
    # no wheel cache: a cached mmcv was compiled against another torch
    run(pip + ['--no-build-isolation', '--no-cache-dir', '-c', requirements,
               MMCV], env={'MMCV_WITH_OPS': '1', **cxx20_compiler(venv)})
    run(pip + ['-r', requirements])
    with open(stamp, 'w') as file:
        file.write(f'torch=={torch_version}\n')


def copy_tree(dest):
    """The working tree's files (tracked, and untracked ones git does not
    ignore) copied to ``dest``, replacing an older copy."""
    files = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others',
         '--exclude-standard'], cwd=ROOT, check=True,
        stdout=subprocess.PIPE).stdout.decode().split('\0')
    if osp.exists(dest):
        shutil.rmtree(dest)
    for name in filter(None, files):
        source = osp.join(ROOT, name)
        if not osp.isfile(source):  # deleted in the working tree
            continue
        target = osp.join(dest, name)
        os.makedirs(osp.dirname(target), exist_ok=True)
        shutil.copy2(source, target)


#: printed by the environment's Python in the copy of the tree
VERSIONS = ('import platform, torch, mmcv; '
            'from wavevit_mm.ops import wavelet; '
            'print(torch.__version__, platform.python_version(), '
            'mmcv.__version__, wavelet.compiled_haar_available())')


def summary(junit):
    """Passed, failed (failures and errors) and skipped tests of a JUnit
    XML report, and the skip reasons with their counts."""
    counts = collections.Counter()
    reasons = collections.Counter()
    for case in ET.parse(junit).getroot().iter('testcase'):
        outcome = 'passed'
        for child in case:
            if child.tag in ('failure', 'error'):
                outcome = 'failed'
            elif child.tag == 'skipped' and outcome != 'failed':
                outcome = 'skipped'
                reasons[child.get('message', '')] += 1
        counts[outcome] += 1
    return counts, reasons


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--torch', required=True,
                        help='the torch version to test, e.g. 2.1.2')
    parser.add_argument('--venv',
                        help='an environment already built for this torch '
                        '(e.g. the pinned .venv of make setup): the suite '
                        'runs in the checkout itself, with its in-place '
                        'build')
    parser.add_argument('--workers', default='2',
                        help='pytest-xdist workers (default 2)')
    parser.add_argument('pytest_args', nargs='*',
                        help='more pytest arguments, after --')
    args = parser.parse_args(argv)
    start = time.time()
    venv = args.venv or osp.join(ROOT, f'.venv-torch{args.torch}')
    if not args.venv:
        build_venv(venv, args.torch)
    built = time.time()
    python = osp.join(osp.abspath(venv), 'bin', 'python')
    tree = ROOT if args.venv else osp.join(ROOT, 'build', 'matrix',
                                           f'torch-{args.torch}')
    if not args.venv:
        copy_tree(tree)
        run([python, '-m', 'pip', 'install', '--no-deps',
             '--no-build-isolation', '-e', tree], quiet=True)
    torch_version, python_version, mmcv, compiled = run(
        [python, '-c', VERSIONS], cwd=tree, quiet=True).split()[-4:]
    junit = osp.join(ROOT, 'build', 'matrix', f'junit-torch{args.torch}.xml')
    os.makedirs(osp.dirname(junit), exist_ok=True)
    subprocess.run(
        [python, '-m', 'pytest', '-n', args.workers, '--dist', 'loadfile',
         '-p', 'no:cacheprovider', '-q', '-rs', f'--junitxml={junit}'] +
        args.pytest_args, cwd=tree,
        env={**os.environ,
             'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')})
    counts, reasons = summary(junit)
    minutes = (time.time() - built) / 60
    print('\nSkipped:' if reasons else '')
    for reason, count in sorted(reasons.items()):
        print(f'  {count} x {reason}')
    print(f'\nEnvironment set-up {(built - start) / 60:.1f} min; suite '
          f'{minutes:.1f} min on {os.cpu_count()} cores; compiled Haar '
          f'kernels: {"built" if compiled == "True" else "NOT built"}.')
    print('| torch | Python | mmcv | passed | failed | skipped |')
    print('| --- | --- | --- | --- | --- | --- |')
    print(f'| {torch_version} | {python_version} | {mmcv} | '
          f'{counts["passed"]} | {counts["failed"]} | {counts["skipped"]} |')
    if torch_version.split('+')[0] != args.torch:
        print(f'test_matrix: asked for torch {args.torch}, the environment '
              f'has {torch_version}')
        return 1
    return 1 if counts['failed'] or compiled != 'True' else 0


if __name__ == '__main__':
    sys.exit(main())
