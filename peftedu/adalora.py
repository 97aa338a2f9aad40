"""AdaLoRA (自适应低秩适配, Zhang et al. 2023, arXiv:2303.10512): LoRA whose ranks are budgeted by importance.

Each target layer ``y = x W^T`` (W: out x in) gets an update in SVD form (奇异值分解形式)::

    y = x W^T + dropout(x) (Λ ⊙ Q)^T P^T * lora_alpha / (ranknum + 1e-5)
    P = lora_B: out x r  (left singular vectors)   Λ = lora_E: r x 1  (singular values, 奇异值)
    Q = lora_A: r x in   (right singular vectors)  r = init_r;  ranknum = init_r (fixed, not the current rank)

Initialisation (peft): P, Q ~ normal(0, 0.02), Λ = 0, so the model starts equal to the base model.
Pruning a rank means zeroing one entry of Λ; P and Q stay, so a pruned triplet may come back later.

Importance of every entry w of P, Λ, Q (the paper's sensitivity-based score), after each optimizer step t::

    I = |w * dL/dw|                                   sensitivity (敏感度)
    Ī(t) = beta1 * Ī(t-1) + (1 - beta1) * I           smoothed sensitivity
    Ū(t) = beta2 * Ū(t-1) + (1 - beta2) * |I - Ī(t)|  uncertainty
    s(w) = Ī(t) * Ū(t)
    S_i = s(Λ_i) + mean_j s(Q_ij) + mean_k s(P_ki)    score of triplet i (重要性评分)

Budget b(t) = number of triplets kept over all layers (预算): ``b0 = init_r * layers`` up to step tinit;
``bT + (b0 - bT) * (1 - (t - tinit) / (T - tinit - tfinal))^3`` (cubic, rounded down) until step
``T - tfinal`` with ``bT = target_r * layers``; every ``deltaT`` steps the triplets scoring at or below
the ``(b0 - b)``-th smallest score are zeroed. At ``T - tfinal`` the final ``rank_pattern`` (kept triplets
per layer) is fixed and stored in the config; after it the pattern is re-applied every step.
Saving with a ``rank_pattern`` writes only the kept triplets; loading shrinks the layers to fit (as peft).

Orthogonal regularisation (正交正则) keeps P and Q near orthonormal. The paper writes
``R = ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2``; peft -- and so this module, so that losses match --
adds ``orth_reg_weight * mean over all P and Q of ||P^T P - I||_F and ||Q Q^T - I||_F`` (not squared).

Training needs one call per optimizer step: ``update_and_allocate(model, step)`` after
``optimizer.step()`` and before ``optimizer.zero_grad()`` (``step`` = optimizer steps done, 1 after the
first); ``model.update_and_allocate(step)`` and ``adalora_step_hook(model)`` do the same.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import PeftConfig, check_number, register_config
from .tuners import SAVED_PREFIX, AdapterLayer, Tuner, find_target_modules, module_device, module_dtype, register_tuner


@register_config
@dataclasses.dataclass
class AdaLoraConfig(PeftConfig):
    """peft's fields and defaults. ``r`` is peft's (unused) LoraConfig rank: leave it at 8, set ``init_r``."""

    peft_type = "ADALORA"
    target_r: int = dataclasses.field(default=8, metadata={"help": (
        "The average rank per layer at the end of budgeting (Zhang et al. 2023): the final budget b^(T) is target_r "
        "× the number of target layers. A positive integer <= init_r; default 8.")})
    init_r: int = dataclasses.field(default=12, metadata={"help": (
        "The rank every target layer starts with (Zhang et al. 2023): the initial budget b^(0) is init_r × the "
        "number of target layers, and scaling is lora_alpha / init_r. A positive integer; default 12.")})
    tinit: int = dataclasses.field(default=0, metadata={"help": (
        "The paper's t_i (Zhang et al. 2023): initial warm-up steps trained at the full budget b^(0) before any rank "
        "is pruned. An integer >= 0; default 0, budgeting starts at once.")})
    tfinal: int = dataclasses.field(default=0, metadata={"help": (
        "The paper's t_f (Zhang et al. 2023): final steps trained with the rank pattern fixed at the target budget. "
        "An integer >= 0 with tinit < total_step - tfinal; default 0.")})
    deltaT: int = dataclasses.field(default=1, metadata={"help": (
        "The paper's ΔT (Zhang et al. 2023): the interval, in optimizer steps, between two rank reallocations during "
        "budgeting. A positive integer; default 1, every step.")})
    beta1: float = dataclasses.field(default=0.85, metadata={"help": (
        "The paper's β1 (Zhang et al. 2023): EMA coefficient of the smoothed sensitivity Ī of each weight. In "
        "(0, 1); default 0.85.")})
    beta2: float = dataclasses.field(default=0.85, metadata={"help": (
        "The paper's β2 (Zhang et al. 2023): EMA coefficient of the uncertainty Ū, |I - Ī| smoothed. In (0, 1); "
        "default 0.85.")})
    orth_reg_weight: float = dataclasses.field(default=0.5, metadata={"help": (
        "The paper's γ (Zhang et al. 2023): weight of the orthogonal regularizer that keeps P and Q near "
        "orthonormal, added to the loss (as peft: the mean unsquared Frobenius norm). A number >= 0; default 0.5.")})
    total_step: int | None = dataclasses.field(default=None, metadata={"help": (
        "The paper's T (Zhang et al. 2023): the number of optimizer steps you will train, which the cubic budget "
        "schedule depends on. Required: an integer > 0 (the default None is an error).")})
    rank_pattern: dict[str, list[bool]] | None = dataclasses.field(default=None, metadata={"help": (
        "The ranks kept after budgeting: layer name -> one bool per triplet (True = kept), written into the config "
        "at step total_step - tfinal and saved, so loading shrinks each layer to it. Default None: not fixed yet.")})
    lora_alpha: float = dataclasses.field(default=8, metadata={"help": (
        "LoRA's α (Hu et al. 2021): the SVD-form update P Λ Q is multiplied by lora_alpha / init_r. A positive "
        "number; default 8.")})
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": (
        "Dropout probability applied to the input of the AdaLoRA branch only. In [0, 1); default 0.0, no dropout.")})
    target_modules: list[str] | str | None = dataclasses.field(default=None, metadata={"help": (
        "The linear layers that get an SVD-form update: a list of name suffixes (['q_proj', 'v_proj']), a regex "
        "matching the whole name, or 'all-linear'. Required: None is an error.")})
    modules_to_save: list[str] | None = dataclasses.field(default=None, metadata={"help": (
        "Names of extra modules (e.g. ['lm_head']) trained in full besides the AdaLoRA layers, a copy per adapter, "
        "saved in the adapter file. Default None: no such modules.")})
    r: int = dataclasses.field(default=8, metadata={"help": (
        "peft's LoraConfig rank, which AdaLoRA inherits but does not use (it uses init_r and target_r). Kept for "
        "peft's file format; must stay at its default 8.")})

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.total_step, bool) or not isinstance(self.total_step, int) or self.total_step <= 0:
            raise ValueError(f"total_step must be the number of optimizer steps you will train (an integer > 0), "
                             f"got {self.total_step!r}: AdaLoRA's rank budget schedule depends on it.")
        for name in ("target_r", "init_r", "deltaT"):
            check_number(name, getattr(self, name), integer=True)
        for name in ("tinit", "tfinal"):
            check_number(name, getattr(self, name), integer=True, at_least=0)
        if self.target_r > self.init_r:
            raise ValueError(f"target_r={self.target_r} > init_r={self.init_r}: every layer starts at rank init_r "
                             "and AdaLoRA prunes down to an average of target_r; choose target_r <= init_r.")
        if self.tinit >= self.total_step - self.tfinal:
            raise ValueError(f"tinit={self.tinit}, tfinal={self.tfinal}, total_step={self.total_step} leave no "
                             "budgeting phase: need tinit < total_step - tfinal. Decrease tinit/tfinal or increase "
                             "total_step.")
        for name in ("beta1", "beta2"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} is an EMA coefficient and must lie in (0, 1), got {getattr(self, name)!r}.")
        check_number("orth_reg_weight", self.orth_reg_weight, at_least=0)
        check_number("lora_alpha", self.lora_alpha)
        check_number("lora_dropout", self.lora_dropout, at_least=0, below=1)
        if self.target_modules is None:
            raise ValueError("target_modules is required: e.g. ['q_proj', 'v_proj'], a regex, or 'all-linear'.")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.r != 8:
            raise ValueError(f"r={self.r!r} is LoRA's rank and AdaLoRA does not use it (peft ignores it with a "
                             "warning); set init_r (start rank per layer) and target_r (average final rank).")


class SVDLinear(AdapterLayer):
    """A linear layer plus ``P (Λ ⊙ Q) * lora_alpha / (ranknum + 1e-5)`` per adapter (peft's key names)."""

    adapter_attributes = ("lora_A", "lora_E", "lora_B")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_A, self.lora_E, self.lora_B = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        self.ranknum = nn.ParameterDict()  # init_r as a frozen 1-element parameter: counted, never saved
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}

    def add(self, adapter_name: str, config: AdaLoraConfig) -> None:
        device = module_device(self.base_layer)
        dtype = torch.float32 if device.type == "meta" else module_dtype(self.base_layer)
        r = config.init_r
        self.lora_A[adapter_name] = nn.Parameter(torch.zeros(r, self.in_features, device=device, dtype=dtype))
        self.lora_E[adapter_name] = nn.Parameter(torch.zeros(r, 1, device=device, dtype=dtype))
        self.lora_B[adapter_name] = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=dtype))
        if device.type != "meta":
            nn.init.normal_(self.lora_A[adapter_name], mean=0.0, std=0.02)
            nn.init.normal_(self.lora_B[adapter_name], mean=0.0, std=0.02)
        self.ranknum[adapter_name] = nn.Parameter(torch.full((1,), float(r), device=device), requires_grad=False)
        self.scaling[adapter_name] = config.lora_alpha
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()

    def keep_triplets(self, adapter_name: str, keep: list[bool]) -> None:
        """Shrink to the triplets marked True (loading a ``rank_pattern``); a no-op if already that size."""
        rank, current = sum(bool(k) for k in keep), self.lora_A[adapter_name].shape[0]
        if rank == current:
            return
        if len(keep) != current:
            raise ValueError(f"rank_pattern has {len(keep)} entries for a layer of rank {current}: it was saved "
                             "for another init_r.")
        keep_t = torch.tensor([bool(k) for k in keep], device=self.lora_A[adapter_name].device)
        for attr, dim in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
            old = getattr(self, attr)[adapter_name]
            new = old.data[keep_t] if dim == 0 else old.data[:, keep_t]
            getattr(self, attr)[adapter_name] = nn.Parameter(new.clone(), requires_grad=old.requires_grad)

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)
        for container in (self.ranknum, self.lora_dropout):
            if name in container:
                del container[name]
        self.scaling.pop(name, None)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """P (Λ ⊙ Q) * lora_alpha / (ranknum + 1e-5), shape (out, in): what merging adds to W."""
        lora_A, lora_E, lora_B = (getattr(self, a)[adapter_name] for a in self.adapter_attributes)
        return lora_B @ (lora_A * lora_E) * self.scaling[adapter_name] / (self.ranknum[adapter_name] + 1e-5)

    def adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        lora_A, lora_E, lora_B = (getattr(self, a)[adapter_name] for a in self.adapter_attributes)
        x = self.lora_dropout[adapter_name](x.to(lora_A.dtype))
        return (x @ (lora_A * lora_E).T @ lora_B.T) * self.scaling[adapter_name] / (self.ranknum[adapter_name] + 1e-5)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disabled and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled or self.merged:
            return result
        if self.row_adapters is not None:
            raise ValueError("AdaLoRA does not support mixed batches (adapter_names=), as in peft; "
                             "run one adapter at a time with set_adapter().")
        for name in self.active_adapters:
            result = result + self.adapter_output(x, name).to(result.dtype)
        return result

    def merge(self, adapter_names: list[str]) -> None:
        for name in adapter_names:
            if name in self.lora_A:
                self.base_layer.weight.data += self.delta_weight(name).to(self.base_layer.weight.dtype)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self.base_layer.weight.data -= self.delta_weight(name).to(self.base_layer.weight.dtype)


def svd_layers(peft_model, adapter_name: str) -> dict[str, SVDLinear]:
    """Module name (as in the base model) -> SVDLinear holding ``adapter_name``, in model order."""
    return {name: module for name, module in peft_model.base_model.named_modules()
            if isinstance(module, SVDLinear) and adapter_name in module.lora_A}


def orthogonal_regularization(peft_model, adapter_name: str) -> torch.Tensor:
    """Mean over every P and Q of ``||P^T P - I||_F`` and ``||Q Q^T - I||_F`` (peft's form of R(P, Q))."""
    terms = []
    for layer in svd_layers(peft_model, adapter_name).values():
        lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        for gram in (lora_A @ lora_A.T, lora_B.T @ lora_B):  # r x r each
            terms.append(torch.norm(gram - torch.eye(*gram.shape, dtype=gram.dtype, device=gram.device), p="fro"))
    return sum(terms) / len(terms)


class RankAllocator:
    """The importance statistics of one adapter's triplets and the budget schedule that prunes them."""

    def __init__(self, peft_model, adapter_name: str):
        self.adapter_name = adapter_name
        self.config: AdaLoraConfig = peft_model.peft_config[adapter_name]
        self.layers = svd_layers(peft_model, adapter_name)
        self.init_budget = sum(layer.lora_A[adapter_name].shape[0] for layer in self.layers.values())
        self.target_budget = self.config.target_r * len(self.layers)
        self.reset()

    def reset(self) -> None:
        self.exp_avg_ipt: dict[tuple[str, str], torch.Tensor] = {}  # Ī per (layer, "lora_A"/"lora_E"/"lora_B")
        self.exp_avg_unc: dict[tuple[str, str], torch.Tensor] = {}  # Ū

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """(budget b(step), whether to prune at this step) -- see the module docstring."""
        c = self.config
        if step <= c.tinit:
            return self.init_budget, False
        if step > c.total_step - c.tfinal:
            return self.target_budget, True
        remaining = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.init_budget - self.target_budget) * (remaining ** 3) + self.target_budget)
        return budget, step % c.deltaT == 0

    @torch.no_grad()
    def update_importance(self) -> None:
        beta1, beta2 = self.config.beta1, self.config.beta2
        for name, layer in self.layers.items():
            for attr in layer.adapter_attributes:
                param, key = getattr(layer, attr)[self.adapter_name], (name, attr)
                if param.grad is None:
                    raise ValueError(f"{name}.{attr} has no gradient: call update_and_allocate after "
                                     "loss.backward() and optimizer.step(), before optimizer.zero_grad().")
                ipt = (param * param.grad).abs()
                avg = beta1 * self.exp_avg_ipt.get(key, torch.zeros_like(param)) + (1 - beta1) * ipt
                self.exp_avg_unc[key] = (beta2 * self.exp_avg_unc.get(key, torch.zeros_like(param))
                                         + (1 - beta2) * (ipt - avg).abs())
                self.exp_avg_ipt[key] = avg

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Layer name -> S_i for each of its triplets, shape (r,)."""
        if not self.exp_avg_ipt:
            raise ValueError("No importance statistics yet: update_and_allocate must run during the budget phase.")

        def score(name, attr):
            return self.exp_avg_ipt[(name, attr)] * self.exp_avg_unc[(name, attr)]

        return {name: score(name, "lora_E").view(-1) + (score(name, "lora_A").mean(dim=1)
                                                        + score(name, "lora_B").mean(dim=0))
                for name in self.layers}

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, list[bool]]:
        """Zero Λ_i of every triplet scoring <= the (b0 - budget)-th smallest score; return the rank pattern."""
        scores = self.triplet_scores()
        n_pruned = self.init_budget - budget
        threshold = (torch.kthvalue(torch.cat(list(scores.values())), k=n_pruned)[0].item()
                     if n_pruned > 0 else float("-inf"))
        pattern = {}
        for name, layer in self.layers.items():
            pruned = scores[name] <= threshold
            layer.lora_E[self.adapter_name].masked_fill_(pruned.view(-1, 1), 0.0)
            pattern[f"{name}.lora_E"] = (~pruned).tolist()
        return pattern

    @torch.no_grad()
    def apply_rank_pattern(self, pattern: dict[str, list[bool]]) -> None:
        for name, layer in self.layers.items():
            lora_E = layer.lora_E[self.adapter_name]
            keep = torch.tensor(pattern[f"{name}.lora_E"], dtype=torch.bool, device=lora_E.device)
            lora_E.masked_fill_(~keep.view(-1, 1), 0.0)


def update_and_allocate(peft_model, global_step: int) -> int:
    """One AdaLoRA step for the active adapter; returns the budget (triplets kept over all layers).

    Call after ``optimizer.step()`` and before ``optimizer.zero_grad()`` (the gradients are read);
    ``global_step`` = optimizer steps done so far (1 after the first), so ``total_step`` steps end the schedule.
    """
    adapter_name = peft_model.active_adapter
    config = peft_model.peft_config[adapter_name]
    if config.peft_type != AdaLoraConfig.peft_type:
        raise ValueError(f"update_and_allocate is for AdaLoRA adapters; {adapter_name!r} is {config.peft_type}.")
    if config.inference_mode:
        raise ValueError(f"Adapter {adapter_name!r} was loaded for inference; load it with is_trainable=True to train.")
    if isinstance(global_step, bool) or not isinstance(global_step, int) or global_step < 0:
        raise ValueError(f"global_step must be an integer >= 0 (optimizer steps done), got {global_step!r}.")
    allocator = peft_model.__dict__.get("rankallocator")
    if allocator is None or allocator.adapter_name != adapter_name:
        allocator = peft_model.rankallocator = RankAllocator(peft_model, adapter_name)
    final_step = config.total_step - config.tfinal
    if global_step < final_step:  # warm-up and budget phases: collect importance, prune every deltaT
        allocator.update_importance()
        budget, prune_now = allocator.budget_schedule(global_step)
        if prune_now:
            config.rank_pattern = allocator.mask_to_budget(budget)
        return budget
    if global_step == final_step:  # fix the final pattern at the target budget
        config.rank_pattern = allocator.mask_to_budget(allocator.target_budget)
        allocator.reset()
    elif config.rank_pattern is None:
        raise ValueError(f"Step {global_step} is past total_step - tfinal = {final_step} but no rank_pattern "
                         "was allocated: call update_and_allocate at every step from the start.")
    else:  # final fine-tuning: keep pruned triplets at zero
        allocator.apply_rank_pattern(config.rank_pattern)
    return allocator.target_budget


def adalora_step_hook(peft_model):
    """``hook(global_step)`` for a plain loop: ``optimizer.step(); hook(step + 1); optimizer.zero_grad()``."""
    config = peft_model.peft_config[peft_model.active_adapter]
    if config.peft_type != AdaLoraConfig.peft_type:
        raise ValueError(f"adalora_step_hook needs an AdaLoRA model; the active adapter is {config.peft_type}.")
    return lambda global_step: update_and_allocate(peft_model, global_step)


def _svd_layer(peft_model, pattern_key: str, adapter_name: str) -> tuple[str, SVDLinear]:
    """'model.layers.0.self_attn.q_proj.lora_E[.default]' -> ('model.layers.0.self_attn.q_proj', its layer)."""
    name = pattern_key.removesuffix(f".{adapter_name}").removesuffix(".lora_E")
    layer = svd_layers(peft_model, adapter_name).get(name)
    if layer is None:
        raise ValueError(f"rank_pattern key {pattern_key!r} names no AdaLoRA layer of adapter {adapter_name!r}; "
                         "keys look like '<layer name>.lora_E'. Was it saved for another model?")
    return name, layer


@register_tuner
class AdaLoraTuner(Tuner):
    peft_type = "ADALORA"
    model_methods = ("update_and_allocate",)  # PeftModel.update_and_allocate(step), as in peft

    layer_class = SVDLinear

    def target_names(self, model: nn.Module, config: AdaLoraConfig) -> list[str]:
        return find_target_modules(model, config.target_modules, allowed_types=(nn.Linear,))  # no 4-bit base

    def forward(self, peft_model, *args, **kwargs):
        """The model's output; with labels, ``loss += orth_reg_weight * R(P, Q)`` (peft's AdaLoraModel.forward)."""
        outputs = peft_model.base_model(*args, **kwargs)
        if getattr(outputs, "loss", None) is not None:
            adapter_name = peft_model.active_adapter
            weight = peft_model.peft_config[adapter_name].orth_reg_weight
            outputs.loss = outputs.loss + weight * orthogonal_regularization(peft_model, adapter_name)
        return outputs

    def update_and_allocate(self, peft_model, global_step: int) -> int:
        return update_and_allocate(peft_model, global_step)

    def translate_saved_state(self, peft_model, state: dict, adapter_name: str) -> dict:
        """With a rank_pattern, save only the kept triplets (peft's resize_state_dict_by_rank_pattern)."""
        for key, keep in (peft_model.peft_config[adapter_name].rank_pattern or {}).items():
            prefix = SAVED_PREFIX + _svd_layer(peft_model, key, adapter_name)[0]
            keep_t = torch.tensor([bool(k) for k in keep])
            for attr, dim in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
                tensor = state[f"{prefix}.{attr}"]
                if tensor.shape[dim] != int(keep_t.sum()):
                    state[f"{prefix}.{attr}"] = tensor[keep_t] if dim == 0 else tensor[:, keep_t]
        return state

    def translate_loaded_state(self, peft_model, state: dict, adapter_name: str) -> dict:
        """With a rank_pattern, shrink each layer to its kept triplets before the tensors are copied in."""
        for key, keep in (peft_model.peft_config[adapter_name].rank_pattern or {}).items():
            _svd_layer(peft_model, key, adapter_name)[1].keep_triplets(adapter_name, keep)
        return state
