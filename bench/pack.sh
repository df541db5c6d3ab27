#!/usr/bin/env bash
# Co-training (issue 19): 4 small LoRA jobs (gpt2-124m preset, 1 x 128 tokens
# per step, r=8, different seeds and learning rates) on one CPU worker, run
# one after another (4 `lora-worker run`s) and packed into one pass
# (`lora-worker run --pack`, the base model once per step over the 4 jobs'
# rows). Prints total tokens/s (trained tokens over wall time, model loads
# included) and peak RSS of each, and the ratios; "4 separate workers" is the
# sum of the 4 single runs' peak RSS, what 4 workers side by side would hold.
# With LR_BENCH_BACKEND=cuda:N (make bench-gpu) the jobs run on that GPU and
# each run's peak GPU memory (nvidia-smi's memory.used, sampled every 50 ms,
# less what the GPU held before it) is printed beside its RSS.
# Environment: LR_BUILD (default build), LR_BENCH_THREADS (2),
# LR_BENCH_PACK_STEPS (6), LR_BENCH_MODELS (default build/bench-models),
# LR_BENCH_BACKEND (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LR_BUILD:-build}
W=$(realpath "$B/lora-worker")
TH=${LR_BENCH_THREADS:-2}
STEPS=${LR_BENCH_PACK_STEPS:-6}
MODELS=${LR_BENCH_MODELS:-$B/bench-models}
BE=${LR_BENCH_BACKEND:-cpu}
PY=/usr/bin/python3
gpu=
case $BE in cuda*) gpu=${BE#cuda}; gpu=${gpu#:}; gpu=${gpu:-0} ;; esac
if [ -n "$gpu" ] && ! command -v nvidia-smi >/dev/null; then
  echo "pack.sh: nvidia-smi not found: no GPU memory figures" >&2
  gpu=
fi
dir=$MODELS/gpt2-124m-f32
mkdir -p "$MODELS"
[ -f "$dir/model.safetensors" ] || "$W" mkmodel --arch gpt2 --preset gpt2-124m --seed 1 --dtype f32 --out "$dir" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY - "$work" "$(realpath "$dir")" "$STEPS" <<'PY'
import json, random, sys
work, model, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
words = "the a model trains on rows of text while its base stays frozen and only small adapters learn".split()
for j in range(4):
    rnd = random.Random(j)
    with open("%s/d%d.jsonl" % (work, j), "w") as f:
        for _ in range(64):
            f.write(json.dumps({"text": " ".join(rnd.choice(words) for _ in range(200))}) + "\n")
    spec = {"name": "job%d" % j, "model": model, "training_file": "d%d.jsonl" % j,
            "hyperparameters": {"max_steps": steps, "batch_size": 1, "max_seq_len": 128, "packing": True,
                                "val_ratio": 0, "eval_steps": 0, "save_steps": 0, "logging_steps": steps,
                                "learning_rate": 1e-4 * (j + 1), "seed": j + 1},
            "lora": {"r": 8, "alpha": 16}}
    with open("%s/job%d.json" % (work, j), "w") as f:
        json.dump(spec, f)
PY
smi() { nvidia-smi -i "$gpu" --query-gpu=memory.used --format=csv,noheader,nounits "$@"; }
# /usr/bin/time -f: wall seconds and peak RSS (KB) of one command, then its peak GPU memory (MiB, 0 on the CPU)
timed() {
  local base=0 pid=
  if [ -n "$gpu" ]; then base=$(smi); smi -lms 50 >"$work/smi" & pid=$!; fi
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { [ -z "$pid" ] || kill "$pid"; cat "$work/err" >&2; exit 1; }
  local peak=$base
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    peak=$(sort -n "$work/smi" | tail -n1)
  fi
  echo "$(cat "$work/t") $((peak > base ? peak - base : 0))"
}
seq_wall=0; seq_max=0; seq_sum=0; seq_gmax=0; seq_gsum=0
for j in 0 1 2 3; do
  read -r w kb mb <<<"$(timed "$W" run --config "$work/job$j.json" --out "$work/seq/job$j" --backend "$BE" --threads "$TH" --quiet)"
  seq_wall=$($PY -c "print($seq_wall + $w)"); seq_sum=$((seq_sum + kb)); [ "$kb" -gt "$seq_max" ] && seq_max=$kb
  seq_gsum=$((seq_gsum + mb)); [ "$mb" -gt "$seq_gmax" ] && seq_gmax=$mb
done
read -r pk_wall pk_kb pk_mb <<<"$(timed "$W" run --pack "$work"/job0.json "$work"/job1.json "$work"/job2.json "$work"/job3.json \
  --out "$work/pack" --backend "$BE" --threads "$TH" --quiet)"
$PY - "$work" "$seq_wall" "$seq_max" "$seq_sum" "$pk_wall" "$pk_kb" "$TH" "$BE" "$gpu" "$seq_gmax" "$seq_gsum" "$pk_mb" <<'PY'
import json, sys
work, seq_wall, seq_max, seq_sum, pk_wall, pk_kb, th, be, gpu, seq_gmax, seq_gsum, pk_mb = sys.argv[1:]
seq_wall, pk_wall = float(seq_wall), float(pk_wall)
tok = lambda mode: sum(json.load(open("%s/%s/job%d/time_metrics.json" % (work, mode, j)))["tokens"] for j in range(4))
ts, tp = tok("seq"), tok("pack")
print("co-training, 4 jobs gpt2-124m 1x128 tokens r=8, %s:" % ("%s threads" % th if be == "cpu" else be))
print("  one after another: %6.0f tok/s total (%d tokens, %.1f s), peak RSS %.0f MB (4 separate workers: %.0f MB)"
      % (ts / seq_wall, ts, seq_wall, int(seq_max) / 1024, int(seq_sum) / 1024))
print("  packed, one pass:  %6.0f tok/s total (%d tokens, %.1f s), peak RSS %.0f MB"
      % (tp / pk_wall, tp, pk_wall, int(pk_kb) / 1024))
print("  packed / one after another: %.2fx tokens/s; peak RSS %.2fx of one worker's, %.2fx of 4 separate workers'"
      % ((tp / pk_wall) / (ts / seq_wall), int(pk_kb) / int(seq_max), int(pk_kb) / int(seq_sum)))
if gpu:
    print("  peak GPU memory: packed %d MiB; one after another %d MiB (4 separate workers: %d MiB); %.2fx of 4 separate workers'"
          % (int(pk_mb), int(seq_gmax), int(seq_gsum), int(pk_mb) / max(int(seq_gsum), 1)))
PY
