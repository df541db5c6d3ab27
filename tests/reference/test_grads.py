"""lora-worker grads against the independent PyTorch reference
(reference_model.py): for small random models of each architecture, the
loss must match to 1e-5 relative and every LoRA gradient tensor to 1e-4
(max|diff| / max|ref|). bf16 cases store the weights in bf16; the engine
converts them to f32 and computes in f32, so the reference runs in f32 on
the same bf16-rounded values and the same tolerances apply.

METHOD_CASES run the methods beyond plain LoRA SFT on every architecture,
same tolerances: DoRA (magnitudes perturbed away from their initial value
so that every term of the DoRA output carries gradient; the magnitude
gradients are checked like A and B), KL-regularised SFT (loss = CE +
lambda tau^2 KL(base || tuned)), and DPO against the base model or against
a separate reference adapter (LoRA or DoRA), with the DPO metrics.

FULL_CASES are full fine-tuning (`grads --full`): the gradient of every
base weight (embeddings, positions, norms, biases, tied or separate LM
head) under the checkpoint's names, same tolerances.

CASES and the kl_sft cases also check the token accuracy `grads` reports
(scored targets that are the argmax of their logits, as TRL's
mean_token_accuracy) against torch.argmax, with every other label set to
the reference's argmax."""
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as ref  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORKER = os.environ.get("LR_WORKER") or os.path.join(ROOT, os.environ.get("LR_BUILD", "build"), "lora-worker")
LOSS_TOL, GRAD_TOL = 1e-5, 1e-4

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = [
    # name, arch, config kwargs, targets, r, alpha, rslora, dtype
    ("llama-gqa-untied", "llama", {}, LLAMA_ALL, 4, 8, False, torch.float32),
    ("llama-tied-llama3rope", "llama",
     {"tie": True, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8}},
     LLAMA_ALL, 4, 16, False, torch.float32),
    ("mistral-gqa-qv-rslora", "mistral", {"kv_heads": 2}, ["q_proj", "v_proj"], 8, 16, True, torch.float32),
    ("qwen2-bias-tied-gqa", "qwen2", {"tie": True, "kv_heads": 2}, LLAMA_ALL, 4, 8, False, torch.float32),
    ("qwen2-mha", "qwen2", {"kv_heads": 4, "layers": 1}, ["k_proj", "o_proj", "down_proj"], 2, 4, False,
     torch.float32),
    ("gpt2", "gpt2", {"heads": 4, "inter": 256}, ["c_attn", "c_proj", "c_fc"], 4, 8, False, torch.float32),
    ("gpt2-mlp-only", "gpt2", {"heads": 2, "inter": 128}, ["mlp.c_proj", "c_fc"], 4, 8, False, torch.float32),
    ("llama-bf16", "llama", {}, LLAMA_ALL, 4, 8, False, torch.bfloat16),
    ("qwen2-bf16", "qwen2", {"tie": True}, LLAMA_ALL, 4, 8, False, torch.bfloat16),
    ("gpt2-bf16", "gpt2", {"heads": 4, "inter": 256}, ["c_attn", "c_proj", "c_fc"], 4, 8, False, torch.bfloat16),
    # sliding windows shorter than the batch's T = 17: Mistral on every layer,
    # Qwen2 from layer max_window_layers on
    ("mistral-sliding-window", "mistral", {"sliding_window": 5}, LLAMA_ALL, 4, 8, False, torch.float32),
    ("mistral-sliding-window-1", "mistral", {"sliding_window": 1, "layers": 1}, LLAMA_ALL, 4, 8, False,
     torch.float32),
    ("qwen2-sliding-window-layer1", "qwen2", {"sliding_window": 4, "max_window_layers": 1, "layers": 3}, LLAMA_ALL,
     4, 8, False, torch.float32),
]


# name, arch, config kwargs, targets, r, alpha, options
#   method: sft | kl_sft | dpo; dora: the policy adapter uses DoRA;
#   ref: None (base model) or (targets, r, alpha, dora) of a reference adapter (dpo)
LLAMA_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
GPT2_ALL = ["c_attn", "c_proj", "c_fc"]
METHOD_CASES = [
    ("llama-dora", "llama", {}, LLAMA_ALL, 4, 8, {"dora": True}),
    ("mistral-dora-rslora", "mistral", {}, ["q_proj", "v_proj", "down_proj"], 8, 16, {"dora": True, "rslora": True}),
    ("qwen2-dora-bias-tied", "qwen2", {"tie": True}, LLAMA_ALL, 4, 8, {"dora": True}),
    ("gpt2-dora-conv1d", "gpt2", {"heads": 4, "inter": 256}, GPT2_ALL, 4, 8, {"dora": True}),
    ("llama-dora-bf16", "llama", {}, LLAMA_ATTN, 4, 8, {"dora": True, "dtype": torch.bfloat16}),
    ("llama-kl", "llama", {}, LLAMA_ALL, 4, 8, {"method": "kl_sft", "lam": 0.5, "tau": 2.0}),
    ("mistral-kl-tau1", "mistral", {}, LLAMA_ATTN, 4, 8, {"method": "kl_sft", "lam": 1.0, "tau": 1.0}),
    ("qwen2-kl", "qwen2", {"tie": True}, LLAMA_ALL, 4, 8, {"method": "kl_sft", "lam": 0.3, "tau": 0.7}),
    ("gpt2-kl-dora", "gpt2", {"heads": 4, "inter": 256}, GPT2_ALL, 4, 8,
     {"method": "kl_sft", "lam": 0.5, "tau": 2.0, "dora": True}),
    ("llama-dpo", "llama", {}, LLAMA_ALL, 4, 8, {"method": "dpo", "beta": 0.5}),
    ("mistral-dpo", "mistral", {}, ["q_proj", "v_proj"], 8, 16, {"method": "dpo", "beta": 0.1}),
    ("mistral-dpo-sliding-window", "mistral", {"sliding_window": 4}, ["q_proj", "v_proj"], 8, 16,
     {"method": "dpo", "beta": 0.1}),
    ("qwen2-dpo-dora", "qwen2", {"tie": True}, LLAMA_ALL, 4, 8, {"method": "dpo", "beta": 0.5, "dora": True}),
    ("gpt2-dpo", "gpt2", {"heads": 4, "inter": 256}, GPT2_ALL, 4, 8, {"method": "dpo", "beta": 0.5}),
    ("llama-dpo-refadapter", "llama", {}, LLAMA_ALL, 4, 8,
     {"method": "dpo", "beta": 0.5, "dora": True, "ref": (["q_proj", "o_proj", "up_proj"], 8, 8, False)}),
    ("qwen2-dpo-refadapter-dora", "qwen2", {}, LLAMA_ATTN, 4, 8,
     {"method": "dpo", "beta": 1.0, "ref": (LLAMA_ALL, 2, 4, True)}),
    ("gpt2-dpo-refadapter-dora", "gpt2", {"heads": 4, "inter": 256}, ["c_attn"], 4, 8,
     {"method": "dpo", "beta": 0.5, "ref": (GPT2_ALL, 4, 8, True)}),
]


def make_dpo_batch(gen, V, P=2, T=15):
    """P pairs: rows i and P + i share a prompt; labels on the answers only,
    answers of different lengths (right padding)."""
    ids = torch.randint(0, V, (2 * P, T), generator=gen)
    labels = ids.clone()
    for i in range(P):
        k = 3 + 2 * i
        ids[P + i, :k] = ids[i, :k]
        labels[i, :k] = -100
        labels[P + i, :k] = -100
    labels[0, 12:] = -100
    labels[P + 1, 9:] = -100
    return ids, labels


def make_batch(gen, V, B=3, T=17):
    ids = torch.randint(0, V, (B, T), generator=gen)
    labels = ids.clone()
    labels[0, :5] = -100            # a masked prompt
    labels[1, 11:] = -100           # right padding
    labels[2, ::3] = -100           # scattered
    return ids, labels


def grad_err(got, g, params):
    """max|diff| / max|ref| of one tensor. A gradient that is zero in exact
    arithmetic (a window of 1 makes each softmax a constant 1, so q/k get
    none) is only rounding on either side: it is measured against the
    largest gradient of the model instead of its own ~0."""
    scale = g.abs().max()
    top = max(v.grad.abs().max() for v in params.values() if v.grad is not None)
    if scale < 1e-12 * top:
        scale = top
    return ((got - g).abs().max() / scale.clamp_min(1e-30)).item()


def argmax_labels(cfg, w, lora, ids, labels):
    """Every other scored label becomes the reference's argmax at its
    position, so that token accuracy is far from 0; returns (labels, the
    scored positions whose label is torch.argmax of the logits, the scored
    positions whose top two logits are within 1e-4: f32 rounding may order
    those either way)."""
    with torch.no_grad():
        logits = ref.forward_logits(cfg, w, lora, ids)[:, :-1]
    top2 = logits.topk(2, dim=-1).values
    am = logits.argmax(-1)
    labels = labels.clone()
    tgt = labels[:, 1:]
    scored = tgt != -100
    pick = scored & (torch.arange(tgt.numel()).view(tgt.shape) % 2 == 0)
    tgt[pick] = am[pick]
    correct = int(((am == tgt) & scored).sum())
    near = int(((top2[..., 0] - top2[..., 1] < 1e-4) & scored).sum())
    return labels, correct, near


def check_grads(args, gpath, loss, params, n_tok, accuracy=None):
    """Runs `lora-worker grads ARGS` and compares its loss, scored-token count
    and gradient tensors (written to gpath) with the reference's; accuracy:
    (correct, near ties) from argmax_labels, or None."""
    p = subprocess.run([WORKER, "grads"] + args, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return False, f"lora-worker failed ({p.returncode}): {p.stderr.strip()}"
    out = json.loads(p.stdout)
    got = ref.read_safetensors(gpath)
    loss_err = abs(out["loss"] - loss.item()) / abs(loss.item())
    problems = []
    if out["tokens"] != n_tok:
        problems.append(f"tokens {out['tokens']} != {n_tok}")
    if loss_err > LOSS_TOL:
        problems.append(f"loss {out['loss']:.8g} vs {loss.item():.8g}")
    if accuracy is not None:
        got_correct = round(out.get("accuracy", -1.0) * n_tok)
        if abs(got_correct - accuracy[0]) > accuracy[1]:
            problems.append(f"accuracy: {got_correct} of {n_tok} tokens the argmax, torch {accuracy[0]}")
    if set(got) != set(params):
        problems.append(f"tensor names differ: {sorted(set(got) ^ set(params))[:4]}")
    worst, worst_name = 0.0, ""
    for k, v in params.items():
        if k not in got:
            continue
        g = v.grad
        if tuple(got[k].shape) != tuple(g.shape):
            problems.append(f"{k}: shape {tuple(got[k].shape)} vs {tuple(g.shape)}")
            continue
        e = grad_err(got[k], g, params)
        if e > worst:
            worst, worst_name = e, k
    if worst > GRAD_TOL:
        problems.append(f"gradient {worst_name}: rel err {worst:.2e}")
    msg = f"loss {loss.item():.6f} rel err {loss_err:.1e}, {len(params)} tensors, worst grad rel err {worst:.1e}"
    if accuracy is not None:
        msg += f", accuracy {accuracy[0]}/{n_tok}"
    if problems:
        msg += " -- " + "; ".join(problems)
    return not problems, msg


def run_case(tmp, name, arch, kw, targets, r, alpha, rslora, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = ref.make_config(arch, **kw)
    weights = ref.random_weights(cfg, gen)
    lora = ref.random_lora(cfg, targets, r, gen)
    ids, labels = make_batch(gen, cfg["vocab_size"])
    mdir, adir = os.path.join(tmp, name, "model"), os.path.join(tmp, name, "adapter")
    ref.write_model(mdir, cfg, weights, dtype)
    ref.write_adapter(adir, cfg, lora, r, alpha, targets, rslora)

    # reference: f32 compute on the weights as stored (bf16-rounded for bf16)
    w = {k: v.to(dtype).float() for k, v in weights.items()}
    scale = alpha / (r ** 0.5) if rslora else alpha / r
    labels, correct, near = argmax_labels(cfg, w, ref.Lora(lora, scale), ids, labels)
    bpath, gpath = os.path.join(tmp, name, "batch.json"), os.path.join(tmp, name, "grads.safetensors")
    with open(bpath, "w") as f:
        json.dump({"input_ids": ids.tolist(), "labels": labels.tolist()}, f)
    params = {k: v.clone().requires_grad_(True) for k, v in lora.items()}
    loss = ref.forward_loss(cfg, w, ref.Lora(params, scale), ids, labels)
    loss.backward()
    n_tok = int((labels[:, 1:] != -100).sum())

    return check_grads(["--model", mdir, "--adapter", adir, "--batch", bpath, "--out", gpath], gpath, loss,
                       params, n_tok, (correct, near))


# name, arch, config kwargs, dtype
FULL_CASES = [
    ("full-llama-untied", "llama", {}, torch.float32),
    ("full-llama-tied-bf16", "llama", {"tie": True}, torch.bfloat16),
    ("full-mistral", "mistral", {"kv_heads": 2}, torch.float32),
    ("full-qwen2-bias-tied", "qwen2", {"tie": True, "kv_heads": 2}, torch.float32),
    ("full-gpt2", "gpt2", {"heads": 4, "inter": 256}, torch.float32),
    ("full-mistral-sliding-window", "mistral", {"kv_heads": 2, "sliding_window": 6}, torch.float32),
]


def run_full_case(tmp, name, arch, kw, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = ref.make_config(arch, **kw)
    weights = ref.random_weights(cfg, gen)
    ids, labels = make_batch(gen, cfg["vocab_size"])
    d = os.path.join(tmp, name)
    mdir = os.path.join(d, "model")
    ref.write_model(mdir, cfg, weights, dtype)
    bpath, gpath = os.path.join(d, "batch.json"), os.path.join(d, "grads.safetensors")
    with open(bpath, "w") as f:
        json.dump({"input_ids": ids.tolist(), "labels": labels.tolist()}, f)
    params = {k: v.to(dtype).float().requires_grad_(True) for k, v in weights.items()}
    loss = ref.forward_loss(cfg, params, ref.Lora({}, 1.0), ids, labels)
    loss.backward()
    return check_grads(["--model", mdir, "--full", "--batch", bpath, "--out", gpath], gpath, loss, params,
                       int((labels[:, 1:] != -100).sum()))


def run_method_case(tmp, name, arch, kw, targets, r, alpha, opt, seed):
    gen = torch.Generator().manual_seed(seed)
    method, dora, rslora = opt.get("method", "sft"), opt.get("dora", False), opt.get("rslora", False)
    dtype = opt.get("dtype", torch.float32)
    cfg = ref.make_config(arch, **kw)
    weights = ref.random_weights(cfg, gen)
    w = {k: v.to(dtype).float() for k, v in weights.items()}
    scale = alpha / (r ** 0.5) if rslora else alpha / r
    lora = ref.random_lora(cfg, targets, r, gen)
    if dora:
        lora.update(ref.random_magnitudes(cfg, w, lora, scale, gen))
    d = os.path.join(tmp, name)
    mdir, adir, rdir = (os.path.join(d, x) for x in ("model", "adapter", "reference"))
    ref.write_model(mdir, cfg, weights, dtype)
    ref.write_adapter(adir, cfg, lora, r, alpha, targets, rslora, dora)
    args = ["--method", method]
    reference = ref.Lora({}, 0.0)
    if method == "dpo":
        ids, labels = make_dpo_batch(gen, cfg["vocab_size"])
        args += ["--beta", str(opt["beta"])]
        if opt.get("ref"):
            rt, rr, ra, rdora = opt["ref"]
            rscale = ra / rr
            rl = ref.random_lora(cfg, rt, rr, gen)
            if rdora:
                rl.update(ref.random_magnitudes(cfg, w, rl, rscale, gen))
            ref.write_adapter(rdir, cfg, rl, rr, ra, rt, False, rdora)
            reference = ref.Lora(rl, rscale)
            args += ["--reference-adapter", rdir]
    else:
        ids, labels = make_batch(gen, cfg["vocab_size"])
        if method == "kl_sft":
            args += ["--kl-lambda", str(opt["lam"]), "--kl-tau", str(opt["tau"])]
            labels, correct, near = argmax_labels(cfg, w, ref.Lora(lora, scale), ids, labels)
    bpath, gpath = os.path.join(d, "batch.json"), os.path.join(d, "grads.safetensors")
    with open(bpath, "w") as f:
        json.dump({"input_ids": ids.tolist(), "labels": labels.tolist()}, f)

    params = {k: v.clone().requires_grad_(True) for k, v in lora.items()}
    policy = ref.Lora(params, scale)
    extra = {}
    if method == "sft":
        loss = ref.forward_loss(cfg, w, policy, ids, labels)
    elif method == "kl_sft":
        loss, ce, kl = ref.kl_sft_loss(cfg, w, policy, ids, labels, opt["lam"], opt["tau"])
        extra = {"ce": ce.item(), "kl": kl.item()}
    else:
        loss, ch, rj = ref.dpo_loss(cfg, w, policy, reference, ids, labels, opt["beta"])
        extra = {"rewards/accuracy": (ch > rj).float().mean().item(), "rewards/margin": (ch - rj).mean().item()}
    loss.backward()
    n_tok = int((labels[:, 1:] != -100).sum())

    p = subprocess.run([WORKER, "grads", "--model", mdir, "--adapter", adir, "--batch", bpath, "--out", gpath] + args,
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return False, f"lora-worker failed ({p.returncode}): {p.stderr.strip()}"
    out = json.loads(p.stdout)
    got = ref.read_safetensors(gpath)
    loss_err = abs(out["loss"] - loss.item()) / abs(loss.item())
    problems = []
    if out["tokens"] != n_tok:
        problems.append(f"tokens {out['tokens']} != {n_tok}")
    if loss_err > LOSS_TOL:
        problems.append(f"loss {out['loss']:.8g} vs {loss.item():.8g}")
    for k, v in extra.items():
        tol = 1e-5 * max(1.0, abs(v)) if k != "rewards/accuracy" else 0
        if k not in out or abs(out[k] - v) > tol:
            problems.append(f"{k} {out.get(k)} vs {v:.8g}")
    if method == "kl_sft":
        got_correct = round(out.get("accuracy", -1.0) * n_tok)
        if abs(got_correct - correct) > near:
            problems.append(f"accuracy: {got_correct} of {n_tok} tokens the argmax, torch {correct}")
    if set(got) != set(params):
        problems.append(f"tensor names differ: {sorted(set(got) ^ set(params))[:4]}")
    worst, worst_name, worst_mag = 0.0, "", 0.0
    for k, v in params.items():
        if k not in got:
            continue
        g = v.grad
        if tuple(got[k].shape) != tuple(g.shape):
            problems.append(f"{k}: shape {tuple(got[k].shape)} vs {tuple(g.shape)}")
            continue
        e = grad_err(got[k], g, params)
        if k.endswith("magnitude_vector"):
            worst_mag = max(worst_mag, e)
        if e > worst:
            worst, worst_name = e, k
    if worst > GRAD_TOL:
        problems.append(f"gradient {worst_name}: rel err {worst:.2e}")
    msg = f"loss {loss.item():.6f} rel err {loss_err:.1e}, {len(params)} tensors, worst grad rel err {worst:.1e}"
    if dora:
        msg += f" (magnitudes {worst_mag:.1e})"
    if method == "dpo":
        msg += f", acc {out.get('rewards/accuracy')}, margin {out.get('rewards/margin', 0):.4g}"
    if method == "kl_sft":
        msg += f", kl {out.get('kl', 0):.4g}, accuracy {correct}/{n_tok}"
    if problems:
        msg += " -- " + "; ".join(problems)
    return not problems, msg


def main():
    torch.set_num_threads(1)
    t0 = time.time()
    passed = failed = skipped = 0
    if not os.access(WORKER, os.X_OK):
        for c in CASES + METHOD_CASES + FULL_CASES:
            print(f"skip {c[0]}: {WORKER} is not built")
        print(f"0 passed, 0 failed, {len(CASES) + len(METHOD_CASES) + len(FULL_CASES)} skipped")
        return 0
    # each group's seeds start at its own base, so adding a case to one group leaves the others' data alone
    groups = [(CASES, run_case, 1000, 24), (METHOD_CASES, run_method_case, 2000, 26), (FULL_CASES, run_full_case, 3000, 26)]
    with tempfile.TemporaryDirectory(prefix="lrgrads.") as tmp:
        for cases, run, seed0, width in groups:
            for i, c in enumerate(cases):
                ok, msg = run(tmp, *c, seed=seed0 + i)
                print(f"{'ok  ' if ok else 'FAIL'} {c[0]:{width}s} {msg}")
                passed += ok
                failed += not ok
    print(f"({time.time() - t0:.1f}s; tolerances: loss {LOSS_TOL:g} relative, grads {GRAD_TOL:g} max|diff|/max|ref|)")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
