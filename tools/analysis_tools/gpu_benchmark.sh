#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md, in one run on your
# own CUDA machine with the stack installed as in
# docs/installation.md (mmcv built with its CUDA ops), from the project root or
# anywhere:
#
#   bash tools/analysis_tools/gpu_benchmark.sh OUT_DIR
#
# Each step writes OUT_DIR/<step>.log (the printed tables) and
# OUT_DIR/<step>.json (every figure, rewritten after each table, so a step
# cut short keeps what it measured); OUT_DIR/steps.txt lists the steps with
# their exit status and seconds, OUT_DIR/machine.txt the GPU and the
# commit. A failing step does not stop the next one. The steps' time
# limits add up to about 55 minutes.
#
# STEPS="haar mask_rcnn_amp" runs only the steps named (e.g. to redo
# some); PYTHON picks the interpreter. The sizes can be made small to try
# the script on a CPU, e.g.
#   DEVICE=cpu DTYPES="fp32 bf16" TRAIN_DTYPES=bf16 SIZE="64 64" \
#   TRAIN_STEP="1 64 64" TRAIN_SHAPE="128 160" HAAR_SHAPE="1 4 16 24" \
#   REPEAT=1 ONNX_DETECTOR="64 96" \
#   STEPS="backbones train_step haar count_ops onnxruntime" \
#   bash tools/analysis_tools/gpu_benchmark.sh /tmp/out
set -u
out=$(mkdir -p "${1:?usage: gpu_benchmark.sh OUT_DIR}" && cd "$1" && pwd)
cd "$(dirname "$0")/../.."

py=${PYTHON:-python3}
device=${DEVICE:-cuda}
repeat=${REPEAT:-10}
size=${SIZE:-800 1216}               # H W of the backbone inputs
dtypes=${DTYPES:-fp32 tf32 bf16}     # inference
train_dtypes=${TRAIN_DTYPES:-bf16 fp32}
train_step=${TRAIN_STEP:-2 800 1216} # B H W of the backbone training step
train_shape=${TRAIN_SHAPE:-800 1333} # H W of the Mask R-CNN batch
haar_shape=${HAAR_SHAPE:-}           # B C H W: else haar.py's three (SHAPES)
onnx_detector=${ONNX_DETECTOR:-}     # H W of the RetinaNet: else 800x1344
backbones=(Wave-ViT-S Wave-ViT-B 'Wave-ViT-S (official formulation)'
           PVTv2-b2 ResNet-50)
all_steps='backbones train_step haar count_ops count_ops_compiled compiled
  compiled_train_step mask_rcnn_amp mask_rcnn_amp_compiled onnxruntime'
steps=" ${STEPS:-$all_steps} "
bench=("$py" tools/analysis_tools/benchmark.py --device "$device"
       --repeat "$repeat")

{ nvidia-smi; git rev-parse HEAD; git status --short; } \
  > "$out/machine.txt" 2>&1

step() {  # step NAME SECONDS ARGS...: one run of benchmark.py
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  [[ $steps == *" $name "* ]] || return 0
  echo "$name: $(printf '%q ' "${bench[@]}" "$@")--json $out/$name.json" \
    >> "$out/steps.txt"
  timeout "$limit" "${bench[@]}" "$@" --json "$out/$name.json" \
    > "$out/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/steps.txt"
}

# shellcheck disable=SC2086  # the sizes are lists of numbers
{
step backbones 300 --skip-wavelets --backbones "${backbones[@]}" \
  --shape $size --batch-size 8 1 --dtypes $dtypes
step train_step 240 --skip-wavelets --skip-backbones \
  --backbones "${backbones[@]}" --train-step-shape $train_step \
  --dtypes $train_dtypes
step haar 180 --skip-backbones ${haar_shape:+--wavelet-shape $haar_shape}
step count_ops 180 --skip-wavelets --skip-backbones \
  --backbones "${backbones[@]}" --count-ops
# compiling takes a minute or two
step count_ops_compiled 300 --skip-wavelets --skip-backbones \
  --backbones Wave-ViT-S --count-ops --compile
step compiled 300 --skip-wavelets --backbones 'Wave-ViT-S (compiled)' \
  --shape $size --batch-size 8 1 --dtypes bf16
step compiled_train_step 240 --skip-wavelets --skip-backbones \
  --backbones 'Wave-ViT-S (compiled)' --train-step-shape $train_step \
  --dtypes bf16
step mask_rcnn_amp 300 --skip-wavelets --skip-backbones \
  --train-config configs/mask_rcnn_wavevit_s_coco.py \
  --train-shape $train_shape --train-batch-size 2 --amp
step mask_rcnn_amp_compiled 300 --skip-wavelets --skip-backbones \
  --train-config configs/mask_rcnn_wavevit_s_coco.py \
  --train-shape $train_shape --train-batch-size 2 --amp --compile
# ONNX Runtime (CUDAExecutionProvider where onnxruntime-gpu is installed,
# else its CPU) against PyTorch on $device; the exports run on the CPU
step onnxruntime 900 --skip-wavelets --skip-backbones --onnxruntime \
  --onnx-shape $size --onnx-variants dynamic fused \
  ${onnx_detector:+--onnx-detector-shape $onnx_detector}
}
# the tables, short: everything else is in the files
grep -h -v -e '^|---' "$out"/*.log 2>/dev/null | grep -e '^|' -e '^device' \
  -e '^training' -e '^matmul' -e 'not measured' -e 'difference' \
  -e '^ONNX Runtime'
