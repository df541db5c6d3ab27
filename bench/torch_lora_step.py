#!/usr/bin/env python3
"""The PyTorch peer of `make bench` and `make bench-gpu`: one LoRA training
step (forward, backward, AdamW on the adapters) on the same architecture,
shapes and batch as lorad, written the way PEFT + transformers run it (frozen
base Linear layers, LoRA A/B beside them, full-vocab logits then
cross-entropy). On the CPU (`make bench`): f32, eager attention, lorad's
thread count, and OpenBLAS (torch's matmul library here) on the core type
`make bench` gives it through OPENBLAS_CORETYPE, the engine's choice; the
output's "blas" names the core type of each OpenBLAS this process loaded. On a GPU (`--device cuda --dtype bf16`, `make bench-gpu`): bf16
base weights and f32 adapters as PEFT keeps them (the LoRA path computed in
f32 and cast back), RMSNorm in f32 as transformers does, attention through
torch's scaled_dot_product_attention (transformers' default "sdpa").
`--autocast` (CPU): the forward under torch.autocast("cpu", bfloat16), the
peer of the engine's compute_dtype bf16 (f32 weights and adapters, matmuls
in bf16 through torch's oneDNN where the CPU has AVX512_BF16). Prints
one JSON line: {"tokens_per_s": ..., "step_s": ..., "peak_rss_mb": ...,
"gpu_peak_mb": ... (on a GPU), "loss": ...}.

usage: torch_lora_step.py --preset gpt2-124m|qwen2.5-0.5b|llama-3-8b|tiny --batch B --seq T
                          [--threads 2] [--steps 3] [--r 16] [--device cpu|cuda] [--dtype f32|bf16]
                          [--autocast]"""
import argparse
import contextlib
import ctypes
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # arch, hidden, layers, heads, kv heads, intermediate, vocab, tied
    "gpt2-124m": ("gpt2", 768, 12, 12, 12, 3072, 50257, True),
    "qwen2.5-0.5b": ("qwen2", 896, 24, 14, 2, 4864, 151936, True),
    "llama-3-8b": ("llama", 4096, 32, 32, 8, 14336, 128256, False),
    "tiny": ("llama", 64, 2, 4, 2, 128, 512, False),
}


class RMSNorm(nn.Module):
    """As transformers' LlamaRMSNorm (this torch predates nn.RMSNorm)."""

    def __init__(self, C, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class LoraLinear(nn.Module):
    def __init__(self, fin, fout, r, alpha, bias):
        super().__init__()
        self.base = nn.Linear(fin, fout, bias=bias)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, fin))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(fout, r))
        self.scale = alpha / r

    def forward(self, x):
        # PEFT: the adapter runs in its own dtype (f32), the sum in the base's
        return self.base(x) + ((x.to(self.A.dtype) @ self.A.t() @ self.B.t()) * self.scale).to(x.dtype)


class Block(nn.Module):
    def __init__(self, arch, C, H, Hkv, I, r):
        super().__init__()
        self.arch, self.H, self.Hkv, self.D = arch, H, Hkv, C // H
        D = self.D
        if arch == "gpt2":
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv = LoraLinear(C, 3 * C, r, 2 * r, True)
            self.o = LoraLinear(C, C, r, 2 * r, True)
            self.fc = LoraLinear(C, I, r, 2 * r, True)
            self.proj = LoraLinear(I, C, r, 2 * r, True)
        else:
            self.ln1, self.ln2 = RMSNorm(C, eps=1e-6), RMSNorm(C, eps=1e-6)
            bias = arch == "qwen2"
            self.q = LoraLinear(C, H * D, r, 2 * r, bias)
            self.k = LoraLinear(C, Hkv * D, r, 2 * r, bias)
            self.v = LoraLinear(C, Hkv * D, r, 2 * r, bias)
            self.o = LoraLinear(H * D, C, r, 2 * r, False)
            self.gate = LoraLinear(C, I, r, 2 * r, False)
            self.up = LoraLinear(C, I, r, 2 * r, False)
            self.down = LoraLinear(I, C, r, 2 * r, False)
        for p in (self.ln1, self.ln2):
            p.requires_grad_(False)

    mask = None

    def attn(self, x, cos, sin):
        B, T, C = x.shape
        D = self.D
        if self.arch == "gpt2":
            q, k, v = self.qkv(x).split(C, dim=-1)
            q = q.view(B, T, self.H, D).transpose(1, 2)
            k = k.view(B, T, self.H, D).transpose(1, 2)
            v = v.view(B, T, self.H, D).transpose(1, 2)
        else:
            q = self.q(x).view(B, T, self.H, D).transpose(1, 2)
            k = self.k(x).view(B, T, self.Hkv, D).transpose(1, 2)
            v = self.v(x).view(B, T, self.Hkv, D).transpose(1, 2)

            def rot(t):
                t1, t2 = t[..., : D // 2], t[..., D // 2:]
                return t * cos + torch.cat((-t2, t1), dim=-1) * sin

            q, k = rot(q), rot(k)
            rep = self.H // self.Hkv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if x.is_cuda:  # transformers' default on torch 2: SDPA (flash attention)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # transformers' eager attention (the CPU torch 1.13 has no SDPA)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
            att = att.masked_fill(self.mask[:T, :T], float("-inf"))
            y = torch.softmax(att, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(B, T, self.H * D))

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln1(x), cos, sin)
        h = self.ln2(x)
        if self.arch == "gpt2":
            return x + self.proj(F.gelu(self.fc(h), approximate="tanh"))
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(nn.Module):
    def __init__(self, arch, C, L, H, Hkv, I, V, r, T, tied):
        super().__init__()
        self.arch = arch
        self.wte = nn.Embedding(V, C)
        self.head = None if tied else nn.Linear(C, V, bias=False)
        self.wpe = nn.Embedding(1024, C) if arch == "gpt2" else None
        self.blocks = nn.ModuleList(Block(arch, C, H, Hkv, I, r) for _ in range(L))
        self.lnf = nn.LayerNorm(C) if arch == "gpt2" else RMSNorm(C, eps=1e-6)
        D = C // H
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        f = torch.outer(torch.arange(T).float(), inv)
        emb = torch.cat((f, f), dim=-1).to(self.wte.weight.dtype)
        self.register_buffer("cos", emb.cos())
        self.register_buffer("sin", emb.sin())
        with torch.no_grad():  # HF's init: N(0, 0.02) weights, zero biases
            for n, p in self.named_parameters():
                if n.endswith("base.weight") or n in ("wte.weight", "wpe.weight", "head.weight"):
                    p.normal_(0, 0.02)
                elif n.endswith("base.bias"):
                    p.zero_()
        Block.mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        for n, p in self.named_parameters():  # adapters stay f32 under 16-bit weights, as in PEFT
            if n.endswith(".A") or n.endswith(".B"):
                p.data = p.data.float()
        self.requires_grad_(False)
        for n, p in self.named_parameters():
            if n.endswith(".A") or n.endswith(".B"):
                p.requires_grad_(True)

    def forward(self, ids, labels):
        T = ids.shape[1]
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=ids.device))
        for b in self.blocks:
            x = b(x, self.cos[:T], self.sin[:T])
        h = self.lnf(x)
        logits = h @ self.wte.weight.t() if self.head is None else self.head(h)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100)


def blas_cores():
    """Core types of the OpenBLAS copies torch loaded (Debian's torch links
    libopenblas.so.0 and libblas.so.3, two copies of OpenBLAS)."""
    cores = []
    for lib in ("libopenblas.so.0", "libblas.so.3"):
        try:
            f = ctypes.CDLL(lib).openblas_get_corename
        except (OSError, AttributeError):
            continue
        f.restype = ctypes.c_char_p
        cores.append(f().decode())
    return cores


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="f32", choices=("f32", "bf16"))
    ap.add_argument("--autocast", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    arch, C, L, H, Hkv, I, V, tied = PRESETS[a.preset]
    dev = torch.device(a.device)
    if a.device == "cuda":  # build on the GPU: an 8B model initialised on the CPU in f32 takes minutes
        torch.set_default_device(dev)
    torch.set_default_dtype(torch.bfloat16 if a.dtype == "bf16" else torch.float32)
    m = Model(arch, C, L, H, Hkv, I, V, a.r, a.seq, tied)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, V, (a.batch, a.seq), device=dev)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(a.steps + 1):  # the first step warms up allocators and caches
        sync()
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if a.autocast else contextlib.nullcontext():
            loss = m(ids, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i > 0:
            times.append(time.perf_counter() - t)
    step_s = sorted(times)[len(times) // 2]
    out = {"tokens_per_s": a.batch * a.seq / step_s, "step_s": step_s,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "loss": float(loss)}
    if a.device == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 1048576
        out["gpu"] = torch.cuda.get_device_name()
        out["torch"] = torch.__version__
    else:
        out["blas"] = blas_cores()
        out["autocast"] = a.autocast
    print(json.dumps(out))


if __name__ == "__main__":
    main()
