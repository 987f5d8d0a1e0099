"""Train a detector or segmentor from an mmdet/mmseg config."""
import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from wavevit_mm import tools
from wavevit_mm.checkpoint import read_once
from wavevit_mm.errors import report_errors


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('config', help='train config file path')
    tools.add_run_arguments(parser)
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision: bfloat16 on GPUs '
                        'that support it, else float16; bfloat16 backbone on '
                        'the CPU (optim_wrapper.dtype in the config wins)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate to the actual total '
                        'batch size (config: auto_scale_lr.base_batch_size)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a value from the '
                        'latest checkpoint in the work dir that reads back')
    parser.add_argument('--compile', action='store_true',
                        help='run the backbone through torch.compile '
                        '(sets model.backbone.compile=True)')
    return parser.parse_args()


def main():
    args = parse_args()
    # read_once: the checkpoints checked here (pretrained weights, the one
    # to resume from) are handed to the Runner, not deserialized again
    with report_errors('train.py'), read_once():
        cfg = tools.load_run_config(args, ['train', 'val'], pretrained=True)
        tools.apply_train_options(cfg, args.amp, args.auto_scale_lr,
                                 args.resume, args.compile)
        tools.setup_cpu_distributed(cfg, args.launcher)
        # the config's runner_type (SafeguardedRunner), as mmdet's tools
        runner = (RUNNERS.build(cfg) if 'runner_type' in cfg
                  else Runner.from_cfg(cfg))
        runner.train()
    tools.shut_down_distributed()


if __name__ == '__main__':
    main()
