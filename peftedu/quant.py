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

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

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


# --------------------------------------------------------------------------- Linear4bit
class _DequantizedLinear(torch.autograd.Function):
    """``F.linear(x, W, bias)`` with W dequantized from 4 bits in the forward pass and again in the backward.

    Plain autograd would keep the full-precision W of every layer alive until the backward pass (it needs
    W for the gradient of x), so a QLoRA step would hold a full 16/32-bit copy of the model and lose the
    point of 4-bit storage. Dequantizing twice trades a little compute for that memory, as bitsandbytes'
    ``MatMul4Bit`` does. W is frozen: gradients flow to x (and to the bias if it is trainable).
    """

    @staticmethod
    def forward(ctx, x, layer, dtype, bias):
        ctx.layer, ctx.dtype, ctx.has_bias = layer, dtype, bias is not None
        return F.linear(x, layer.dequantize().to(dtype), bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grad_x = grad @ ctx.layer.dequantize().to(ctx.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, None, None, grad_bias


class Linear4bit(nn.Module):
    """A frozen linear layer whose weight is stored in 4 bits (NF4 by default).

    The quantized weight lives in buffers (``weight_packed``, ``absmax``, ``nested_absmax``,
    ``nested_offset``), not Parameters, so optimisers never see it. The bias, if any, is a frozen
    Parameter. ``numel_logical`` is the number of weight values the buffers represent
    (out_features * in_features) -- add it to ``parameters()`` to count the model's parameters
    (``count_logical_parameters`` does this).

    forward: ``F.linear(x, dequantize().to(dt), bias)`` with dt = ``compute_dtype`` or x.dtype;
    the output has x's dtype. Gradients flow to x; nothing in the layer is trainable. The backward pass
    dequantizes again rather than keeping the full-precision weight alive (``_DequantizedLinear``).
    Shapes: x (..., in_features) -> (..., out_features). Every forward dequantizes the whole weight:
    4-bit storage saves memory, not time (on a CPU it is slower than a plain nn.Linear).
    """

    def __init__(self, state: QuantState4bit, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype | None = None):
        super().__init__()
        if not isinstance(state, QuantState4bit) or len(state.shape) != 2:
            raise ValueError("Linear4bit needs the QuantState4bit of a 2-D (out, in) weight")
        self.out_features, self.in_features = state.shape
        if bias is not None and bias.shape != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        floating = isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point
        if compute_dtype is not None and not floating:
            raise ValueError(f"compute_dtype must be None or a floating torch.dtype, got {compute_dtype!r}")
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.compute_dtype = compute_dtype
        self._load_state(state)

    def _load_state(self, state: QuantState4bit) -> None:
        self.quant_type, self.blocksize, self.weight_dtype = state.quant_type, state.blocksize, state.dtype
        self.double_quant = state.double_quant
        self.register_buffer("weight_packed", state.packed)
        self.register_buffer("absmax", state.absmax)
        self.register_buffer("nested_absmax", state.nested_absmax)
        self.register_buffer("nested_offset", state.nested_offset)
        # per-data-type constants: kept out of state_dict (rebuilt from quant_type)
        self.register_buffer("code", state.code, persistent=False)
        self.register_buffer("nested_code", state.nested_code, persistent=False)

    @property
    def numel_logical(self) -> int:
        return self.out_features * self.in_features

    @property
    def state(self) -> QuantState4bit:
        return QuantState4bit(self.weight_packed, self.absmax, torch.Size((self.out_features, self.in_features)),
                              self.weight_dtype, self.blocksize, self.code, self.quant_type,
                              self.nested_absmax, self.nested_offset, self.nested_code)

    def dequantize(self) -> torch.Tensor:
        """The full-precision weight (out_features, in_features), in the dtype it was quantized from."""
        return dequantize_blockwise(self.state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype or x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return _DequantizedLinear.apply(x.to(dtype), self, dtype, bias).to(x.dtype)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, blocksize: int = 64,
                    double_quant: bool = True, quant_type: str = "nf4",
                    compute_dtype: torch.dtype | None = None) -> "Linear4bit":
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        return cls(quantize_4bit(weight, quant_type, blocksize, double_quant), bias, compute_dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, double_quant: bool = True, blocksize: int = 64,
                    compute_dtype: torch.dtype | None = None, quant_type: str = "nf4") -> "Linear4bit":
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        return cls.from_weight(linear.weight, linear.bias, blocksize=blocksize, double_quant=double_quant,
                               quant_type=quant_type, compute_dtype=compute_dtype)

    def requantize(self, weight: torch.Tensor) -> "Linear4bit":
        """Replace the stored weight by ``weight`` quantized with this layer's settings (in place)."""
        expected = (self.out_features, self.in_features)
        if tuple(weight.shape) != expected:
            raise ValueError(f"requantize expects a weight of shape {expected}, got {tuple(weight.shape)}")
        state = quantize_blockwise(weight.to(self.weight_packed.device), self.code, self.blocksize,
                                   self.double_quant, self.quant_type)
        self._load_state(state)
        return self

    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """An ordinary nn.Linear holding the dequantized weight (e.g. bf16 for merging LoRA)."""
        weight = self.dequantize().to(dtype or self.weight_dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def _apply(self, fn, recurse=True):
        # .to(device) moves the quantized buffers; .to(dtype)/.half() must not cast fp32 absmax or codes.
        buffers = {name: b for name, b in self._buffers.items() if b is not None}
        for name in buffers:
            self._buffers[name] = None
        super()._apply(fn, recurse)
        for name, b in buffers.items():
            device = fn(torch.empty(0, dtype=b.dtype, device=b.device)).device
            self._buffers[name] = b.to(device)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quant_type={self.quant_type}, blocksize={self.blocksize}, double_quant={self.double_quant}, "
                f"compute_dtype={self.compute_dtype}")


def _matches(name: str, entry: str) -> bool:
    return name == entry or name.endswith("." + entry)


def quantize_model(model: nn.Module, target: Callable[[str, nn.Module], bool] | None = None,
                   skip_modules: Sequence[str] | str | None = None, double_quant: bool = True,
                   compute_dtype: torch.dtype | None = None, blocksize: int = 64,
                   quant_type: str = "nf4") -> nn.Module:
    """Swap the model's nn.Linear layers for Linear4bit, in place, and return the model.

    A Linear named ``name`` is quantized unless ``name`` equals or ends with ".entry" for an entry of
    ``skip_modules`` (default: ``["lm_head"]``, kept in full precision as QLoRA does), and, when
    ``target(name, module)`` is given, only if it returns True. Explicit ``skip_modules`` entries
    must each match some module; a call that quantizes nothing raises ValueError.
    """
    explicit_skip = skip_modules is not None
    skip = ("lm_head",) if skip_modules is None else ((skip_modules,) if isinstance(skip_modules, str)
                                                        else tuple(skip_modules))
    if not all(isinstance(entry, str) and entry for entry in skip):
        raise ValueError(f"skip_modules must be module names (non-empty strings), got {skip_modules!r}")
    if target is not None and not callable(target):
        raise ValueError(f"target must be a callable (name, module) -> bool, got {type(target).__name__}")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    names = [name for name, _ in model.named_modules()]
    if explicit_skip:
        unmatched = [entry for entry in skip if not any(_matches(n, entry) for n in names)]
        if unmatched:
            raise ValueError(f"skip_modules entries {unmatched} match no module of {type(model).__name__}")
    chosen = [name for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and not any(_matches(name, entry) for entry in skip)
              and (target is None or target(name, module))]
    if not chosen:
        n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
        raise ValueError(f"quantize_model matched no nn.Linear ({n_linear} in the model, skip_modules={list(skip)}, "
                         f"target={'given' if target else None}); check the names with model.named_modules()")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Linear4bit.from_linear(getattr(parent, child), double_quant, blocksize,
                                                      compute_dtype, quant_type))
    return model


def count_logical_parameters(model: nn.Module) -> int:
    """Parameters (tied ones once) plus the weight values stored in Linear4bit buffers."""
    return sum(p.numel() for p in model.parameters()) + sum(
        m.numel_logical for m in model.modules() if isinstance(m, Linear4bit))


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each storage counted once (tied weights, shared codes)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = (tensor.device, tensor.data_ptr())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


# --------------------------------------------------------------------------- paged optimizer
def paged_adamw_or_none(params: Iterable[torch.Tensor], lr: float = 2e-4, **kwargs):
    """bitsandbytes' ``PagedAdamW`` (分页优化器) when CUDA and bitsandbytes are there, else None.

    What paging solves (QLoRA section 3, "Paged Optimizers"): AdamW keeps two fp32 states per
    trainable parameter. Paged optimizers allocate them in CUDA unified memory; when a memory spike
    (a long batch, gradient-checkpointing recomputation) would exhaust the GPU, the driver evicts
    pages to CPU RAM and brings them back when the optimizer step touches them -- a slowdown
    instead of an out-of-memory crash. On a CPU there is no GPU memory to overflow, so this returns
    None: use ``torch.optim.AdamW`` there. Nothing is emulated.
    """
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not torch.cuda.is_available():
        return None
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    return bnb.optim.PagedAdamW(params, lr=lr, **kwargs)


# --------------------------------------------------------------------------- histogram explorer
def linear_weights(model: nn.Module, skip_modules: Sequence[str] = ("lm_head",)) -> dict[str, torch.Tensor]:
    """{name: weight} of the model's nn.Linear layers, except those named in ``skip_modules``."""
    return {name: m.weight.detach() for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(_matches(name, s) for s in skip_modules)}


def nf4_histogram_explorer(weight: torch.Tensor, blocksize: int = 64, bins: int = 101) -> dict:
    """Histogram of ``weight / block absmax`` next to the NF4, INT4 and FP4 levels.

    Returns ``counts`` (bins,), ``bin_edges`` (bins+1,) over [-1, 1], ``levels`` {name: sorted
    (16,)}, ``level_usage`` {name: fraction of weights whose nearest level is each sorted level}
    and ``mse`` {name: mean squared quantization error in units of absmax**2}. NF4's levels sit at
    normal quantiles, so for bell-shaped weights its usage is flatter than INT4's or FP4's.
    """
    _check_float_tensor(weight)
    _check_blocksize(blocksize)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")
    normalized, _ = _normalize_blocks(weight.detach().reshape(-1).float().cpu(), blocksize)
    counts = torch.histc(normalized, bins=bins, min=-1, max=1)
    data = {"counts": counts, "bin_edges": torch.linspace(-1, 1, bins + 1), "levels": {},
            "level_usage": {}, "mse": {}, "numel": normalized.numel(), "blocksize": blocksize}
    for name in QUANT_TYPES:
        code = get_code(name)
        index = _nearest_level(normalized, code)
        sorted_levels, order = code.sort(stable=True)
        usage = torch.bincount(index, minlength=16).float()[order] / normalized.numel()
        data["levels"][name] = sorted_levels
        data["level_usage"][name] = usage
        data["mse"][name] = (normalized - code[index]).pow(2).mean().item()
    return data


def plot_nf4_histogram(data: dict, title: str = "", axes=None):
    """Draw ``nf4_histogram_explorer`` output: one panel per code, levels as vertical lines."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(len(QUANT_TYPES), 1, figsize=(8, 6), sharex=True)
    edges = data["bin_edges"]
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    for ax, name in zip(axes, QUANT_TYPES):
        ax.bar(centres, data["counts"], width=width, color="lightgray")
        for level in data["levels"][name].unique():
            ax.axvline(level.item(), color="tab:red", lw=0.8)
        ax.set_ylabel(name.upper())
        ax.set_title(f"{title} {name.upper()} levels, mse={data['mse'][name]:.2e} (x absmax^2)", fontsize=9)
    axes[-1].set_xlabel("weight / block absmax")
    return axes


EXPLORER_STATIC_NOTE = "Run this cell in a live notebook to explore: the controls need a running kernel."
"""The line a static view (GitHub, nbviewer, an HTML export) shows under an explorer's default state."""


@functools.cache
def _explorer_box_class():
    """``ExplorerBox``: an ipywidgets VBox that a static view shows as its default state, not as ``VBox(...)``."""
    import ipywidgets as widgets

    class ExplorerBox(widgets.VBox):
        """A live front-end renders the widget; a static view cannot, and picks the richest other type of the
        same display bundle: ``image/png`` (the default state, with ``EXPLORER_STATIC_NOTE`` drawn under it),
        else ``text/plain`` (the note alone)."""

        static_png = ""  # base64 PNG of the default state, set by the function that builds the explorer

        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs) or {}
            data["text/plain"] = EXPLORER_STATIC_NOTE
            if self.static_png:
                data["image/png"] = self.static_png
            return data

    return ExplorerBox


def _static_png(figure) -> str:
    """The figure with the static note under it, as base64 PNG; the figure is closed."""
    import base64
    import io

    import matplotlib.pyplot as plt

    figure.text(0.5, 0.0, EXPLORER_STATIC_NOTE, ha="center", va="top", fontsize=9, style="italic")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def nf4_histogram_widget(weights: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], blocksize: int = 64):
    """ipywidgets explorer: a slider picks the layer, the plot redraws. Built without a front-end.

    Returns an ``ExplorerBox`` (a VBox): displayed in a static view it shows the first layer's histograms and
    ``EXPLORER_STATIC_NOTE`` instead of the widget's raw repr.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    items = list(weights.items()) if isinstance(weights, Mapping) else [(str(i), w) for i, w in enumerate(weights)]
    if not items:
        raise ValueError("nf4_histogram_widget needs at least one weight")
    slider = widgets.IntSlider(value=0, min=0, max=len(items) - 1, description="layer")
    output = widgets.Output()

    def figure_of(index):
        name, weight = items[index]
        return plot_nf4_histogram(nf4_histogram_explorer(weight, blocksize), title=name)[0].figure

    def draw(_change=None):
        output.clear_output(wait=True)
        with output:
            figure = figure_of(slider.value)
            display(figure)
            plt.close(figure)  # shown once, by display

    slider.observe(draw, names="value")
    draw()
    box = _explorer_box_class()([slider, output])
    box.static_png = _static_png(figure_of(0))
    return box
