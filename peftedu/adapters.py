"""Bottleneck adapters (瓶颈适配器): Houlsby et al. 2019 (arXiv:1902.00751) and Pfeiffer et al. 2020
(arXiv:2005.00247).

A small two-layer network is inserted after a sub-layer's output projection, before the residual add::

    y = h + up(act(down(h)))       h = the sub-layer output (..., d)
    down: Linear(d -> b) (weight b x d + bias b),   up: Linear(b -> d) (weight d x b + bias d)

Trainable parameters per adapter: ``2*d*b + b + d`` (b = ``bottleneck_size``, or ``d // reduction_factor``).

Placement (``adapter_type``), chosen per architecture when ``target_modules`` is None:

* ``"houlsby"``: after the attention output and after the MLP output, two adapters per block
  (Llama: ``self_attn.o_proj`` and ``mlp.down_proj``; BLOOM: ``self_attention.dense`` and
  ``mlp.dense_4h_to_h``).
* ``"pfeiffer"``: after the MLP output only (half the parameters; Pfeiffer et al. found it as good).

Initialisation: ``up`` is all zeros (weight and bias), so ``y = h`` and the model is unchanged at
step 0. ``down`` keeps nn.Linear's default (Kaiming-uniform, as LoRA's A) and a zero bias: it must
not be zero too, or ``act(down(h)) = 0`` would give ``up`` no gradient and neither matrix would ever
move. (Houlsby used a small Gaussian for both; with ``up = 0`` the start is exactly the base model.)

Not mergeable: ``act`` is nonlinear, so no weight W' satisfies ``x W'^T = h + up(act(down(h)))`` for
every x; the adapter runs at inference too (a little extra time; see the notebook). HF peft has no
bottleneck adapters, so the format is peftedu's own: peft_type "BOTTLENECK_ADAPTER", tensors saved as
``base_model.model.<layer>.adapter_down.weight`` (and ``.bias``, ``adapter_up.*``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import PeftConfig, check_number, register_config
from .tuners import AdapterLayer, Tuner, find_target_modules, module_device, module_dtype, register_tuner

DEFAULT_BOTTLENECK = 64  # used when neither bottleneck_size nor reduction_factor is given
NON_LINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}

# model_type -> (attention output projection, MLP output projection)
ADAPTER_PLACES = {"llama": ("self_attn.o_proj", "mlp.down_proj"), "mistral": ("self_attn.o_proj", "mlp.down_proj"),
                  "qwen2": ("self_attn.o_proj", "mlp.down_proj"), "bloom": ("self_attention.dense", "mlp.dense_4h_to_h")}


@register_config
@dataclasses.dataclass
class AdapterConfig(PeftConfig):
    """``bottleneck_size`` b, or ``reduction_factor`` r giving b = d // r (give one, not both; neither: b = 64).
    ``target_modules=None`` places adapters by ``adapter_type``; a list/regex overrides the placement."""

    peft_type = "BOTTLENECK_ADAPTER"
    adapter_type: str = dataclasses.field(default="houlsby", metadata={"help": (
        "Where adapters go when target_modules is None: 'houlsby' (Houlsby et al. 2019: after the attention output "
        "and after the MLP output, two per block; the default) or 'pfeiffer' (Pfeiffer et al. 2020: after the MLP "
        "output only).")})
    bottleneck_size: int | None = dataclasses.field(default=None, metadata={"help": (
        "The bottleneck width b (Houlsby et al.'s m): each adapter is Linear(d -> b), activation, Linear(b -> d). A "
        "positive integer; None (default) means 64, unless reduction_factor is given; not both.")})
    reduction_factor: int | None = dataclasses.field(default=None, metadata={"help": (
        "Pfeiffer et al.'s reduction factor r: the bottleneck is b = d // r for a layer of width d. A positive "
        "integer, instead of bottleneck_size; default None (use bottleneck_size).")})
    non_linearity: str = dataclasses.field(default="relu", metadata={"help": (
        "The activation between the down- and up-projection: 'relu' (default), 'gelu' or 'silu'.")})
    target_modules: list[str] | str | None = dataclasses.field(default=None, metadata={"help": (
        "The layers after whose output an adapter is inserted: a list of name suffixes, a regex matching the whole "
        "name, or 'all-linear'. Default None: placed per architecture by adapter_type.")})
    modules_to_save: list[str] | None = dataclasses.field(default=None, metadata={"help": (
        "Names of extra modules (e.g. ['lm_head']) trained in full besides the adapters, a copy per adapter, saved "
        "in the adapter file. Default None: no such modules.")})

    def __post_init__(self):
        super().__post_init__()
        if self.adapter_type not in ("houlsby", "pfeiffer"):
            raise ValueError(f"adapter_type must be 'houlsby' (after attention and MLP) or 'pfeiffer' (after the "
                             f"MLP only), got {self.adapter_type!r}.")
        if self.bottleneck_size is not None and self.reduction_factor is not None:
            raise ValueError("Give bottleneck_size or reduction_factor, not both "
                             f"(got {self.bottleneck_size} and {self.reduction_factor}).")
        if self.reduction_factor is None:
            self.bottleneck_size = DEFAULT_BOTTLENECK if self.bottleneck_size is None else self.bottleneck_size
        for name in ("bottleneck_size", "reduction_factor"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), integer=True)
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {sorted(NON_LINEARITIES)}, got {self.non_linearity!r}.")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)

    def bottleneck_for(self, d: int) -> int:
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        if self.reduction_factor > d:
            raise ValueError(f"reduction_factor={self.reduction_factor} leaves no bottleneck for width {d}.")
        return d // self.reduction_factor


class BottleneckAdapterLayer(AdapterLayer):
    """A linear layer followed by ``h + up(act(down(h)))``, one (down, up) pair per adapter name."""

    adapter_attributes = ("adapter_down", "adapter_up")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.out_features = base_layer.out_features
        self.adapter_down, self.adapter_up = nn.ModuleDict(), nn.ModuleDict()
        self.adapter_act = nn.ModuleDict()  # no parameters: not saved

    def add(self, adapter_name: str, config: AdapterConfig) -> None:
        d, b = self.out_features, config.bottleneck_for(self.out_features)
        device = module_device(self.base_layer)
        # float32 on a bf16/fp16 base, as peft keeps adapter tensors: small updates survive rounding
        dtype = torch.float64 if module_dtype(self.base_layer) == torch.float64 else torch.float32
        self.adapter_down[adapter_name] = nn.Linear(d, b, device=device, dtype=dtype)  # Kaiming-uniform weight
        self.adapter_up[adapter_name] = nn.Linear(b, d, device=device, dtype=dtype)
        self.adapter_act[adapter_name] = NON_LINEARITIES[config.non_linearity]()
        if device.type != "meta":
            nn.init.zeros_(self.adapter_down[adapter_name].bias)
            nn.init.zeros_(self.adapter_up[adapter_name].weight)  # y = h at step 0
            nn.init.zeros_(self.adapter_up[adapter_name].bias)

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        if name in self.adapter_act:
            del self.adapter_act[name]

    def adapter_output(self, h: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """up(act(down(h))): what the adapter adds to h, same shape as h."""
        down, up = self.adapter_down[adapter_name], self.adapter_up[adapter_name]
        return up(self.adapter_act[adapter_name](down(h.to(down.weight.dtype)))).to(h.dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return h
        if self.row_adapters is not None:  # mixed batch: each row through its own adapter
            h = h.clone()
            for name in dict.fromkeys(self.row_adapters):
                if name in self.adapter_down:
                    rows = [i for i, n in enumerate(self.row_adapters) if n == name]
                    h[rows] = h[rows] + self.adapter_output(h[rows], name)
            return h
        for name in self.active_adapters:  # several active adapters are stacked one after another
            h = h + self.adapter_output(h, name)
        return h

    def merge(self, adapter_names: list[str]) -> None:
        raise ValueError("Bottleneck adapters cannot be merged into the base weights: y = h + up(act(down(h))) is "
                         "nonlinear in h, so no single weight matrix gives the same output for every input. Keep "
                         "the adapter at inference (it costs a few percent), or use unload() to drop it.")

    def unmerge(self) -> None:
        raise ValueError("Bottleneck adapters are never merged, so there is nothing to unmerge.")


def default_adapter_targets(model: nn.Module, adapter_type: str) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTER_PLACES:
        raise ValueError(f"No default adapter placement for model_type {model_type!r} (known: "
                         f"{sorted(ADAPTER_PLACES)}); pass target_modules=[<attention output>, <MLP output>].")
    attention_out, mlp_out = ADAPTER_PLACES[model_type]
    return [attention_out, mlp_out] if adapter_type == "houlsby" else [mlp_out]


@register_tuner
class AdapterTuner(Tuner):
    peft_type = "BOTTLENECK_ADAPTER"

    layer_class = BottleneckAdapterLayer

    def target_names(self, model: nn.Module, config: AdapterConfig) -> list[str]:
        targets = config.target_modules or default_adapter_targets(model, config.adapter_type)
        return find_target_modules(model, targets, allowed_types=(nn.Linear,))
