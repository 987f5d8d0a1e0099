"""Train a detector or segmentor from an mmdet/mmseg config."""
import argparse

from mmengine.config import DictAction


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (float16 on GPU, '
                        'bfloat16 on CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate to the actual total '
                        'batch size (config: auto_scale_lr.base_batch_size)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a value from the '
                        'latest checkpoint in the work dir that reads back')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    from mmengine.runner import Runner
    from wavevit_mm import runner as setup
    from wavevit_mm.errors import report_errors

    with report_errors('train.py'):
        setup.local_rank_env(args.local_rank)
        cfg = setup.load_config(args.config, args.cfg_options)
        cfg.launcher = args.launcher
        setup.scope_of(cfg)
        setup.check_backbone_config(cfg, pretrained=True)
        setup.check_data_paths(cfg, ['train', 'val'])
        setup.setup_work_dir(cfg, args.config, args.work_dir)
        setup.apply_train_options(cfg, args.amp, args.auto_scale_lr,
                                  args.resume)
        setup.add_safeguards(cfg)
        setup.setup_cpu_distributed(cfg, args.launcher)
        runner = Runner.from_cfg(cfg)
        with setup.safe_checkpoint_loading():
            runner.train()
    setup.shut_down_distributed()


if __name__ == '__main__':
    main()
