"""Prepare a trained checkpoint for publishing, as mmdet's tool of the same
name does: keep the weights and the meta, drop the optimizer, the message
hub and the parameter schedulers, and add the first 8 hex digits of the
file's sha256 to its name.

    python tools/model_converters/publish_model.py \\
        work_dirs/retinanet_wavevit_s_coco/epoch_12.pth retinanet_wavevit_s.pth
    # writes retinanet_wavevit_s-1a2b3c4d.pth

The published file loads with torch's weights-only reader in any process,
one that never imports wavevit_mm included.
"""
import argparse
import sys

from wavevit_mm.errors import CheckpointError
from wavevit_mm.tools.publish import publish_checkpoint


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('in_file', help='checkpoint saved by training')
    parser.add_argument('out_file', help='output file name; the hash is '
                        'added before .pth')
    parser.add_argument('--force', action='store_true',
                        help='overwrite the output file if it exists')
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        published = publish_checkpoint(args.in_file, args.out_file,
                                       force=args.force)
    except (CheckpointError, OSError) as error:
        sys.exit(f'publish_model: error: {error}')
    if published.dropped:
        print(f'Dropped {", ".join(published.dropped)}; kept meta and '
              f'state_dict.')
    print(f'The published model is saved at {published.path} (sha256 '
          f'{published.sha256}).')


if __name__ == '__main__':
    main()
