#!/usr/bin/env bash
# Toy-shapes demo: generate the toy COCO set, train Mask R-CNN with a small
# Wave-ViT on the CPU, evaluate it with tools/test.py and draw its
# predictions on a validation image. About 5 minutes on 2 CPU cores.
#
# Usage: projects/toy_shapes/demo.sh [WORK_DIR]   (PYTHON=... to pick python)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
CONFIG=projects/toy_shapes/configs/mask_rcnn_wavevit_toy_coco.py
WORK_DIR=${1:-work_dirs/toy_shapes_demo/$(date +%Y%m%d_%H%M%S)}
export PYTHONWARNINGS=ignore

if [ ! -f data/toy_coco/annotations/instances_val.json ]; then
    "$PYTHON" projects/toy_shapes/toy_shapes.py data/toy_coco --format coco
fi

mkdir -p "$WORK_DIR"
echo "== training (log: $WORK_DIR/train.log)"
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" \
    > "$WORK_DIR/train.log" 2>&1 || { tail -n 30 "$WORK_DIR/train.log"; exit 1; }
grep -E "Epoch\(train\).*\[(6|12|18|24)\]\[50/50\]" "$WORK_DIR/train.log" \
    | sed -E 's/.*(Epoch\(train\) *\[[0-9]+\]).*(loss: [0-9.]+).*/\1 \2/' || true
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")

echo "== evaluating $CHECKPOINT with tools/test.py"
"$PYTHON" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR" \
    --out "$WORK_DIR/predictions.pkl" > "$WORK_DIR/test.log" 2>&1 \
    || { tail -n 30 "$WORK_DIR/test.log"; exit 1; }
grep -E "Average Precision|copypaste" "$WORK_DIR/test.log"

echo "== drawing predictions on a validation image"
"$PYTHON" tools/image_demo.py data/toy_coco/val/000000.jpg "$CONFIG" \
    "$CHECKPOINT" --out-file "$WORK_DIR/demo_prediction.png"

"$PYTHON" - "$WORK_DIR/test.log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
bbox = re.search(r'bbox_mAP_copypaste: ([\d.]+) ([\d.]+)', text)
segm = re.search(r'segm_mAP_copypaste: ([\d.]+) ([\d.]+)', text)
print(f'toy val: box AP {bbox[1]}, box AP50 {bbox[2]}, '
      f'mask AP {segm[1]}, mask AP50 {segm[2]}')
PY
