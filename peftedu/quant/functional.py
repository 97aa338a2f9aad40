"""The 4-bit data types and block-wise quantization, as ``bitsandbytes.functional`` computes them.

The 16-level codes (NF4, FP4, INT4; the 8-bit map of double quantization), :func:`quantize_blockwise` /
:func:`dequantize_blockwise` and their storage cost. The conventions (nibble order, reciprocal scaling, ties)
are listed in :mod:`peftedu.quant`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NF4_OFFSET = 0.9677083
"""bitsandbytes' rounding of 1 - δ with δ = (1/30 + 1/32) / 2 = 0.03229166...: the largest probability
whose N(0, 1) quantile is used. δ averages two tail *probabilities*, 1/(2·15) and 1/(2·16) (half a step of a
15- and of a 16-level grid), not two quantiles; bitsandbytes' create_normal_map uses this offset."""

NESTED_BLOCKSIZE = 256
QUANT_TYPES = ("nf4", "fp4", "int4")


# --------------------------------------------------------------------------- the 16-level codes
def nf4_code(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NormalFloat-4 levels, derived from quantiles of N(0, 1) (QLoRA section 3).

    Step 1: 9 probabilities evenly from ``offset`` down to 0.5 -> drop 0.5 -> 8 positive quantiles.
    Step 2: 8 probabilities from ``offset`` to 0.5 -> drop 0.5 -> 7 quantiles, negated.
    Step 3: add an exact 0 (zero padding and zero weights must stay exactly zero).
    Step 4: sort and divide by the largest, so the code spans [-1, 1].

    The asymmetry (8 positive, 7 negative, one zero) spends all 16 indices while keeping 0 exact.
    Precision follows bitsandbytes' ``create_normal_map``: float32 probabilities, quantiles in
    float64, the table in float32. Returns shape (16,), sorted, float32.
    """
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset must be a probability in (0.5, 1), got {offset}")
    normal_icdf = torch.special.ndtri  # inverse CDF of N(0, 1)
    positive_probs = torch.linspace(offset, 0.5, 9)[:-1]  # step 1
    negative_probs = torch.linspace(offset, 0.5, 8)[:-1]  # step 2
    positive = normal_icdf(positive_probs.double()).float()
    negative = -normal_icdf(negative_probs.double()).float()
    levels = torch.cat([positive, torch.zeros(1), negative])  # step 3
    levels = levels.sort().values  # step 4
    return levels / levels.max()


def fp4_code() -> torch.Tensor:
    """bitsandbytes' FP4 (e2m1) levels, indexed by the 4-bit pattern ``s e1 e0 m``.

    Normal numbers (exponent field e = 1..3) are (1 + m/2) * 2**(4 - e) -> 8, 12, 4, 6, 2, 3;
    the subnormal pattern e = 0 is m * 2**-4 -> 0, 0.0625; the sign bit negates. Divided by the
    largest (12). Index order, not value order -- exactly the table of
    ``bitsandbytes.functional.get_4bit_type("fp4")``. Shape (16,), float32.
    """
    magnitudes = []
    for exponent_field in range(4):
        for mantissa in range(2):
            if exponent_field == 0:
                magnitudes.append(mantissa * 2.0**-4)
            else:
                magnitudes.append((1 + mantissa / 2) * 2.0 ** (4 - exponent_field))
    code = torch.tensor(magnitudes + [-m for m in magnitudes], dtype=torch.float32)
    return code / code.abs().max()


def int4_code() -> torch.Tensor:
    """Symmetric absmax INT4: the integers -7..7 divided by 7, indexed like bitsandbytes'
    ``get_4bit_type("int4")`` (7, 6, ..., 0, -0, ..., -7). Symmetry costs one of the 16 patterns
    (0 appears twice). Shape (16,), float32."""
    magnitudes = torch.arange(8, dtype=torch.float32)
    return torch.cat([magnitudes.flip(0), -magnitudes]) / 7


def get_code(quant_type: str) -> torch.Tensor:
    """The 16-level code for ``"nf4"``, ``"fp4"`` or ``"int4"`` (a fresh tensor)."""
    builders = {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code}
    if quant_type not in builders:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    return builders[quant_type]()


@functools.cache
def _shared_table(name: str) -> torch.Tensor:
    """One CPU tensor per data type, shared by every layer quantized with it (never modified)."""
    return dynamic_map_8bit() if name == "dynamic8" else get_code(name)


def dynamic_map_8bit() -> torch.Tensor:
    """The signed 8-bit "dynamic" code used for double quantization (Dettmers 2016, arXiv:1511.04561).

    A byte is: sign bit, then a run of zero bits whose length picks a decimal exponent, one
    indicator bit, and the remaining bits a linear fraction. Exponent 10**(i-6), i = 0..6, gets
    2**i fractions: the centres of 2**i equal bins of [0.1, 1]. So small magnitudes get few
    levels and magnitudes near 1 get 64. With both signs that is 254 values, plus 0 and +1.0
    (so the most negative level is -0.99297, not -1). Reproduces bitsandbytes'
    ``create_dynamic_map()`` bit for bit. Shape (256,), sorted, float32.
    """
    values = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        bin_centres = (boundaries[:-1] + boundaries[1:]) / 2.0
        values.append((10 ** (-6 + i)) * bin_centres)
        values.append(-(10 ** (-6 + i)) * bin_centres)
    values.append(torch.tensor([0.0, 1.0]))
    return torch.cat(values).sort().values


# --------------------------------------------------------------------------- quantize / dequantize
@dataclass
class QuantState4bit:
    """Everything needed to rebuild a 4-bit block-wise quantized tensor.

    ``packed`` (ceil(n/2),) uint8 two nibbles per byte, first element in the high nibble;
    ``absmax`` (n_blocks,) fp32, or uint8 codes of ``nested_code`` when ``double_quant``;
    ``code`` (16,) the levels that the nibbles index. Nested fields are None without double quant.
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    code: torch.Tensor
    quant_type: str = "custom"
    nested_absmax: torch.Tensor | None = None
    nested_offset: torch.Tensor | None = None
    nested_code: torch.Tensor | None = None
    nested_blocksize: int = NESTED_BLOCKSIZE

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


NF4State = QuantState4bit  # the state returned by quantize_nf4 (quant_type="nf4")


def _check_float_tensor(weight: torch.Tensor, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got {got}")
    if weight.numel() == 0:
        raise ValueError(f"{name} is empty; there is nothing to quantize")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} contains inf or nan; absmax quantization needs finite values")


def _check_blocksize(blocksize: int) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int (bitsandbytes uses 32..4096), got {blocksize!r}")


def _normalize_blocks(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) fp32 -> (values / their block's absmax clamped to [-1, 1], (n_blocks,) absmax)."""
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    blocks = (F.pad(flat, (0, n_blocks * blocksize - n)) if n % blocksize else flat).view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    normalized = blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)
    return normalized.clamp(-1, 1).reshape(-1)[:n], absmax


def _nearest_level(normalized: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index into ``code`` (any order) of the nearest level; ties go to the lower level."""
    order = torch.argsort(code, stable=True)
    levels = code[order]
    midpoints = (levels[:-1] + levels[1:]) / 2
    return order[torch.bucketize(normalized, midpoints)]


def _expand_blocks(values: torch.Tensor, scale: torch.Tensor, blocksize: int) -> torch.Tensor:
    """values (n,) * scale of each value's block -> (n,)."""
    n = values.numel()
    if n % blocksize:
        values = F.pad(values, (0, scale.numel() * blocksize - n))
    return (values.view(-1, blocksize) * scale.unsqueeze(1)).reshape(-1)[:n]


def quantize_blockwise(
    weight: torch.Tensor, code: torch.Tensor, blocksize: int = 64, double_quant: bool = False,
    quant_type: str = "custom",
) -> QuantState4bit:
    """Quantize ``weight`` (any shape) to 4-bit indices into ``code`` (16 levels in [-1, 1])."""
    _check_float_tensor(weight)
    _check_blocksize(blocksize)
    if not isinstance(code, torch.Tensor) or code.shape != (16,) or not code.is_floating_point():
        raise ValueError(f"code must be a float tensor of 16 levels (4 bits), got {getattr(code, 'shape', code)}")
    if code.abs().max() > 1:
        raise ValueError("code levels must lie in [-1, 1]: they multiply the block absmax")
    code = code.to(device=weight.device, dtype=torch.float32)
    normalized, absmax = _normalize_blocks(weight.detach().reshape(-1).float(), blocksize)
    nibbles = _nearest_level(normalized, code).to(torch.uint8)
    if nibbles.numel() % 2:  # pad with the code for 0, as bitsandbytes does
        zero = _nearest_level(torch.zeros(1, device=weight.device), code).to(torch.uint8)
        nibbles = torch.cat([nibbles, zero])
    packed = (nibbles[0::2] << 4) | nibbles[1::2]
    state = QuantState4bit(packed, absmax, weight.shape, weight.dtype, blocksize, code, quant_type)
    if double_quant:
        state.nested_offset = absmax.mean()
        nested_code = _shared_table("dynamic8").to(weight.device)
        centred, state.nested_absmax = _normalize_blocks(absmax - state.nested_offset, NESTED_BLOCKSIZE)
        state.absmax = _nearest_level(centred, nested_code).to(torch.uint8)
        state.nested_code = nested_code
    return state


def dequantize_blockwise(state: QuantState4bit) -> torch.Tensor:
    """Rebuild the tensor: code[nibble] * block absmax (in fp32), cast to the original dtype."""
    if not isinstance(state, QuantState4bit):
        raise ValueError(f"expected a QuantState4bit, got {type(state).__name__}")
    absmax = state.absmax
    if state.double_quant:
        nested_values = state.nested_code[absmax.long()]
        absmax = _expand_blocks(nested_values, state.nested_absmax, state.nested_blocksize) + state.nested_offset
    # each byte value 0..255 -> its two levels (high nibble first): one lookup per byte
    byte = torch.arange(256, device=state.code.device)
    byte_to_levels = torch.stack([state.code[byte >> 4], state.code[byte & 0xF]], dim=1)
    values = byte_to_levels[state.packed.long()].reshape(-1)[: state.numel]
    return _expand_blocks(values, absmax, state.blocksize).view(state.shape).to(state.dtype)


def quantize_nf4(weight: torch.Tensor, blocksize: int = 64, double_quant: bool = False) -> QuantState4bit:
    """NF4 quantization: ``quantize_blockwise`` with ``nf4_code()``."""
    return quantize_4bit(weight, "nf4", blocksize, double_quant)


def quantize_4bit(weight: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64,
                  double_quant: bool = False) -> QuantState4bit:
    """``quantize_blockwise`` with the code named by ``quant_type`` ("nf4", "fp4" or "int4")."""
    get_code(quant_type)  # validates the name
    return quantize_blockwise(weight, _shared_table(quant_type), blocksize, double_quant, quant_type=quant_type)


dequantize_nf4 = dequantize_blockwise  # one rule for every code


def storage_bytes(state: QuantState4bit, include_code_tables: bool = False) -> int:
    """Bytes of the per-tensor storage: packed nibbles, absmax (+ nested absmax and offset)."""
    tensors = [state.packed, state.absmax, state.nested_absmax, state.nested_offset]
    if include_code_tables:
        tensors += [state.code, state.nested_code]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def bits_per_parameter(state: QuantState4bit, include_code_tables: bool = False) -> float:
    """Measured storage bits per weight: ``8 * storage_bytes(state) / numel`` (4.5, or ~4.127)."""
    return 8 * storage_bytes(state, include_code_tables) / state.numel
