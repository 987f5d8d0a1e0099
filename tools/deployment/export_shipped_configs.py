"""Export the shipped configs at their real sizes with pytorch2onnx.py and
tabulate each export: the time, the peak memory of the tool's process and
its check (ONNX Runtime against PyTorch).

    python tools/deployment/export_shipped_configs.py --work-dir DIR \\
        [--configs NAME ...] [--fixed] [--image IMAGE]

Each model has the weights its config initialises (the backbone without
its ImageNet checkpoint), saved as a checkpoint in DIR by a process of its
own; then pytorch2onnx.py exports it in another at the config's test size:
with dynamic height and width (the fixed size with --fixed), UperNet at
its crop size, Cascade Mask R-CNN and Sparse R-CNN their backbone alone.
One export runs at a time: each takes the cores and several GB.
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'deployment', 'pytorch2onnx.py')
#: The shipped configs and how each exports: whole with dynamic sizes,
#: whole at a fixed size, or the backbone alone with dynamic sizes.
CONFIGS = {
    'retinanet_wavevit_s_coco': 'dynamic',
    'retinanet_wavevit_b_coco': 'dynamic',
    'atss_wavevit_s_3x_coco': 'dynamic',
    'gfl_wavevit_s_3x_coco': 'dynamic',
    'mask_rcnn_wavevit_s_coco': 'dynamic',
    'mask_rcnn_wavevit_b_coco': 'dynamic',
    'upernet_wavevit_s_ade20k': 'fixed',
    'upernet_wavevit_b_ade20k': 'fixed',
    'cascade_mask_rcnn_wavevit_s_3x_coco': 'backbone',
    'sparse_rcnn_wavevit_s_3x_coco': 'backbone',
}


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', required=True,
                        help='where the checkpoints and files are written')
    parser.add_argument('--configs', nargs='+', choices=sorted(CONFIGS),
                        metavar='NAME', default=list(CONFIGS),
                        help='shipped configs by name (default: all)')
    parser.add_argument('--fixed', action='store_true',
                        help='export every model at its fixed test size')
    parser.add_argument('--image', help='the picture the check runs on '
                        '(default: the tool\'s)')
    parser.add_argument('--save-checkpoint', nargs=2,
                        metavar=('CONFIG', 'PATH'), help=argparse.SUPPRESS)
    return parser.parse_args()


def save_initialised(config: str, path: str) -> None:
    """The model as ``config`` initialises it, saved as a checkpoint."""
    import torch
    from wavevit_mm.tools import build_model, load_config
    from wavevit_mm.tools.deployment import log_level
    with log_level('WARNING'):
        model = build_model(load_config(config))
    torch.save(dict(state_dict=model.state_dict()), path)


def run(args):
    """Run ``args``; its exit status, output, seconds and peak resident
    memory (GB)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return (process.returncode, output, time.perf_counter() - start,
            usage.ru_maxrss / 2**20)


def export_row(name: str, how: str, work_dir: str, image=None) -> str:
    config = osp.join(ROOT, 'configs', f'{name}.py')
    checkpoint = osp.join(work_dir, f'{name}.pth')
    if not osp.exists(checkpoint):
        code, output, _, _ = run([sys.executable, __file__, '--work-dir',
                                  work_dir, '--save-checkpoint', config,
                                  checkpoint])
        if code:
            return f'| {name} | | | | | checkpoint not saved: {output} |'
    args = [sys.executable, TOOL, config, checkpoint, '--force', '--out',
            osp.join(work_dir, f'{name}.onnx')]
    args += {'dynamic': ['--dynamic'], 'fixed': [],
             'backbone': ['--backbone-only', '--dynamic']}[how]
    if image:
        args += ['--image', image]
    code, output, seconds, peak = run(args)
    rows = [line for line in output.splitlines()
            if line.startswith('| ') and not line.startswith('| model')]
    if code or not rows:
        lines = output.strip().splitlines()
        return (f'| {name} | {how} | | {seconds:.0f} | {peak:.1f} | '
                f'exit {code}: {lines[-1] if lines else ""} |')
    cells = [row.strip('| ').split(' | ') for row in rows]
    checks = '; '.join(f'{cell[2]}: {cell[3]}' for cell in cells)
    return (f'| {name} | {cells[0][1]} | {cells[0][2]} | {seconds:.0f} | '
            f'{peak:.1f} | {checks} |')


def main():
    args = parse_args()
    if args.save_checkpoint:
        save_initialised(*args.save_checkpoint)
        return
    os.makedirs(args.work_dir, exist_ok=True)
    print('| config | exported | size | time (s) | peak memory (GB) | '
          'check (ONNX Runtime vs PyTorch) |')
    print('|---|---|---|---|---|---|')
    for name in args.configs:
        how = 'fixed' if args.fixed and CONFIGS[name] == 'dynamic' else (
            CONFIGS[name])
        print(export_row(name, how, args.work_dir, args.image), flush=True)


if __name__ == '__main__':
    main()
