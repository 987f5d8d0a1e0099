#!/usr/bin/env bash
# Toy-shapes demo: generate the toy COCO set, train Mask R-CNN with a small
# Wave-ViT on the CPU, evaluate it with tools/test.py and draw its
# predictions on a validation image enlarged to 512x512. About 9 minutes on
# 2 CPU cores.
#
# Usage: projects/toy_shapes/demo.sh [WORK_DIR]   (PYTHON=... to pick python)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
CONFIG=projects/toy_shapes/configs/mask_rcnn_wavevit_toy_coco.py
WORK_DIR=${1:-work_dirs/toy_shapes_demo/$(date +%Y%m%d_%H%M%S)}
export PYTHONWARNINGS=ignore

# mmengine's training log lines, shortened to epoch, iteration, loss and eta:
#   ... Epoch(train)  [3][25/50]  base_lr: ...  eta: 0:03:10  ...  loss: 1.2345  loss_rpn_cls: ...
#   ->  epoch 3  iter 25/50  loss 1.2345  (eta 0:03:10)
# sed always exits 0, so the pipeline's status is that of the training.
show_progress() {
    sed -u -n -E \
        -e 's/.*Epoch\(train\) *\[ *([0-9]+)\]\[ *([0-9]+\/[0-9]+)\].* eta: ([0-9]+ days?, )?([0-9:]+) .* loss: ([^ ]+).*/  epoch \1  iter \2  loss \5  (eta \3\4)/p; t' \
        -e 's/.*Epoch\(train\) *\[ *([0-9]+)\]\[ *([0-9]+\/[0-9]+)\].* loss: ([^ ]+).*/  epoch \1  iter \2  loss \3/p'
}

if [ ! -f data/toy_coco/annotations/instances_val.json ]; then
    "$PYTHON" projects/toy_shapes/toy_shapes.py data/toy_coco --format coco
fi

mkdir -p "$WORK_DIR"
echo "== training (full log: $WORK_DIR/train.log)"
PYTHONUNBUFFERED=1 "$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" 2>&1 \
    | tee "$WORK_DIR/train.log" | show_progress \
    || { echo "== training failed; the end of $WORK_DIR/train.log:"
         tail -n 30 "$WORK_DIR/train.log"; exit 1; }
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")

echo "== evaluating $CHECKPOINT with tools/test.py"
"$PYTHON" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR" \
    --out "$WORK_DIR/predictions.pkl" > "$WORK_DIR/test.log" 2>&1 \
    || { echo "== testing failed; the end of $WORK_DIR/test.log:"
         tail -n 30 "$WORK_DIR/test.log"; exit 1; }
grep -E "Average Precision|copypaste" "$WORK_DIR/test.log"

# The toy images are 128x128. The drawing is made on a 4x enlarged copy:
# the test pipeline resizes it to 128x128 for the network and maps the
# boxes and masks back to 512x512.
echo "== drawing predictions on a validation image (enlarged to 512x512)"
"$PYTHON" -c 'import sys, cv2
image = cv2.imread(sys.argv[1])
cv2.imwrite(sys.argv[2], cv2.resize(image, (512, 512), interpolation=cv2.INTER_CUBIC))' \
    data/toy_coco/val/000000.jpg "$WORK_DIR/demo_input.png"
"$PYTHON" tools/image_demo.py "$WORK_DIR/demo_input.png" "$CONFIG" \
    "$CHECKPOINT" --out-file "$WORK_DIR/demo_prediction.png"

"$PYTHON" - "$WORK_DIR/test.log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
bbox = re.search(r'bbox_mAP_copypaste: ([\d.]+) ([\d.]+)', text)
segm = re.search(r'segm_mAP_copypaste: ([\d.]+) ([\d.]+)', text)
print(f'toy val: box AP {bbox[1]}, box AP50 {bbox[2]}, '
      f'mask AP {segm[1]}, mask AP50 {segm[2]}')
PY
echo "== picture: $WORK_DIR/demo_prediction.png"
