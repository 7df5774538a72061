#!/usr/bin/env bash
# The CUDA paths, end to end, on a machine with a GPU (run by hand; CI has no GPU):
#   1. a base fit on one GPU (16-mixed), as configs/trainer/gpu.yaml sets it;
#   2. `capl test` pruning it on the GPU (round_to auto on CUDA) with the BenchmarkCallback on
#      CUDA: CUDA-event latency, CUDA peak memory, ONNX Runtime's CUDA provider when installed
#      (else its CPU fallback, with the warning);
#   3. prune + retrain under DDP with the NCCL backend (configs/trainer/ddp.yaml, one device per
#      GPU found), the plan broadcast from rank zero;
#   4. a summary of what each benchmark.json says (device, latency method, provider, memory).
#
#   bash scripts/check_cuda.sh [OUTPUT_DIR]        # default runs/cuda_check
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/cuda_check}
mkdir -p "$out"
capl=${CAPL:-capl}
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [[ "$gpus" -lt 1 ]]; then
    echo "check_cuda.sh: no CUDA device visible (torch.cuda.device_count() == 0); run it on a GPU machine" >&2
    exit 2
fi
python3 - <<'EOF' | tee "$out/environment.txt"
import onnxruntime as ort
import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("onnxruntime", ort.__version__, "providers", ort.get_available_providers())
print("nccl", torch.distributed.is_nccl_available(), torch.cuda.nccl.version())
EOF

base_args=(--config configs/default.yaml --config configs/trainer/gpu.yaml
    --trainer.max_epochs 3 --trainer.deterministic false
    --trainer.logger.init_args.save_dir "$out")
echo "== 1. base fit on one GPU"
$capl fit "${base_args[@]}"
ckpt="$out/digits_resnet18/base/checkpoints/best.ckpt"
test -f "$ckpt"

echo "== 2. prune + benchmark on the GPU"
$capl test --config configs/runs/prune_test.yaml --trainer.accelerator gpu \
    --trainer.deterministic false --model.weights "$ckpt" \
    --trainer.logger.init_args.save_dir "$out" --trainer.logger.init_args.version gpu

echo "== 3. prune + retrain under DDP (NCCL, $gpus device(s))"
$capl fit --config configs/runs/prune_retrain.yaml --config configs/trainer/ddp.yaml \
    --trainer.devices "$gpus" --trainer.max_epochs 2 --trainer.deterministic false \
    --model.weights "$ckpt" --trainer.logger.init_args.save_dir "$out" \
    --trainer.logger.init_args.version ddp
$capl test --config configs/runs/prune_retrain.yaml --trainer.accelerator gpu \
    --trainer.deterministic false --model.weights "$ckpt" \
    --trainer.logger.init_args.save_dir "$out" --trainer.logger.init_args.version ddp_test \
    --ckpt_path "$out/prune_retrain/ddp/checkpoints/best.ckpt"

echo "== 4. what the records say"
python3 scripts/check_cuda_summary.py "$out" | tee "$out/summary.txt"
