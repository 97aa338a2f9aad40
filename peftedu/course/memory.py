"""Memory accounting: how many bytes training needs, as a budget whose every byte is an assumption.

* :func:`estimate_training_memory` -- the back-of-the-envelope memory budget of training
  (训练显存估算). Every byte is a stated assumption:

  .. math::

     M = \\underbrace{N_\\text{frozen} \\cdot b_w + N_\\text{train} \\cdot b_t}_{\\text{weights}}
       + \\underbrace{N_\\text{train} \\cdot b_g}_{\\text{gradients}}
       + \\underbrace{N_\\text{train} \\cdot 4}_{\\text{fp32 master copy, if any}}
       + \\underbrace{N_\\text{train} \\cdot k \\cdot b_s}_{\\text{optimizer states}}
       + \\text{activations}

  with bytes per parameter ``b = bits / 8`` and ``k`` optimizer states per trainable parameter
  (AdamW: ``k = 2``, the moments m and v). Activations depend on batch size and sequence length,
  not on the parameter count; they are only added when you give them.
* The named recipes (full fine-tuning in fp32, 16-bit, mixed precision; LoRA; QLoRA) and the notebooks' table
  of them are in :mod:`peftedu.course.recipes`.

Model shapes for models too big to build live in :mod:`peftedu.course.shapes`; what a function really
used is measured by :func:`peftedu.course.peak_memory.measure_peak_memory`.

Units: **GB = 10^9 bytes** everywhere (the source tutorials use it: "1.3B params x 4 bytes = 5.2 GB").
GiB (2^30 bytes, what ``nvidia-smi`` and most OS tools print) is only used where a name says ``gib``;
1 GB = 0.931 GiB, so "20.8 GB" is 19.4 GiB.

Figures from the source tutorials, reproduced by the tests (``tests/test_accounting.py``):

* Source 002 (bloom-1b4-zh, 1.3B params, full fine-tuning in fp32): 4 bytes weights + 4 bytes
  gradients + 2 x 4 bytes AdamW states = 16 bytes/param -> 5.2 + 5.2 + 10.4 = 20.8 GB, activations
  not counted. (The exact count is 1,303,111,680 params -> 20.85 GB.)
* Source 003's table (7B: 14 / 28 / 56 GB, 13B: 26 / 52 / 104, 70B: 140 / 280 / 560) only adds up if
  *everything* is 16-bit: weights 2 + gradients 2 + AdamW m, v 2 x 2 = 8 bytes/param ("4x the
  model"). Its middle column, "Adam overhead (gradients + momentum)", is 4 bytes/param, i.e. the two
  16-bit moments *or* gradients plus one moment -- not both, so weights + that column (42 GB for
  7B) does not reach its own total (56 GB). Standard mixed-precision training (16-bit weights and
  gradients, fp32 master weights, fp32 AdamW states: 2 + 2 + 4 + 8 = 16 bytes/param, as in the ZeRO
  paper, Rajbhandari et al. 2020) needs twice the table: 112 / 208 / 1120 GB before activations.
* QLoRA (Dettmers et al. 2023; source 003: "65B on one 48 GB GPU", "7B on a 24 GB GPU"): base weights
  in NF4 with double quantization, 4 + 8/64 + 32/(64*256) = 4.127 bits/param -> 65B x 4.127 / 8
  = 33.7 GB; LoRA (r = 64 on all linear layers, as in the paper) in bf16 with fp32 paged AdamW adds
  ~9.6 GB; activations with gradient checkpointing at batch 1, 512 tokens ~1 GB: ~45 GB < 48 GB.
  The same paper's baseline, ">780 GB" for 16-bit full fine-tuning of 65B, is 65e9 x 12 bytes:
  16-bit weights and gradients plus fp32 AdamW states, no fp32 master copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

GB = 1e9  #: bytes in a GB (decimal, as the source tutorials use)
GIB = 2**30  #: bytes in a GiB (binary, as nvidia-smi prints)


# --------------------------------------------------------------------------------------------------
# Bits per parameter
# --------------------------------------------------------------------------------------------------


def nf4_bits_per_param(blocksize: int = 64, double_quant: bool = True, dq_blocksize: int = 256) -> float:
    """Storage of one NF4 (4-bit NormalFloat) weight, quantization constants included.

    Each block of ``blocksize`` weights shares one absmax scale. Without double quantization the
    scale is fp32: ``4 + 32/64 = 4.5`` bits. Double quantization (双重量化) stores the scales in
    8 bits, with one fp32 constant per ``dq_blocksize`` scales:
    ``4 + 8/64 + 32/(64*256) = 4.127`` bits (Dettmers et al. 2023, Sec. 3).
    """
    if blocksize <= 0 or dq_blocksize <= 0:
        raise ValueError(f"blocksize and dq_blocksize must be positive, got {blocksize}, {dq_blocksize}.")
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)


_NAMED_BITS = {
    "fp32": 32, "float32": 32, "tf32": 32,
    "fp16": 16, "float16": 16, "half": 16, "bf16": 16, "bfloat16": 16,
    "fp8": 8, "int8": 8,
    "fp4": 4, "int4": 4,
}


def bits_of(spec: float | int | str | torch.dtype) -> float:
    """Bits per stored value for ``32``, ``torch.bfloat16``, ``"bf16"``, ``"nf4"`` (4.5) or
    ``"nf4-dq"`` (4.127, NF4 with double quantization)."""
    if isinstance(spec, torch.dtype):
        return float(spec.itemsize * 8)
    if isinstance(spec, str):
        key = spec.lower().replace("_", "-")
        if key == "nf4":
            return nf4_bits_per_param(double_quant=False)
        if key in ("nf4-dq", "nf4-double-quant"):
            return nf4_bits_per_param(double_quant=True)
        if key in _NAMED_BITS:
            return float(_NAMED_BITS[key])
        raise ValueError(
            f"Unknown precision {spec!r}; use a number of bits, a torch.dtype, or one of "
            f"{sorted(_NAMED_BITS) + ['nf4', 'nf4-dq']}."
        )
    if isinstance(spec, (int, float)) and not isinstance(spec, bool) and spec > 0:
        return float(spec)
    raise ValueError(f"Precision must be a positive number of bits, a torch.dtype or a name, got {spec!r}.")


# --------------------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSpec:
    """States the optimizer keeps per trainable parameter."""

    states: int  #: tensors of the parameter's shape (AdamW: m and v)
    state_bits: float  #: bits per state value
    paged: bool  #: states in CUDA unified memory, evicted to CPU RAM under pressure
    note: str


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec(2, 32, False, "AdamW: first and second moments m, v in fp32"),
    "adam": OptimizerSpec(2, 32, False, "Adam: first and second moments m, v in fp32"),
    "adamw-8bit": OptimizerSpec(2, 8, False, "8-bit AdamW (bitsandbytes): m, v block-quantized to 8 bits"),
    "paged-adamw": OptimizerSpec(2, 32, True, "paged AdamW (bitsandbytes): fp32 m, v in pageable memory"),
    "paged-adamw-8bit": OptimizerSpec(2, 8, True, "paged 8-bit AdamW: 8-bit m, v in pageable memory"),
    "sgd": OptimizerSpec(0, 32, False, "plain SGD: no state"),
    "sgd-momentum": OptimizerSpec(1, 32, False, "SGD with momentum: one fp32 buffer"),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """A training-memory budget in GB (10^9 bytes); ``str()`` / :meth:`explain` state every assumption."""

    label: str
    n_params: int
    trainable_params: int
    weights_gb: float
    gradients_gb: float
    master_weights_gb: float
    optimizer_gb: float
    activations_gb: float | None
    assumptions: tuple[str, ...] = field(default=())

    @property
    def total_gb(self) -> float:
        return (
            self.weights_gb + self.gradients_gb + self.master_weights_gb + self.optimizer_gb
            + (self.activations_gb or 0.0)
        )

    @property
    def total_gib(self) -> float:
        return self.total_gb * GB / GIB

    @property
    def bytes_per_param(self) -> float:
        """Total bytes divided by all parameters (16 for fp32 AdamW full fine-tuning)."""
        return self.total_gb * GB / self.n_params

    def breakdown(self, unit: str = "GB") -> dict[str, float]:
        """``{"weights": .., "gradients": .., "master weights": .., "optimizer states": ..,
        "activations": .., "total": ..}`` in ``unit`` ("GB" = 1e9 bytes or "GiB" = 2^30 bytes)."""
        scale = {"GB": 1.0, "GiB": GB / GIB}.get(unit)
        if scale is None:
            raise ValueError(f"unit must be 'GB' (1e9 bytes) or 'GiB' (2**30 bytes), got {unit!r}.")
        parts = {
            "weights": self.weights_gb,
            "gradients": self.gradients_gb,
            "master weights": self.master_weights_gb,
            "optimizer states": self.optimizer_gb,
            "activations": self.activations_gb or 0.0,
        }
        parts["total"] = sum(parts.values())
        return {k: v * scale for k, v in parts.items()}

    def fits_in(self, gpu_gb: float) -> bool:
        """Whether the total (GB) is at most ``gpu_gb`` GB."""
        return self.total_gb <= gpu_gb

    def as_row(self) -> dict[str, Any]:
        """A flat dict for tables (numbers in GB)."""
        return {
            "method": self.label,
            "n_params": self.n_params,
            "trainable_params": self.trainable_params,
            "weights_gb": self.weights_gb,
            "gradients_gb": self.gradients_gb,
            "master_weights_gb": self.master_weights_gb,
            "optimizer_gb": self.optimizer_gb,
            "activations_gb": self.activations_gb,
            "total_gb": self.total_gb,
            "total_gib": self.total_gib,
        }

    def explain(self) -> str:
        lines = [
            f"{self.label}: {self.n_params:,d} params, {self.trainable_params:,d} trainable "
            f"({100 * self.trainable_params / self.n_params:.4f}%)",
        ]
        for name, value in self.breakdown().items():
            if name == "total":
                continue
            if name == "activations" and self.activations_gb is None:
                lines.append(f"  {name:<17}   not included (depend on batch size and sequence length)")
                continue
            lines.append(f"  {name:<17} {value:9.2f} GB")
        lines.append(f"  {'total':<17} {self.total_gb:9.2f} GB  (= {self.total_gib:.2f} GiB; 1 GB = 1e9 bytes)")
        lines += ["Assumptions:"] + [f"  - {a}" for a in self.assumptions]
        return "\n".join(lines)

    __str__ = explain


def estimate_training_memory(
    n_params: int | float,
    *,
    trainable_params: int | float | None = None,
    weight_bits: float | str | torch.dtype = 32,
    trainable_bits: float | str | torch.dtype | None = None,
    grad_bits: float | str | torch.dtype | None = None,
    optimizer: str = "adamw",
    optimizer_state_bits: float | str | torch.dtype | None = None,
    master_weights: bool = False,
    unquantized_params: int | float = 0,
    unquantized_bits: float | str | torch.dtype = 16,
    activations_gb: float | None = None,
    label: str | None = None,
) -> MemoryEstimate:
    """Memory to train a model of ``n_params`` parameters, split into its parts (GB = 1e9 bytes).

    Parameters
    ----------
    n_params: all parameters, adapters included (``count_parameters(model)[1]``).
    trainable_params: parameters that get gradients (default: all = full fine-tuning).
    weight_bits: storage of the frozen weights -- 32, 16, ``"bf16"``, ``"nf4-dq"`` (4.127), ...
    trainable_bits: storage of the trainable weights (default ``weight_bits``; required when the
        base is quantized, because quantized weights cannot be trained directly).
    grad_bits: gradient precision (default ``trainable_bits``: gradients have the weights' dtype).
    optimizer: a key of :data:`OPTIMIZERS` (``"adamw"`` = 2 fp32 states = 8 bytes/param).
    optimizer_state_bits: override the optimizer's state precision (e.g. 16 for bf16 states).
    master_weights: keep an fp32 copy of 16-bit trainable weights (mixed precision, 4 bytes/param).
    unquantized_params: frozen parameters kept at ``unquantized_bits`` although the rest is
        quantized (QLoRA keeps embeddings, norms and ``lm_head`` in bf16).
    activations_gb: add this many GB of activations (see :func:`activation_memory_gb`); ``None``
        leaves them out, and says so.

    Not modelled: the CUDA context (~0.5-1 GB), allocator fragmentation, temporary buffers
    (e.g. de-quantized weights of the layer being computed), the fp32 logits of the loss.
    """
    if not n_params > 0:
        raise ValueError(f"n_params must be positive, got {n_params}.")
    n_params = int(n_params)
    trainable = n_params if trainable_params is None else int(trainable_params)
    if not 0 <= trainable <= n_params:
        raise ValueError(f"trainable_params must be between 0 and n_params={n_params:,d}, got {trainable:,d}.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; known: {sorted(OPTIMIZERS)}.")
    opt = OPTIMIZERS[optimizer]
    w_bits = bits_of(weight_bits)
    if trainable_bits is None:
        if w_bits < 16 and trainable > 0:
            raise ValueError(
                f"weight_bits={weight_bits!r} is a quantized format, and quantized weights cannot be "
                "trained directly: pass trainable_bits for the trainable (adapter) weights, e.g. 16 for bf16 LoRA."
            )
        t_bits = w_bits
    else:
        t_bits = bits_of(trainable_bits)
    g_bits = t_bits if grad_bits is None else bits_of(grad_bits)
    s_bits = opt.state_bits if optimizer_state_bits is None else bits_of(optimizer_state_bits)
    if master_weights and t_bits >= 32:
        raise ValueError(
            "master_weights=True keeps an fp32 copy of 16-bit trainable weights; the trainable weights "
            f"are already {t_bits:g}-bit, so there is nothing to copy. Use master_weights=False."
        )
    frozen = n_params - trainable
    unquantized = int(unquantized_params)
    if not 0 <= unquantized <= frozen:
        raise ValueError(f"unquantized_params must be between 0 and the {frozen:,d} frozen params, got {unquantized:,d}.")
    u_bits = bits_of(unquantized_bits)
    if activations_gb is not None and activations_gb < 0:
        raise ValueError(f"activations_gb must be >= 0 or None, got {activations_gb}.")

    weights = ((frozen - unquantized) * w_bits + unquantized * u_bits + trainable * t_bits) / 8
    gradients = trainable * g_bits / 8
    master = trainable * 4 if master_weights else 0
    states = trainable * opt.states * s_bits / 8

    assumptions = [f"GB = 1e9 bytes; bytes per value = bits / 8"]
    if frozen:
        msg = f"frozen weights: {frozen - unquantized:,d} params x {w_bits / 8:g} bytes ({w_bits:g}-bit)"
        if unquantized:
            msg += f" + {unquantized:,d} unquantized params x {u_bits / 8:g} bytes"
        assumptions.append(msg)
    if trainable:
        assumptions += [
            f"trainable weights: {trainable:,d} params x {t_bits / 8:g} bytes ({t_bits:g}-bit)",
            f"gradients: one per trainable param x {g_bits / 8:g} bytes ({g_bits:g}-bit)",
            "fp32 master weights: 4 bytes per trainable param" if master_weights else "no fp32 master copy",
            f"optimizer {optimizer!r}: {opt.states} state(s) x {s_bits / 8:g} bytes per trainable param ({opt.note})",
        ]
        if opt.paged:
            assumptions.append(
                "paged optimizer: states can be evicted to CPU RAM under memory spikes, so the GPU peak "
                "may be lower; counted in full here (an upper bound)"
            )
    else:
        assumptions.append("nothing trains: no gradients, no optimizer states (inference)")
    if activations_gb is None:
        assumptions.append("activations not included (they scale with batch size x sequence length)")
    else:
        assumptions.append(f"activations: {activations_gb:.2f} GB as given")
    assumptions.append("not included: CUDA context, allocator fragmentation, temporary buffers")

    return MemoryEstimate(
        label=label or ("full fine-tuning" if trainable == n_params else "partial fine-tuning"),
        n_params=n_params,
        trainable_params=trainable,
        weights_gb=weights / GB,
        gradients_gb=gradients / GB,
        master_weights_gb=master / GB,
        optimizer_gb=states / GB,
        activations_gb=activations_gb,
        assumptions=tuple(assumptions),
    )


__all__ = [
    "GB", "GIB", "OPTIMIZERS", "MemoryEstimate", "OptimizerSpec", "bits_of", "estimate_training_memory",
    "nf4_bits_per_param",
]
