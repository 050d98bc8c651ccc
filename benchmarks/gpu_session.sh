#!/usr/bin/env bash
# Everything sparsecraft measures on a CUDA GPU, as one prepared run (a lent GPU is scarce:
# one call, no interaction). Run from the repository root:
#
#     bash benchmarks/gpu_session.sh OUT_DIR [PARALLEL]
#
# 1. benchmarks/cuda_semi_structured.py (2:4 semi-structured vs dense, fp16/bf16, 4096^2,
#    batch 1..256) with the GPU to itself, then the CUDA tests of tests/kernels.
# 2. A 1-epoch smoke run of every N:M training method on the GPU (stops here if one fails).
# 3. The CNN N:M training grid of issue 3 at its full protocol (20 epochs, all 60k images,
#    seeds 0-2; dense, ste, sr-ste, pgf at 2:4 and 1:4): 21 independent runs, PARALLEL
#    (default 21) processes sharing the GPU, every finished run appended as one JSON line to
#    OUT_DIR/training_nm_gpu.jsonl. Render the table afterwards with
#    `python benchmarks/bench_nm_training.py --render --jsonl <merged jsonl>`.
#
# Needs python3 with torch (CUDA build) and numpy, safetensors, tqdm, pytest; Fashion-MNIST
# idx files in $SPARSECRAFT_FASHION_MNIST (default /usr/share/datasets/fashion-mnist).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [PARALLEL]}
par=${2:-21}
grid_timeout=${GRID_TIMEOUT:-420}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

echo "== 1. CUDA 2:4 kernels"
$py benchmarks/cuda_semi_structured.py >"$out/cuda_semi.log" 2>&1
echo "cuda_semi_structured rc=$?"
cp docs/results/kernels_cuda.md "$out/" 2>/dev/null
$py -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_semi.py >>"$out/cuda_semi.log" 2>&1
echo "pytest (CUDA tests) rc=$?"
tail -5 "$out/cuda_semi.log"

echo "== 2. smoke: every N:M method, 1 epoch on 1024 images"
$py benchmarks/bench_nm_training.py --device cuda --threads 1 --epochs 1 --limit 1024 --seeds 0 \
    --timing-steps 0 --jsonl "$out/smoke.jsonl" --out /tmp/smoke.md >"$out/smoke.log" 2>&1
rc=$?
tail -9 "$out/smoke.log"
[ $rc -eq 0 ] || { echo "smoke failed (rc=$rc): grid not started"; exit 1; }

echo "== 3. CNN N:M grid (20 epochs, 60k, seeds 0-2), $par processes"
cmds=()
for seed in 0 1 2; do
  for cfg in "dense 2:4" "ste 2:4" "sr-ste 2:4" "pgf 2:4" "ste 1:4" "sr-ste 1:4" "pgf 1:4"; do
    set -- $cfg
    cmds+=("$py benchmarks/bench_nm_training.py --device cuda --threads 1 --epochs 20 --seeds $seed \
--methods $1 --patterns $2 --timing-steps 0 --jsonl $out/training_nm_gpu.jsonl \
--out /tmp/nm_${seed}_${1}_${2/:/of}.md")
  done
done
start=$(date +%s)
printf '%s\n' "${cmds[@]}" | timeout "$grid_timeout" xargs -P "$par" -I{} sh -c '{} >>'"$out/grid.log"' 2>&1'
echo "grid rc=$? after $(( $(date +%s) - start )) s; finished runs: $(wc -l <"$out/training_nm_gpu.jsonl" 2>/dev/null || echo 0)/21"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
