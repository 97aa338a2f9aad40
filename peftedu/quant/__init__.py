"""QLoRA's 4-bit base model from scratch: NF4 (4 位正态浮点), double quantization (双重量化), Linear4bit.

Reference: Dettmers, Pagnoni, Holtzman, Zettlemoyer (2023), "QLoRA: Efficient Finetuning of
Quantized LLMs", arXiv:2305.14314. The reference implementation is ``bitsandbytes``; the tests
check that our packed bytes are identical to ``bitsandbytes.functional.quantize_4bit``.

Block-wise absmax quantization (量化), one block = ``blocksize`` (B, default 64) consecutive
weights of the flattened (row-major) weight::

    c_b   = max_{i in b} |W_i|                       one fp32 "quantization constant" per block
    q_i   = argmin_j | W_i / c_b - code[j] |          4-bit index (nibble) into a 16-level code
    W'_i  = code[q_i] * c_b                           dequantization (反量化)

NF4, FP4 and INT4 differ only in ``code``, the 16 levels in [-1, 1]:
NF4 puts them at quantiles of N(0, 1) (``nf4_code``), FP4 at the numbers a 1-sign/2-exponent/
1-mantissa float can write (``fp4_code``), INT4 evenly (``int4_code``).

Double quantization (paper, section 3) quantizes the constants themselves: subtract their mean
and store them with an 8-bit code (``dynamic_map_8bit``) in blocks of 256, each with one fp32
second-level constant::

    without:  4 + 32/64             = 4.5    bits per parameter
    with:     4 + 8/64 + 32/(64*256) ~ 4.127  bits per parameter   (+ one fp32 mean per tensor)

The QLoRA layer (paper, eq. 5 and 6) then computes, with L1, L2 the LoRA (低秩适配) matrices::

    Y = X doubleDequant(c1_fp32, c2_8bit, W_nf4) + X L1 L2
    doubleDequant(c1, c2, W) = dequant(dequant(c1, c2), W)

Shapes, for a weight of shape (out_features, in_features) with n = out*in values:
``packed`` (ceil(n/2),) uint8, ``absmax`` (ceil(n/B),) fp32 -- or uint8 with double quant, plus
``nested_absmax`` (ceil(ceil(n/B)/256),) fp32 and ``nested_offset`` () fp32.

Conventions (all as bitsandbytes does them, all tested):

* element 2k goes into the HIGH nibble of byte k, element 2k+1 into the low nibble;
  an odd element count is padded with the code for 0.
* the normalised value is ``W * (1 / c_b)`` (multiplication by the reciprocal), clamped to [-1, 1];
  an all-zero block is divided by 1e-38 instead of 0 (its stored c_b stays 0).
* the nearest level is found with the midpoints between sorted levels; an exact tie goes to the
  lower level. (bitsandbytes' CPU 8-bit kernel uses a 65,536-bin lookup table instead, so for the
  double-quantized constants it can pick a nearby code: on near-ties, or up to 3 indices off near 0
  where the 8-bit levels are closer together than its bins; see the tests.)
* the 16-level code tables are constants of the data type, shared by every layer: they are not
  counted in ``bits_per_parameter`` unless asked.
"""

from .functional import (
    NESTED_BLOCKSIZE,
    NF4_OFFSET,
    QUANT_TYPES,
    QuantState4bit,
    _expand_blocks,
    _normalize_blocks,
    bits_per_parameter,
    dequantize_blockwise,
    dequantize_nf4,
    dynamic_map_8bit,
    fp4_code,
    get_code,
    int4_code,
    nf4_code,
    quantize_4bit,
    quantize_blockwise,
    quantize_nf4,
    storage_bytes,
)
from .linear4bit import Linear4bit, count_logical_parameters, model_nbytes, paged_adamw_or_none, quantize_model
