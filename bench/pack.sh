#!/usr/bin/env bash
# Co-training (issue 19): 4 small LoRA jobs (gpt2-124m preset, 1 x 128 tokens
# per step, r=8, different seeds and learning rates) on one CPU worker, run
# one after another (4 `lora-worker run`s) and packed into one pass
# (`lora-worker run --pack`, the base model once per step over the 4 jobs'
# rows). Prints total tokens/s (trained tokens over wall time, model loads
# included) and peak RSS of each, and the ratios; "4 separate workers" is the
# sum of the 4 single runs' peak RSS, what 4 workers side by side would hold.
# Environment: LR_BUILD (default build), LR_BENCH_THREADS (2),
# LR_BENCH_PACK_STEPS (6), LR_BENCH_MODELS (default build/bench-models).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LR_BUILD:-build}
W=$(realpath "$B/lora-worker")
TH=${LR_BENCH_THREADS:-2}
STEPS=${LR_BENCH_PACK_STEPS:-6}
MODELS=${LR_BENCH_MODELS:-$B/bench-models}
PY=/usr/bin/python3
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
# /usr/bin/time -f: wall seconds and peak RSS (KB) of one command
timed() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; cat "$work/t"; }
seq_wall=0; seq_max=0; seq_sum=0
for j in 0 1 2 3; do
  read -r w kb <<<"$(timed "$W" run --config "$work/job$j.json" --out "$work/seq/job$j" --threads "$TH" --quiet)"
  seq_wall=$($PY -c "print($seq_wall + $w)"); seq_sum=$((seq_sum + kb)); [ "$kb" -gt "$seq_max" ] && seq_max=$kb
done
read -r pk_wall pk_kb <<<"$(timed "$W" run --pack "$work"/job0.json "$work"/job1.json "$work"/job2.json "$work"/job3.json \
  --out "$work/pack" --threads "$TH" --quiet)"
$PY - "$work" "$seq_wall" "$seq_max" "$seq_sum" "$pk_wall" "$pk_kb" "$TH" <<'PY'
import json, sys
work, seq_wall, seq_max, seq_sum, pk_wall, pk_kb, th = sys.argv[1:]
seq_wall, pk_wall = float(seq_wall), float(pk_wall)
tok = lambda mode: sum(json.load(open("%s/%s/job%d/time_metrics.json" % (work, mode, j)))["tokens"] for j in range(4))
ts, tp = tok("seq"), tok("pack")
print("co-training, 4 jobs gpt2-124m 1x128 tokens r=8, %s threads:" % th)
print("  one after another: %6.0f tok/s total (%d tokens, %.1f s), peak RSS %.0f MB (4 separate workers: %.0f MB)"
      % (ts / seq_wall, ts, seq_wall, int(seq_max) / 1024, int(seq_sum) / 1024))
print("  packed, one pass:  %6.0f tok/s total (%d tokens, %.1f s), peak RSS %.0f MB"
      % (tp / pk_wall, tp, pk_wall, int(pk_kb) / 1024))
print("  packed / one after another: %.2fx tokens/s; peak RSS %.2fx of one worker's, %.2fx of 4 separate workers'"
      % ((tp / pk_wall) / (ts / seq_wall), int(pk_kb) / int(seq_max), int(pk_kb) / int(seq_sum)))
PY
