#!/usr/bin/env bash
# make bench-gpu: LoRA training throughput of the CUDA backend.
#
# Two shapes, LoRA r=16 on every linear layer, bf16 base weights, random tokens:
#   qwen2.5-0.5b preset, 8 x 1024 tokens per step
#   llama-3-8b preset,   1 x 2048 tokens per step   (goal: >= 45% MFU on an H100)
# Prints tokens/s, GPU memory peak and MFU = achieved FLOP/s / the GPU's dense
# bf16 peak, with the FLOP formula. The random models are written once by
# `lora-worker mkmodel` into $LR_BENCH_MODELS (default build/bench-models; the
# 8B one takes 16 GB of disk). Without a usable GPU it says so and exits 0.
#
# Environment: LR_BUILD (build dir, default build), LR_BENCH_MODELS, LR_BENCH_STEPS
# (timed steps per shape, default 5), LR_BENCH_DEVICE (default cuda:0),
# LR_BENCH_SHAPES (default "qwen llama").
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${LR_BUILD:-build}
W=$BUILD/lora-worker
MODELS=${LR_BENCH_MODELS:-$BUILD/bench-models}
STEPS=${LR_BENCH_STEPS:-5}
DEV=${LR_BENCH_DEVICE:-cuda:0}
SHAPES=${LR_BENCH_SHAPES:-qwen llama}
PY=/usr/bin/python3

[ -x "$W" ] || { echo "bench-gpu: $W not built (run make)" >&2; exit 2; }

probe=$("$W" probe)
if grep -q '^no usable GPU' <<<"$probe"; then
    echo "bench-gpu: skipped: $(grep '^no usable GPU' <<<"$probe")"
    echo "bench-gpu: no figures measured; run it on a machine with an NVIDIA GPU (compute capability 8.x or 9.x)"
    exit 0
fi
echo "bench-gpu: $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
echo "$probe"

mkdir -p "$MODELS"
results=()
for shape in $SHAPES; do
    case $shape in
    qwen) preset=qwen2.5-0.5b arch=qwen2 B=8 T=1024 ;;
    llama) preset=llama-3-8b arch=llama B=1 T=2048 ;;
    *) echo "bench-gpu: unknown shape '$shape' (qwen, llama)" >&2; exit 2 ;;
    esac
    dir=$MODELS/$preset-bf16
    if [ ! -f "$dir/config.json" ]; then
        echo "bench-gpu: writing a random $preset model (bf16) to $dir ..."
        "$W" mkmodel --arch "$arch" --preset "$preset" --dtype bf16 --out "$dir" >/dev/null
    fi
    echo "bench-gpu: $preset  B=$B T=$T  r=16 all linear layers, bf16 weights, $STEPS steps ..."
    if ! line=$("$W" bench --model "$dir" --backend "$DEV" --batch "$B" --seq "$T" --steps "$STEPS" --r 16); then
        echo "bench-gpu: $preset failed" >&2
        exit 2
    fi
    results+=("$preset|$line")
done

echo
printf '%-14s %7s %12s %14s %10s %8s\n' shape tokens tokens/s "GPU peak GiB" TFLOP/s MFU
for r in "${results[@]}"; do
    "$PY" - "${r%%|*}" "${r#*|}" <<'EOF'
import json, sys
name, j = sys.argv[1], json.loads(sys.argv[2])
tok = j["batch"] * j["seq"]
print("%-14s %7d %12.0f %14.2f %10.1f %7.1f%%" % (name, tok, j["tokens_per_s"], j.get("gpu_peak_mb", 0) / 1024,
      j["gflops"] / 1e3, 100 * j.get("mfu", 0)))
EOF
done
gpu=$("$PY" -c 'import json,sys; j=json.loads(sys.argv[1]); print("%s, dense bf16 peak %.1f TFLOP/s" % (j.get("gpu","?"), j.get("peak_bf16_tflops",0)))' "${results[0]#*|}")
echo
echo "GPU: $gpu"
echo "MFU = achieved FLOP/s / dense bf16 peak;"
echo "FLOPs/token = 4*P + 6*L*Hq*D*(T+1): P = matmul weights incl. lm_head (forward 2P + input-gradient"
echo "backward 2P; frozen weights get no weight gradient), causal attention forward + backward; LoRA's own"
echo "matmuls not counted. Tokens/s from the median step (zero grads + forward + backward + AdamW)."
