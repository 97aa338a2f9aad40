# %% [markdown]
# # 07 · QLoRA: LoRA on a 4-bit base model (量化低秩适配)
#
# **What you will learn in this notebook**
#
# * where the 16 levels of **NF4** (4位正态浮点, NormalFloat-4) come from: quantiles of a normal
#   distribution, derived step by step and checked against `peftedu.quant.nf4_code()` and bitsandbytes;
# * **block-wise absmax quantization** (分块量化) of a real SmolLM2 weight matrix by hand: 64 weights per
#   block, two 4-bit codes packed per byte, dequantization, and the error;
# * **double quantization** (双重量化): the per-block constants quantized again, 4.5 → ≈4.127 bits per weight;
# * a `Linear4bit` layer and its autograd function from scratch, equal to `peftedu`'s and to bitsandbytes';
# * NF4 vs INT4 vs FP4 on real layers (computed here) and on the whole model (read from `results/quant.json`);
# * QLoRA training on `topic` next to plain fp32 LoRA with the same settings, what **merging** into a 4-bit
#   base does, what **paged optimizers** are for, and the memory arithmetic behind "65B on one 48 GB GPU".
#
# Reference: Dettmers, Pagnoni, Holtzman, Zettlemoyer 2023, *QLoRA: Efficient Finetuning of Quantized LLMs*,
# arXiv:2305.14314. The reference implementation of the 4-bit formats is `bitsandbytes`.

# %%
%matplotlib inline
import copy
import json
import logging
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import transformers
from torch import nn

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel notice appears on some CPUs only: noise here
import peftedu
from peftedu import LoraConfig, cmp, get_peft_model, measured
from peftedu.course.compare import rounding_tolerance
from peftedu import quant as Q
from peftedu.counting import print_trainable_parameters
from peftedu.course.memory import estimate_training_memory, nf4_bits_per_param
from peftedu.course.recipes import method_memory
from peftedu.course.shapes import LLAMA_SHAPES, activation_memory_gb
from peftedu.course.data import load_task
from peftedu.course.tokenization import build_prompt
from peftedu.course.explorers import LIVE_NOTE
from peftedu.course.nf4_explorer import linear_weights, nf4_histogram_explorer, nf4_histogram_widget, plot_nf4_histogram
from peftedu.lora import LoraLinear
from peftedu.course.models import DEFAULT_MODEL, is_pretrained, load_base, model_name
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate

try:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_functional
except ImportError:  # the notebook runs without it; only the cross-checks are skipped
    bnb = bnb_functional = None

transformers.utils.logging.disable_progress_bar()
torch.manual_seed(0)
profile = get_profile()
print("peftedu", peftedu.__version__, "| profile:", profile.name, "| bitsandbytes:", bnb_functional is not None)

# %% [markdown]
# ## 1. NF4 (4位正态浮点) from normal quantiles
#
# Pretrained weights are roughly bell-shaped around 0. If a 4-bit code must describe such numbers, the
# best 16 levels are not evenly spaced: put them where the data is dense, i.e. at **quantiles** of the
# normal distribution, so that each level is used about equally often. NF4 does this for values that were
# first divided by their block's largest magnitude, so the code spans [-1, 1].
#
# Two details make it a little more than "16 quantiles":
# * the quantiles of probabilities 0 and 1 are ±∞, so the grid stops short of them: the outermost probability
#   is `offset = 1 − δ = 0.9677083` with **δ = ½(1/30 + 1/32)**, the paper's offset. δ averages two outermost
#   *probabilities* — the tail mass 1/(2·15) left by a 15-level grid and 1/(2·16) by a 16-level grid — not
#   two quantiles (a check below rebuilds the table from δ alone);
# * **0 must be exact** (padding and exact zeros must stay zero), so the code is asymmetric:
#   8 positive levels, 7 negative ones and one 0.
#
# **Step 1:** 9 probabilities evenly spaced from `offset` down to 0.5; drop 0.5 → 8 positive quantiles.

# %%
offset = Q.NF4_OFFSET
normal_icdf = torch.special.ndtri                       # inverse CDF of N(0, 1)
p_pos = torch.linspace(offset, 0.5, 9)[:-1]             # (8,) float32 probabilities
q_pos = normal_icdf(p_pos.double()).float()             # (8,) positive quantiles
print("probabilities:", [round(p, 4) for p in p_pos.tolist()])
print("quantiles:    ", [round(q, 4) for q in q_pos.tolist()])
assert q_pos.shape == (8,) and (q_pos > 0).all()

# %% [markdown]
# **Step 2:** 8 probabilities from `offset` to 0.5; drop 0.5 → 7 quantiles, negated.
# **Step 3:** add an exact 0. **Step 4:** sort, divide by the largest level so the code ends at 1.

# %%
p_neg = torch.linspace(offset, 0.5, 8)[:-1]             # (7,)
q_neg = -normal_icdf(p_neg.double()).float()            # (7,) negative quantiles
levels = torch.cat([q_pos, torch.zeros(1), q_neg]).sort().values
nf4_scratch = levels / levels.max()
print("NF4 levels:", [round(v, 4) for v in nf4_scratch.tolist()])
assert nf4_scratch.shape == (16,) and nf4_scratch.max() == 1 and (nf4_scratch == 0).sum() == 1
cmp("scratch NF4 vs peftedu nf4_code()", nf4_scratch, Q.nf4_code(), atol=0)
if bnb_functional is not None:
    cmp("scratch NF4 vs bitsandbytes table", nf4_scratch, bnb_functional.get_4bit_type("nf4", device="cpu"), atol=1e-7)
else:
    print("bitsandbytes not installed: skipping the comparison with its NF4 table")

# %% [markdown]
# (bitsandbytes stores the table as rounded literals, hence `atol=1e-7` for that comparison.)
#
# **Check: the table from δ alone.** Start from δ = ½(1/30 + 1/32) exactly instead of the rounded constant, write
# the normal quantile as √2·erfinv(2p − 1) (no scipy; bitsandbytes' `create_normal_map` uses `scipy.stats.norm.ppf`),
# and rebuild the 16 levels in float64:

# %%
delta_nf4 = (1 / 30 + 1 / 32) / 2                          # the mean of the two outermost tail probabilities
print(f"delta = {delta_nf4:.7f} -> outermost probability 1 - delta = {1 - delta_nf4:.7f} (the constant used: {offset})")
assert abs((1 - delta_nf4) - offset) < 5e-8              # the constant is 1 - delta, rounded to 7 decimals
quantile = lambda p: math.sqrt(2) * torch.special.erfinv(2 * p - 1)   # inverse CDF of N(0, 1)
probs_pos = torch.linspace(1 - delta_nf4, 0.5, 9, dtype=torch.float64)[:-1]   # 8 positive levels
probs_neg = torch.linspace(1 - delta_nf4, 0.5, 8, dtype=torch.float64)[:-1]   # 7 negative levels
from_delta = torch.cat([quantile(probs_pos), torch.zeros(1, dtype=torch.float64), -quantile(probs_neg)]).sort().values
nf4_from_delta = (from_delta / from_delta.max()).float()
cmp("NF4 rebuilt from delta vs peftedu nf4_code()", nf4_from_delta, Q.nf4_code(), atol=1e-6)
if bnb_functional is not None:
    cmp("NF4 rebuilt from delta vs bitsandbytes table", nf4_from_delta,
        bnb_functional.get_4bit_type("nf4", device="cpu"), atol=1e-6)

# %% [markdown]
# (`atol=1e-6`: the stored constant differs from 1 − δ by 3·10⁻⁸, and the tables were built in float32.)
# The picture: the levels sit where the normal density is high, densest near 0. INT4 would space them evenly.

# %%
grid = torch.linspace(-3.2, 3.2, 400)
density = torch.exp(-grid**2 / 2) / (2 * torch.pi) ** 0.5
scale = levels.max()                                     # the largest quantile (level 1 of NF4)
fig, ax = plt.subplots(figsize=(8, 3))
ax.plot(grid / scale, density, color="black", label="N(0,1) density, x-axis divided by the largest quantile")
for i, v in enumerate(nf4_scratch):
    ax.axvline(v, color="tab:red", lw=0.8, label="NF4 levels" if i == 0 else None)
for i, v in enumerate(Q.int4_code().unique()):
    ax.axvline(v, color="tab:blue", lw=0.8, ls=":", label="INT4 levels" if i == 0 else None)
ax.set_xlim(-1.1, 1.1); ax.set_xlabel("normalised value (weight / block absmax)")
ax.set_title("NF4 puts its 16 levels at normal quantiles")
ax.legend(fontsize=8, loc="upper left")
plt.show()

# %% [markdown]
# ## 2. Block-wise absmax quantization (分块量化) of a real weight, by hand
#
# We take the first linear layer of layer 0 of the model in use (on SmolLM2-135M-Instruct, the default:
# `q_proj`, 576 × 576), in fp32 (a bf16 weight converts exactly). For every block `b` of B = 64
# consecutive weights (row-major):
#
# $$c_b = \max_{i\in b} |W_i|, \qquad q_i = \arg\min_j \left| W_i / c_b - \text{code}_j \right|, \qquad
# W'_i = \text{code}_{q_i} \cdot c_b .$$
#
# One outlier only spoils its own block of 64 — that is why the blocks are small.

# %%
model, tokenizer = load_base()
first_linear = next(iter(linear_weights(model)))      # e.g. model.layers.0.self_attn.q_proj
W = model.get_submodule(first_linear).weight.detach().float().clone()   # (out, in) fp32, on the model's device
print(f"{first_linear}: {tuple(W.shape)}, stored as {model.dtype} on {model.device.type}")
B = 64
blocks = W.reshape(-1, B)                                # (n_blocks, 64)
absmax = blocks.abs().amax(dim=1)                        # (n_blocks,) one fp32 constant per block
normalized = (blocks * (1.0 / absmax)[:, None]).clamp(-1, 1)   # bitsandbytes multiplies by the reciprocal
print("W:", tuple(W.shape), "| blocks:", tuple(blocks.shape), "| normalized range:",
      round(normalized.min().item(), 4), round(normalized.max().item(), 4))
assert blocks.shape == (W.numel() // B, B) and normalized.abs().max() == 1

# %% [markdown]
# The nearest level, by brute force: the distance of every value to all 16 levels, then `argmin`
# (on an exact tie `argmin` takes the first, i.e. lower, level — the same rule as `peftedu` and bitsandbytes).
# Then two 4-bit indices go into one byte: element 2k in the **high** nibble, 2k+1 in the low nibble.

# %%
code = Q.nf4_code().to(W.device)
indices = (normalized.reshape(-1, 1) - code).abs().argmin(dim=1).to(torch.uint8)   # (n,) values 0..15
packed = (indices[0::2] << 4) | indices[1::2]                                       # (n/2,) uint8
state = Q.quantize_nf4(W, blocksize=B)
print("indices:", tuple(indices.shape), "| packed bytes:", tuple(packed.shape), packed.dtype)
assert torch.equal(packed, state.packed) and torch.equal(absmax, state.absmax)
print("packed bytes identical to peftedu.quant.quantize_nf4:", torch.equal(packed, state.packed))
if bnb_functional is not None:
    bnb_packed, bnb_state = bnb_functional.quantize_4bit(W, blocksize=B, quant_type="nf4")
    assert torch.equal(packed, bnb_packed.reshape(-1))
    print("packed bytes identical to bitsandbytes.functional.quantize_4bit:", torch.equal(packed, bnb_packed.reshape(-1)))

# %% [markdown]
# **Dequantization** unpacks the nibbles, looks up the level and multiplies by the block's absmax.

# %%
unpacked = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()      # (n,)
W_deq = (code[unpacked].reshape(-1, B) * absmax[:, None]).reshape(W.shape)
cmp("scratch dequant vs peftedu dequantize_nf4", W_deq, Q.dequantize_nf4(state), atol=0)
error = W_deq - W
print(f"mean |error| {measured(error.abs().mean(), '.2e')} | max |error| {error.abs().max():.2e} | "
      f"relative Frobenius error {measured(error.norm() / W.norm(), '.4f')}")
assert error.abs().max() <= absmax.max() / 2           # never worse than half the widest gap times absmax

# %% [markdown]
# ## 3. Double quantization (双重量化) of the constants, by hand
#
# Each block of 64 weights carries one fp32 absmax: 32/64 = 0.5 extra bits per weight. QLoRA quantizes
# these constants too. **What the paper says** (§3, "Double Quantization"): "we use 8-bit Floats with a
# blocksize of 256" for this second quantization, after subtracting the constants' mean (they are all positive;
# centred, they use the signed code symmetrically). Source 003 writes "再用 FP8 量化": it follows the paper, and
# is right to. **What bitsandbytes does** (and `peftedu.quant`, and the cell below, which reproduces its codes):
# subtract the mean, cut the constants into blocks of 256, and store each with bitsandbytes' signed **dynamic
# 8-bit** code (`Q.dynamic_map_8bit()`, Dettmers 2016: a sign bit, a decimal exponent written as a run of zero
# bits, then a linear fraction) plus one fp32 absmax per 256 constants. That code is a float in the paper's sense
# (an exponent and a fraction), not one of the IEEE-style FP8 formats (E4M3, E5M2) of recent GPUs.

# %%
mean = absmax.mean()
centred = absmax - mean                                  # (n_blocks,) constants, now around 0
n_blocks = centred.numel()
n_nested = -(-n_blocks // 256)                           # ceil: the last group is padded
padded = torch.nn.functional.pad(centred, (0, n_nested * 256 - n_blocks)).reshape(n_nested, 256)
nested_absmax = padded.abs().amax(dim=1)                 # (n_nested,) fp32
dyn8 = Q.dynamic_map_8bit().to(W.device)                # (256,) sorted levels in [-1, 1]
normalized_c = (padded * (1.0 / nested_absmax)[:, None]).clamp(-1, 1).reshape(-1)[:n_blocks]
codes8 = (normalized_c.reshape(-1, 1) - dyn8).abs().argmin(dim=1).to(torch.uint8)
state_dq = Q.quantize_nf4(W, blocksize=B, double_quant=True)
print(f"{n_blocks} block constants -> {n_blocks} uint8 codes + {n_nested} fp32 scales + 1 fp32 mean")
assert torch.equal(codes8, state_dq.absmax) and torch.equal(nested_absmax, state_dq.nested_absmax)
if bnb_functional is not None:   # bitsandbytes' second level: the same map, blocks of 256, the same mean subtracted
    _, bnb_state_dq = bnb_functional.quantize_4bit(W, blocksize=B, quant_type="nf4", compress_statistics=True)
    bnb_second = bnb_state_dq.state2
    assert torch.equal(bnb_second.code.to(dyn8.device), dyn8) and bnb_second.blocksize == 256
    assert torch.equal(bnb_state_dq.offset, mean) and torch.equal(bnb_second.absmax, nested_absmax)
    print(f"bitsandbytes: second-level code = dynamic 8-bit map ({bnb_second.code.numel()} levels), "
          f"blocks of {bnb_second.blocksize}, mean subtracted: {torch.equal(bnb_state_dq.offset, mean)}")
absmax_back = (dyn8[codes8.long()].reshape(-1) * nested_absmax.repeat_interleave(256)[:n_blocks]) + mean
print(f"largest error on a block constant: {measured(((absmax_back - absmax).abs() / absmax).max(), '.2%')} of it")
_ = cmp("weights: NF4+DQ vs NF4 (effect of DQ)", Q.dequantize_nf4(state_dq), W_deq, atol=absmax.max().item() * 0.05)

# %% [markdown]
# **Bits per parameter, measured** from the stored tensors (`Q.bits_per_parameter`), against the formulas
# `4 + 32/64` and `4 + 8/64 + 32/(64·256)`:

# %%
bits_plain, bits_dq = Q.bits_per_parameter(state), Q.bits_per_parameter(state_dq)
print(f"NF4:               {bits_plain:.4f} bits per parameter (formula {4 + 32 / 64})")
print(f"NF4 + double quant: {bits_dq:.4f} bits per parameter (formula {4 + 8 / 64 + 32 / (64 * 256):.4f})")
print(f"saved by double quantization: {bits_plain - bits_dq:.3f} bits per parameter")
# counted: 4 bits per weight, 8 per block constant, 32 per (padded) group of 256 constants, 32 for the mean
counted = (4 * W.numel() + 8 * n_blocks + 32 * n_nested + 32) / W.numel()
assert bits_plain == 4.5 and abs(bits_dq - counted) < 1e-9 and bits_dq >= nf4_bits_per_param() - 1e-9

# %% [markdown]
# On SmolLM2-135M, the default, this matrix has 5,184 blocks, not a multiple of 256, so its last group of
# constants is padded and the measurement sits a hair above the formula (the smaller the matrix, the more).
# Source 003's "about 0.37 bits saved per parameter" matches.
#
# ### A 4-bit linear layer from scratch: `Linear4bit`
#
# QLoRA never multiplies in 4 bits. The layer keeps the packed nibbles and the double-quantized constants;
# its forward pass rebuilds the weight in the compute dtype (bf16 in the paper, fp32 on our CPU) and does an
# ordinary matmul — paper eq. 5, `Y = X · doubleDequant(c1, c2, W_nf4)`. The weight is frozen, so the backward
# pass returns only the input's gradient, `grad_X = grad_Y · W`; it dequantizes again rather than keeping the
# full-precision W from the forward pass alive (that copy is what 4-bit storage saves). An autograd function says
# exactly that:

# %%
def double_dequantize(packed, absmax_codes, nested_absmax, nested_offset, shape, blocksize=64):
    """NF4 nibbles + 8-bit block constants -> the weight in fp32: first the constants, then the weights."""
    n_blocks = absmax_codes.numel()
    constants = F.pad(dyn8[absmax_codes.long()], (0, nested_absmax.numel() * 256 - n_blocks)).view(-1, 256)
    block_absmax = (constants * nested_absmax[:, None]).reshape(-1)[:n_blocks] + nested_offset    # (n_blocks,)
    nibbles = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()                # high nibble first
    return (code[nibbles].view(-1, blocksize) * block_absmax[:, None]).view(shape)


class DequantMatmul(torch.autograd.Function):
    """y = x Wᵀ with W dequantized on the fly. Backward: grad_x = grad_y W; no gradient for the 4-bit W."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer                                # keep the 4-bit layer, not the dequantized W
        return F.linear(x, layer.dequantize().to(x.dtype))

    @staticmethod
    def backward(ctx, grad_y):
        return grad_y @ ctx.layer.dequantize().to(grad_y.dtype), None    # (grad for x, grad for layer: none)


class Linear4bit(nn.Module):
    """A frozen linear layer stored as NF4 + double-quantized constants (buffers, not parameters)."""

    def __init__(self, state):
        super().__init__()
        self.shape = state.shape                         # (out_features, in_features)
        for name in ("packed", "absmax", "nested_absmax", "nested_offset"):
            self.register_buffer(name, getattr(state, name))

    def dequantize(self):
        return double_dequantize(self.packed, self.absmax, self.nested_absmax, self.nested_offset, self.shape)

    def forward(self, x):                                # (..., in_features) -> (..., out_features)
        return DequantMatmul.apply(x, self)


scratch_4bit = Linear4bit(state_dq)                      # the packed weight of section 3
generator = torch.Generator().manual_seed(0)            # its own stream: later cells' random numbers stay the same
x = torch.randn(2, 5, W.shape[1], generator=generator).to(W.device)       # (batch, tokens, in_features)
grad_y = torch.randn(2, 5, W.shape[0], generator=generator).to(W.device)  # upstream gradient, (batch, tokens, out)


def forward_backward(layer):
    """Output and input gradient of `layer` for the same x and the same upstream gradient."""
    x_in = x.clone().requires_grad_(True)
    y = layer(x_in)
    y.backward(grad_y)
    return y.detach(), x_in.grad


y_scratch, grad_x_scratch = forward_backward(scratch_4bit)
print("x", tuple(x.shape), "-> y", tuple(y_scratch.shape), "| trainable parameters:", len(list(scratch_4bit.parameters())))
assert y_scratch.shape == (2, 5, W.shape[0]) and not list(scratch_4bit.parameters())
cmp("scratch double dequant vs peftedu dequantize_nf4", scratch_4bit.dequantize(), Q.dequantize_nf4(state_dq), atol=0)
_ = cmp("grad_x vs grad_y @ dequant(W), by hand", grad_x_scratch, grad_y @ scratch_4bit.dequantize(), atol=0)

# %% [markdown]
# **Proof against `peftedu.quant.Linear4bit` and bitsandbytes' `Linear4bit`**, on the same packed weight.
# `peftedu`'s layer runs the very same operations (dequantize, `F.linear`; backward `grad_y @ W`), hence `atol=0`.
# For bitsandbytes we hand its `Params4bit` our bytes and constants (its `QuantState`, with the 8-bit level as
# `state2`); its own kernels dequantize and multiply, so it agrees within rounding.

# %%
y_ours, grad_x_ours = forward_backward(Q.Linear4bit(state_dq))
cmp("forward: scratch vs peftedu Linear4bit", y_scratch, y_ours, atol=0)
cmp("grad_x: scratch vs peftedu Linear4bit", grad_x_scratch, grad_x_ours, atol=0)
if bnb is not None:
    bnb_quant_state = bnb_functional.QuantState(
        absmax=state_dq.absmax, shape=state_dq.shape, code=state_dq.code, blocksize=B, quant_type="nf4",
        dtype=state_dq.dtype, offset=state_dq.nested_offset,
        state2=bnb_functional.QuantState(absmax=state_dq.nested_absmax, code=state_dq.nested_code, blocksize=256,
                                         dtype=torch.float32))
    with torch.random.fork_rng(devices=[]):          # its nn.Linear init draws random numbers: keep our stream
        bnb_4bit = bnb.nn.Linear4bit(W.shape[1], W.shape[0], bias=False, compute_dtype=W.dtype, quant_type="nf4")
    bnb_4bit.weight = bnb.nn.Params4bit(state_dq.packed.reshape(-1, 1), requires_grad=False, quant_state=bnb_quant_state,
                                        blocksize=B, compress_statistics=True, quant_type="nf4", bnb_quantized=True,
                                        module=bnb_4bit)
    y_bnb, grad_x_bnb = forward_backward(bnb_4bit)      # x requires grad: bitsandbytes' autograd path (MatMul4Bit)
    cmp("forward: scratch vs bitsandbytes Linear4bit", y_scratch, y_bnb,
        atol=rounding_tolerance(W.dtype, magnitude=y_scratch.abs().max().item(), terms=W.shape[1]))
    cmp("grad_x: scratch vs bitsandbytes Linear4bit", grad_x_scratch, grad_x_bnb,
        atol=rounding_tolerance(W.dtype, magnitude=grad_x_scratch.abs().max().item(), terms=W.shape[0]))
else:
    print("bitsandbytes not installed: skipping the comparison with its Linear4bit")

# %% [markdown]
# ## 4. NF4 vs INT4 vs FP4 on real layers
#
# Same blocks, same absmax, only the 16 levels differ. Relative Frobenius error ‖W' − W‖/‖W‖ on four
# layers at four depths (first, a third, two thirds, last block), each a different kind of linear layer of
# the block where the architecture has enough (on SmolLM2-135M, the default: `q_proj` of layer 0,
# `down_proj` of 10, `v_proj` of 20, `gate_proj` of 29), computed here:

# %%
n_layers = model.config.num_hidden_layers
linear_names = list(linear_weights(model))             # every nn.Linear but lm_head, in model order
in_block = lambda i: [n for n in linear_names if f".{i}." in n]   # the linear layers of block i
picks = [(0, 0), (n_layers // 3, -1), (2 * n_layers // 3, 2), (n_layers - 1, 4)]   # (block, which linear of it)
layer_names = [in_block(i)[k % len(in_block(i))] for i, k in picks]
weights = {name: model.get_submodule(name).weight.detach().float() for name in layer_names}
rows = {}
for name, w in weights.items():
    rows[name] = {qt: ((Q.dequantize_blockwise(Q.quantize_4bit(w, qt)) - w).norm() / w.norm()).item()
                  for qt in Q.QUANT_TYPES}
print(f"{'layer':<36}" + "".join(f"{qt:>8}" for qt in Q.QUANT_TYPES))
for name, row in rows.items():
    print(f"{name:<36}" + "".join(f"{measured(row[qt], '.4f'):>8}" for qt in Q.QUANT_TYPES))
assert all(row["nf4"] < row["int4"] and row["nf4"] < row["fp4"] for row in rows.values())

# %% [markdown]
# The histogram of `weight / block absmax` of one layer, with each code's levels drawn over it
# (`nf4_histogram_explorer` + `plot_nf4_histogram`):

# %%
data = nf4_histogram_explorer(weights[layer_names[1]])
axes = plot_nf4_histogram(data, title=layer_names[1].removeprefix("model."))
plt.tight_layout()
plt.show()
print("MSE:", ", ".join(f"{k} {measured(v, '.2e')}" for k, v in data["mse"].items()))
assert data["mse"]["nf4"] == min(data["mse"].values())

# %% [markdown]
# An explorer over the four layers (a slider picks the layer; in a live notebook the plot redraws). A static
# view of this notebook cannot run the controls: it shows the first layer's histograms and a note instead.

# %% tags=["nbval-ignore-output"]
widget = nf4_histogram_widget({name.removeprefix("model."): w for name, w in weights.items()})
display(widget)
plt.close("all")
static_view = widget._repr_mimebundle_()
assert static_view["text/plain"] == LIVE_NOTE and "image/png" in static_view

# %% [markdown]
# **The whole model**, too slow to recompute here, was measured by `python scripts/measure_quant.py`,
# which wrote `results/quant.json` (and `results/quant.md`). We read it:

# %%
results = json.loads((Path("..") / "results" / "quant.json").read_text())
print("caveat:", results["caveat"])
print(f"{results['n_linear_layers']} linear layers, blocksize {results['blocksize']}")
print(f"{'code':<8}{'MSE':>12}{'rel. Frobenius':>16}{'Gaussian rel. Frob.':>21}")
for qt, row in results["errors_smollm2"].items():
    if qt == "layers_where_lowest_mse":
        continue
    gauss = results["errors_gaussian_control"][qt]["relative_frobenius"]
    print(f"{qt:<8}{row['mse']:12.4e}{row['relative_frobenius']:16.4f}{gauss:21.4f}")
print("layers where each code has the lowest MSE:", results["errors_smollm2"]["layers_where_lowest_mse"])
assert results["nf4_wins_smollm2"] and results["nf4_wins_gaussian"]

# %% [markdown]
# Read the caveat: our offline SmolLM2 weights were themselves rebuilt from a 4-bit (Q4_1, uniform-grid)
# GGUF file, which should *favour* INT4 — NF4 still has the lower error in every layer, and on the i.i.d.
# Gaussian control too. NF4+DQ costs almost nothing over plain NF4.
#
# ## 5. How big is the model?
#
# Bytes per format, from the same JSON; then we quantize our model with `Q.quantize_model` (every
# `nn.Linear` except `lm_head`, NF4 + double quant) and measure it with `Q.model_nbytes`.

# %%
for label, nbytes in results["storage"]["model_bytes"].items():
    print(f"{label:<28}{nbytes:>14,} bytes  ({nbytes / results['storage']['model_bytes']['fp32']:.1%} of fp32)")
fp32_bytes = Q.model_nbytes(model)                       # the model as loaded (fp32 on a CPU, bf16 on a GPU)
linear_bytes = sum(w.numel() * w.element_size() for w in linear_weights(model).values())
start = time.perf_counter()
Q.quantize_model(model)                                   # in place: every Linear but lm_head -> Linear4bit
seconds = time.perf_counter() - start
nf4_bytes = Q.model_nbytes(model)
quantized = [m for m in model.modules() if isinstance(m, Q.Linear4bit)]
print(f"quantize_model took {seconds:.1f} s on this machine")
dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[model.dtype]
print(f"measured here: {dtype_name} {fp32_bytes:,} bytes -> NF4+DQ linears {nf4_bytes:,} bytes")
# what quantizing must give: the linear weights replaced by their 4-bit storage (+ each layer's code tables,
# shared on the CPU, one copy per layer on a GPU)
expected = fp32_bytes - linear_bytes + sum(Q.storage_bytes(m.state) for m in quantized)
tables = len(quantized) * (16 + 256) * 4
assert len(quantized) == len(linear_names) and 0 <= nf4_bytes - expected <= tables
if model_name() == DEFAULT_MODEL and model.dtype == torch.float32:   # the model and dtype the JSON measured
    assert fp32_bytes == results["storage"]["model_bytes"]["fp32"]
    assert nf4_bytes == results["storage"]["model_bytes"]["nf4+dq linears, rest fp32"]
else:
    print(f"(results/quant.json measured {results['model']} in fp32; here we checked the bytes against "
          f"the 4-bit storage of the {len(quantized)} quantized layers instead)")
print(model.get_submodule(first_linear))

# %% [markdown]
# The embedding (on SmolLM2-135M, the default: 49,152 × 576, tied with `lm_head`) stays unquantized, as in
# QLoRA; in a 135M model it is a large share of the bytes, so the saving looks smaller than the "8×" of
# 32 → 4 bits. For a 7B model it is a few percent.
#
# ## 6. QLoRA = LoRA on `Linear4bit`
#
# `peftedu`'s `LoraLinear` wraps a `Linear4bit` as it wraps an `nn.Linear`: the forward pass is
# `Y = X·dequant(W_nf4)ᵀ + s·X Aᵀ Bᵀ` (paper eq. 5), the 4-bit weight sits in buffers (never trained), the
# adapters in fp32 here (bf16 on a GPU). At step 0 (`B = 0`) the wrapped model equals the quantized model.

# %%
test_rows = load_task("topic", "test").select(range(4))
test_batch = tokenizer([build_prompt(tokenizer, r["instruction"], r["input"]) for r in test_rows],
                       return_tensors="pt", padding=True).to(model.device)
with torch.no_grad():
    logits_4bit = model(**test_batch).logits
qlora_before = evaluate(model, tokenizer, "topic")
# the attention's linear layers of this architecture (on SmolLM2: q_proj, k_proj, v_proj, o_proj)
attention_linears = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in in_block(0) if ".self_att" in n))
config = LoraConfig(r=8, lora_alpha=16, target_modules=attention_linears)
qlora_model = get_peft_model(model, config)
qlora_model.print_trainable_parameters()
with torch.no_grad():
    cmp("QLoRA at step 0 vs the 4-bit model", qlora_model(**test_batch).logits, logits_4bit, atol=0)
wrapped = qlora_model.get_submodule("base_model." + first_linear)
print(type(wrapped).__name__, "around", type(wrapped.base_layer).__name__)
assert isinstance(wrapped.base_layer, Q.Linear4bit)

# %%
history = train(qlora_model, tokenizer, load_task("topic", "train"), lr=2e-3, progress=False)
print(history.summary())
if is_pretrained(model):
    assert history.loss[-1] < history.loss[0] / 2
else:
    # a random model's loss barely moves in a dozen steps, and each step sees other rows: no trend to check
    print("random weights: checking that every step ran with a finite loss")
    assert len(history.loss) == profile.max_steps and all(math.isfinite(loss) for loss in history.loss)
plot_history(history)
plt.title("QLoRA on topic")
plt.show()
qlora_after = evaluate(qlora_model, tokenizer, "topic")
example = qlora_after["examples"][0]
print(f"QLoRA topic accuracy: before {qlora_before['score']:.3f} -> after {measured(qlora_after['score'])} ({qlora_after['n']} rows)")
print(f"input {example['input']!r} | reference {example['reference']!r}")
print(f"  4-bit base: {qlora_before['examples'][0]['prediction']!r} | QLoRA: {measured(example['prediction'])}")
if is_pretrained(model):
    assert qlora_after["score"] >= qlora_before["score"] + 0.5   # learned: far above the untrained 4-bit model
else:
    print("random weights: the score means nothing; checking that the adapters moved and the 4-bit base did not")
    assert wrapped.lora_B["default"].weight.abs().max() > 0 and not any(
        p.requires_grad for n, p in qlora_model.named_parameters() if "lora_" not in n)

# %% [markdown]
# **The comparison:** plain LoRA on the unquantized model (fp32 on a CPU, bf16 on a GPU), same config,
# same learning rate, same seed.

# %%
fp32_model, _ = load_base()
lora_before = evaluate(fp32_model, tokenizer, "topic")
lora_model = get_peft_model(fp32_model, config)
lora_history = train(lora_model, tokenizer, load_task("topic", "train"), lr=2e-3, progress=False)
lora_after = evaluate(lora_model, tokenizer, "topic")
print(f"{'':<22}{'before':>8}{'after':>8}{'final loss':>12}")
print(f"{f'LoRA ({dtype_name} base)':<22}{lora_before['score']:8.3f}{measured(lora_after['score']):>8}"
      f"{measured(lora_history.loss[-1], '.4f'):>12}")
print(f"{'QLoRA (NF4+DQ base)':<22}{qlora_before['score']:8.3f}{measured(qlora_after['score']):>8}"
      f"{measured(history.loss[-1], '.4f'):>12}")
if is_pretrained(model):
    assert lora_after["score"] >= lora_before["score"] + 0.5
else:
    print("random weights: checking that plain LoRA's steps ran with a finite loss, as QLoRA's did")
    assert len(lora_history.loss) == profile.max_steps and all(math.isfinite(loss) for loss in lora_history.loss)

# %% [markdown]
# The table above is one short run on 48 test rows: read differences of a row or two as noise. The paper's
# claim is that 4-bit NF4 + LoRA matches 16-bit LoRA on its benchmarks; this small run only shows that the
# quantized base learns the task as well — not a proof of equality.
#
# ## 7. Merging into a 4-bit base re-quantizes
#
# Merging LoRA writes `W + sBA` into the base weight. With a 4-bit base that means
# dequantize → add → **quantize again**, and the new weight snaps to the 16-level grid of each block. If the
# update is smaller than the gap between levels, most of it is rounded away. We measure this on one trained
# layer (on a copy, so the model stays as trained): the fraction of `sBA` that survives,
# `⟨merged − dequant(W), sBA⟩ / ‖sBA‖²` (1 = kept, 0 = erased).

# %%
layer = copy.deepcopy(wrapped)
delta = layer.delta_weight("default").detach().float()               # s·B·A, (out, in), in fp32
W_before = layer.base_layer.dequantize()                             # in the base model's dtype
W_merged = Q.dequantize_blockwise(Q.quantize_4bit((W_before + delta).to(W_before.dtype), "nf4", double_quant=True))
kept = ((W_merged.float() - W_before.float()) * delta).sum() / delta.pow(2).sum()
bf16_merged = (W_before.float() + delta).to(torch.bfloat16).float()
kept_bf16 = ((bf16_merged - W_before.float()) * delta).sum() / delta.pow(2).sum()
print(f"|sBA| / |W| = {measured(delta.norm() / W_before.float().norm(), '.4f')}")
print(f"fraction of sBA kept: re-quantized to NF4 {measured(kept)} | bf16 copy {measured(kept_bf16)} | unmerged 1.000")
if is_pretrained(model):
    assert kept < 0.5 < kept_bf16                                      # re-quantizing loses most of this small update
else:
    print("random weights: the update is not small here; checking that the bf16 copy keeps it better than NF4")
    assert abs(kept_bf16 - 1) < abs(kept - 1)
layer.merge(["default"])                                               # peftedu: the same dequant -> add -> requant
_ = cmp("peftedu merge vs re-quantize by hand", layer.base_layer.dequantize(), W_merged, atol=0)

# %% [markdown]
# The whole-model measurement (`scripts/measure_quant.py`, random rank-8 deltas of three sizes) in the JSON:

# %%
for size, row in results["merge"].items():
    print(f"{size:<22} kept after re-quantizing: {row['fraction_of_delta_kept_requantize']:.3f} | "
          f"bf16 copy: {row['fraction_of_delta_kept_bf16_copy']:.3f}")

# %% [markdown]
# The options, then: (1) **keep the adapter unmerged** — exact, at the price of `r·(in+out)` extra
# multiply-adds per token; (2) **merge into a 16-bit copy** of the dequantized base — what people usually
# deploy (`merge_and_unload` on a bf16 base); (3) **re-quantize** — 4-bit storage, but a small update is
# largely lost, as measured above.
#
# ## 8. Paged optimizers (分页优化器)
#
# The problem: memory **spikes**. With gradient checkpointing a long batch can briefly need more GPU memory
# than the steady state, and one spike is enough for an out-of-memory crash. QLoRA's paged optimizers put
# the AdamW states in NVIDIA **unified memory** (统一内存): when the GPU runs out, the driver evicts pages to CPU RAM
# and brings them back when the optimizer step touches them — slower for that step, but no crash.
# On a CPU there is no GPU memory to overflow, so `paged_adamw_or_none` returns `None` (nothing is faked);
# training then uses `torch.optim.AdamW`.

# %%
trainable = [p for p in qlora_model.parameters() if p.requires_grad]
paged = Q.paged_adamw_or_none(trainable, lr=2e-3)
print("CUDA available:", torch.cuda.is_available(), "| paged optimizer:", type(paged).__name__)
if not torch.cuda.is_available():
    assert paged is None

# %% [markdown]
# ## 9. "65B on one 48 GB GPU", "7B on 24 GB": the arithmetic
#
# `estimate_training_memory` adds the parts, each with its assumption printed. The QLoRA recipe: linear
# weights in NF4+DQ (≈4.127 bits), embeddings/norms/`lm_head` in bf16, LoRA r = 64 on all linear layers (the
# paper's setting) in bf16 with bf16 gradients and paged fp32 AdamW, gradient checkpointing at batch 1 ×
# 512 tokens.

# %%
shape = LLAMA_SHAPES["65B"]
n, lora = shape.n_params(), shape.lora_params(64)
activations = activation_memory_gb(shape, batch_size=1, seq_len=512, checkpointing=True)
qlora_65b = estimate_training_memory(n + lora, trainable_params=lora, weight_bits="nf4-dq", trainable_bits=16,
                                     optimizer="paged-adamw", unquantized_params=n - shape.linear_params(),
                                     unquantized_bits=16, activations_gb=activations, label="QLoRA 65B")
print(qlora_65b.explain())
recipe = method_memory("qlora", n, adapter_params=lora, quantized_params=shape.linear_params(), activations_gb=activations)
assert abs(recipe.total_gb - qlora_65b.total_gb) < 1e-9
lora_65b = method_memory("lora", n, adapter_params=lora, activations_gb=activations)
print(f"\nfits in 48 GB: QLoRA {qlora_65b.fits_in(48)} | LoRA on a bf16 base {lora_65b.fits_in(48)} "
      f"({lora_65b.total_gb:.0f} GB)")
assert qlora_65b.fits_in(48) and not lora_65b.fits_in(48)

# %%
shape7 = LLAMA_SHAPES["7B"]
act7 = activation_memory_gb(shape7, batch_size=1, seq_len=512)
kw = dict(adapter_params=shape7.lora_params(64), activations_gb=act7)
qlora_7b = method_memory("qlora", shape7.n_params(), quantized_params=shape7.linear_params(), **kw)
full_7b = method_memory("full-mixed", shape7.n_params(), activations_gb=act7)
print(f"7B: QLoRA {qlora_7b.total_gb:.1f} GB (fits 24 GB: {qlora_7b.fits_in(24)}) | "
      f"full mixed-precision fine-tuning {full_7b.total_gb:.0f} GB (fits: {full_7b.fits_in(24)})")
assert qlora_7b.fits_in(24) and not full_7b.fits_in(24)

# %% [markdown]
# The 4-bit base is most of the 65B budget; the adapters with their optimizer states are a fraction of it.
# Not counted: the CUDA context, fragmentation and the dequantized weight of the layer being computed — the
# printout lists these assumptions, and a real run should be measured (`measure_peak_memory`).
#
# ## Summary
#
# * NF4's 16 levels are normal quantiles (8 positive, 7 negative, an exact 0) scaled to [-1, 1]; our
#   derivation equals `nf4_code()` and bitsandbytes' table.
# * Block-wise absmax: one fp32 constant per 64 weights, the nearest level per weight, two 4-bit codes per
#   byte — our hand-made bytes equal `quantize_nf4`'s (and bitsandbytes').
# * Double quantization stores the constants in 8 bits (blocks of 256): 4.5 → ≈4.127 bits per weight, measured.
#   The paper calls that 8-bit format a float; bitsandbytes' is its dynamic 8-bit map, applied after subtracting the mean.
# * `Linear4bit` dequantizes for every matmul and gives only the input a gradient: our short version equals
#   `peftedu`'s and bitsandbytes' (outputs and input gradients).
# * On real SmolLM2 layers NF4 has a lower error than INT4 and FP4 (cells above, and the whole-model JSON).
# * QLoRA is LoRA on `Linear4bit`: only the adapters train; the cells above compare its score with fp32 LoRA.
# * Merging into a 4-bit base re-quantizes and can erase a small update: keep adapters unmerged or merge into
#   a 16-bit copy. Paged optimizers absorb memory spikes through unified memory (GPU only).
#
# ## Interview corner
#
# 1. **Why NF4 instead of INT4?** Weights are near-normal; NF4 places levels at normal quantiles, so each
#    level is used about equally and the expected error is lower (measured in section 4).
# 2. **What is double quantization and what does it save?** Quantizing the per-block fp32 absmax constants
#    to 8 bits in blocks of 256: 32/64 = 0.5 → 8/64 + 32/(64·256) ≈ 0.127 bits per weight, ≈0.37 saved.
# 3. **Is QLoRA's compute done in 4 bits?** No: weights are *stored* in 4 bits and dequantized to the compute
#    dtype (bf16) for each matmul; gradients flow through the dequantized weight to the 16-bit adapters.
# 4. **Can you merge a QLoRA adapter into the 4-bit model?** Only by re-quantizing, which rounds the update
#    to the 4-bit grid and can lose most of it; merge into a bf16 copy of the dequantized base instead.
# 5. **What do paged optimizers solve?** Out-of-memory crashes from transient spikes: optimizer states live
#    in unified memory and are paged to CPU RAM when the GPU is full.
#
# ## Exercises
#
# 1. Change `B` (the block size) in section 2 to 32 and 256. How do the error and `bits_per_parameter` change?
#
# <details><summary>Solution</summary>
#
# ```python
# for bs in (32, 64, 256):
#     s = Q.quantize_nf4(W, blocksize=bs)
#     err = (Q.dequantize_nf4(s) - W).norm() / W.norm()
#     print(bs, f"{err:.4f}", Q.bits_per_parameter(s))   # bits = 4 + 32/bs: smaller blocks, lower error, more bits
# ```
# </details>
#
# 2. Quantize a tensor of i.i.d. N(0, 1) values and a tensor of uniform values in [-1, 1] with NF4 and INT4.
#    Which code wins on which data, and why?
#
# <details><summary>Solution</summary>
#
# ```python
# g = torch.Generator().manual_seed(0)
# for name, x in {"normal": torch.randn(4096, 64, generator=g), "uniform": 2 * torch.rand(4096, 64, generator=g) - 1}.items():
#     errs = {qt: ((Q.dequantize_blockwise(Q.quantize_4bit(x, qt)) - x).norm() / x.norm()).item() for qt in ("nf4", "int4")}
#     print(name, errs)   # NF4 wins on normal data, evenly spaced INT4 on uniform data
# ```
# </details>
#
# 3. In section 7, scale the delta by 10 (`delta * 10`) and measure the kept fraction again. Why does it grow?
#
# <details><summary>Solution</summary>
#
# ```python
# big = 10 * delta
# merged = Q.dequantize_blockwise(Q.quantize_4bit(W_before + big, "nf4", double_quant=True))
# print(((merged - W_before) * big).sum() / big.pow(2).sum())
# # a larger update crosses more midpoints between levels, so more of it survives the rounding
# ```
# </details>
