/* plan: the host-side decisions of the CUDA backend — launch geometry,
 * scratch layouts, chunk sizes, dtype conversion, device peaks, FLOP and
 * memory estimates — in plain C, so that the CPU-only build compiles them and
 * the unit tests check them on a machine without a GPU. The .cu file only
 * launches what this module decided. */
#ifndef LR_CUDA_PLAN_H
#define LR_CUDA_PLAN_H

#include <stddef.h>
#include <stdint.h>
#include "common/err.h"
#include "kernels/backend.h"

/* Attention kernels: a block is CUPLAN_ATT_WARPS warps of 8 rows each, so
 * it owns CUPLAN_ATT_ROWS query rows (forward, dQ) or key rows (dK/dV) and
 * walks the other side in tiles of 32 (one key or query per lane). */
#define CUPLAN_ATT_WARPS 4
#define CUPLAN_ATT_ROWS 32
#define CUPLAN_ATT_MAX_D 256

/* Elementwise kernels: threads per block. */
#define CUPLAN_BLOCK 256
/* sumsq: elements per partial sum (fixed, so the result is independent of the GPU). */
#define CUPLAN_SUMSQ_BLOCK 4096
/* Default byte budget of one LM-head chunk (logits and their gradient). */
#define CUPLAN_CE_BUDGET ((size_t)512 << 20)
/* Sequence length from which activation checkpointing is on by default. */
#define CUPLAN_CKPT_MIN_T 2048
/* DoRA: rows of dy summed into one partial of d magnitude (fixed, so the
 * result is independent of the GPU), and the byte budget of one block of
 * B A rows in dora_norm. */
#define CUPLAN_DORA_ROWS 128
#define CUPLAN_DORA_BUDGET ((size_t)64 << 20)
/* Alignment of every region carved out of the scratch buffer. */
#define CUPLAN_ALIGN 256

/* Blocks for a grid-stride loop over n items with `threads` per block: enough
 * to fill sm_count SMs, never more than the items need, at least 1. */
unsigned cuplan_grid(size_t n, int threads, int sm_count);

/* Attention geometry for head dim D: dc is the number of 32-column chunks a
 * lane holds per row (a kernel template parameter: 2, 4 or 8); smem_* the
 * dynamic shared memory of each kernel; ws_bytes the global scratch of the
 * backward (one f32 per query row and head: rowsum(dO * O)). Fails when D
 * is not in [1, 256] or a kernel would need more shared memory than
 * smem_optin (the device's per-block opt-in maximum). */
typedef struct cuplan_attn {
    int dc;
    unsigned q_tiles;              /* ceil(T / CUPLAN_ATT_ROWS) */
    size_t smem_fwd, smem_dkv, smem_dq;
    size_t ws_bytes;
} cuplan_attn;
int cuplan_attention(int B, int T, int Hq, int Hkv, int D, size_t smem_optin, cuplan_attn *out,
                     lr_err *err) LR_WARN_UNUSED;

/* Tensor-core attention: bf16 operands on mma.sync m16n8k16, f32
 * accumulation, for 16-bit frozen weights (the precision PyTorch's bf16
 * SDPA runs at) and D a multiple of 16 up to CUPLAN_TC_MAX_D. A block is 4
 * warps of 16 rows: CUPLAN_TC_ROWS query rows (forward, dQ; keys are walked
 * in tiles of CUPLAN_TC_ROWS) or key rows (dK/dV; queries are walked in
 * tiles of CUPLAN_TC_DKV_Q, which keeps its two D-wide accumulators in
 * registers). Shared tiles are bf16 rows padded by CUPLAN_TC_PAD elements,
 * which puts the 8 rows one fragment load touches on distinct banks. */
#define CUPLAN_TC_ROWS 64
#define CUPLAN_TC_DKV_Q 32
#define CUPLAN_TC_PAD 8
#define CUPLAN_TC_MAX_D 128

/* kd: 16-column chunks of D a warp's registers are sized for (a kernel
 * template parameter: 4 for D <= 64, 8 for D <= 128); tiles: ceil(T /
 * CUPLAN_TC_ROWS) blocks along T; smem_*: each kernel's dynamic shared
 * memory in bytes. */
typedef struct cuplan_attn_tc {
    int kd;
    unsigned tiles;
    size_t smem_fwd, smem_dkv, smem_dq;
} cuplan_attn_tc;
/* 1 (and out filled) when the tensor-core kernels can run head dim D in
 * smem_optin bytes of shared memory per block, else 0: the f32 kernels run. */
int cuplan_attention_tc(int T, int D, size_t smem_optin, cuplan_attn_tc *out);

/* Scratch layout of linear_fwd / linear_bwd, byte offsets (SIZE_MAX: the
 * region is not needed). x_lowp: the activation rounded to the weight dtype
 * (the cuBLAS operand; forward x, backward dy; with DoRA, backward, also
 * drop(x), so [N, max(in, out)]); drop: dropout(x) f32; dh: the LoRA hidden
 * gradient f32 [N, r]. DoRA (dora = 1) adds dz, f32 [N, out] (forward: the
 * LoRA term; backward: the direction term, then the gradient the LoRA path
 * sees), zb, f32 [N, out] (forward with dropout: drop(x) W^T), and part, f64
 * [ceil(N / CUPLAN_DORA_ROWS), out] (backward: partial sums of d magnitude).
 * total: bytes. */
typedef struct cuplan_linear {
    size_t x_lowp, drop, dh, dz, zb, part, total;
    size_t qtile; /* cuplan_linear_q4's tile, else SIZE_MAX */
    int qrows;    /* rows of that tile, else 0 */
} cuplan_linear;
void cuplan_linear_layout(kb_dtype wdt, int N, int in, int out, int r, int dropout, int dora, int backward,
                          cuplan_linear *o);
/* A 4-bit weight (QLoRA, see CUPLAN_Q4_BUDGET below): appends to a layout
 * made with wdt = tdt, the dtype its tiles are dequantized into (the GEMM
 * operand), the tile qtile, qrows weight rows [qrows, in] of tdt. */
void cuplan_linear_q4(kb_dtype tdt, int in, int out, cuplan_linear *o);

/* dora_norm computes B A a block of output rows at a time, in budget bytes
 * of f32: the rows per block, at least 1, at most out. */
int cuplan_dora_rows(int in, int out, size_t budget);

/* Scratch layout of lmhead_ce (kl = 0) and lmhead_ce_kl (kl = 1) for
 * n_valid rows, offsets in bytes: rows (int32 row index of each valid
 * target), tgt (int32 targets), loss (f64 per valid row: its cross-entropy),
 * hit (int32 per valid row: 1 when the row's argmax is its target),
 * xc (gathered x rows, weight dtype), logits (f32 [chunk, V]), dlg (the
 * logits' gradient in the weight dtype for the backward matmul; SIZE_MAX
 * with f32 weights: it is written over the logits), dxc (f32 [chunk, C]);
 * with kl, also klv (f64 per valid row), xr (gathered x_ref rows, weight
 * dtype) and ref (the reference logits, f32 [chunk, V]), else SIZE_MAX.
 * chunk = chunk_rows when > 0, else as many rows as fit in budget bytes of
 * logits (+ ref) + dlg, at least 16, at most n_valid. */
typedef struct cuplan_ce {
    int chunk;
    size_t rows, tgt, loss, hit, xc, logits, dlg, dxc, klv, xr, ref, total;
} cuplan_ce;
void cuplan_ce_layout(kb_dtype wdt, int n_valid, int C, int V, int chunk_rows, size_t budget, int kl, cuplan_ce *o);

/* Bytes of one element of dtype. */
size_t cuplan_dtype_size(kb_dtype dt);

/* Host conversions, round to nearest even, NaN kept NaN (for uploading f32
 * weights as bf16/f16 and for reading them back in tests). */
uint16_t cuplan_f32_to_bf16(float f);
float cuplan_bf16_to_f32(uint16_t h);
uint16_t cuplan_f32_to_f16(float f);
float cuplan_f16_to_f32(uint16_t h);
/* dst (n elements of dt) = src converted; dt KB_F32 copies. */
void cuplan_convert(kb_dtype dt, void *dst, const float *src, size_t n);

/* Dense bf16 tensor-core peak of a GPU, FLOP/s: the datasheet figure for
 * known names (H100 SXM 989.4e12, A100 312e12, ...), else SMs x clock x the
 * per-SM rate of its compute capability; 0 when unknown. */
double cuplan_peak_bf16(const char *name, int cc_major, int cc_minor, int sm_count, int clock_khz);

/* A decoder's shape, for FLOP and memory estimates. */
typedef struct cuplan_shape {
    int layers, C, I, Hq, Hkv, D, V;
    int gated;   /* SwiGLU MLP (3 matrices) rather than GELU (2) */
    int tied;    /* lm_head shares the embedding */
} cuplan_shape;

/* Parameters that take part in a matmul: every linear layer and the LM head
 * (V x C); not the embedding lookup or the norms. */
double cuplan_matmul_params(const cuplan_shape *s);
/* Training FLOPs per token for LoRA at sequence length T:
 * 4 P (forward 2P, input gradients 2P; frozen weights get no weight
 * gradient) + 6 L Hq D (T + 1) (causal attention: a query sees (T + 1) / 2
 * keys on average, 4 D FLOPs per key forward, twice that backward). LoRA's
 * own matmuls are left out (under 1% at r = 16). The same count as
 * `lora-worker bench`. */
double cuplan_flops_per_token(const cuplan_shape *s, int T);
#define CUPLAN_FLOPS_FORMULA \
    "FLOPs/token = 4*P + 6*L*Hq*D*(T+1) (P = matmul params incl. lm_head; causal attention fwd+bwd)"

/* 4-bit base weights (QLoRA, kernels/quant.h): a linear op dequantizes its
 * weight a tile of rows at a time into scratch of at most CUPLAN_Q4_BUDGET
 * bytes and multiplies the tile. */
#define CUPLAN_Q4_BUDGET ((size_t)32 << 20)
/* Rows of a [rows, cols] weight per tile of elem-byte elements within
 * budget bytes: a multiple of 64 when more than 64 fit (aligned slices of
 * the output), at least 1, at most rows. */
int cuplan_q4_rows(int rows, int cols, size_t elem, size_t budget);

/* An estimate of the device memory of a LoRA training step with adapters of
 * rank r on every linear layer, B sequences of T tokens, with or without
 * activation checkpointing: weights, LoRA (parameters, gradients, two
 * moments), saved activations, one layer's working set, LM-head chunk and
 * matmul scratch. quant (KQ_NF4, KQ_FP4; 0 for none) holds the decoder's
 * linear weights 4-bit: kq_bytes(n, double_quant) each (half a byte per
 * weight plus an f32 scale per 64, or with double quantization a byte per
 * 64 and an f32 per 256 blocks) and a dequantized tile in the working set;
 * embeddings, norms and the LM head stay in wdt. For failing early with a
 * useful message; bytes. */
typedef struct cuplan_mem {
    double weights, lora, activations, working, total;
} cuplan_mem;
void cuplan_train_memory(const cuplan_shape *s, kb_dtype wdt, int quant, int double_quant, int B, int T, int r,
                         int checkpointing, cuplan_mem *o);

/* "out of GPU memory for <what>: needed 2.00 GiB, 1.31 GiB free of 79.1 GiB on <device>" */
void cuplan_oom_message(char *buf, size_t n, const char *what, size_t needed, size_t free_b, size_t total_b,
                        const char *device);

/* The device index of a backend name: "cuda" is 0, "cuda:N" is N. */
int cuplan_parse_device(const char *name, int *device, lr_err *err) LR_WARN_UNUSED;

#endif
