"""An independent PyTorch reference of the decoders lorad trains, with
PEFT-style LoRA, written from the semantics of transformers' modeling files
(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel)
and PEFT's lora.Linear (with DoRA as PEFT's lora.dora.DoraLinearLayer),
using plain torch autograd. Weights are a dict of HF tensor names; LoRA
tensors a dict of PEFT keys. The objectives beyond SFT (KL-regularised SFT,
DPO) are written from their definitions (TRL's sigmoid DPO loss). Also:
writers for an HF model folder and a PEFT adapter folder (safetensors by
struct + json)."""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- config

def make_config(arch, vocab=96, hidden=64, layers=2, heads=4, kv_heads=2, inter=128, tie=False,
                rope_scaling=None, max_pos=64, sliding_window=None, max_window_layers=None):
    """sliding_window: Mistral's sliding_window, or Qwen2's with
    use_sliding_window true (on layers >= max_window_layers, default 0)."""
    if arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab,
                "n_embd": hidden, "n_layer": layers, "n_head": heads, "n_inner": inter,
                "n_positions": max_pos, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
                "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0}
    names = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    cfg = {"architectures": [names[arch]], "model_type": arch, "vocab_size": vocab, "hidden_size": hidden,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
           "intermediate_size": inter, "max_position_embeddings": max_pos, "rms_norm_eps": 1e-6,
           "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": tie,
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    if arch == "mistral":
        cfg["sliding_window"] = sliding_window
    if arch == "qwen2":
        cfg["use_sliding_window"] = sliding_window is not None
        if sliding_window is not None:
            cfg["sliding_window"] = sliding_window
        if max_window_layers is None:
            max_window_layers = layers if sliding_window is None else 0
        cfg["max_window_layers"] = max_window_layers
    if rope_scaling:
        cfg["rope_scaling"] = rope_scaling
    return cfg


def layer_modules(arch):
    if arch == "gpt2":
        return ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    return ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def dims(cfg, module):
    """(in, out) features of a module."""
    if cfg["model_type"] == "gpt2":
        C, I = cfg["n_embd"], cfg["n_inner"]
        return {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, I), "mlp.c_proj": (I, C)}[module]
    C, I = cfg["hidden_size"], cfg["intermediate_size"]
    D = C // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * D, cfg["num_key_value_heads"] * D
    return {"self_attn.q_proj": (C, q), "self_attn.k_proj": (C, kv), "self_attn.v_proj": (C, kv),
            "self_attn.o_proj": (q, C), "mlp.gate_proj": (C, I), "mlp.up_proj": (C, I),
            "mlp.down_proj": (I, C)}[module]


def module_prefix(cfg, layer, module):
    if cfg["model_type"] == "gpt2":
        return f"transformer.h.{layer}.{module}"
    return f"model.layers.{layer}.{module}"


def targeted(module, targets):
    """PEFT's list matching: the module's dotted name ends with the target."""
    return any(module == t or module.endswith("." + t) for t in targets)


# ---------------------------------------------------------------- random weights

def random_weights(cfg, gen):
    def r(*shape, s=0.08):
        return torch.randn(*shape, generator=gen) * s

    w = {}
    if cfg["model_type"] == "gpt2":
        C, V, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_layer"]
        w["transformer.wte.weight"] = r(V, C, s=0.3)
        w["transformer.wpe.weight"] = r(cfg["n_positions"], C, s=0.1)
        for l in range(L):
            p = f"transformer.h.{l}."
            for n in ("ln_1", "ln_2"):
                w[p + n + ".weight"] = 1 + r(C, s=0.1)
                w[p + n + ".bias"] = r(C, s=0.1)
            for m in layer_modules("gpt2"):
                i, o = dims(cfg, m)
                w[p + m + ".weight"] = r(i, o, s=1 / math.sqrt(i))  # Conv1D: [in, out]
                w[p + m + ".bias"] = r(o, s=0.05)
        w["transformer.ln_f.weight"] = 1 + r(C, s=0.1)
        w["transformer.ln_f.bias"] = r(C, s=0.1)
        return w
    C, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    w["model.embed_tokens.weight"] = r(V, C, s=0.3)
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1 + r(C, s=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + r(C, s=0.1)
        for m in layer_modules(cfg["model_type"]):
            i, o = dims(cfg, m)
            w[p + m + ".weight"] = r(o, i, s=1 / math.sqrt(i))
            if cfg["model_type"] == "qwen2" and m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                w[p + m + ".bias"] = r(o, s=0.1)
    w["model.norm.weight"] = 1 + r(C, s=0.1)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = r(V, C, s=0.3)
    return w


def random_lora(cfg, targets, r, gen):
    """PEFT keys -> tensors; B non-zero so that every path carries gradient."""
    out = {}
    L = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    for l in range(L):
        for m in layer_modules(cfg["model_type"]):
            if not targeted(m, targets):
                continue
            i, o = dims(cfg, m)
            k = "base_model.model." + module_prefix(cfg, l, m)
            b = 1 / math.sqrt(i)
            out[k + ".lora_A.weight"] = (torch.rand(r, i, generator=gen) * 2 - 1) * b
            out[k + ".lora_B.weight"] = torch.randn(o, r, generator=gen) * 0.1
    return out


# ---------------------------------------------------------------- the model

def dora_weight_norm(weight, A, B, scale, conv1d):
    """PEFT get_weight_norm: ||W + scale B A|| over the input dimension of W as [out, in]."""
    w = weight.T if conv1d else weight
    return torch.linalg.norm(w + scale * (B @ A), dim=1)


def random_magnitudes(cfg, weights, lora, scale, gen):
    """DoRA magnitudes near the PEFT initial value (the weight norm), perturbed
    so that m / ||W + sBA|| != 1 and every path carries gradient."""
    out = {}
    for k in [k for k in lora if k.endswith(".lora_A.weight")]:
        mod = k[len("base_model.model."):-len(".lora_A.weight")]
        A, B = lora[k], lora[k.replace("lora_A", "lora_B")]
        n = dora_weight_norm(weights[mod + ".weight"], A, B, scale, cfg["model_type"] == "gpt2")
        out[k.replace(".lora_A.weight", ".lora_magnitude_vector")] = n * (1 + 0.2 * torch.randn(n.shape, generator=gen))
    return out


class Lora:
    """PEFT keys -> tensors; an empty dict is the base model (adapters off)."""

    def __init__(self, tensors, scale):
        self.t, self.scale = tensors, scale

    def linear(self, x, name, weight, bias, conv1d):
        """PEFT lora.Linear: base(x) + lora_B(lora_A(dropout(x))) * scaling (dropout off);
        with DoRA, base(x) + (m / ||W + sBA|| - 1) * xW^T + m / ||W + sBA|| * lora(x) * s,
        the norm detached."""
        y = (x @ weight if conv1d else F.linear(x, weight)) + (bias if bias is not None else 0)
        k = "base_model.model." + name
        if k + ".lora_A.weight" in self.t:
            A, B = self.t[k + ".lora_A.weight"], self.t[k + ".lora_B.weight"]
            lora = F.linear(F.linear(x, A), B)
            mag = self.t.get(k + ".lora_magnitude_vector")
            if mag is None:
                return y + lora * self.scale
            norm = dora_weight_norm(weight, A.detach(), B.detach(), self.scale, conv1d).detach()
            s = (mag / norm).view(1, -1)
            base = x @ weight if conv1d else F.linear(x, weight)
            y = y + (s - 1) * base + s * lora * self.scale
        return y


def rms_norm(x, w, eps):
    # LlamaRMSNorm: f32 variance, x * rsqrt(var + eps), then weight *
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rope_inv_freq(cfg, D):
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wl, high_wl = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        inv = torch.where(medium, smoothed, inv_l)
    return inv


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def layer_window(cfg, layer):
    """The sliding window of a decoder layer, or None: Mistral's
    sliding_window applies to every layer; Qwen2's only with
    use_sliding_window and from layer max_window_layers on (transformers'
    layer_types: "sliding_attention" if sliding_window is not None and
    i >= max_window_layers)."""
    if cfg["model_type"] == "mistral":
        return cfg.get("sliding_window")
    if cfg["model_type"] == "qwen2" and cfg.get("use_sliding_window") and layer >= cfg["max_window_layers"]:
        return cfg.get("sliding_window")
    return None


def attention(q, k, v, n_rep, window=None):
    """q [B,H,T,D], k/v [B,Hkv,T,D]: causal softmax attention (eager path);
    with a window, query i sees keys j with i - window < j <= i (the
    sliding-window causal mask of flash/sdpa)."""
    B, Hkv, T, D = k.shape
    if n_rep > 1:  # repeat_kv
        k = k[:, :, None].expand(B, Hkv, n_rep, T, D).reshape(B, Hkv * n_rep, T, D)
        v = v[:, :, None].expand(B, Hkv, n_rep, T, D).reshape(B, Hkv * n_rep, T, D)
    s = q @ k.transpose(2, 3) / math.sqrt(D)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) if window is None else (j <= i) & (i - j < window)
    mask = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s + mask, dim=-1, dtype=torch.float32)
    return p @ v


def forward_loss(cfg, w, lora, ids, labels):
    """Mean cross-entropy of HF's ForCausalLM with labels (shifted inside)."""
    logits = forward_logits(cfg, w, lora, ids)
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def kl_sft_loss(cfg, w, lora, ids, labels, lam, tau):
    """CE + lam * tau^2 * KL(base || tuned) of softmax(logits / tau), both the
    mean over the scored positions; the base logits without gradient."""
    logits = forward_logits(cfg, w, lora, ids)[:, :-1]
    with torch.no_grad():
        base = forward_logits(cfg, w, Lora({}, 0.0), ids)[:, :-1]
    tgt = labels[:, 1:]
    mask = tgt != -100
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
    logq = F.log_softmax(base / tau, dim=-1)
    logp = F.log_softmax(logits / tau, dim=-1)
    kl_tok = (logq.exp() * (logq - logp)).sum(-1)
    kl = kl_tok[mask].mean()
    return ce + lam * tau * tau * kl, ce, kl


def sequence_logps(logits, labels):
    """Sum over each row's scored positions of log p(label) (labels shifted)."""
    lp = F.log_softmax(logits[:, :-1], dim=-1)
    tgt = labels[:, 1:]
    mask = tgt != -100
    tok = torch.gather(lp, 2, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(-1)


def dpo_loss(cfg, w, policy, reference, ids, labels, beta):
    """TRL's sigmoid DPO loss over pairs: rows [0, P) chosen, [P, 2P) rejected.
    Returns the mean loss and the rewards (chosen, rejected)."""
    P = ids.shape[0] // 2
    pol = sequence_logps(forward_logits(cfg, w, policy, ids), labels)
    with torch.no_grad():
        ref = sequence_logps(forward_logits(cfg, w, reference, ids), labels)
    chosen = beta * (pol[:P] - ref[:P])
    rejected = beta * (pol[P:] - ref[P:])
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()


def forward_logits(cfg, w, lora, ids):
    """Logits [B, T, V] of HF's ForCausalLM."""
    B, T = ids.shape
    if cfg["model_type"] == "gpt2":
        C, H = cfg["n_embd"], cfg["n_head"]
        D, eps = C // H, cfg["layer_norm_epsilon"]
        x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][torch.arange(T)]
        for l in range(cfg["n_layer"]):
            p = f"transformer.h.{l}."
            h = F.layer_norm(x, (C,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
            qkv = lora.linear(h, p + "attn.c_attn", w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"], True)
            q, k, v = qkv.split(C, dim=2)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
            a = attention(q, k, v, 1).transpose(1, 2).reshape(B, T, C)
            x = x + lora.linear(a, p + "attn.c_proj", w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"], True)
            h = F.layer_norm(x, (C,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
            f = lora.linear(h, p + "mlp.c_fc", w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"], True)
            f = 0.5 * f * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (f + 0.044715 * torch.pow(f, 3.0))))
            x = x + lora.linear(f, p + "mlp.c_proj", w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"], True)
        x = F.layer_norm(x, (C,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps)
        logits = x @ w["transformer.wte.weight"].T
    else:
        C, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        D, eps = C // H, cfg["rms_norm_eps"]
        inv = rope_inv_freq(cfg, D)
        freqs = torch.arange(T).float()[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = w["model.embed_tokens.weight"][ids]
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."

            def lin(inp, m):
                return lora.linear(inp, p + m, w[p + m + ".weight"], w.get(p + m + ".bias"), False)

            h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
            q = lin(h, "self_attn.q_proj").view(B, T, H, D).transpose(1, 2)
            k = lin(h, "self_attn.k_proj").view(B, T, Hkv, D).transpose(1, 2)
            v = lin(h, "self_attn.v_proj").view(B, T, Hkv, D).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            a = attention(q, k, v, H // Hkv, layer_window(cfg, l)).transpose(1, 2).reshape(B, T, H * D)
            x = x + lin(a, "self_attn.o_proj")
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            x = x + lin(F.silu(lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj"), "mlp.down_proj")
        x = rms_norm(x, w["model.norm.weight"], eps)
        head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
        logits = x @ head.T
    return logits.float()


# ---------------------------------------------------------------- files

_DT = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(path, tensors, metadata=None):
    """The safetensors layout: u64 header length, JSON header (padded with
    spaces to 8 bytes), then the tensors' bytes in header order."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().tobytes()
        else:
            raw = t.numpy().tobytes()
        header[name] = {"dtype": _DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_model(dirpath, cfg, weights, dtype=torch.float32):
    os.makedirs(dirpath, exist_ok=True)
    c = dict(cfg)
    c["torch_dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    write_safetensors(os.path.join(dirpath, "model.safetensors"), {k: v.to(dtype) for k, v in weights.items()},
                      {"format": "pt"})


def write_adapter(dirpath, cfg, lora, r, alpha, targets, use_rslora=False, use_dora=False):
    os.makedirs(dirpath, exist_ok=True)
    conf = {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "test-model", "bias": "none",
            "fan_in_fan_out": cfg["model_type"] == "gpt2", "inference_mode": True, "init_lora_weights": True,
            "layers_pattern": None, "layers_to_transform": None, "lora_alpha": alpha, "lora_dropout": 0.0,
            "modules_to_save": None, "peft_type": "LORA", "r": r, "rank_pattern": {}, "revision": None,
            "target_modules": targets, "task_type": "CAUSAL_LM", "use_dora": use_dora, "use_rslora": use_rslora}
    with open(os.path.join(dirpath, "adapter_config.json"), "w") as f:
        json.dump(conf, f, indent=2, sort_keys=True)
    write_safetensors(os.path.join(dirpath, "adapter_model.safetensors"), lora, {"format": "pt"})


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        s, e = v["data_offsets"]
        out[k] = torch.frombuffer(bytearray(data[s:e]), dtype=torch.float32).reshape(v["shape"])
    return out
