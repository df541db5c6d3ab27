#!/usr/bin/python3
"""QLoRA: `lora-worker grads` on a 4-bit base against the PyTorch oracle
(reference_model.py) run in f32 on the dequantized weights that
bnb_quant.py (bitsandbytes' algorithm restated) gives: loss to 1e-5
relative, every LoRA gradient to 1e-4 (max|diff| / max|ref|), as
test_grads.py. The engine quantizes at load (`--quantize nf4|fp4
[--double-quant]`) the f32 or bf16 checkpoint the test writes (test_quant.c
compares its codes and scales with bitsandbytes' bit for bit; here a control
case checks that the unquantized model misses the oracle by far more than
the tolerance, so the comparison does see the quantization).

Shapes: llama (GQA, untied), qwen2 (q/k/v biases, tied), mistral (sliding
window), gpt2 (Conv1D weights, transposed before quantizing as transformers
does), a llama whose rows (48) are not a multiple of the block (64), a bf16
checkpoint, FP4, and DoRA (its weight norm from the dequantized weight).

Pre-quantized: the same model written by bnb_quant.write_bnb_model in
transformers' bitsandbytes layout (quantization_config, weight as packed
uint8, weight.absmax, weight.quant_map, weight.nested_absmax,
weight.nested_quant_map, weight.quant_state.bitsandbytes__nf4) loads without
--quantize and gives exactly the loss of quantize-on-load. `lora-worker merge`
of an adapter into such a folder writes a plain model (no 4-bit tensors, no
quantization_config) whose weights are the dequantized ones plus the
adapter's delta, and whose loss without adapter is the oracle's with it.
`lora-worker generate` on such a folder with the adapter: prefill logits and
greedy tokens as the oracle's on the dequantized weights (test_generate.py's
tolerance)."""
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bnb_quant as bq  # noqa: E402
import reference_model as ref  # noqa: E402
import test_generate as tgen  # noqa: E402
import test_grads as tg  # noqa: E402

LLAMA_ALL = tg.LLAMA_ALL
GPT2_ALL = ["c_attn", "c_proj", "c_fc"]
# name, arch, config kwargs, targets, quant type, double quant, options (dtype, dora)
CASES = [
    ("llama-nf4", "llama", {}, LLAMA_ALL, "nf4", False, {}),
    ("llama-nf4-dq", "llama", {}, LLAMA_ALL, "nf4", True, {}),
    ("qwen2-nf4-bias-tied", "qwen2", {"tie": True, "kv_heads": 2}, LLAMA_ALL, "nf4", False, {}),
    ("qwen2-nf4-dq", "qwen2", {"tie": True}, LLAMA_ALL, "nf4", True, {}),
    ("mistral-nf4-window", "mistral", {"sliding_window": 5}, ["q_proj", "v_proj"], "nf4", False, {}),
    ("mistral-nf4-dq", "mistral", {"kv_heads": 2}, LLAMA_ALL, "nf4", True, {}),
    ("gpt2-nf4", "gpt2", {"heads": 4, "inter": 256}, GPT2_ALL, "nf4", False, {}),
    ("gpt2-nf4-dq", "gpt2", {"heads": 4, "inter": 256}, GPT2_ALL, "nf4", True, {}),
    ("llama-rows48-nf4-dq", "llama", {"hidden": 48, "inter": 80}, LLAMA_ALL, "nf4", True, {}),
    ("llama-bf16-nf4-dq", "llama", {}, LLAMA_ALL, "nf4", True, {"dtype": torch.bfloat16}),
    ("qwen2-fp4", "qwen2", {}, LLAMA_ALL, "fp4", False, {}),
    ("gpt2-fp4-dq", "gpt2", {"heads": 4, "inter": 256}, GPT2_ALL, "fp4", True, {}),
    ("llama-nf4-dora", "llama", {}, LLAMA_ALL, "nf4", True, {"dora": True}),
    ("gpt2-nf4-dora", "gpt2", {"heads": 4, "inter": 256}, GPT2_ALL, "nf4", False, {"dora": True}),
]
# name, arch, config kwargs, quant type, double quant
PREQUANT_CASES = [
    ("prequant-llama-nf4-dq", "llama", {}, "nf4", True),
    ("prequant-qwen2-nf4", "qwen2", {"tie": True}, "nf4", False),
    ("prequant-gpt2-nf4-dq", "gpt2", {"heads": 4, "inter": 256}, "nf4", True),
    ("prequant-mistral-fp4", "mistral", {}, "fp4", False),
]
MERGE_CASES = [
    ("merge-llama-nf4-dq", "llama", {}, "nf4", True),
    ("merge-gpt2-nf4", "gpt2", {"heads": 4, "inter": 256}, "nf4", False),
]
GENERATE_CASES = [
    ("generate-qwen2-nf4-dq", "qwen2", {"tie": True}, "nf4", True),
    ("generate-gpt2-nf4", "gpt2", {"heads": 4, "inter": 256}, "nf4", False),
]


def setup(tmp, name, arch, kw, targets, qt, dq, dtype, dora, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = ref.make_config(arch, **kw)
    weights = ref.random_weights(cfg, gen)
    _, deq = bq.bnb_weights(cfg, weights, qt, dq, dtype)
    r, alpha = 4, 8
    scale = alpha / r
    lora = ref.random_lora(cfg, targets, r, gen)
    if dora:
        lora.update(ref.random_magnitudes(cfg, deq, lora, scale, gen))
    ids, labels = tg.make_batch(gen, cfg["vocab_size"])
    d = os.path.join(tmp, name)
    mdir, adir = os.path.join(d, "model"), os.path.join(d, "adapter")
    ref.write_model(mdir, cfg, weights, dtype)
    ref.write_adapter(adir, cfg, lora, r, alpha, targets, False, dora)
    bpath, gpath = os.path.join(d, "batch.json"), os.path.join(d, "grads.safetensors")
    with open(bpath, "w") as f:
        json.dump({"input_ids": ids.tolist(), "labels": labels.tolist()}, f)
    params = {k: v.clone().requires_grad_(True) for k, v in lora.items()}
    loss = ref.forward_loss(cfg, deq, ref.Lora(params, scale), ids, labels)
    loss.backward()
    n_tok = int((labels[:, 1:] != -100).sum())
    return cfg, weights, mdir, adir, bpath, gpath, loss, params, n_tok


def run_case(tmp, name, arch, kw, targets, qt, dq, opt, seed):
    cfg, _, mdir, adir, bpath, gpath, loss, params, n_tok = setup(
        tmp, name, arch, kw, targets, qt, dq, opt.get("dtype", torch.float32), opt.get("dora", False), seed)
    args = ["--model", mdir, "--adapter", adir, "--batch", bpath, "--out", gpath, "--quantize", qt]
    return tg.check_grads(args + (["--double-quant"] if dq else []), gpath, loss, params, n_tok)


def worker_loss(args):
    p = subprocess.run([tg.WORKER, "grads"] + args, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"lora-worker failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout)["loss"]


def run_prequant_case(tmp, name, arch, kw, qt, dq, seed):
    targets = GPT2_ALL if arch == "gpt2" else LLAMA_ALL
    cfg, weights, mdir, adir, bpath, gpath, loss, params, n_tok = setup(
        tmp, name, arch, kw, targets, qt, dq, torch.float32, False, seed)
    qdir = os.path.join(tmp, name, "model-4bit")
    bq.write_bnb_model(qdir, cfg, weights, qt, dq)
    ok, msg = tg.check_grads(["--model", qdir, "--adapter", adir, "--batch", bpath, "--out", gpath], gpath, loss,
                             params, n_tok)
    try:
        pre = worker_loss(["--model", qdir, "--adapter", adir, "--batch", bpath, "--out", gpath])
        onload = worker_loss(["--model", mdir, "--adapter", adir, "--batch", bpath, "--out", gpath, "--quantize", qt]
                             + (["--double-quant"] if dq else []))
    except RuntimeError as e:
        return False, str(e)
    if pre != onload:
        ok = False
        msg += f" -- pre-quantized loss {pre!r} != quantize-on-load {onload!r}"
    else:
        msg += ", equals quantize-on-load"
    return ok, msg


def run_merge_case(tmp, name, arch, kw, qt, dq, seed):
    targets = GPT2_ALL if arch == "gpt2" else LLAMA_ALL
    cfg, weights, mdir, adir, bpath, gpath, loss, params, n_tok = setup(
        tmp, name, arch, kw, targets, qt, dq, torch.float32, False, seed)
    qdir, odir = os.path.join(tmp, name, "model-4bit"), os.path.join(tmp, name, "merged")
    bq.write_bnb_model(qdir, cfg, weights, qt, dq)
    p = subprocess.run([tg.WORKER, "merge", "--model", qdir, "--adapter", adir, "--out", odir], capture_output=True,
                       text=True, timeout=60)
    if p.returncode != 0:
        return False, f"merge failed ({p.returncode}): {p.stderr.strip()}"
    merged = ref.read_safetensors(os.path.join(odir, "model.safetensors"))  # asserts every tensor is F32
    with open(os.path.join(odir, "config.json")) as f:
        mcfg = json.load(f)
    problems = []
    if "quantization_config" in mcfg:
        problems.append("config.json keeps quantization_config")
    if set(merged) != set(weights):
        problems.append(f"tensor names differ: {sorted(set(merged) ^ set(weights))[:4]}")
    with torch.no_grad():
        ml = ref.forward_loss(cfg, merged, ref.Lora({}, 0.0), *load_batch(bpath))
    err = abs(ml.item() - loss.item()) / abs(loss.item())
    if err > tg.LOSS_TOL:
        problems.append(f"merged loss {ml.item():.8g} vs {loss.item():.8g}")
    msg = f"merged model's loss rel err {err:.1e} against the oracle on the 4-bit base with the adapter"
    return not problems, msg + ("" if not problems else " -- " + "; ".join(problems))


def run_generate_case(tmp, name, arch, kw, qt, dq, seed):
    gen = torch.Generator().manual_seed(seed)
    targets = GPT2_ALL if arch == "gpt2" else LLAMA_ALL
    cfg = ref.make_config(arch, **kw)
    weights = ref.random_weights(cfg, gen)
    lora = ref.random_lora(cfg, targets, 4, gen)
    qdir, adir = os.path.join(tmp, name, "model-4bit"), os.path.join(tmp, name, "adapter")
    deq = bq.write_bnb_model(qdir, cfg, weights, qt, dq)
    ref.write_adapter(adir, cfg, lora, 4, 8, targets)
    prompt = torch.randint(3, cfg["vocab_size"], (13,), generator=gen).tolist()
    lpath = os.path.join(tmp, name, "logits.safetensors")
    p = subprocess.run([tg.WORKER, "generate", "--model", qdir, "--adapter", adir, "--prompt-ids",
                        ",".join(map(str, prompt)), "--max-new-tokens", str(tgen.NEW_TOKENS), "--logits-out", lpath,
                        "--json", "--threads", "1"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return False, f"lora-worker failed ({p.returncode}): {p.stderr.strip()}"
    out = json.loads(p.stdout)
    lr = ref.Lora(lora, 2.0)
    want, got = tgen.ref_logits(cfg, deq, lr, prompt), tgen.read_logits(lpath)
    if tuple(got.shape) != tuple(want.shape):
        return False, f"logits shape {tuple(got.shape)} vs {tuple(want.shape)}"
    err = ((got - want).abs().max() / want.abs().max()).item()
    seq, new = list(prompt), []
    for _ in range(tgen.NEW_TOKENS):
        nxt = int(tgen.ref_logits(cfg, deq, lr, seq)[-1].argmax())
        if nxt == cfg.get("eos_token_id"):
            break
        seq.append(nxt)
        new.append(nxt)
    problems = ([f"prefill logits rel err {err:.2e}"] if err > tgen.LOGIT_TOL else []) + \
        ([f"greedy ids {out['ids']} vs reference {new}"] if out["ids"] != new else [])
    msg = f"prefill logits rel err {err:.1e}; {len(new)} greedy tokens as the oracle's"
    return not problems, msg + ("" if not problems else " -- " + "; ".join(problems))


def run_broken_cases(tmp, seed):
    """Malformed 4-bit checkpoints are refused with a message naming the
    tensor, never loaded wrong: (name, edit of the state dict, expected text)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = ref.make_config("llama", layers=1)
    weights = ref.random_weights(cfg, gen)
    key = "model.layers.0.self_attn.q_proj.weight"
    qs_key = key + ".quant_state.bitsandbytes__nf4"

    def state(sd, **change):
        st = json.loads(bytes(sd[qs_key].tolist()))
        st.update(change)
        sd[qs_key] = torch.tensor(list(json.dumps(st).encode()), dtype=torch.uint8)

    edits = [
        ("absmax-short", lambda sd: sd.__setitem__(key + ".absmax", sd[key + ".absmax"][:-1]), "wrong size"),
        ("codes-f32", lambda sd: sd.__setitem__(key, sd[key].float()), "wrong size"),
        ("blocksize-128", lambda sd: state(sd, blocksize=128), "blocksize 128"),
        ("shape-transposed", lambda sd: state(sd, shape=[64, 32]), "shape"),
        ("not-json", lambda sd: sd.__setitem__(qs_key, torch.tensor(list(b"{oops"), dtype=torch.uint8)),
         "not a bitsandbytes quant_state"),
        ("no-nested-offset", lambda sd: state(sd, nested_offset=None), "nested_offset"),
    ]
    results = []
    for name, edit, want in edits:
        d = os.path.join(tmp, "broken-" + name)
        os.makedirs(d, exist_ok=True)
        sd, _ = bq.bnb_weights(cfg, weights, "nf4", True)
        edit(sd)
        c = dict(cfg, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True,
                                           "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)
        bq.write_safetensors(os.path.join(d, "model.safetensors"), sd, {"format": "pt"})
        p = subprocess.run([tg.WORKER, "generate", "--model", d, "--prompt-ids", "1,2,3", "--max-new-tokens", "1"],
                           capture_output=True, text=True, timeout=60)
        ok = p.returncode != 0 and want in p.stderr and key in p.stderr
        results.append((f"broken-{name}", ok, "refused: " + p.stderr.strip().splitlines()[-1][:150] if p.stderr.strip()
                        else f"rc {p.returncode}, no message"))
    return results


def load_batch(bpath):
    with open(bpath) as f:
        b = json.load(f)
    return torch.tensor(b["input_ids"]), torch.tensor(b["labels"])


def run_control(tmp, seed):
    """The unquantized engine against the dequantized oracle must fail."""
    _, _, mdir, adir, bpath, gpath, loss, params, n_tok = setup(
        tmp, "control", "llama", {}, LLAMA_ALL, "nf4", False, torch.float32, False, seed)
    ok, msg = tg.check_grads(["--model", mdir, "--adapter", adir, "--batch", bpath, "--out", gpath], gpath, loss,
                             params, n_tok)
    return not ok, ("the unquantized model misses the nf4 oracle: " if not ok else "the oracle cannot tell: ") + msg


def main():
    torch.set_num_threads(1)
    t0 = time.time()
    passed = failed = 0
    names = [c[0] for c in CASES + PREQUANT_CASES + MERGE_CASES + GENERATE_CASES] + ["control-unquantized"] + \
        ["broken-" + n for n in ("absmax-short", "codes-f32", "blocksize-128", "shape-transposed", "not-json",
                                 "no-nested-offset")]
    if not os.access(tg.WORKER, os.X_OK):
        for n in names:
            print(f"skip {n}: {tg.WORKER} is not built")
        print(f"0 passed, 0 failed, {len(names)} skipped")
        return 0
    with tempfile.TemporaryDirectory(prefix="lrqlora.") as tmp:
        for cases, run, seed0 in ((CASES, run_case, 4000), (PREQUANT_CASES, run_prequant_case, 5000)):
            for i, c in enumerate(cases):
                ok, msg = run(tmp, *c, seed=seed0 + i)
                print(f"{'ok  ' if ok else 'FAIL'} {c[0]:24s} {msg}")
                passed += ok
                failed += not ok
        for i, c in enumerate(MERGE_CASES + GENERATE_CASES):
            run = run_merge_case if c in MERGE_CASES else run_generate_case
            ok, msg = run(tmp, *c, seed=7000 + i)
            print(f"{'ok  ' if ok else 'FAIL'} {c[0]:24s} {msg}")
            passed += ok
            failed += not ok
        for name, ok, msg in run_broken_cases(tmp, 8000):
            print(f"{'ok  ' if ok else 'FAIL'} {name:24s} {msg}")
            passed += ok
            failed += not ok
        ok, msg = run_control(tmp, 6000)
        print(f"{'ok  ' if ok else 'FAIL'} {'control-unquantized':24s} {msg}")
        passed += ok
        failed += not ok
    print(f"({time.time() - t0:.1f}s; tolerances: loss {tg.LOSS_TOL:g} relative, grads {tg.GRAD_TOL:g} max|diff|/max|ref|)")
    print(f"{passed} passed, {failed} failed, 0 skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
