#!/usr/bin/env bash
# Data-parallel scaling (issue 18): the same LoRA job on 1 rank and on N
# ranks (mpirun, worker/dist.h), tokens/s of each and the share of rank 0's
# training time spent in the gradient all-reduce (waiting for the slower
# rank included, so it also shows load imbalance).
#   bench/dist.sh cpu   1 rank x 2 threads vs 2 ranks x 1 thread (make bench);
#                       gpt2-124m f32, LoRA r=16 all-linear, 2 x 4 x 128 tokens per step
#   bench/dist.sh gpu   1 GPU vs every GPU of the machine (make bench-gpu);
#                       qwen2.5-0.5b bf16, 8 x 1024 tokens per rank per step
# Expected all-reduce time for the gradients (a ring, as NCCL and MPI use
# for large buffers): t = 2 (N-1)/N x bytes / busbw + 2 (N-1) x latency;
# the GPU line prints the bus bandwidth that the measured time implies.
# Environment: LR_BUILD, LR_BENCH_MODELS, LR_BENCH_STEPS (default 4 cpu, 10 gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LR_BUILD:-build}
W=$(realpath "$B/lora-worker")
MODELS=${LR_BENCH_MODELS:-$B/bench-models}
PY=/usr/bin/python3
mode=${1:-cpu}
if ! command -v mpirun >/dev/null 2>&1; then
  echo "data-parallel: skipped: mpirun not installed (mk/deps.sh installs openmpi-bin)"
  exit 0
fi
MPI=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && MPI+=(--allow-run-as-root)
T=$(mktemp -d /tmp/lrbench-dist.XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir -p "$MODELS"

case $mode in
cpu)
  preset=gpt2-124m arch=gpt2 dtype=f32 bs=4 acc=2 seq=128 steps=${LR_BENCH_STEPS:-4} n=2 backend=cpu
  one_threads=2 rank_threads=1 ;;
gpu)
  n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  if [ "${n:-0}" -lt 2 ]; then
    echo "data-parallel GPU: skipped: ${n:-0} GPU(s) here, the scaling figure needs 2 or more"
    echo "  expected all-reduce per step: t = 2 (N-1)/N x grad_bytes / busbw + 2 (N-1) x ~10 us;"
    echo "  e.g. LoRA r=16 all-linear on llama-3-8b (42M f32 gradients, 168 MB) over NVLink at ~400 GB/s"
    echo "  bus bandwidth: N=8 -> 0.74 ms, against ~0.15 s of compute for each GPU's 2048-token micro-batch"
    echo "  (4 x 8e9 FLOP/token at 45% of an H100's 989 TFLOP/s): ~0.5% of the step"
    exit 0
  fi
  preset=qwen2.5-0.5b arch=qwen2 dtype=bf16 bs=8 acc=$n seq=1024 steps=${LR_BENCH_STEPS:-10} backend=cuda:0
  one_threads=0 rank_threads=0 ;;
*) echo "usage: bench/dist.sh cpu|gpu" >&2; exit 2 ;;
esac

dir=$MODELS/$preset-$dtype
[ -f "$dir/model.safetensors" ] || [ -f "$dir/model.safetensors.index.json" ] ||
  "$W" mkmodel --arch $arch --preset $preset --seed 1 --dtype $dtype --out "$dir" >/dev/null
cp examples/demo.jsonl "$T/data.jsonl"
cat > "$T/job.yaml" <<YAML
model: $(realpath "$dir")
training_file: data.jsonl
chat_template: chatml
lora: {r: 16, alpha: 32, dropout: 0.0, targets: all-linear}
hyperparameters: {max_steps: $steps, batch_size: $bs, grad_accum: $acc, max_seq_len: $seq, packing: true,
                  learning_rate: 1.0e-4, val_ratio: 0, eval_steps: 0, save_steps: 0, logging_steps: 1, seed: 1}
YAML
"$W" run --config "$T/job.yaml" --out "$T/one" --backend $backend --threads $one_threads --quiet >"$T/one.log" 2>&1 ||
  { echo "data-parallel: the 1-rank run failed: $(tail -n1 "$T/one.log")"; exit 2; }
"${MPI[@]}" -np $n "$W" run --config "$T/job.yaml" --out "$T/many" --backend $backend --threads $rank_threads \
  --quiet >"$T/many.log" 2>&1 || { echo "data-parallel: the $n-rank run failed: $(tail -n1 "$T/many.log")"; exit 2; }
$PY - "$T/one/time_metrics.json" "$T/many/time_metrics.json" "$mode" "$preset" "$bs" "$acc" "$seq" "$n" \
  "$one_threads" "$rank_threads" <<'PY'
import json, sys
o, m = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
mode, preset, bs, acc, seq, n, t1, tn = sys.argv[3:11]
n = int(n)
share = m["allreduce_seconds"] / m["train_seconds"]
per_step = m["allreduce_seconds"] / m["steps"]
dev = "rank" if mode == "cpu" else "GPU"
print("data-parallel, %s LoRA r=16 all-linear, %s x %s x %s tokens per step (%s):" % (preset, acc, bs, seq, m["transport"]))
print("  1 %-5s%s %9.0f tok/s" % (dev, " x %s threads" % t1 if mode == "cpu" else "", o["tokens_per_second"]))
print("  %d %-5s%s %9.0f tok/s  (%.2fx), all-reduce %.1f%% of training time (%.2f ms per step, %.2f MB of gradients)"
      % (n, dev + "s", " x %s thread" % tn if mode == "cpu" else "", m["tokens_per_second"],
         m["tokens_per_second"] / o["tokens_per_second"], 100 * share, 1e3 * per_step, m["grad_bytes"] / 1e6))
if mode == "gpu" and per_step > 0:
    busbw = 2 * (n - 1) / n * m["grad_bytes"] / per_step
    print("  implied bus bandwidth 2 (N-1)/N x bytes / t = %.1f GB/s (upper bound on t: waits for the slower GPU count)"
          % (busbw / 1e9))
PY
