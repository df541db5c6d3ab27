#!/usr/bin/python3
"""Reference test: `lora-worker mkmodel` folders read by independent Python.

For each architecture: the model.safetensors is parsed here with struct +
json (header rules of the safetensors spec: 8-byte padded header, tensors
tiling the data area, sorted keys, {"format": "pt"}); its tensor names and
shapes must equal those of reference_model.random_weights (written from
transformers' modeling code by another engineer); init statistics follow
transformers' _init_weights; and the reference forward pass on the folder
gives a loss near ln(vocab), as a freshly initialised model must."""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import reference_model as ref  # noqa: E402

WORKER = os.environ.get("LR_WORKER") or os.path.join(ROOT, os.environ.get("LR_BUILD", "build"), "lora-worker")
passed = failed = skipped = 0


def ok(name):
    global passed
    passed += 1
    print("ok   " + name)


def fail(name, why):
    global failed
    failed += 1
    print("FAIL " + name + ": " + why)


def skip(name, why):
    global skipped
    skipped += 1
    print("skip " + name + ": " + why)


def finish():
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    sys.exit(1 if failed else 0)


DT = {"F32": (torch.float32, 4), "BF16": (torch.bfloat16, 2)}


def parse(path):
    """Tensors (as f32) and metadata, checking the file layout rules."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0, "header length %d not 8-aligned" % n
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    keys = list(header)
    assert keys == sorted(keys), "keys not sorted"
    at, out = 0, {}
    for k in keys:
        v = header[k]
        s, e = v["data_offsets"]
        assert s == at, "%s: offset %d, expected %d" % (k, s, at)
        dt, size = DT[v["dtype"]]
        assert e - s == math.prod(v["shape"]) * size, k
        out[k] = torch.frombuffer(bytearray(data[s:e]), dtype=dt).reshape(v["shape"]).float()
        at = e
    assert at == len(data), "trailing bytes"
    return out, meta


def main():
    if not os.path.exists(WORKER):
        skip("all", WORKER + " is not built")
        finish()
    tmp = tempfile.mkdtemp(prefix="lr_mkmodel_")
    for arch, dtype in (("llama", "f32"), ("mistral", "f32"), ("qwen2", "f32"), ("gpt2", "f32"), ("qwen2", "bf16")):
        name = "%s-%s" % (arch, dtype)
        out = os.path.join(tmp, name)
        r = subprocess.run([WORKER, "mkmodel", "--arch", arch, "--dtype", dtype, "--seed", "5", "--out", out],
                           capture_output=True, text=True)
        if r.returncode:
            fail(name, "mkmodel exited %d: %s" % (r.returncode, r.stderr.strip()))
            continue
        try:
            cfg = json.load(open(os.path.join(out, "config.json")))
            w, meta = parse(os.path.join(out, "model.safetensors"))
            assert meta == {"format": "pt"}, meta
            if arch == "gpt2" and cfg.get("n_inner") is None:
                cfg["n_inner"] = 4 * cfg["n_embd"]  # GPT2Config: n_inner None means 4 * n_embd
            want = ref.random_weights(cfg, torch.Generator().manual_seed(0))
            missing = sorted(set(want) - set(w))
            extra = sorted(set(w) - set(want))
            assert not missing and not extra, "missing %s extra %s" % (missing[:3], extra[:3])
            for k in want:
                assert tuple(want[k].shape) == tuple(w[k].shape), "%s: %s vs %s" % (k, w[k].shape, want[k].shape)
            for k, t in w.items():
                if k.endswith(".bias"):
                    assert float(t.abs().max()) == 0, k
                elif k.endswith("norm.weight") or ".ln_" in k:
                    assert bool((t == 1).all()), k
                elif t.numel() >= 4096:
                    std = 0.02 / math.sqrt(2 * cfg["n_layer"]) if (arch == "gpt2" and k.endswith("c_proj.weight")) else 0.02
                    assert abs(float(t.std()) - std) < 0.1 * std and abs(float(t.mean())) < 0.1 * std, \
                        "%s: mean %g std %g, want std %g" % (k, float(t.mean()), float(t.std()), std)
            V = cfg["vocab_size"]
            gen = torch.Generator().manual_seed(1)
            ids = torch.randint(0, V, (8, 64), generator=gen)  # ~500 predictions: ln V within a few 0.01
            loss = float(ref.forward_loss(cfg, w, ref.Lora({}, 1.0), ids, ids.clone()))
            assert abs(loss - math.log(V)) < 0.05, "loss %.4f vs ln V %.4f" % (loss, math.log(V))
            ok("%s (%d tensors, loss %.4f, ln V %.4f)" % (name, len(w), loss, math.log(V)))
        except (AssertionError, KeyError, ValueError) as e:
            fail(name, str(e))
    finish()


main()
