"""Evaluate a checkpoint of a detector or segmentor on its test set."""
import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from wavevit_mm import tools
from wavevit_mm.checkpoint import read_once
from wavevit_mm.errors import report_errors


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='detection: dump the predictions to '
                        'this .pkl file; segmentation: write the predicted '
                        'label maps to this directory')
    parser.add_argument('--show-dir', help='draw the predictions on the '
                        'images and save them under this directory')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation: the config\'s '
                        'tta_model and tta_pipeline, else the default of '
                        'mmdet\'s or mmpretrain\'s test.py (horizontal '
                        'flip); not for instance segmentation')
    tools.add_run_arguments(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    # read_once: the checkpoint checked here is handed to the Runner, not
    # deserialized again
    with report_errors('test.py'), read_once():
        weights, _ = tools.read_model_weights(args.checkpoint)
        cfg = tools.load_run_config(args, ['test'])
        tools.apply_test_options(cfg, args.checkpoint, args.out,
                                args.show_dir, args.tta)
        tools.setup_cpu_distributed(cfg, args.launcher)
        # the config's runner_type (SafeguardedRunner), as mmdet's tools
        runner = (RUNNERS.build(cfg) if 'runner_type' in cfg
                  else Runner.from_cfg(cfg))
        tools.check_fits(weights, runner.model, args.checkpoint)
        del weights
        runner.test()
    tools.shut_down_distributed()


if __name__ == '__main__':
    main()
