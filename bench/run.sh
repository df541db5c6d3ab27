#!/usr/bin/env bash
# make bench: LoRA training throughput of the CPU engine next to PyTorch doing
# the same step on the same shapes in the same run, plus the sgemm roofline
# measured here and now (these machines are noisy: only ratios measured
# together mean anything).
#
# The roofline is the best sgemm 2048^3 of every kernel the engine can use on
# this CPU (each OpenBLAS core type whose instructions it runs, and
# OpenBLAS's own choice at load), printed next to the engine's automatic
# choice; every "% sgemm" is against the best. The engine runs its automatic
# choice (an OPENBLAS_CORETYPE in the environment is set aside for the run),
# and PyTorch, whose matmuls are OpenBLAS's too, runs with that same core type.
#
# Shapes (LoRA r=16 on every linear layer, f32, random tokens):
#   gpt2-124m preset     4 x 256 tokens per step
#   qwen2.5-0.5b preset  1 x 512 tokens per step
# FLOPs per token = 4 x matmul weights (lm_head included: forward + input-
# gradient backward) + 6 x layers x heads x head_dim x (T+1) (causal attention).
# QLoRA: the qwen2.5-0.5b step again with its linear weights 4-bit NF4
# (lora.quantize nf4): tokens/s and peak RSS next to the f32 run's, and the
# 4-bit weights' bytes (codes + scales) over their f32 bytes.
# compute_dtype bf16 (CPUs with AVX512_BF16, unless LR_BENCH_SKIP_BF16=1): the
# same steps with the frozen linears in bf16 (--compute-dtype bf16; the
# bench models are stored in f32, so their weights are rounded at load)
# next to the f32 steps above and PyTorch's bf16 autocast
# (torch_lora_step.py --autocast), then the GEMMs alone (bench/bf16_gemm.c:
# the engine's bf16 kernel, oneDNN's and the f32 sgemm, forward and
# input-gradient products). Then data-parallel scaling (bench/dist.sh cpu: 1 rank x 2 threads vs 2
# ranks x 1 thread, all-reduce share) unless LR_BENCH_SKIP_DIST=1, co-training
# (bench/pack.sh: 4 small jobs packed vs one after another) unless
# LR_BENCH_SKIP_PACK=1, and the
# HTTP load test (bench/http_load.sh) unless LR_BENCH_SKIP_HTTP=1.
#
# Environment: LR_BUILD (default build), LR_BENCH_THREADS (2), LR_BENCH_STEPS (3),
# LR_BENCH_MODELS (default build/bench-models), LR_BENCH_SHAPES ("gpt2 qwen").
set -euo pipefail
cd "$(dirname "$0")/.."
B=${LR_BUILD:-build}
W=$B/lora-worker
TH=${LR_BENCH_THREADS:-2}
STEPS=${LR_BENCH_STEPS:-3}
MODELS=${LR_BENCH_MODELS:-$B/bench-models}
SHAPES=${LR_BENCH_SHAPES:-gpt2 qwen}
PY=/usr/bin/python3
mkdir -p "$MODELS"

if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
  echo "note: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE is set here; the bench measures the engine's automatic choice without it"
  unset OPENBLAS_CORETYPE
fi
sg=$("$W" bench --sgemm 2048 --threads "$TH" --kernel all)
read -r sg_gflops core <<<"$($PY - "$sg" "$TH" <<'PY'
import json, sys
rows = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
auto = next(r for r in rows if r["auto"])
best = max(rows, key=lambda r: r["gflops"])
print("sgemm 2048^3, %s threads, every kernel the engine can use on this CPU:" % sys.argv[2], file=sys.stderr)
seen = set()
for r in rows:
    if r["kernel"] in seen:
        continue
    seen.add(r["kernel"])
    tags = [t for t, on in (("the engine's choice", r["auto"]), ("OpenBLAS's own at load", r["requested"] == "default"),
                            ("best", r is best)) if on]
    print("  %-22s %-7s %7.1f GFLOP/s  %s" % (r["kernel"], r["isa"], r["gflops"], ", ".join(tags)), file=sys.stderr)
print("roofline (best): %.1f GFLOP/s (%s); the engine's choice: %.1f GFLOP/s (%s)"
      % (best["gflops"], best["kernel"], auto["gflops"], auto["kernel"]), file=sys.stderr)
print(best["gflops"], auto["kernel"].split()[-1])
PY
)"
echo

bf16=0
bf16_rows=""
if [ "${LR_BENCH_SKIP_BF16:-0}" != 1 ]; then
  bf16=$("$W" probe --json | $PY -c "import json, sys; print(1 if json.load(sys.stdin)['cpu'].get('bf16_kernel') else 0)")
fi
printf '%-14s %-8s %12s %12s %8s %10s %9s %10s %10s\n' shape batch "lorad tok/s" "torch tok/s" ratio "GFLOP/s" "% sgemm" "lorad RSS" "torch RSS"
for s in $SHAPES; do
  case $s in
    gpt2) preset=gpt2-124m; arch=gpt2; bs=4; T=256 ;;
    qwen) preset=qwen2.5-0.5b; arch=qwen2; bs=1; T=512 ;;
    *) echo "unknown shape $s"; exit 1 ;;
  esac
  dir=$MODELS/$preset-f32
  [ -f "$dir/model.safetensors" ] || "$W" mkmodel --arch $arch --preset $preset --seed 1 --dtype f32 --out "$dir" >/dev/null
  ours=$("$W" bench --model "$dir" --batch $bs --seq $T --steps "$STEPS" --threads "$TH" --r 16)
  [ $s = qwen ] && qwen_f32=$ours
  if [ "$bf16" = 1 ]; then
    b16=$("$W" bench --model "$dir" --batch $bs --seq $T --steps "$STEPS" --threads "$TH" --r 16 --compute-dtype bf16)
    t16=$(OPENBLAS_CORETYPE=$core $PY bench/torch_lora_step.py --preset $preset --batch $bs --seq $T --threads "$TH" --steps "$STEPS" --r 16 --autocast)
    bf16_rows+="$ours"$'\t'"$b16"$'\t'"$t16"$'\t'"$preset"$'\t'"${bs}x$T"$'\n'
  fi
  theirs=$(OPENBLAS_CORETYPE=$core $PY bench/torch_lora_step.py --preset $preset --batch $bs --seq $T --threads "$TH" --steps "$STEPS" --r 16)
  $PY - "$ours" "$theirs" "$sg_gflops" "$preset" "${bs}x$T" <<'PY'
import json, sys
o, t, sg = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
if any(c != o["kernel"].split()[-1] for c in t.get("blas", [])):
    print("warning: PyTorch ran OpenBLAS %s, lorad %s: the ratio compares different kernels" % (t["blas"], o["kernel"]))
print("%-14s %-8s %12.0f %12.0f %7.2fx %10.1f %8.0f%% %8.0f MB %8.0f MB" % (
    sys.argv[4], sys.argv[5], o["tokens_per_s"], t["tokens_per_s"], o["tokens_per_s"] / t["tokens_per_s"],
    o["gflops"], 100 * o["gflops"] / sg, o["peak_rss_mb"], t["peak_rss_mb"]))
PY
done
echo
echo "ratio = lorad tokens/s over PyTorch $($PY -c 'import torch; print(torch.__version__)') tokens/s (same shapes, threads, LoRA r=16 all-linear, OpenBLAS $core on both)"
echo "% sgemm = lorad GFLOP/s over the best sgemm above"
echo "FLOPs/token = 4 x matmul weights (lm_head included) + 6 x layers x heads x head_dim x (T+1)"
if [ -n "$bf16_rows" ]; then
  echo
  printf '%-14s %-8s %10s %10s %8s %14s %9s %10s %10s\n' "compute bf16" batch "f32 tok/s" "bf16 tok/s" "bf16/f32" "torch autocast" "vs torch" "f32 RSS" "bf16 RSS"
  printf '%s' "$bf16_rows" | $PY -c '
import json, sys
for line in sys.stdin:
    if not line.strip():
        continue
    f, b, t, preset, shape = line.rstrip("\n").split("\t")
    f, b, t = json.loads(f), json.loads(b), json.loads(t)
    print("%-14s %-8s %10.0f %10.0f %7.2fx %14.0f %8.2fx %7.0f MB %7.0f MB" % (
        preset, shape, f["tokens_per_s"], b["tokens_per_s"], b["tokens_per_s"] / f["tokens_per_s"],
        t["tokens_per_s"], b["tokens_per_s"] / t["tokens_per_s"], f["peak_rss_mb"], b["peak_rss_mb"]))
'
  echo "bf16: frozen linear weights packed in bf16 (AVX512_BF16 kernel, f32 accumulation); LoRA, norms, attention, LM head, AdamW in f32"
  echo "torch autocast = PyTorch with the forward under torch.autocast(\"cpu\", bfloat16) (its oneDNN bf16 matmuls)"
fi
if [ -n "${qwen_f32:-}" ]; then
  nf4=$("$W" bench --model "$MODELS/qwen2.5-0.5b-f32" --batch 1 --seq 512 --steps "$STEPS" --threads "$TH" --r 16 --quantize nf4)
  echo
  $PY - "$qwen_f32" "$nf4" <<'PY'
import json, sys
f, q = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("QLoRA, qwen2.5-0.5b 1x512: f32 %.1f tok/s, peak RSS %.0f MB; nf4 %.1f tok/s, peak RSS %.0f MB (%+.0f MB)"
      % (f["tokens_per_s"], f["peak_rss_mb"], q["tokens_per_s"], q["peak_rss_mb"], q["peak_rss_mb"] - f["peak_rss_mb"]))
print("  4-bit linear weights: %.1f MB, %.3f of their %.1f MB in f32 (target <= 0.15); RSS target: at least 1100 MB less"
      % (q["quant_mb"], q["quant_mb"] / q["quant_f32_mb"], q["quant_f32_mb"]))
PY
fi
if [ "${LR_BENCH_SKIP_BF16:-0}" != 1 ]; then
  # the GEMMs alone: the engine's bf16 kernel, oneDNN's, f32 (issue 14, item 4)
  echo
  BLAS_I=$(for d in /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas; do [ -d "$d" ] && echo "-I$d"; done | head -1)
  if cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -I. $BLAS_I bench/bf16_gemm.c kernels/cpu/gemm_bf16.c kernels/cpu/gemm_select.c \
      common/err.c -o "$B/bf16_gemm" -lopenblas -ldl -lm; then
    OPENBLAS_CORETYPE=$core "$B/bf16_gemm" 6 "$TH" # f32 on the engine's core type
  else
    echo "bf16 GEMM: bench/bf16_gemm.c did not build here; skipped"
  fi
fi
if [ "${LR_BENCH_SKIP_PACK:-0}" != 1 ]; then
  echo
  bash bench/pack.sh # co-training: 4 small jobs packed vs one after another (issue 19)
fi
if [ "${LR_BENCH_SKIP_DIST:-0}" != 1 ]; then
  echo
  bash bench/dist.sh cpu
fi
if [ "${LR_BENCH_SKIP_HTTP:-0}" != 1 ] && [ -x bench/http_load.sh ]; then
  echo
  bash bench/http_load.sh
fi
