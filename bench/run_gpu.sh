#!/usr/bin/env bash
# make bench-gpu: LoRA training throughput of the CUDA backend.
#
# Two shapes, LoRA r=16 on every linear layer, bf16 base weights, random tokens:
#   qwen2.5-0.5b preset, 8 x 1024 tokens per step
#   llama-3-8b preset,   1 x 2048 tokens per step   (goal: >= 45% MFU on an H100)
# Prints tokens/s, GPU memory peak and MFU = achieved FLOP/s / the GPU's dense
# bf16 peak, with the FLOP formula, and the ratio to the PyTorch peer measured
# in the same run: bench/torch_lora_step.py --device cuda --dtype bf16 (the
# step as PEFT + transformers run it: bf16 base, f32 adapters, SDPA attention)
# on the same shape and batch, with the python3 that has a CUDA PyTorch
# ($LR_BENCH_PY, default python3; without one the ratio column says so).
# The random models are written once by
# `lora-worker mkmodel` into $LR_BENCH_MODELS (default build/bench-models; the
# 8B one takes 16 GB of disk). Then co-training (issue 19): bench/pack.sh on
# the GPU, 4 small LoRA jobs (gpt2-124m, 1 x 128 tokens, r=8) packed into one
# pass vs one after another, total tokens/s and peak GPU memory of each.
# Then the data-parallel figure (bench/dist.sh
# gpu): 1 GPU vs all of them, all-reduce share, implied bus bandwidth; it
# skips with the expected all-reduce formula on a 1-GPU machine.
# Without a usable GPU it says so and exits 0.
#
# Environment: LR_BUILD (build dir, default build), LR_BENCH_MODELS, LR_BENCH_STEPS
# (timed steps per shape, default 5), LR_BENCH_DEVICE (default cuda:0),
# LR_BENCH_SHAPES (default "qwen llama"), LR_BENCH_PY, LR_BENCH_PACK_STEPS (steps
# per co-training job, default 20 here).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${LR_BUILD:-build}
W=$BUILD/lora-worker
MODELS=${LR_BENCH_MODELS:-$BUILD/bench-models}
STEPS=${LR_BENCH_STEPS:-5}
DEV=${LR_BENCH_DEVICE:-cuda:0}
SHAPES=${LR_BENCH_SHAPES:-qwen llama}
PY=/usr/bin/python3
PEER_PY=${LR_BENCH_PY:-python3}

[ -x "$W" ] || { echo "bench-gpu: $W not built (run make)" >&2; exit 2; }

probe=$("$W" probe)
if grep -q '^no usable GPU' <<<"$probe"; then
    echo "bench-gpu: skipped: $(grep '^no usable GPU' <<<"$probe")"
    echo "bench-gpu: no figures measured; run it on a machine with an NVIDIA GPU (compute capability 8.x or 9.x)"
    exit 0
fi
echo "bench-gpu: $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
echo "$probe"

peer_ok=0
if peer_why=$("$PEER_PY" -c 'import torch; assert torch.cuda.is_available(), "torch %s sees no GPU" % torch.__version__' 2>&1); then
    peer_ok=1
else
    echo "bench-gpu: no PyTorch peer: $PEER_PY: $(tail -n1 <<<"$peer_why")"
fi

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
    peer='{}'
    if [ $peer_ok = 1 ]; then
        echo "bench-gpu: PyTorch peer, same shape and batch ..."
        if ! peer=$("$PEER_PY" bench/torch_lora_step.py --preset "$preset" --batch "$B" --seq "$T" --steps "$STEPS" \
            --r 16 --device cuda --dtype bf16 2>"$MODELS/peer-$preset.err" | tail -n1); then
            echo "bench-gpu: the PyTorch peer failed on $preset: $(tail -n1 "$MODELS/peer-$preset.err")"
            peer='{}'
        fi
    fi
    results+=("$preset|$line|$peer")
done

echo
printf '%-14s %7s %12s %14s %10s %8s %14s %14s %8s\n' shape tokens tokens/s "GPU peak GiB" TFLOP/s MFU \
    "torch tok/s" "torch GiB" ratio
for r in "${results[@]}"; do
    IFS='|' read -r name line peer <<<"$r"
    "$PY" - "$name" "$line" "$peer" <<'EOF'
import json, sys
name, j, p = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
tok = j["batch"] * j["seq"]
peer = ("%14.0f %14.2f %7.2fx" % (p["tokens_per_s"], p["gpu_peak_mb"] / 1024, j["tokens_per_s"] / p["tokens_per_s"])
        if p else "%14s %14s %8s" % ("-", "-", "-"))
print("%-14s %7d %12.0f %14.2f %10.1f %7.1f%% %s" % (name, tok, j["tokens_per_s"], j.get("gpu_peak_mb", 0) / 1024,
      j["gflops"] / 1e3, 100 * j.get("mfu", 0), peer))
EOF
done
first=${results[0]#*|}
gpu=$("$PY" -c 'import json,sys; j=json.loads(sys.argv[1]); print("%s, dense bf16 peak %.1f TFLOP/s" % (j.get("gpu","?"), j.get("peak_bf16_tflops",0)))' "${first%%|*}")
echo
echo "GPU: $gpu"
echo "MFU = achieved FLOP/s / dense bf16 peak;"
echo "FLOPs/token = 4*P + 6*L*Hq*D*(T+1): P = matmul weights incl. lm_head (forward 2P + input-gradient"
echo "backward 2P; frozen weights get no weight gradient), causal attention forward + backward; LoRA's own"
echo "matmuls not counted. Tokens/s from the median step (zero grads + forward + backward + AdamW)."
echo "ratio = lorad tokens/s / the PyTorch peer's (bench/torch_lora_step.py on the GPU, bf16, SDPA), same run."
echo
LR_BUILD=$BUILD LR_BENCH_MODELS=$MODELS LR_BENCH_BACKEND=$DEV LR_BENCH_PACK_STEPS=${LR_BENCH_PACK_STEPS:-20} \
    bash bench/pack.sh
echo
bash bench/dist.sh gpu
