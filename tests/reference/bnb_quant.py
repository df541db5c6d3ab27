#!/usr/bin/python3
"""A PyTorch reference of bitsandbytes' 4-bit blockwise quantization, written
from the published algorithm (bitsandbytes/functional.py: get_4bit_type,
create_dynamic_map, quantize_4bit with compress_statistics; the reference
PyTorch backend bitsandbytes/backends/default/ops.py: quantize_4bit,
dequantize_4bit, quantize_blockwise) and QLoRA's NF4 code book, for
checking kernels/quant.c:

  - blocks of 64 of the flattened weight, absmax per block, scaled values
    clamp(w * (1 / absmax.clamp(1e-38)), -1, 1) (a shorter last block divides
    by its clamped absmax instead, and stores that), torch.bucketize on the
    midpoints of the sorted code book (FP4: sorted stably, mapped back);
  - two codes per byte, the first element in the high nibble;
  - double quantization: offset = mean(absmax) (summed in float64 here: the
    one step kernels/quant.h defines itself), absmax - offset quantized in
    blocks of 256 with the 8-bit dynamic map the same way.

Also writes a model folder in the layout transformers saves a bitsandbytes
4-bit model in (quantization_config in config.json; per linear layer
weight (packed uint8 [n/2, 1]), weight.absmax, weight.quant_map,
weight.nested_absmax, weight.nested_quant_map,
weight.quant_state.bitsandbytes__<type>).

Usage: bnb_quant.py vectors OUT.safetensors  (test vectors for
tests/unit/test_quant.c)."""
import json
import math
import os
import struct
import sys

import torch

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
FP4 = [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]
BLOCK, NESTED_BLOCK = 64, 256


def get_4bit_type(name):
    data = torch.tensor(NF4 if name == "nf4" else FP4, dtype=torch.float32)
    return data / data.abs().max()


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    data += [0] * (2 ** total_bits - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def _scaled_blocks(a, blocksize):
    """The clamped scaled values and the stored absmax of each block."""
    a = a.reshape(-1).float()
    n = a.numel()
    rem = n % blocksize
    full = n - rem
    com = a[:full].reshape(-1, blocksize)
    absmax = com.abs().max(dim=-1)[0] if full else torch.zeros(0)
    scaled = torch.clamp(com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = a[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(a[full:] / am, -1, 1)])
    return scaled, absmax


def _bucket(scaled, code):
    order = torch.sort(code, stable=True)[1]
    s = code[order]
    bounds = (s[:-1] + s[1:]) / 2
    return order[torch.bucketize(scaled, bounds)]


def quantize_blockwise(a, code, blocksize):
    scaled, absmax = _scaled_blocks(a, blocksize)
    return _bucket(scaled, code).to(torch.uint8), absmax


def dequantize_blockwise(q, absmax, code, blocksize):
    out = code[q.long()]
    n = out.numel()
    idx = torch.arange(n) // blocksize
    return out * absmax[idx]


def quantize_4bit(w, quant_type="nf4", double_quant=False):
    """{"codes": uint8 [ceil(n/2)], "absmax": f32 [blocks]} or, with double
    quantization, {"codes", "qabsmax": uint8, "nested_absmax": f32, "offset": f32 scalar}."""
    code = get_4bit_type(quant_type)
    scaled, absmax = _scaled_blocks(w, BLOCK)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = _bucket(scaled, code).to(torch.uint8)
    out = {"codes": (q[::2] << 4) | q[1::2], "type": quant_type, "shape": list(w.shape)}
    if not double_quant:
        out["absmax"] = absmax
        return out
    offset = torch.tensor(absmax.double().mean().item(), dtype=torch.float32)
    qa, nabs = quantize_blockwise(absmax - offset, create_dynamic_map(), NESTED_BLOCK)
    out.update({"qabsmax": qa, "nested_absmax": nabs, "offset": offset})
    return out


def scales(qs):
    if "absmax" in qs:
        return qs["absmax"]
    return dequantize_blockwise(qs["qabsmax"], qs["nested_absmax"], create_dynamic_map(), NESTED_BLOCK) + qs["offset"]


def dequantize_4bit(qs):
    n = math.prod(qs["shape"])
    c = qs["codes"]
    q = torch.empty(c.numel() * 2, dtype=torch.long)
    q[::2] = (c >> 4).long()
    q[1::2] = (c & 0xF).long()
    vals = get_4bit_type(qs["type"])[q[:n]]
    return (vals * scales(qs)[torch.arange(n) // BLOCK]).reshape(qs["shape"])


# ---------------------------------------------------------------- files

_DT = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.uint8: "U8"}


def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
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


def is_quantized_linear(cfg, name):
    """transformers quantizes every nn.Linear (and GPT-2's Conv1D) of the
    decoder layers; embeddings, norms and the LM head stay as they are."""
    mods = (["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] if cfg["model_type"] == "gpt2" else
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"])
    return (".layers." in name or ".h." in name) and any(name.endswith("." + m + ".weight") for m in mods)


def bnb_weights(cfg, weights, quant_type="nf4", double_quant=False, dtype=torch.float32):
    """(the state dict transformers saves, the dequantized f32 weights the
    model computes with)."""
    sd, deq = {}, {}
    name_dt = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    for k, v in weights.items():
        v = v.to(dtype)
        if not is_quantized_linear(cfg, k):
            sd[k] = v
            deq[k] = v.float()
            continue
        conv1d = cfg["model_type"] == "gpt2"
        w = v.t().contiguous() if conv1d else v  # Linear4bit holds Conv1D weights as [out, in]
        qs = quantize_4bit(w.float(), quant_type, double_quant)
        dq = dequantize_4bit(qs)
        deq[k] = dq.t().contiguous() if conv1d else dq
        sd[k] = qs["codes"].unsqueeze(1)
        sd[k + ".quant_map"] = get_4bit_type(quant_type)
        state = {"quant_type": quant_type, "blocksize": BLOCK, "dtype": name_dt, "shape": list(w.shape)}
        if double_quant:
            sd[k + ".absmax"] = qs["qabsmax"]
            sd[k + ".nested_absmax"] = qs["nested_absmax"]
            sd[k + ".nested_quant_map"] = create_dynamic_map()
            state.update({"nested_blocksize": NESTED_BLOCK, "nested_dtype": "float32",
                          "nested_offset": qs["offset"].item()})
        else:
            sd[k + ".absmax"] = qs["absmax"]
        sd[k + ".quant_state.bitsandbytes__" + quant_type] = torch.tensor(list(json.dumps(state).encode()),
                                                                         dtype=torch.uint8)
    return sd, deq


def write_bnb_model(dirpath, cfg, weights, quant_type="nf4", double_quant=False, dtype=torch.float32):
    """A 4-bit model folder as transformers' save_pretrained writes it; returns
    the dequantized weights."""
    os.makedirs(dirpath, exist_ok=True)
    sd, deq = bnb_weights(cfg, weights, quant_type, double_quant, dtype)
    c = dict(cfg)
    c["torch_dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    c["quantization_config"] = {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
        "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": double_quant,
        "bnb_4bit_compute_dtype": c["torch_dtype"], "bnb_4bit_quant_storage": "uint8",
        "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0}
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    write_safetensors(os.path.join(dirpath, "model.safetensors"), sd, {"format": "pt"})
    return deq


# ---------------------------------------------------------------- test vectors

def _tie_block(code):
    """A block whose scaled values hit every midpoint of code exactly (absmax
    1, so the scale is exact), one ulp either side of each, and 0."""
    s = torch.sort(code, stable=True)[0]
    mids = (s[:-1] + s[1:]) / 2
    up = torch.nextafter(mids, torch.full_like(mids, 2.0))
    down = torch.nextafter(mids, torch.full_like(mids, -2.0))
    v = torch.cat([torch.tensor([1.0, 0.0, -0.0, 1e-3, -1e-3]), mids, up, down])
    return v


def vectors(path):
    gen = torch.Generator().manual_seed(16)
    cases = {}
    cases["normal"] = torch.randn(48, 320, generator=gen) * 0.05
    z = torch.randn(40, 128, generator=gen) * 0.02
    z.view(-1)[64 * 3:64 * 5] = 0.0  # two zero blocks
    z.view(-1)[64 * 9 + 5] = 0.0
    cases["zeros"] = z
    cases["tail_odd"] = torch.randn(64 * 3 + 37, generator=gen) * 3.0   # shorter last block, odd count
    cases["nested"] = torch.randn(64 * 300 + 10, generator=gen) * torch.rand(1, generator=gen)  # > 256 blocks
    for qt in ("nf4", "fp4"):
        t = _tie_block(get_4bit_type(qt))
        t = torch.cat([t, torch.zeros(-t.numel() % BLOCK)])
        cases["ties_" + qt] = torch.cat([t, -t, t * 0.5])
    out = {"dynamic_map": create_dynamic_map(), "book.nf4": get_4bit_type("nf4"), "book.fp4": get_4bit_type("fp4")}
    for name, w in cases.items():
        w = w.float().contiguous()
        out[name + ".w"] = w.reshape(-1)
        for qt in ("nf4", "fp4"):
            for dq in (False, True):
                p = f"{name}.{qt}{'.dq' if dq else ''}."
                qs = quantize_4bit(w, qt, dq)
                out[p + "codes"] = qs["codes"]
                out[p + "deq"] = dequantize_4bit(qs).reshape(-1)
                if dq:
                    out[p + "qabsmax"] = qs["qabsmax"]
                    out[p + "nested_absmax"] = qs["nested_absmax"]
                    out[p + "offset"] = qs["offset"].reshape(1)
                else:
                    out[p + "absmax"] = qs["absmax"]
    write_safetensors(path, out, {"format": "pt"})


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "vectors":
        sys.exit("usage: bnb_quant.py vectors OUT.safetensors")
    vectors(sys.argv[2])
