"""Evaluate a checkpoint of a detector or segmentor on its test set."""
import argparse

from mmengine.config import DictAction


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the metrics')
    parser.add_argument('--out', help='detection: dump the predictions to '
                        'this .pkl file; segmentation: write the predicted '
                        'label maps to this directory')
    parser.add_argument('--show-dir', help='draw the predictions on the '
                        'images and save them under this directory')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (config: tta_model, '
                        'tta_pipeline)')
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
    from wavevit_mm.checkpoint import check_model_fits, read_model_weights
    from wavevit_mm.errors import report_errors

    with report_errors('test.py'):
        setup.local_rank_env(args.local_rank)
        weights = read_model_weights(args.checkpoint)
        cfg = setup.load_config(args.config, args.cfg_options)
        cfg.launcher = args.launcher
        setup.check_backbone_config(cfg)
        setup.check_data_paths(cfg, ['test'])
        setup.setup_work_dir(cfg, args.config, args.work_dir)
        setup.apply_test_options(cfg, args.checkpoint, args.out,
                                 args.show_dir, args.tta)
        setup.add_test_safeguards(cfg)
        setup.setup_cpu_distributed(cfg, args.launcher)
        runner = Runner.from_cfg(cfg)
        check_model_fits(weights, runner.model, args.checkpoint)
        del weights
        with setup.safe_checkpoint_loading():
            runner.test()
    setup.shut_down_distributed()


if __name__ == '__main__':
    main()
