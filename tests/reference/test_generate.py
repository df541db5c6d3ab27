"""lora-worker generate against the independent PyTorch reference
(reference_model.py): for small random models of each architecture with a
random LoRA adapter, (1) the logits of every prompt position (the prefill,
--logits-out) match the reference to 1e-4 of the largest |logit|, and
(2) greedy decoding with the KV cache gives the same tokens as greedy
decoding by full recomputation in PyTorch (stopping at the config's EOS
as lora-worker does). The sliding-window cases have a window shorter than
the prompt (13) + output (10): the prefill, and each decode step against
the cache, must see only the last `window` positions, as the reference's
full recomputation with the windowed mask does.

reference_model.forward_loss returns a loss, not logits; the logits are
taken from its F.cross_entropy call (with one extra token appended, so that
the shifted logits cover every real position), which leaves that shared
file untouched."""
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as ref  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORKER = os.environ.get("LR_WORKER") or os.path.join(ROOT, os.environ.get("LR_BUILD", "build"), "lora-worker")
LOGIT_TOL = 1e-4
NEW_TOKENS = 10

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = [
    # name, arch, config kwargs, targets, r, alpha
    ("llama-gqa", "llama", {}, LLAMA_ALL, 4, 8),
    ("qwen2-bias-tied", "qwen2", {"tie": True}, LLAMA_ALL, 4, 8),
    ("mistral-qv", "mistral", {}, ["q_proj", "v_proj"], 8, 16),
    ("gpt2", "gpt2", {"heads": 4, "inter": 256}, ["c_attn", "c_proj", "c_fc"], 4, 8),
    ("llama-base-only", "llama", {"layers": 1}, None, 0, 0),
    ("mistral-window-6", "mistral", {"sliding_window": 6}, ["q_proj", "v_proj"], 8, 16),
    ("qwen2-window-l1", "qwen2", {"sliding_window": 5, "max_window_layers": 1}, LLAMA_ALL, 4, 8),
]


def ref_logits(cfg, w, lora, ids):
    """[T, V] logits of a 1-D id list, through forward_loss."""
    got = {}
    orig = ref.F.cross_entropy

    def capture(logits, *a, **k):
        got["logits"] = logits.detach().clone()
        return orig(logits, *a, **k)

    x = torch.tensor([ids + [0]])
    ref.F.cross_entropy = capture
    try:
        ref.forward_loss(cfg, w, lora, x, x.clone())
    finally:
        ref.F.cross_entropy = orig
    return got["logits"]  # (T+1-1) rows = every real position


def read_logits(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    t = h["logits"]
    s, e = t["data_offsets"]
    return torch.frombuffer(bytearray(data[s:e]), dtype=torch.float32).reshape(t["shape"])


def run_case(tmp, name, arch, kw, targets, r, alpha, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = ref.make_config(arch, **kw)
    weights = ref.random_weights(cfg, gen)
    lora = ref.random_lora(cfg, targets, r, gen) if targets else {}
    mdir, adir = os.path.join(tmp, name, "model"), os.path.join(tmp, name, "adapter")
    ref.write_model(mdir, cfg, weights)
    if targets:
        ref.write_adapter(adir, cfg, lora, r, alpha, targets)
    V = cfg["vocab_size"]
    prompt = torch.randint(3, V, (13,), generator=gen).tolist()
    lpath = os.path.join(tmp, name, "logits.safetensors")
    cmd = [WORKER, "generate", "--model", mdir, "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens",
           str(NEW_TOKENS), "--logits-out", lpath, "--json", "--threads", "1"]
    if targets:
        cmd += ["--adapter", adir]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return False, f"lora-worker failed ({p.returncode}): {p.stderr.strip()}"
    out = json.loads(p.stdout)

    lr = ref.Lora(lora, alpha / r if targets else 0.0)
    want = ref_logits(cfg, weights, lr, prompt)
    got = read_logits(lpath)
    problems = []
    if tuple(got.shape) != tuple(want.shape):
        return False, f"logits shape {tuple(got.shape)} vs {tuple(want.shape)}"
    err = ((got - want).abs().max() / want.abs().max()).item()
    if err > LOGIT_TOL:
        problems.append(f"prefill logits rel err {err:.2e}")

    # greedy by full recomputation, stopping at the config's EOS
    eos = cfg.get("eos_token_id")
    seq, new = list(prompt), []
    for _ in range(NEW_TOKENS):
        nxt = int(ref_logits(cfg, weights, lr, seq)[-1].argmax())
        if nxt == eos:
            break
        seq.append(nxt)
        new.append(nxt)
    if out["ids"] != new:
        problems.append(f"greedy ids {out['ids']} vs reference {new}")
    msg = f"prefill {len(prompt)}x{V} logits rel err {err:.1e}; {len(new)} greedy tokens ({out['stop']})"
    if problems:
        msg += " -- " + "; ".join(problems)
    return not problems, msg


def main():
    torch.set_num_threads(1)
    t0 = time.time()
    passed = failed = skipped = 0
    if not os.access(WORKER, os.X_OK):
        for c in CASES:
            print(f"skip {c[0]}: {WORKER} is not built")
        print(f"0 passed, 0 failed, {len(CASES)} skipped")
        return 0
    with tempfile.TemporaryDirectory(prefix="lrgen.") as tmp:
        for i, c in enumerate(CASES):
            ok, msg = run_case(tmp, *c, seed=2000 + i)
            print(f"{'ok  ' if ok else 'FAIL'} {c[0]:18s} {msg}")
            passed += ok
            failed += not ok
    print(f"({time.time() - t0:.1f}s; tolerance: prefill logits {LOGIT_TOL:g} of max|logit|)")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
