# %% [markdown]
# # 06 · LoRA (低秩适配, Low-Rank Adaptation)
#
# LoRA (Hu et al. 2021) freezes a pretrained weight matrix W and learns its update as the product of two thin
# matrices, ΔW = (α/r)·B A. It is the method most fine-tuning in practice uses, and the base of QLoRA, DoRA and
# AdaLoRA later in the series.
#
# **What you will learn in this notebook**
#
# * LoRA built from scratch in three steps — `LoRALayer` → `LinearWithLoRA` → `replace_linear_with_lora` — and
#   run on the real model, with a check after each step;
# * why B starts at zero, what α/r does, and why rsLoRA scales by α/√r instead (measured);
# * proof that the from-scratch code, `peftedu` and HF `peft` compute the same logits from the same weights;
# * LoRA on any PyTorch module (a plain `nn.Sequential`), by module name;
# * training on the `topic` task, LoRA+ (a larger learning rate for B), several adapters on one model (switching,
#   disabling, mixed batches, weighted combinations), saving and reloading, and merging for zero-cost inference.

# %%
%matplotlib inline
import copy
import json
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports bitsandbytes; its CPU-kernel notice is noise here
import peft
from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer
import torch
import transformers
from torch import nn

from peftedu import LoraConfig, PeftModel, get_peft_model
from peftedu.counting import count_parameters, print_trainable_parameters
from peftedu.course.compare import cmp, measured, rounding_tolerance
from peftedu.course.data import load_task
from peftedu.course.tokenization import build_prompt, collate_for_generation
from peftedu.course.explorers import lora_parameter_count, lora_rank_explorer
from peftedu.lora import LoraLinear, default_lora_targets
from peftedu.loraplus import create_loraplus_optimizer, loraplus_param_groups
from peftedu.course.models import DEFAULT_MODEL, MODEL_ALIASES, is_pretrained, load_base
from peftedu.prefix_tuning import prefix_geometry
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate, generate_answers

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the notebook
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # deprecation notices peft triggers
torch.manual_seed(0)
profile = get_profile()  # PEFTEDU_PROFILE: "quick" (CPU, default) or "full" (GPU)
model, tokenizer = load_base()
cfg = model.config
n_layers = cfg.num_hidden_layers
is_default = model.name_or_path == MODEL_ALIASES[DEFAULT_MODEL]  # the text quotes SmolLM2-135M's numbers
print(f"{model.name_or_path}: {count_parameters(model)[1]:,} parameters on {model.device} in {model.dtype}, "
      f"profile {profile.name}")

# %% [markdown]
# A fixed probe batch — one prompt of each task, left-padded as for generation — is used throughout to compare
# logits. We keep the base model's logits on it for later checks.

# %%
probe_records = [load_task("topic", "test")[0], load_task("extract", "test")[0], load_task("retention", "test")[0]]
probe_prompts = [build_prompt(tokenizer, r["instruction"], r["input"]) for r in probe_records]
probe = {k: v.to(model.device) for k, v in collate_for_generation(tokenizer, probe_prompts).items()}


@torch.no_grad()
def logits_of(m, **kwargs):
    """Logits of the probe batch under model ``m`` (a transformers, peftedu or peft model)."""
    return m(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"], **kwargs).logits.float()


base_logits = logits_of(model)
print("probe batch:", tuple(probe["input_ids"].shape), "-> logits", tuple(base_logits.shape))
# Two routes to the same logits (another library, a merged weight, a mixed batch) differ only in rounding: L layers
# x the MLP's long sums (on SmolLM2-135M, the default, 30 x 1,536; BLOOM's MLP is 4 d wide), at the size of the
# logits (the base model's; the adapters below keep them of that order). See notebook 00, Reading the outputs.
mlp_width = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
LOGITS_TOL = rounding_tolerance(model.dtype, magnitude=base_logits.abs().max().item(), terms=n_layers * mlp_width)

# %% [markdown]
# ## 1. The idea: learn the update, not the weight
#
# Fine-tuning changes a weight matrix W (out × in) into W + ΔW. Full fine-tuning learns all out·in entries of
# ΔW. LoRA's hypothesis is that the update a task needs has a low *intrinsic rank*, so it writes
#
# $$ h = W x + \frac{\alpha}{r} B A x, \qquad A \in \mathbb{R}^{r \times \text{in}},\; B \in \mathbb{R}^{\text{out} \times r},\; r \ll \min(\text{in}, \text{out}) $$
#
# and trains only A and B: r·(in + out) numbers instead of in·out. W stays frozen. Three conventions matter
# (they are what peft does, and what every check below relies on):
#
# * **initialisation**: A random (Kaiming-uniform), **B = 0** — so ΔW = 0 and the model starts exactly at the
#   pretrained one, while A's randomness lets B receive a non-zero gradient at the first step;
# * **scaling** α/r (`lora_alpha / r`): the LoRA paper's way to make a good α roughly independent of r — rsLoRA
#   argues for α/√r instead (section 3);
# * **merging**: after training, W ← W + (α/r)·B A is an ordinary matrix again, so inference costs nothing extra.

# %%
def draw_lora(ax, d_in=8, d_out=8, r=2):
    """W (out x in) next to the path B (out x r) @ A (r x in), drawn to scale in cells."""
    def box(x, y, w, h, color, label):
        ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=color, edgecolor="black", alpha=0.8))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=11)
    box(0, 0, d_in, d_out, "#c6d4e1", "W\nfrozen\nout × in")
    ax.text(d_in + 1, d_out / 2, "+", fontsize=22, ha="center", va="center")
    box(d_in + 2, 0, r, d_out, "#f4a582", "B\nout×r\n= 0\nat\nstart")
    ax.text(d_in + 2 + r + 0.5, d_out / 2, "·", fontsize=22, ha="center", va="center")
    box(d_in + 3 + r, d_out - r, d_in, r, "#92c5de", "A: r × in (random)")
    ax.text(d_in + 3 + r + d_in / 2, d_out - r - 1.2, "trainable: r·(in + out)\nfrozen: in·out", ha="center", va="top")
    ax.set_xlim(-0.5, 2 * d_in + r + 3.5)
    ax.set_ylim(-0.5, d_out + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")


# the LoRA paper's targets for this architecture: q_proj and v_proj (Llama, Qwen2), BLOOM's fused query_key_value
TARGETS = default_lora_targets(model, "qv")
q_proj = next(m for n, m in model.named_modules() if n.endswith(TARGETS[0]) and isinstance(m, nn.Linear))  # layer 0's
d_out, d_in = q_proj.weight.shape
fig, (ax_picture, ax_count) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
draw_lora(ax_picture)
ax_picture.set_title("h = W x + (α/r) · B A x")
ranks = [r for r in (1, 2, 4, 8, 16, 32, 64, 128, 256) if r <= min(d_in, d_out)]  # a rank above both is wasted
ax_count.plot(ranks, [r * (d_in + d_out) for r in ranks], marker="o", label="LoRA: r·(in+out)")
ax_count.axhline(d_in * d_out, color="k", ls="--", label="full ΔW: in·out")
ax_count.set_xscale("log", base=2)
ax_count.set_yscale("log")
ax_count.set_xlabel("rank r")
ax_count.set_ylabel("trainable parameters")
ax_count.set_title(f"one {TARGETS[0]} ({d_out} × {d_in})")
ax_count.legend()
plt.tight_layout()
plt.show()
print(f"{TARGETS[0]}: full update {d_in * d_out:,} parameters, LoRA r=8: {8 * (d_in + d_out):,} "
      f"({100 * 8 * (d_in + d_out) / (d_in * d_out):.1f}%)")
assert 8 * (d_in + d_out) < d_in * d_out

# %% [markdown]
# ## 2. LoRA from scratch, in three steps
#
# ### Step 1: `LoRALayer` — the low-rank path alone
#
# We store A as (r × in) and B as (out × r), the layout of `nn.Linear` weights and of peft (rasbt's book stores
# the transposes; the product is the same). The layer returns only the update, (α/r)·x Aᵀ Bᵀ.

# %%
class LoRALayer(nn.Module):
    """The low-rank update alone: x -> (alpha / rank) * x A^T B^T.  A: (rank, in), B: (out, rank)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        if not (isinstance(rank, int) and rank > 0):
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        self.A = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # what nn.Linear (and peft) use
        self.B = nn.Parameter(torch.zeros(out_features, rank))  # B = 0: the update starts at exactly 0
        self.scaling = alpha / rank

    def forward(self, x):
        return (x @ self.A.T @ self.B.T) * self.scaling


lora_layer = LoRALayer(d_in, d_out, rank=8, alpha=16)
x = torch.randn(2, 5, d_in)  # (batch, tokens, features)
print("A", tuple(lora_layer.A.shape), "B", tuple(lora_layer.B.shape), "scaling", lora_layer.scaling,
      "-> update", tuple(lora_layer(x).shape))
assert lora_layer.A.shape == (8, d_in) and lora_layer.B.shape == (d_out, 8)
assert lora_layer(x).shape == (2, 5, d_out)
assert torch.equal(lora_layer(x), torch.zeros(2, 5, d_out))  # B = 0 -> no update at all
assert sum(p.numel() for p in lora_layer.parameters()) == 8 * (d_in + d_out)

# %% [markdown]
# ### Step 2: `LinearWithLoRA` — a frozen linear layer plus the path
#
# The wrapper keeps the original `nn.Linear` and adds the update to its output. On the real `q_proj` of layer 0
# (BLOOM's `query_key_value`),
# with B = 0 the output is *identical* (not just close: adding exact zeros changes no bit).

# %%
class LinearWithLoRA(nn.Module):
    """y = linear(x) + LoRALayer(x); the wrapped linear layer is left as it is (freeze it separately).

    The update is computed in the adapter's dtype (fp32) and the sum is rounded once to the input's dtype, as peft does.
    """

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha).to(linear.weight.device)

    def forward(self, x):
        return (self.linear(x) + self.lora(x.to(self.lora.A.dtype))).to(x.dtype)


wrapped = LinearWithLoRA(q_proj, rank=8, alpha=16)
x = torch.randn(3, d_in, dtype=q_proj.weight.dtype, device=q_proj.weight.device)
with torch.no_grad():
    assert torch.equal(wrapped(x), q_proj(x))  # B = 0: bit-identical
    wrapped.lora.B.normal_(0, 0.02)  # pretend it was trained
    delta_w = wrapped.lora.scaling * wrapped.lora.B @ wrapped.lora.A  # (out, in), what merging would add
    print("after a (fake) update, max |y - y_base| =", measured((wrapped(x) - q_proj(x)).abs().max().item(), ".4f"))
    # y = linear(x) + update is rounded once, at the size of y; subtracting y_base (the same bits) leaves that rounding
    path_tol = rounding_tolerance(q_proj.weight.dtype, magnitude=wrapped(x).abs().max().item())
    cmp("LoRA path == x @ ΔWᵀ", (wrapped(x) - q_proj(x)).float(), x.float() @ delta_w.T, atol=path_tol)
print("rank of ΔW:", torch.linalg.matrix_rank(delta_w).item(), "of a", tuple(delta_w.shape), "matrix")
assert torch.linalg.matrix_rank(delta_w).item() == 8

# %% [markdown]
# ### Step 3: `replace_linear_with_lora` — wrap every targeted layer of the real model
#
# We walk the module tree and replace each `nn.Linear` whose attribute name is in `target_names` (here the query and
# value projections, the choice of the LoRA paper: `q_proj` and `v_proj`, or BLOOM's fused `query_key_value`). First everything is frozen; only the new A and B train.
# We work on a copy, so `model` stays the pretrained model.

# %%
def replace_linear_with_lora(module: nn.Module, target_names, rank: int, alpha: float) -> int:
    """Replace, recursively, every nn.Linear child whose name is in target_names; returns how many."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and name in target_names:
            setattr(module, name, LinearWithLoRA(child, rank, alpha))
            replaced += 1
        else:
            replaced += replace_linear_with_lora(child, target_names, rank, alpha)
    return replaced


RANK, ALPHA = 8, 16
print("targets:", TARGETS)
scratch = copy.deepcopy(model)
for p in scratch.parameters():
    p.requires_grad_(False)
n_wrapped = replace_linear_with_lora(scratch, TARGETS, RANK, ALPHA)
print(next(m for m in scratch.modules() if isinstance(m, LinearWithLoRA)))  # layer 0's first target
print_trainable_parameters(scratch)
kv_dim = prefix_geometry(cfg)["token_dim"]  # kv heads x head size: narrower than d with grouped-query attention
shapes = {name: model.get_submodule(name).weight.shape for name, m in scratch.named_modules()
          if isinstance(m, LinearWithLoRA) and ".0." in name}  # layer 0's targets: (out, in) each
per_layer = sum(RANK * (d_in_t + d_out_t) for d_out_t, d_in_t in shapes.values())
print("per layer:", " + ".join(f"r·({d_in_t} + {d_out_t})" for d_out_t, d_in_t in shapes.values()))
assert n_wrapped == len(TARGETS) * n_layers
assert count_parameters(scratch)[0] == n_layers * per_layer
if TARGETS == ["q_proj", "v_proj"]:  # q: d -> d, v: d -> kv
    assert per_layer == RANK * (cfg.hidden_size + cfg.hidden_size) + RANK * (cfg.hidden_size + kv_dim)
assert torch.equal(logits_of(scratch), base_logits)  # B = 0 everywhere: the same model, bit for bit

# %% [markdown]
# Trainable parameters, on SmolLM2-135M, the default: r·(576 + 576) for each `q_proj` plus r·(576 + 192) for each
# `v_proj` (grouped-query attention makes `v_proj` narrower), times 30 layers — the assertion above checks the count
# against this formula (printed per layer for the model in use; BLOOM's fused projection is d → 3d).
# With B = 0 the wrapped model's logits equal the base model's exactly.
#
# ## 3. The scaling factor (缩放系数): α/r or α/√r? Measuring rsLoRA's argument
#
# Why divide by r at all? The LoRA paper wanted a change of r not to require re-tuning the learning rate. rsLoRA
# (Kalajdzievski 2023, rank-stabilized LoRA) analyses how the learning signal depends on r and finds α/r too strong
# a correction: the gradient that reaches the adapter *shrinks* as r grows ("gradient collapse"), so large ranks
# learn slowly and do no better than small ones. Scaling by α/√r keeps it stable.
#
# We can measure this on the real `q_proj` of a layer a third of the way up (layer 10 of SmolLM2-135M's 30; BLOOM's
# `query_key_value`), with the real activations of the probe batch as its inputs
# X and a fixed regression target. At the LoRA initialisation (B = 0) the gradient of B is s·Gᵀ(X Aᵀ), where G is
# the gradient of the layer's output: r columns of similar size, so its norm grows like **s·√r**. One step of
# gradient descent then moves the output by η·s²·X AᵀA Xᵀ G, which grows like **s²·r** when the inputs share
# directions, as real activations do. For s = α/r: r^-1/2 and r^-1; for s = α/√r: both flat.

# %%
layer_index = n_layers // 3
layer10 = next(m for n, m in model.named_modules() if n.endswith(f".{layer_index}.self_attn.{TARGETS[0]}")
               or n.endswith(f".{layer_index}.self_attention.{TARGETS[0]}"))
captured = {}
hook = layer10.register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0].detach()))
logits_of(model)
hook.remove()
X = captured["x"][probe["attention_mask"].bool()]  # (real tokens, d): the inputs the projection sees
print(f"inputs of layer {layer_index}'s {TARGETS[0]}:", tuple(X.shape))
with torch.no_grad():
    base_out = layer10(X).float()  # the frozen part of the layer's output
X = X.float()


def signal_at_init(rank, scaling, seed, lr=1e-3):
    """(||dL/dB||, ||output change after one SGD step on B||), starting from the LoRA initialisation."""
    g = torch.Generator().manual_seed(seed)
    lora = LoRALayer(X.shape[1], layer10.out_features, rank, alpha=1.0).to(X.device)
    lora.scaling = scaling
    with torch.no_grad():  # Kaiming-uniform(a=√5) draws A from U(-1/√in, 1/√in)
        lora.A.copy_((torch.rand(rank, X.shape[1], generator=g) * 2 - 1) / math.sqrt(X.shape[1]))
    target = torch.randn(X.shape[0], layer10.out_features, generator=g).to(X.device)
    loss = 0.5 * ((base_out + lora(X) - target) ** 2).sum() / X.shape[0]
    loss.backward()
    with torch.no_grad():
        grad_norm = lora.B.grad.norm().item()
        lora.B -= lr * lora.B.grad
        return grad_norm, lora(X).norm().item()  # the update was exactly 0 before the step


def log_slope(xs, ys):
    """Least-squares slope of log(y) against log(x): the exponent p in y ∝ x^p."""
    lx, ly = torch.tensor(xs, dtype=torch.float64).log(), torch.tensor(ys, dtype=torch.float64).log()
    return (((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()).item()


alpha, seeds = 16, range(3)
rules = {"LoRA α/r": lambda r: alpha / r, "rsLoRA α/√r": lambda r: alpha / math.sqrt(r)}
signals = {label: torch.tensor([[signal_at_init(r, rule(r), seed) for seed in seeds] for r in ranks]).mean(1)
           for label, rule in rules.items()}  # (ranks, 2): mean over 3 draws of A and the target
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for label, values in signals.items():
    for ax, column in zip(axes, range(2)):
        ax.plot(ranks, values[:, column], marker="o", label=label)
for ax, title in zip(axes, ("‖∂L/∂B‖ at B = 0", "output change after one SGD step")):
    ax.set(xscale="log", yscale="log", xlabel="rank r", title=f"{title} (α = {alpha})")
    ax.set_xscale("log", base=2)
    ax.legend()
plt.tight_layout()
plt.show()
slopes = {label: (log_slope(ranks, v[:, 0].tolist()), log_slope(ranks, v[:, 1].tolist())) for label, v in signals.items()}
for label, (grad_slope, move_slope) in slopes.items():
    print(f"{label:<12}: gradient of B ∝ r^({measured(grad_slope, '+.2f')}), "
          f"output change ∝ r^({measured(move_slope, '+.2f')})")
assert -0.65 < slopes["LoRA α/r"][0] < -0.35 and abs(slopes["rsLoRA α/√r"][0]) < 0.15  # the gradient: s·√r
if is_pretrained(model):  # the output change needs inputs that share directions, as real activations do
    assert -1.3 < slopes["LoRA α/r"][1] < -0.7 and abs(slopes["rsLoRA α/√r"][1]) < 0.3  # collapse vs stable
else:
    print("random weights: their activations share no directions, so only the gradient's slopes are checked")

# %% [markdown]
# Adam divides every gradient entry by its running size, which hides part of this in the very first steps (exercise 1
# looks at it); the rsLoRA paper's training runs, made with Adam, still find that under α/r larger ranks learn no
# better, and that under α/√r they do.
#
# Both libraries implement the switch as `use_rslora=True`: the scaling becomes α/√r.

# %%
ours_rs = LoraConfig(r=16, lora_alpha=8, use_rslora=True, target_modules=["q_proj"])
theirs_rs = peft.get_peft_model(nn.Sequential(nn.Linear(32, 32)),
                                peft.LoraConfig(r=16, lora_alpha=8, use_rslora=True, target_modules=["0"]))
print("peftedu scaling:", ours_rs.scaling, "| peft scaling:", theirs_rs.base_model.model[0].scaling["default"])
assert ours_rs.scaling == theirs_rs.base_model.model[0].scaling["default"] == 8 / math.sqrt(16)
assert LoraConfig(r=16, lora_alpha=8, target_modules=["q_proj"]).scaling == 8 / 16

# %% [markdown]
# ## 4. Proof: from scratch == `peftedu` == HF `peft`
#
# Three LoRA models of the same base with the same A and B: our three-step code, `peftedu.get_peft_model` and
# `peft.get_peft_model`. B = 0 would make the test trivial, so B gets random values first; then every A and B is
# copied from the scratch model into the two libraries' `lora_A["default"]` / `lora_B["default"]` (the
# `nn.Linear` layout: A is (r, in), B is (out, r)).

# %%
g = torch.Generator().manual_seed(0)
scratch_layers = {name: m for name, m in scratch.named_modules() if isinstance(m, LinearWithLoRA)}
with torch.no_grad():
    for layer in scratch_layers.values():
        layer.lora.B.copy_(torch.randn(layer.lora.B.shape, generator=g) * 0.02)

ours = get_peft_model(copy.deepcopy(model), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
theirs = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
with torch.no_grad():
    for name, layer in scratch_layers.items():
        for lib_layer in (ours.base_model.get_submodule(name), theirs.base_model.model.get_submodule(name)):
            lib_layer.lora_A["default"].weight.copy_(layer.lora.A)
            lib_layer.lora_B["default"].weight.copy_(layer.lora.B)

for label, m in (("scratch", scratch), ("peftedu", ours), ("HF peft", theirs)):
    print(f"{label:>8}: ", end="")
    print_trainable_parameters(m)
assert count_parameters(scratch) == ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()

scratch_logits, ours_logits, theirs_logits = logits_of(scratch), logits_of(ours), logits_of(theirs)
change = (scratch_logits - base_logits).abs().max().item()
print(f"the update changes the logits by up to {measured(change, '.2f')}")
assert change > (0.1 if is_pretrained(model) else LOGITS_TOL)  # far more than rounding
cmp("logits: scratch vs peftedu", scratch_logits, ours_logits, atol=LOGITS_TOL)
cmp("logits: peftedu vs HF peft", ours_logits, theirs_logits, atol=LOGITS_TOL)
name = [n for n in scratch_layers if f".{n_layers // 4}." in n][-1]  # on SmolLM2-135M: layer 7's v_proj
scratch_delta = scratch_layers[name].lora.scaling * scratch_layers[name].lora.B @ scratch_layers[name].lora.A
cmp("ΔW: scratch vs peftedu", scratch_delta, ours.base_model.get_submodule(name).delta_weight("default"))
_ = cmp("ΔW: scratch vs HF peft", scratch_delta, theirs.base_model.model.get_submodule(name).get_delta_weight("default"))

# %%
del scratch, ours, theirs, scratch_layers  # free the three copies of the model

# %% [markdown]
# ## 5. LoRA on any PyTorch model: a plain `nn.Sequential`
#
# Nothing above is specific to transformers: LoRA wraps `nn.Linear` modules chosen **by name**. In an
# `nn.Sequential` the names are the positions, `"0"`, `"2"`, `"4"`. A list entry matches a module whose full name
# equals it or ends with `"." + entry`, in both libraries. We wrap the first two layers, give both libraries the same
# initial A, train each for 30 steps on the same toy regression, and compare.

# %%
torch.manual_seed(0)
mlp = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
print("linear layers:", [name for name, m in mlp.named_modules() if isinstance(m, nn.Linear)])
mlp_config = dict(r=4, lora_alpha=8, target_modules=["0", "2"])
ours_mlp = get_peft_model(copy.deepcopy(mlp), LoraConfig(task_type=None, **mlp_config))
theirs_mlp = peft.get_peft_model(copy.deepcopy(mlp), peft.LoraConfig(**mlp_config))
with torch.no_grad():
    for name in mlp_config["target_modules"]:
        theirs_mlp.base_model.model.get_submodule(name).lora_A["default"].weight.copy_(
            ours_mlp.base_model.get_submodule(name).lora_A["default"].weight)
print(ours_mlp.base_model)


def train_mlp(forward, params, steps=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    X, Y = torch.randn(128, 16, generator=g), torch.randn(128, 4, generator=g)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(forward(X), Y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return X, losses


# peftedu's wrapper forwards positional inputs as input_ids (a causal-LM convention), so we call the wrapped
# module itself: the LoRA layers live inside it.
X, ours_losses = train_mlp(ours_mlp.base_model, [p for p in ours_mlp.parameters() if p.requires_grad])
_, theirs_losses = train_mlp(theirs_mlp, [p for p in theirs_mlp.parameters() if p.requires_grad])
print(f"loss {measured(ours_losses[0], '.4f')} -> {measured(ours_losses[-1], '.4f')} (peftedu), "
      f"{measured(theirs_losses[0], '.4f')} -> {measured(theirs_losses[-1], '.4f')} (peft)")
assert ours_losses[-1] < ours_losses[0]
assert ours_mlp.get_nb_trainable_parameters() == theirs_mlp.get_nb_trainable_parameters() == (4 * (16 + 64) + 4 * (64 + 64), 6340)
with torch.no_grad():
    cmp("MLP after training: peftedu vs peft", ours_mlp.base_model(X), theirs_mlp(X))
    _ = cmp("frozen base layer unchanged", ours_mlp.base_model[0].base_layer.weight, mlp[0].weight, atol=0)

# %% [markdown]
# A target that matches nothing is an error in both libraries (in older peft versions a typo here could go unnoticed):

# %%
try:
    get_peft_model(copy.deepcopy(mlp), LoraConfig(task_type=None, r=4, target_modules=["q_proj"]))
except ValueError as error:
    print("ValueError:", error)
else:
    raise AssertionError("a target matching nothing must raise")

# %% [markdown]
# ## 6. How big is a LoRA? The rank (秩) explorer
#
# `lora_parameter_count` counts r·(in + out) over the targeted modules without building anything; the explorer
# wraps it with a model menu (the 1B-class architectures are built on the meta device), a rank slider and the
# target modules, and shows LoRA and QLoRA memory. Run the notebook to use the widget; the table below it is the
# same computation, printed.

# %% tags=["nbval-ignore-output"]
lora_rank_explorer()

# %%
attention = default_lora_targets(model, "attention")  # q_proj, k_proj, v_proj, o_proj; BLOOM query_key_value, dense
short = lambda names: ",".join(n.removesuffix("_proj") for n in names)
model_label = "SmolLM2-135M" if is_default else model.name_or_path
print(f"{'rank':>5} {short(TARGETS):>12} {short(attention):>12} {'all-linear':>12}   (trainable parameters of "
      f"{model_label})")
for r in (1, 4, 8, 16, 64):
    counts = [lora_parameter_count(model, r, targets).lora_params for targets in (TARGETS, attention, "all-linear")]
    print(f"{r:>5} " + " ".join(f"{c:>12,}" for c in counts))
    assert counts[0] == n_layers * per_layer // RANK * r
print(lora_parameter_count(model, 8, attention))

# %% [markdown]
# ## 7. Training a LoRA on `topic`
#
# Now the real thing, with `peftedu`: rank 8, α = 16 on the attention projections (Llama's four; BLOOM's two), the
# course's training loop
# in the current profile (quick: 12 optimizer steps of 8 examples on the CPU). First the zero-shot score of the
# base model on the same test rows.

# %%
before = evaluate(model, tokenizer, "topic")
print(f"zero-shot topic accuracy: {before['score']:.3f} on {before['n']} test rows")

lora_config = LoraConfig(r=8, lora_alpha=16, target_modules=attention)
peft_model = get_peft_model(model, lora_config, adapter_name="topic")  # wraps `model` in place
peft_model.print_trainable_parameters()
assert torch.equal(logits_of(peft_model), base_logits)  # B = 0: training starts from the base model

history = train(peft_model, tokenizer, load_task("topic", "train"), progress=False)
print(history.summary())
plot_history(history)
plt.show()
if is_pretrained(model):
    assert history.loss[-1] < history.loss[0] / 4
else:
    moved = any(m.lora_B["topic"].weight.abs().max() > 0 for m in peft_model.modules() if isinstance(m, LoraLinear))
    print(f"random weights: checked that the loss stayed finite and B moved from 0 ({moved})")
    assert all(math.isfinite(v) for v in history.loss) and moved

# %%
after = evaluate(peft_model, tokenizer, "topic")
print(f"topic accuracy: zero-shot {before['score']:.3f} -> after LoRA {measured(after['score'])} "
      f"({after['n']} test rows)")
for b, a in list(zip(before["examples"], after["examples"]))[:4]:
    print(f"- {b['input']}\n    reference {b['reference']!r}   before {b['prediction']!r}   "
          f"after {measured(a['prediction'])}")
if is_pretrained(model):
    assert after["score"] >= before["score"] + 0.5
else:
    print("random weights: the scores mean nothing; checked only that evaluation ran on every row")
    assert after["n"] == before["n"] > 0

# %% [markdown]
# ## 8. LoRA+: a larger learning rate (学习率) for B
#
# LoRA+ (Hayou et al. 2024) argues that A and B should not share a learning rate: B starts at zero and, in wide
# layers, learns too slowly at the rate that suits A. It changes no module, only the optimizer's parameter groups:
# B's learning rate is `loraplus_lr_ratio` times A's (the paper suggests about 16).
#
# We add a second adapter, `extract`, to the same model (it becomes the active one, so only its tensors are
# trainable), and build the LoRA+ optimizer for it:

# %%
peft_model.add_adapter("extract", LoraConfig(r=8, lora_alpha=16, target_modules=attention))
assert peft_model.active_adapter == "extract"
optimizer = create_loraplus_optimizer(peft_model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
groups = loraplus_param_groups(peft_model)
for (group_name, members), group in zip(groups.items(), optimizer.param_groups):
    example = next(iter(members), "-")
    print(f"{group_name:<16} {len(members):>4} tensors  lr {group['lr']:.1e}  weight decay {group['weight_decay']}  e.g. {example}")
assert all("extract" in name for members in groups.values() for name in members)  # the topic adapter is frozen
assert all("lora_B" in name for name in groups["groupB"]) and len(groups["groupB"]) == len(groups["groupA"])
assert optimizer.param_groups[2]["lr"] == 16 * optimizer.param_groups[0]["lr"]

# %% [markdown]
# **The groups by hand.** `create_loraplus_optimizer` does nothing but sort the trainable tensors into four groups
# and give each a learning rate and a weight decay. The rules, as in the paper's reference code and peft:
#
# * **embedding**: the tensors of a LoRA layer wrapping an `nn.Embedding` (peft's `lora_embedding_A/B`) get their
#   own small learning rate, `loraplus_lr_embedding` (default 1e-6);
# * **groupB**: `lora_B` — and every other 1-D tensor (biases, norm weights, DoRA's magnitude) — at `lr · ratio`;
# * **groupB_no_decay**: the part of that which is a bias or belongs to an `nn.LayerNorm` (transformers' rule for
#   no weight decay): `lr · ratio`, weight decay 0;
# * **groupA**: everything else that trains (`lora_A`, full copies in `modules_to_save`) at `lr`.
#
# Every group but groupB_no_decay gets the same weight decay (peft calls it `loraplus_weight_decay`).

# %%
def loraplus_groups_by_hand(model, lr, loraplus_lr_ratio, loraplus_lr_embedding=1e-6, weight_decay=0.0):
    """LoRA+'s four optimizer groups, as a list of dicts for torch.optim (groupA, embedding, groupB, no decay)."""
    no_decay_norms = {f"{module_name}.{name}".lstrip(".") for module_name, module in model.named_modules()
                      if isinstance(module, nn.LayerNorm) for name, _ in module.named_parameters(recurse=False)}
    groups = {"groupA": [], "embedding": [], "groupB": [], "groupB_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # an adapter tensor sits two levels below its LoRA layer: <layer>.lora_B.<adapter>(.weight)
        layer_name = ".".join(name.split(".")[:-2])
        wrapped = getattr(model.get_submodule(layer_name), "base_layer", None) if layer_name else None
        if isinstance(wrapped, nn.Embedding):
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            no_decay = name in no_decay_norms or "bias" in name
            groups["groupB_no_decay" if no_decay else "groupB"].append(param)
        else:
            groups["groupA"].append(param)
    return [{"params": groups["groupA"], "lr": lr, "weight_decay": weight_decay},
            {"params": groups["embedding"], "lr": loraplus_lr_embedding, "weight_decay": weight_decay},
            {"params": groups["groupB"], "lr": lr * loraplus_lr_ratio, "weight_decay": weight_decay},
            {"params": groups["groupB_no_decay"], "lr": lr * loraplus_lr_ratio, "weight_decay": 0.0}]


def describe_groups(param_groups, model):
    """Each group as (lr, weight decay, sorted parameter names without the wrapper's prefix)."""
    prefix = "base_model.model." if isinstance(model, peft.PeftModel) else "base_model."
    names = {id(p): n.removeprefix(prefix) for n, p in model.named_parameters()}
    return [(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in param_groups]


by_hand = describe_groups(loraplus_groups_by_hand(peft_model, lr=1e-3, loraplus_lr_ratio=16), peft_model)
print("on the model: groups by hand == peftedu.loraplus:", by_hand == describe_groups(optimizer.param_groups, peft_model))
assert by_hand == describe_groups(optimizer.param_groups, peft_model)

# %% [markdown]
# The model above exercises only two of the groups (`lora_A`, `lora_B`). A toy model with an embedding, a LayerNorm
# and biases exercises all four: LoRA on `proj`, full trainable copies of `norm` and `head` (`modules_to_save`), and
# in peft also LoRA on the embedding (`peftedu` has no LoRA for embeddings, so its embedding group stays empty).
# Same settings everywhere: lr 1e-3, ratio 16, weight decay 0.01.

# %%
class ToyModel(nn.Module):
    def __init__(self, vocab=32, d=16):
        super().__init__()
        self.embed, self.norm = nn.Embedding(vocab, d), nn.LayerNorm(d)
        self.proj, self.head = nn.Linear(d, d), nn.Linear(d, 4)

    def forward(self, input_ids):
        return self.head(self.proj(self.norm(self.embed(input_ids))))


toy_kwargs = dict(r=4, lora_alpha=8, modules_to_save=["norm", "head"])
settings = dict(lr=1e-3, loraplus_lr_ratio=16)
with torch.random.fork_rng(devices=[]):                 # initialising draws random numbers: keep the notebook's stream
    torch.manual_seed(0)
    toy = ToyModel()
    toy_ours = get_peft_model(copy.deepcopy(toy), LoraConfig(task_type=None, target_modules=["proj"], **toy_kwargs))
    toy_peft = peft.get_peft_model(copy.deepcopy(toy), peft.LoraConfig(target_modules=["proj"], **toy_kwargs))
    toy_peft_emb = peft.get_peft_model(copy.deepcopy(toy), peft.LoraConfig(target_modules=["proj", "embed"],
                                                                           **toy_kwargs))
hand_ours = describe_groups(loraplus_groups_by_hand(toy_ours, weight_decay=0.01, **settings), toy_ours)
lib_ours = describe_groups(create_loraplus_optimizer(toy_ours, torch.optim.AdamW, weight_decay=0.01,
                                                     **settings).param_groups, toy_ours)
hand_peft, lib_peft = [], []
for m in (toy_peft, toy_peft_emb):
    hand_peft.append(describe_groups(loraplus_groups_by_hand(m, weight_decay=0.01, **settings), m))
    lib_peft.append(describe_groups(peft_create_loraplus_optimizer(m, torch.optim.AdamW, loraplus_weight_decay=0.01,
                                                                   **settings).param_groups, m))
for group_name, (lr, weight_decay, names) in zip(["groupA", "embedding", "groupB", "groupB_no_decay"], hand_peft[1]):
    print(f"{group_name:<16} lr {lr:.1e}  weight decay {weight_decay:<5} {names}")
print("by hand == peftedu.loraplus:", hand_ours == lib_ours)
print("by hand == peft create_loraplus_optimizer (without / with LoRA on the embedding):",
      hand_peft[0] == lib_peft[0], hand_peft[1] == lib_peft[1])
print("peftedu == peft (same config):", lib_ours == lib_peft[0])
assert hand_ours == lib_ours and hand_peft == lib_peft and lib_ours == lib_peft[0]
assert [len(names) for _, _, names in hand_peft[1]] == [2, 2, 1, 3]   # every group in use

# %% [markdown]
# A short run on `extract` — half the profile's optimizer steps, each with half its examples; the learning-rate
# schedule's peaks are the groups' own learning rates:

# %%
extract_history = train(peft_model, tokenizer, load_task("extract", "train"), optimizer=optimizer,
                        max_steps=max(6, profile.max_steps // 2), batch_size=profile.examples_per_step // 2,
                        grad_accum=1, progress=False)
print(extract_history.summary())
extract_rows = 16 if profile.name == "quick" else None
extract_after = evaluate(peft_model, tokenizer, "extract", rows=extract_rows)
print(f"extract exact match after LoRA+: {measured(extract_after['score'])} on {extract_after['n']} test rows")
print("example:", measured(extract_after["examples"][0]["prediction"]))
if is_pretrained(model):
    assert extract_history.loss[-1] < extract_history.loss[0]
    assert extract_after["score"] >= 0.5
else:
    print("random weights: the score means nothing; checked only that the loss stayed finite")
    assert all(math.isfinite(v) for v in extract_history.loss)

# %% [markdown]
# ## 9. Several adapters on one model: switching (适配器切换) and mixed batches (混合批次)
#
# The model now holds two adapters on the same frozen base. `set_adapter` chooses the active one,
# `disable_adapter()` runs the base model alone, and a **mixed batch** gives each row its own adapter
# (`adapter_names=`, with `"__base__"` for none) — one forward pass serving several tasks.

# %%
print("adapters:", list(peft_model.peft_config), "| active:", peft_model.active_adapter)
per_adapter = {}
for name in ("topic", "extract"):
    peft_model.set_adapter(name)
    per_adapter[name] = logits_of(peft_model)
    answers = generate_answers(peft_model, tokenizer, probe_prompts[:2], max_new_tokens=32)
    print(f"{name:>8} adapter:", measured(answers))
with peft_model.disable_adapter():
    per_adapter["__base__"] = logits_of(peft_model)
cmp("disable_adapter() == base model", per_adapter["__base__"], base_logits)
assert (per_adapter["topic"] - per_adapter["extract"]).abs().max() > (1.0 if is_pretrained(model) else LOGITS_TOL)

# %%
row_adapters = ["topic", "extract", "__base__"]  # probe rows: a topic prompt, an extract prompt, a question
mixed = logits_of(peft_model, adapter_names=row_adapters)
for i, name in enumerate(row_adapters):
    cmp(f"mixed batch row {i} == {name} alone", mixed[i], per_adapter[name][i], atol=LOGITS_TOL)
new = peft_model.generate(**probe, adapter_names=row_adapters, max_new_tokens=32, do_sample=False,
                          pad_token_id=tokenizer.pad_token_id)[:, probe["input_ids"].shape[1]:]
for name, text in zip(row_adapters, tokenizer.batch_decode(new, skip_special_tokens=True)):
    print(f"{name:>8}: {measured(text)}")

# %% [markdown]
# ### Combining adapters (合并适配器): `add_weighted_adapter`
#
# A new adapter can be built from existing ones, aiming at the weighted update Σᵢ wᵢ·sᵢ·Bᵢ Aᵢ on every layer.
# `"cat"` stacks the factors (rank r₁ + r₂) and is exact; `"svd"` truncates the summed update to `svd_rank`
# singular values — the best approximation of that rank (Eckart–Young), exact only when the rank can hold the sum.

# %%
peft_model.add_weighted_adapter(["topic", "extract"], [1.0, 1.0], "both_cat", combination_type="cat")
peft_model.add_weighted_adapter(["topic", "extract"], [1.0, 1.0], "both_svd8", combination_type="svd", svd_rank=8)
layer = next(m for n, m in peft_model.base_model.named_modules()  # on SmolLM2-135M: layer 3's q_proj
             if isinstance(m, LoraLinear) and f".{n_layers // 10}." in n)
target_delta = layer.delta_weight("topic") + layer.delta_weight("extract")
print({name: peft_model.peft_config[name].r for name in ("both_cat", "both_svd8")}, "(ranks)")
cmp("cat: exact sum of the updates", layer.delta_weight("both_cat"), target_delta)
_ = cmp("svd, rank 8: best rank-8 approximation", layer.delta_weight("both_svd8"), target_delta, atol=1e-4,
        expect="different")
singular_values = torch.linalg.svdvals(target_delta)
print("rank of the summed update:", torch.linalg.matrix_rank(target_delta).item(),
      f"| singular values 8 and 9: {measured(singular_values[7].item(), '.2e')}, "
      f"{measured(singular_values[8].item(), '.2e')}")
assert torch.linalg.matrix_rank(target_delta).item() == 16  # so svd_rank=16 would hold it exactly
peft_model.set_adapter("both_cat")
print("both_cat adapter:", measured(generate_answers(peft_model, tokenizer, probe_prompts[:2], max_new_tokens=32)))
for name in ("both_cat", "both_svd8"):
    peft_model.delete_adapter(name)
peft_model.set_adapter("topic")

# %% [markdown]
# Exact arithmetic on the updates does not make a model that does both tasks: the summed update is applied to every
# prompt, so each task's update now also acts on the other task's prompts. Compare the `both_cat` answers above with
# each adapter's own answers — serving two tasks is what switching adapters or mixed batches are for.

# %% [markdown]
# ## 10. Saving and reloading — in peft's format
#
# `save_pretrained` writes peft's layout: `adapter_config.json` and `adapter_model.safetensors`, the default
# adapter at the top and any other in a sub-folder named after it. Only the adapter is saved — the base model is
# not copied.

# %%
save_dir = Path(tempfile.mkdtemp()) / "lora"
peft_model.save_pretrained(save_dir)
for path in sorted(save_dir.rglob("*")):
    if path.is_file():
        print(f"{str(path.relative_to(save_dir)):<40} {path.stat().st_size:>12,} bytes")
saved_config = json.loads((save_dir / "topic" / "adapter_config.json").read_text())
print({k: saved_config[k] for k in ("peft_type", "r", "lora_alpha", "target_modules")})
assert saved_config["peft_type"] == "LORA" and saved_config["r"] == 8

# %% [markdown]
# A fresh copy of the base model, the saved `topic` adapter loaded by `peftedu` and then by HF `peft`: the same
# logits as the trained model.

# %%
topic_logits = logits_of(peft_model)
fresh, _ = load_base()
reloaded = PeftModel.from_pretrained(fresh, save_dir / "topic")
cmp("reloaded (peftedu) == trained", logits_of(reloaded), topic_logits)
fresh = reloaded.unload()  # the plain base model again
reloaded_by_peft = peft.PeftModel.from_pretrained(fresh, save_dir / "topic")
_ = cmp("reloaded (HF peft) == trained", logits_of(reloaded_by_peft), topic_logits, atol=LOGITS_TOL)
del fresh, reloaded, reloaded_by_peft

# %% [markdown]
# ## 11. Merging the weights (权重合并): W ← W + (α/r)·B A
#
# An unmerged LoRA costs two extra small matrix products per wrapped layer at every step. Merging folds the update
# into W; the outputs stay the same up to floating-point rounding (W + ΔW is rounded once to the weights' dtype, and
# the logits add up such roundings over 30 layers: hence `LOGITS_TOL`, derived at the top of the notebook), and the
# extra work disappears.

# %%
def mean_forward_seconds(m, repeats=3):
    """Mean wall time of a forward pass on the first probe prompt (after one warm-up pass)."""
    one_row = {k: v[:1] for k, v in probe.items()}
    with torch.no_grad():
        m(**one_row)
        start = time.perf_counter()
        for _ in range(repeats):
            m(**one_row)
    return (time.perf_counter() - start) / repeats


unmerged_s = mean_forward_seconds(peft_model)
peft_model.merge_adapter()
merged_logits = logits_of(peft_model)
merged_s = mean_forward_seconds(peft_model)
cmp("merged vs unmerged logits", merged_logits, topic_logits, atol=LOGITS_TOL)
print(f"forward pass of one prompt: unmerged {1000 * unmerged_s:.1f} ms, merged {1000 * merged_s:.1f} ms")
peft_model.unmerge_adapter()
_ = cmp("unmerged again", logits_of(peft_model), topic_logits, atol=LOGITS_TOL)

# %% [markdown]
# `merge_and_unload()` merges the active adapter and removes every LoRA layer: what is left is an ordinary
# transformers model that needs neither `peftedu` nor `peft` to run, saved and reloaded with transformers alone.

# %%
merged_model = peft_model.merge_and_unload()
print(type(merged_model).__name__, "| LoRA layers left:", sum(isinstance(m, LoraLinear) for m in merged_model.modules()))
assert isinstance(merged_model, transformers.PreTrainedModel) and not isinstance(merged_model, PeftModel)
assert not any(isinstance(m, LoraLinear) for m in merged_model.modules())
cmp("merge_and_unload vs trained", logits_of(merged_model), topic_logits, atol=LOGITS_TOL)
merged_dir = Path(tempfile.mkdtemp()) / "topic-merged"
merged_model.save_pretrained(merged_dir)
plain = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, dtype=merged_model.dtype).to(merged_model.device).eval()
cmp("reloaded with transformers", logits_of(plain), logits_of(merged_model))
merged_answers = generate_answers(plain, tokenizer, probe_prompts[:1], max_new_tokens=6)
print("topic answers of the merged model:", measured(merged_answers))

# %% [markdown]
# ## Summary
#
# * LoRA learns ΔW = (α/r)·B A with A: r × in (random) and B: out × r (zero at start), so training starts exactly at
#   the pretrained model and adds r·(in + out) parameters per wrapped layer.
# * The from-scratch code (three small classes/functions), `peftedu` and HF `peft` give the same logits from the same
#   weights; LoRA works on any `nn.Linear` found by name, not only in transformers.
# * α/r makes the first update shrink like 1/r (measured in section 3); rsLoRA's α/√r keeps it constant.
# * LoRA+ only changes the optimizer: B gets `loraplus_lr_ratio` times A's learning rate; the four groups built by
#   hand equal `peftedu`'s and peft's.
# * One base model can hold many adapters: switch (`set_adapter`), switch off (`disable_adapter`), serve a mixed batch
#   (`adapter_names=`), combine (`add_weighted_adapter`: `cat` exact, `svd` truncated).
# * Adapters are saved in peft's format (a few MB); merging folds them into W for zero-overhead inference, and
#   `merge_and_unload` gives back a plain transformers model.
#
# ## Interview corner
#
# 1. **Why is B initialised to zero and A randomly — and not both to zero?** B = 0 makes ΔW = 0, so fine-tuning
#    starts from the pretrained model. If A were zero too, both gradients would be zero (∂L/∂B ∝ A x, ∂L/∂A ∝ Bᵀ·…)
#    and nothing would ever train. One random factor is enough to break the symmetry.
# 2. **What does `lora_alpha` do, and what is the classic pitfall?** The update is scaled by α/r (not α). Doubling r at
#    fixed α halves the scale, so "more rank" can mean "smaller steps"; people who copy `r=16, alpha=32` and then set
#    `r=64` change the effective learning rate. Keeping α/r fixed (α = 2r is common) or using rsLoRA (α/√r) avoids it;
#    implementations that forget the division (scale = α) train far too aggressively.
# 3. **Does LoRA slow down inference?** Not after merging: W + (α/r)·B A is one matrix of the original shape. Unmerged,
#    each wrapped layer does two extra thin matmuls — the price of switching adapters per request or per row.
# 4. **When should you *not* merge?** When serving several adapters on one base (multi-tenant, mixed batches), when the
#    base is quantized (merging into 4-bit weights re-quantizes and changes outputs — notebook 07), or when you still
#    want to train or combine the adapter.
# 5. **How do you choose the rank?** Start small (8–16) on the attention projections or all linear layers; raise it if
#    the task is far from pre-training (new language, new domain) and validation loss stalls. Which modules you target
#    often matters more than r; the rank explorer shows the parameter cost of each choice.
#
# ## Exercises
#
# 1. Adam's first step is close to a sign step: every entry of B moves by about the learning rate, whatever its
#    gradient. Change `signal_at_init` to update B by `lr * B.grad.sign()` and measure the slopes of the output change
#    again for α/r and α/√r. What does this say about the original paper's advice to keep α fixed and not tune it?
#
# <details><summary>Solution</summary>
#
# Replace `lora.B -= lr * lora.B.grad` by `lora.B -= lr * lora.B.grad.sign()`. Each output now
# moves by s·Σⱼ |(A x)ⱼ|-like sums that grow like r, so the change scales like s·r: roughly flat for α/r and growing like
# √r for α/√r. With Adam, α/r does keep the *first* step's size independent of r — the LoRA paper's argument for not
# tuning α. rsLoRA's argument concerns learning over the whole run (its analysis, and its experiments made with Adam),
# not only the first step.
# </details>
#
# 2. Add LoRA with `replace_linear_with_lora` to *all* linear layers of the blocks of a fresh copy of the model
#    (`q_proj` … `down_proj`) at rank 4, and check the trainable count against `lora_parameter_count(model, 4, "all-linear")`.
#
# <details><summary>Solution</summary>
#
# ```python
# m = copy.deepcopy(load_base()[0])
# for p in m.parameters():
#     p.requires_grad_(False)
# names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# replace_linear_with_lora(m, names, rank=4, alpha=8)
# assert count_parameters(m)[0] == lora_parameter_count(m, 4, "all-linear").lora_params  # doesn't count lm_head
# ```
# `lm_head` is an `nn.Linear` too but is not named in the list; peft's `"all-linear"` also leaves the output layer out.
# </details>
#
# 3. Write `merge(layer: LinearWithLoRA) -> nn.Linear` for the scratch classes and check that the merged linear gives the
#    same outputs as the wrapped one.
#
# <details><summary>Solution</summary>
#
# ```python
# def merge(layer):
#     merged = copy.deepcopy(layer.linear)
#     with torch.no_grad():
#         merged.weight += layer.lora.scaling * layer.lora.B @ layer.lora.A
#     return merged
#
# x = torch.randn(3, wrapped.linear.in_features)
# cmp("merged scratch layer", merge(wrapped)(x), wrapped(x), atol=1e-5)
# ```
# </details>
#
# 4. Combine the two adapters with `combination_type="svd"` and `svd_rank=2, 4, 8, 16`, and plot the error of the
#    combined ΔW of one layer against the rank. Why is rank 16 exact?
#
# <details><summary>Solution</summary>
#
# Retrain or reload the two adapters, then for each rank call `add_weighted_adapter(..., combination_type="svd",
# svd_rank=k)` and `cmp(...)` the new `delta_weight` against the sum, as in section 9. The sum of two rank-8 updates has
# rank at most 16, so 16 singular values hold all of it (Eckart–Young: truncating to k is the best rank-k approximation).
# </details>
