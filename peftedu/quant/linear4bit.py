"""The QLoRA layer (paper, eq. 5 and 6): a linear layer whose frozen weight is stored in 4 bits.

:class:`Linear4bit` keeps the packed weight and its constants in buffers and dequantizes them in every
forward and backward pass (``_DequantizedLinear``); :func:`quantize_model` swaps a model's ``nn.Linear``
layers for it; :func:`paged_adamw_or_none` is the paged optimizer QLoRA trains with, where there is one.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_number
from .functional import QUANT_TYPES, QuantState4bit, dequantize_blockwise, quantize_4bit, quantize_blockwise


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
    from ..tuners import matches_name  # tuners imports this module (Linear4bit): imported here, no cycle

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
        unmatched = [entry for entry in skip if not any(matches_name(n, entry) for n in names)]
        if unmatched:
            raise ValueError(f"skip_modules entries {unmatched} match no module of {type(model).__name__}")
    chosen = [name for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and not any(matches_name(name, entry) for entry in skip)
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
    check_number("lr", lr)
    if not torch.cuda.is_available():
        return None
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    return bnb.optim.PagedAdamW(params, lr=lr, **kwargs)
