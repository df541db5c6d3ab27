#!/usr/bin/env bash
# Data-parallel training (issue 18): lora-worker run started by mpirun as 2
# ranks, each training 1 of the step's 2 micro-batches of 4 sequences,
# matches 1 process training both (8 sequences per step) over 20 optimizer
# steps: logged losses to 1e-6 relative, final weights to 1e-6, for LoRA
# (with dropout), DoRA, KL-SFT, DPO and full_sft. A checkpoint of 2 ranks
# resumes on 1 and one of 1 on 2 to the same end; kill -9 of one rank ends
# the run (mpirun ends the other) and a resume from its checkpoint, on 1 or
# 2 ranks, ends where the uninterrupted run does.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${LR_BUILD:-build}
W=$B/lora-worker
pass=0; fail=0; skip=0
ok()   { echo "ok   $1"; pass=$((pass+1)); }
bad()  { echo "FAIL $1"; fail=$((fail+1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; return 1; fi; }
if ! command -v mpirun >/dev/null 2>&1; then
  echo "skip test_dist_train: mpirun not installed (mk/deps.sh installs openmpi-bin)"
  echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
T=$(mktemp -d /tmp/lrdist.XXXXXX)
MPIPID=
trap '[ -n "$MPIPID" ] && kill -9 $MPIPID 2>/dev/null; rm -rf "$T"' EXIT
# root on a 2-core box: both flags are needed; the ranks use one thread each
MPI=(mpirun --allow-run-as-root --oversubscribe -np 2)

"$W" mkmodel --arch llama --preset tiny --seed 3 --out "$T/model" >/dev/null || { echo "FAIL mkmodel"; echo "0 passed, 1 failed, 0 skipped"; exit 1; }
cp examples/demo.jsonl "$T/sft.jsonl"
/usr/bin/python3 - "$T" <<'PY'
import json, random, sys
d = sys.argv[1]
r = random.Random(1)
cols = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red")]
with open(d + "/dpo.jsonl", "w") as f:
    for i in range(64):
        o, c = cols[i % 5]
        f.write(json.dumps({"prompt": f"Question {i}: what colour is {o}?", "chosen": f"Answer: {o} is {c}.",
                            "rejected": f"I think {o} is {cols[(i + 2) % 5][1]}, maybe."}) + "\n")
with open(d + "/text.jsonl", "w") as f:
    for i in range(96):
        f.write(json.dumps({"text": f"the {r.choice(['red','blue','green'])} {r.choice(['cat','dog','owl'])} sat near the {r.choice(['hill','lake'])}."}) + "\n")
PY
# job NAME DATA METHOD LORA [MAX_SEQ_LEN [MAX_STEPS SAVE_STEPS EVAL_STEPS]]
job() {
  cat > "$T/$1.yaml" <<YAML
model: model
training_file: $2
chat_template: chatml
method: $3
lora: $4
hyperparameters: {max_steps: ${6:-20}, batch_size: 4, grad_accum: 2, learning_rate: 3.0e-3, warmup_ratio: 0.1,
                  max_seq_len: ${5:-64}, val_ratio: 0.1, logging_steps: 1, eval_steps: ${8:-10}, save_steps: ${7:-10},
                  save_total_limit: 0, weight_decay: 0.1, seed: 5}
YAML
}
# same DIR_A DIR_B FILE: logged values to 1e-6 relative, weights to 1e-6 absolute
same() {
  /usr/bin/python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: struct.unpack("<%df" % ((v["data_offsets"][1] - v["data_offsets"][0]) // 4),
                             b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}
a, b, f = sys.argv[1:4]
la, lb = json.load(open(a + "/train_log.json")), json.load(open(b + "/train_log.json"))
assert len(la) == len(lb) and len(la) >= 20, (len(la), len(lb))
# losses to 1e-6 relative; the other logged values (rewards near 0 at the
# start, grad_norm) to 1e-5 of their scale: the ranks' gradients are summed
# in another float order than one process accumulates them (full_sft's
# grad_norm moves by up to ~4e-6)
rel, other, worst = 0.0, 0.0, ""
for x, y in zip(la, lb):
    assert x["step"] == y["step"], (x["step"], y["step"])
    for k in x:
        if k in ("tokens_per_s", "epoch") or x[k] is None and y[k] is None:
            continue
        d = abs(x[k] - y[k])
        if k in ("loss", "eval_loss", "ce_loss"):
            rel = max(rel, d / abs(y[k]))
        elif d / max(abs(y[k]), 1.0) > other:
            other, worst = d / max(abs(y[k]), 1.0), f" ({k} at step {x['step']})"
A, B = tensors(a + "/" + f), tensors(b + "/" + f)
assert sorted(A) == sorted(B)
dw = max(abs(p - q) for k in A for p, q in zip(A[k], B[k]))
print(f"    losses max rel diff {rel:.2e}, other logged values {other:.2e}{worst}, weights max abs diff {dw:.2e}")
sys.exit(0 if rel <= 1e-6 and other <= 1e-5 and dw <= 1e-6 else 1)
PY
}
one()  { "$W" run --config "$T/$1.yaml" --out "$T/$2" --threads 1 --quiet "${@:3}" > "$T/$2.log" 2>&1; }
two()  { "${MPI[@]}" "$W" run --config "$T/$1.yaml" --out "$T/$2" --threads 1 --quiet "${@:3}" > "$T/$2.log" 2>&1; }

LORA='{r: 8, alpha: 16, dropout: 0.1, targets: all-linear}'
job lora sft.jsonl '{type: sft}' "$LORA"
job dora sft.jsonl '{type: sft}' '{r: 4, alpha: 8, dropout: 0.0, use_dora: true, targets: attn}'
job kl sft.jsonl '{type: kl_sft, kl_lambda: 0.5, kl_tau: 2.0}' "$LORA"
job dpo dpo.jsonl '{type: dpo, beta: 0.1}' "$LORA"
job full text.jsonl '{type: full_sft}' "$LORA" 32
for m in lora dora kl dpo full; do
  f=adapter_model.safetensors; [ $m = full ] && f=model.safetensors
  one $m $m-1; r1=$?
  two $m $m-2; r2=$?
  check "$m: 1 process and 2 ranks both finish" "[ $r1 = 0 ] && [ $r2 = 0 ]" || tail -3 "$T/$m-1.log" "$T/$m-2.log"
  check "$m: 2 ranks x 4 sequences == 1 process x 8 sequences over 20 steps" "same '$T/$m-1' '$T/$m-2' $f"
done
check "rank 0 alone wrote the run directory and says it ran on 2 ranks" \
  "grep -q 'on 2 ranks (MPI)' '$T/lora-2.log' && [ \$(grep -c 'training on' '$T/lora-2.log') = 1 ]"

# a checkpoint resumes on another rank count
for pair in "lora-2 1" "lora-1 2" "full-2 1"; do
  set -- $pair
  src=$1 n=$2 m=${1%-*} d=$T/res-$1-$2
  f=adapter_model.safetensors; [ $m = full ] && f=model.safetensors
  mkdir -p "$d/checkpoints"
  cp -r "$T/$src/checkpoints/checkpoint-10" "$d/checkpoints/"
  cp "$T/$src/train_log.json" "$d/"
  if [ $n = 1 ]; then one $m "${d#$T/}" --resume; else two $m "${d#$T/}" --resume; fi
  check "$src's checkpoint-10 resumed on $n rank(s) ends as the straight run" \
    "grep -q 'resumed from checkpoint at step 10' '$d.log' && same '$T/$src' '$d' $f"
done

# kill -9 of one rank: mpirun ends the other, the checkpoint is whole, and a
# resume on 1 or 2 ranks ends where the uninterrupted run does
job long sft.jsonl '{type: sft}' "$LORA" 64 80 5 0
one long long-1
"${MPI[@]}" "$W" run --config "$T/long.yaml" --out "$T/killed" --threads 1 --quiet > "$T/killed.log" 2>&1 &
MPIPID=$!
for _ in $(seq 1200); do [ -f "$T/killed/checkpoints/checkpoint-5/DONE" ] && break; sleep 0.05; done
victim=$(pgrep -P $MPIPID -f 'lora-worker run' | tail -n1)
[ -n "$victim" ] && kill -9 "$victim"
wait $MPIPID; krc=$?; MPIPID=
if [ -e "$T/killed/adapter_model.safetensors" ]; then
  echo "skip rank kill -9: the run finished before a rank could be killed"; skip=$((skip+1))
else
  check "kill -9 of one rank ends the run with a failure (mpirun exit $krc)" "[ -n '$victim' ] && [ $krc != 0 ]"
  done_ck=$(ls "$T"/killed/checkpoints/*/DONE 2>/dev/null | wc -l)
  check "the killed run left complete checkpoints to resume from ($done_ck)" "[ $done_ck -ge 1 ]"
  cp -r "$T/killed" "$T/killed-b"
  one long killed --resume
  check "resumed on 1 process, it ends as the uninterrupted run" "grep -q 'resumed from checkpoint' '$T/killed.log' && same '$T/long-1' '$T/killed' adapter_model.safetensors"
  two long killed-b --resume
  check "resumed on 2 ranks, it ends as the uninterrupted run" "grep -q 'resumed from checkpoint' '$T/killed-b.log' && same '$T/long-1' '$T/killed-b' adapter_model.safetensors"
fi

echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
