"""LoRA (低秩适配, Hu et al. 2021, arXiv:2106.09685) and rsLoRA (Kalajdzievski 2023, arXiv:2312.03732).

A frozen linear layer ``y = x W^T`` (W: out x in) gets a trainable low-rank update::

    y = x W^T + scaling * (dropout(x) A^T) B^T        A: r x in,  B: out x r
    scaling = lora_alpha / r            (LoRA)
    scaling = lora_alpha / sqrt(r)      (rsLoRA: keeps the update's size stable as r grows)

Initialisation (as the paper and peft): A ~ kaiming-uniform(a=sqrt(5)), B = 0, so the wrapped model
equals the base model at step 0. Trainable parameters per wrapped layer: r * (in + out).
Adapter tensors are float32 even on a bf16/fp16 base (as peft); the update is cast to the base's dtype.
Merging folds the update into the weight, ``W <- W + scaling * B A``, so inference costs nothing extra;
unmerging subtracts it again. On a 4-bit base (QLoRA) merging means de-quantize, add, re-quantize.
DoRA (``use_dora=True``) lives in :mod:`peftedu.dora`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .config import PeftConfig, check_number, register_config
from .dora import DoraMagnitude
from .tuners import AdapterLayer, Tuner, default_for_architecture, module_device, module_dtype, register_tuner


# model_type -> (the LoRA paper's query/value choice, every attention projection). The first list is HF peft's
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING; BLOOM fuses q, k and v into one query_key_value.
LORA_TARGET_MODULES = {
    **{t: (["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]) for t in ("llama", "mistral", "qwen2")},
    "bloom": (["query_key_value"], ["query_key_value", "dense"]),
}


def default_lora_targets(model_or_type, which: str = "qv") -> list[str]:
    """LoRA ``target_modules`` for a model (or a ``model_type`` string): ``which="qv"`` the query and value
    projections (Llama/Qwen2 ``q_proj, v_proj``; BLOOM its fused ``query_key_value``), ``which="attention"``
    every attention projection (``q_proj ... o_proj``; BLOOM ``query_key_value, dense``)."""
    if which not in ("qv", "attention"):
        raise ValueError(f"which must be 'qv' or 'attention', got {which!r}.")
    qv, attention = default_for_architecture(
        LORA_TARGET_MODULES, model_or_type, "LoRA target_modules",
        "pass target_modules=[...] with the names of its linear layers (the error of a wrong name lists them) or "
        "'all-linear'.")
    return list(qv if which == "qv" else attention)


@register_config
@dataclasses.dataclass
class LoraConfig(PeftConfig):
    peft_type = "LORA"
    r: int = dataclasses.field(default=8, metadata={"help": (
        "The LoRA rank r (Hu et al. 2021): the update is ΔW = B A with A: r × in and B: out × r, so each wrapped "
        "layer trains r * (in + out) numbers. A positive integer; default 8.")})
    lora_alpha: float = dataclasses.field(default=8, metadata={"help": (
        "The paper's α (Hu et al. 2021): the update B A is multiplied by scaling = α/r (α/√r with use_rslora). A "
        "positive number; the default 8 equals the default r, i.e. scaling 1.")})
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": (
        "Dropout probability applied to the input x of the LoRA branch only (the frozen layer sees x unchanged). In "
        "[0, 1); default 0.0, no dropout.")})
    target_modules: list[str] | str | None = dataclasses.field(default=None, metadata={"help": (
        "The linear layers that get a LoRA update: a list of name suffixes (['q_proj', 'v_proj'], the paper's W_q "
        "and W_v), a regex that must match the whole module name, or 'all-linear' (every linear layer but the output "
        "head). Required here: None (peft's per-architecture default) is an error.")})
    use_rslora: bool = dataclasses.field(default=False, metadata={"help": (
        "Rank-stabilized LoRA (rsLoRA, Kalajdzievski 2023): scaling = α/√r instead of α/r, which keeps the update's "
        "size stable as r grows. Default False: the original α/r.")})
    use_dora: bool = dataclasses.field(default=False, metadata={"help": (
        "DoRA, weight-decomposed low-rank adaptation (Liu et al. 2024): W' = m · (W + s B A) / ||W + s B A||_c (s: "
        "scaling; ||.||_c: norm of each output row), a trained magnitude m times a LoRA-updated direction. Default "
        "False: plain LoRA.")})
    modules_to_save: list[str] | None = dataclasses.field(default=None, metadata={"help": (
        "Names of extra modules (e.g. ['lm_head']) that are trained in full besides the LoRA layers: each gets a "
        "trainable copy per adapter, saved in the adapter file. Default None: no such modules.")})
    bias: str = dataclasses.field(default="none", metadata={"help": (
        "Which biases are trained with LoRA (peft: 'none', 'all' or 'lora_only'). peftedu's LoRA trains no biases, "
        "so only the default 'none' is accepted.")})

    def __post_init__(self):
        super().__post_init__()
        check_number("r", self.r, integer=True)
        check_number("lora_alpha", self.lora_alpha)
        check_number("lora_dropout", self.lora_dropout, at_least=0, below=1)
        if self.target_modules is None:
            raise ValueError("target_modules is required: e.g. ['q_proj', 'v_proj'], a regex, or 'all-linear'.")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.bias != "none":
            raise ValueError(f"bias={self.bias!r} is not supported; peftedu's LoRA trains no biases (use 'none').")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoraLinear(AdapterLayer):
    """A linear layer (or a 4-bit one) plus one low-rank update per adapter name."""

    adapter_attributes = ("lora_A", "lora_B", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_A, self.lora_B = nn.ModuleDict(), nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ModuleDict()  # DoRA only
        self.scaling: dict[str, float] = {}
        #: per merged adapter, the base weight to restore on unmerge (DoRA), or None (LoRA: subtract the delta)
        self._undo: list[torch.Tensor | None] = []

    def add(self, adapter_name: str, config: LoraConfig) -> None:
        device = module_device(self.base_layer)
        # fp32 adapter tensors on a bf16/fp16 base, as peft (autocast_adapter_dtype=True): stable training
        dtype = torch.float64 if module_dtype(self.base_layer) == torch.float64 else torch.float32
        self.lora_A[adapter_name] = nn.Linear(self.in_features, config.r, bias=False, device=device, dtype=dtype)
        self.lora_B[adapter_name] = nn.Linear(config.r, self.out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        self.scaling[adapter_name] = config.scaling
        if device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[adapter_name].weight)
        if config.use_dora:
            self.lora_magnitude_vector[adapter_name] = DoraMagnitude.from_layer(self, adapter_name)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"Adapter {name!r} is merged into the base weights; call unmerge_adapter() first.")
        super().delete_adapter(name)
        self.scaling.pop(name, None)
        if name in self.lora_dropout:
            del self.lora_dropout[name]

    # ----------------------------------------------------------------- the update
    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """scaling * B A, shape (out, in): what merging adds to W."""
        return self.lora_B[adapter_name].weight @ self.lora_A[adapter_name].weight * self.scaling[adapter_name]

    def base_weight(self) -> torch.Tensor:
        base = self.base_layer
        return base.dequantize() if hasattr(base, "dequantize") else base.weight

    def adapter_output(self, x: torch.Tensor, base_out: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """What adapter ``adapter_name`` adds to ``base_out`` for input rows ``x`` (in the adapter's dtype)."""
        lora_A, lora_B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        x = self.lora_dropout[adapter_name](x.to(lora_A.weight.dtype))
        if adapter_name in self.lora_magnitude_vector:
            dora = self.lora_magnitude_vector[adapter_name]
            return dora(self, adapter_name, x, base_out)
        return lora_B(lora_A(x)) * self.scaling[adapter_name]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disabled:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        if self.row_adapters is not None:  # mixed batch: each row its own adapter
            for name in dict.fromkeys(self.row_adapters):
                if name not in self.lora_A:
                    continue
                rows = [i for i, n in enumerate(self.row_adapters) if n == name]
                update = result[rows] + self.adapter_output(x[rows], result[rows], name)  # fp32, as below
                result[rows] = update.to(result.dtype)
            return result
        dtype = result.dtype
        for name in self.active_adapters:  # summed in fp32, rounded once to the base's dtype (as peft)
            result = result + self.adapter_output(x, result, name)
        return result.to(dtype)

    # ----------------------------------------------------------------- merging
    def merge(self, adapter_names: list[str]) -> None:
        for name in adapter_names:
            if name not in self.lora_A:
                continue
            if name in self.lora_magnitude_vector:
                new_weight = self.lora_magnitude_vector[name].merged_weight(self, name)
            else:
                new_weight = (self.base_weight() + self.delta_weight(name)).to(self.base_weight().dtype)
            self._undo.append(self.base_weight().detach().clone() if name in self.lora_magnitude_vector else None)
            self._set_base_weight(new_weight)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            saved = self._undo.pop()
            if saved is not None:  # DoRA's merge is not a plain sum: restore the saved weight
                self._set_base_weight(saved)
            else:
                self._set_base_weight((self.base_weight() - self.delta_weight(name)).to(self.base_weight().dtype))

    def _set_base_weight(self, weight: torch.Tensor) -> None:
        with torch.no_grad():
            if hasattr(self.base_layer, "requantize"):  # QLoRA: back to 4 bits (lossy, see quant.py)
                self.base_layer.requantize(weight)
            else:
                self.base_layer.weight.data.copy_(weight)


@register_tuner
class LoraTuner(Tuner):
    peft_type = "LORA"
    layer_class = LoraLinear

    def named_adapter_tensors(self, peft_model, adapter_name: str) -> dict[str, torch.Tensor]:
        # peft saves DoRA's magnitude as "<layer>.lora_magnitude_vector", without ".weight" (its older layout)
        suffix = ".lora_magnitude_vector.weight"
        return {key.removesuffix(".weight") if key.endswith(suffix) else key: tensor
                for key, tensor in super().named_adapter_tensors(peft_model, adapter_name).items()}
