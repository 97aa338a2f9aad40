# %% [markdown]
# # 08 · DoRA: weight-decomposed low-rank adaptation (权重分解低秩适配)
#
# **What you will learn in this notebook**
#
# * how any weight matrix splits into a **magnitude** (幅度: the length of each output row) and a
#   **direction** (方向: the unit-length row), and why DoRA trains the two separately;
# * DoRA's forward pass, written from scratch on one real layer of the model (on SmolLM2, the default:
#   `q_proj` of layer 0), with
#   the row norm **detached** as the paper's section 4.3 recommends — and proof that it equals `peftedu`'s
#   layer and HF `peft`'s layer, outputs *and* gradients;
# * why the norm is detached (we count the bytes autograd keeps for the backward pass);
# * what DoRA costs on top of LoRA: one number per output feature of each wrapped layer;
# * training DoRA on the `topic` task, measuring how it moved magnitude and direction, merging it into
#   the weights, and loading the saved adapter with HF `peft`.
#
# Reference: Liu et al. 2024, *DoRA: Weight-Decomposed Low-Rank Adaptation*, arXiv:2402.09353.

# %%
%matplotlib inline
import copy
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports bitsandbytes; its CPU-kernel notice is noise here
import peft
import torch
import transformers
from safetensors.torch import load_file

import peftedu
from peftedu import LoraConfig, cmp, get_peft_model, measured, rounding_tolerance
from peftedu.course.data import load_task
from peftedu.course.tokenization import build_prompt
from peftedu.lora import LoraLinear
from peftedu.course.models import is_pretrained, load_base
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate

transformers.utils.logging.disable_progress_bar()
# transformers' deprecation notice when peft loads an adapter (it prints an absolute path): not for this lesson
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
torch.manual_seed(0)
profile = get_profile()  # PEFTEDU_PROFILE: "quick" (CPU, default) or "full" (GPU)
print("peftedu", peftedu.__version__, "| peft", peft.__version__, "| profile:", profile.name)

# %% [markdown]
# ## 1. The intuition: magnitude (幅度) and direction (方向)
#
# A linear layer computes `y = x Wᵀ`: output feature *j* is the dot product of the input with row *j* of
# `W` (shape out × in). Every row is a vector, and every vector is a **length** times a **unit direction**:
#
# $$W = m \cdot \frac{W}{\lVert W \rVert_c}, \qquad m = \lVert W \rVert_c \in \mathbb{R}^{\text{out}}$$
#
# where ‖·‖_c is the L2 norm of each output row (the paper writes it for `Wᵀ`, hence "column-wise";
# `peft` computes `torch.linalg.norm(W, dim=1)`). LoRA adds `ΔW = s·B A` (s = α/r) to `W`, which moves a
# row's length and angle *together*, through the same two small matrices. DoRA keeps LoRA for the
# **direction** only and gives each row a free, trainable **magnitude**:
#
# $$W' = m \cdot \frac{W + sBA}{\lVert W + sBA \rVert_c}, \qquad m \text{ initialised to } \lVert W \rVert_c .$$
#
# The DoRA paper's motivation: when it measured magnitude change ΔM and direction change ΔD of full
# fine-tuning and of LoRA, full fine-tuning showed a *negative* relation (large direction changes came with
# small magnitude changes and vice versa) while LoRA's two changes grew together (a positive relation);
# DoRA's pattern resembled full fine-tuning's. Source 003 summarises this as "full fine-tuning changes
# direction a lot and magnitude little" — that is not what the paper measured: it is the *correlation*
# between the two changes that differs. Below, a 2-D picture of one weight row.

# %%
w = torch.tensor([2.0, 1.0])                    # one row of W, in 2-D
delta = torch.tensor([-0.6, 0.9])               # a LoRA update of that row
v = w + delta                                   # LoRA: W + ΔW, length and angle move together
m_new = 1.4 * w.norm()                          # DoRA: a new length, chosen freely ...
dora_row = m_new * v / v.norm()                 # ... on the direction of W + ΔW
assert torch.isclose(dora_row.norm(), m_new)
cos = lambda a, b: (a @ b / (a.norm() * b.norm())).item()
assert abs(cos(dora_row, v) - 1) < 1e-6         # same direction as the LoRA row

fig, ax = plt.subplots(figsize=(5, 4))
for vec, label, color in [(w, "W (pretrained row)", "black"), (v, "W + ΔW (LoRA)", "tab:blue"),
                          (dora_row, "m · (W+ΔW)/‖W+ΔW‖ (DoRA)", "tab:red")]:
    ax.annotate("", xy=vec.tolist(), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=color, lw=2))
    ax.plot([], [], color=color, label=label)
angle = torch.linspace(0, 1.2, 50)
ax.plot(w.norm() * torch.cos(angle), w.norm() * torch.sin(angle), ":", color="gray", label="‖W‖ (the initial m)")
ax.set_xlim(-0.2, 3.2); ax.set_ylim(-0.2, 3.2); ax.set_aspect("equal")
ax.set_title("DoRA: the direction from W + ΔW, the length from m")
ax.legend(loc="upper left", fontsize=8)
plt.show()
print(f"|W| = {w.norm():.3f}, |W+dW| = {v.norm():.3f} (LoRA changed the length too), DoRA length m = {m_new:.3f}")

# %% [markdown]
# ## 2. DoRA from scratch on one real layer
#
# We take the first of peft's default LoRA targets for this architecture in layer 0 (on SmolLM2-135M-Instruct,
# the default: `q_proj`, 576 → 576; on BLOOM the fused `query_key_value`) and real hidden states as its input:
# what the layer receives in a forward pass of a prompt (the token embeddings after the layer's input norm),
# caught with a forward hook. We work on an fp32 copy of the layer (a bf16 weight converts exactly), so the
# comparisons below are about the arithmetic, not about the model's storage precision.

# %%
model, tokenizer = load_base()
target_names = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model.config.model_type]  # SmolLM2: q_proj, v_proj
n_layers = model.config.num_hidden_layers
layer_name = next(n for n, _ in model.named_modules() if n.endswith("." + target_names[0]))  # the first block's
q_proj = copy.deepcopy(model.get_submodule(layer_name)).float()   # an fp32 copy of the layer (kept in model's device)
W = q_proj.weight.detach()                       # (out, in)
out_features, in_features = W.shape
captured = {}
hook = model.get_submodule(layer_name).register_forward_hook(
    lambda module, args, output: captured.update(x=args[0].detach().float()))
with torch.no_grad():
    batch = tokenizer(build_prompt(tokenizer, "Which topic is this sentence about?", "The striker scored twice."),
                      return_tensors="pt").to(model.device)
    model(**batch)                               # the hook keeps the layer's input
hook.remove()
x = captured["x"]                                # (1, seq, in)
print("W:", tuple(W.shape), "| x:", tuple(x.shape), f"| {target_names[0]} has a bias:", q_proj.bias is not None)
assert x.shape[-1] == in_features

# %% [markdown]
# **Step 1 — the magnitude.** `m = ‖W‖_c`: one length per output row, so `W = m · W/‖W‖_c` exactly.

# %%
m0 = torch.linalg.norm(W, dim=1)                 # (out,)
direction = W / m0[:, None]                      # unit rows
assert m0.shape == (out_features,)
assert torch.allclose(direction.norm(dim=1), torch.ones(out_features, device=W.device), atol=1e-6)
_ = cmp("m * direction vs W", m0[:, None] * direction, W)

# %% [markdown]
# **Step 2 — LoRA's factors.** As in LoRA, `A` (r × in) starts random (Kaiming-uniform) and `B` (out × r)
# at zero; the scale is s = α/r.

# %%
r, lora_alpha = 8, 16
scaling = lora_alpha / r
A = torch.empty(r, in_features)
torch.nn.init.kaiming_uniform_(A, a=5 ** 0.5)
A = A.to(W.device)                               # drawn on the CPU (same numbers everywhere), used where W is
B = torch.zeros(out_features, r, device=W.device)
assert A.shape == (r, in_features) and B.shape == (out_features, r) and scaling == 2.0

# %% [markdown]
# **Step 3 — the forward pass.** No new weight matrix is needed: with `g = m / ‖W + sBA‖_c` (one gain per
# output row),
#
# $$y = x W'^{\top} = g \odot \left(x W^\top + s\, (x A^\top) B^\top\right) + b,$$
#
# where the bias `b`, if the layer has one (Qwen2's q/k/v, BLOOM's), is added unscaled, as in peft.
#
# The norm is computed *without* a gradient graph (`detach_norm=True`): it is treated as a constant in the
# backward pass (section 4.3 of the paper; section 3 below shows why).

# %%
def dora_forward(x, W, A, B, m, scaling, detach_norm=True, bias=q_proj.bias):
    """y = g * (x W^T + s x A^T B^T) + b, g = m / ||W + s B A||_c; x: (..., in) -> (..., out)."""
    if detach_norm:
        with torch.no_grad():                    # a constant for autograd
            norm = torch.linalg.norm(W + scaling * B @ A, dim=1)
    else:
        norm = torch.linalg.norm(W + scaling * B @ A, dim=1)
    gain = m / norm                              # (out,)
    y = gain * (x @ W.T + scaling * (x @ A.T) @ B.T)
    return y if bias is None else y + bias.detach()


y_base = q_proj(x).detach()
y0 = dora_forward(x, W, A, B, m0, scaling)
assert y0.shape == y_base.shape
# x @ W.T and the layer's own matmul may add up the 576 products in another order (`rounding_tolerance`: notebook 00)
_ = cmp("B = 0: DoRA vs base layer", y0, y_base,
        atol=rounding_tolerance(torch.float32, magnitude=y_base.abs().max().item(), terms=in_features))

# %% [markdown]
# With `B = 0` and `m = ‖W‖_c` the layer is unchanged, as LoRA at step 0. To compare implementations we
# need a DoRA that has *moved*: random `B` and a magnitude scaled up or down by up to 10% per row.

# %%
g = torch.Generator().manual_seed(0)               # on the CPU: the same numbers on every device, then moved
B_trained = (0.02 * torch.randn(out_features, r, generator=g)).to(W.device)
m_trained = m0 * (1 + 0.1 * (2 * torch.rand(out_features, generator=g) - 1)).to(W.device)
y_scratch = dora_forward(x, W, A, B_trained, m_trained, scaling)
W_prime = m_trained[:, None] * (W + scaling * B_trained @ A) / torch.linalg.norm(W + scaling * B_trained @ A, dim=1)[:, None]
# two routes to the same output, each through 576-long sums
tol_y = rounding_tolerance(torch.float32, magnitude=y_scratch.abs().max().item(), terms=in_features)
_ = cmp("scratch forward vs x W'^T", y_scratch, x @ W_prime.T + (0 if q_proj.bias is None else q_proj.bias.detach()),
        atol=tol_y)
_ = cmp("row norms of W' vs m", torch.linalg.norm(W_prime, dim=1), m_trained,
        atol=rounding_tolerance(torch.float32, magnitude=m_trained.max().item(), terms=in_features))
assert (y_scratch - y_base).abs().max() > 1e-2  # it really differs from the base layer now

# %% [markdown]
# **Step 4 — the same layer in `peftedu` and in HF `peft`.** `peftedu.lora.LoraLinear` with
# `LoraConfig(use_dora=True)` holds `m` in `lora_magnitude_vector` (module `peftedu/dora.py`);
# `peft.tuners.lora.Linear` is peft's own wrapper. We copy the same `A`, `B`, `m` into both.

# %%
config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_names[:1], use_dora=True)
ours = LoraLinear(copy.deepcopy(q_proj))
ours.add("default", config)
ours.set_adapter(["default"])
peft_config = peft.LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_names[:1], use_dora=True)
theirs = peft.tuners.lora.Linear(copy.deepcopy(q_proj), "default", config=peft_config, r=r, lora_alpha=lora_alpha,
                                 use_dora=True)
_ = cmp("peftedu's initial m vs ||W||_c", ours.lora_magnitude_vector["default"].weight, m0)
_ = cmp("peft's initial m vs ||W||_c", theirs.lora_magnitude_vector["default"].weight, m0)
with torch.no_grad():
    for layer in (ours, theirs):
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B_trained)
        layer.lora_magnitude_vector["default"].weight.copy_(m_trained)
print(type(ours.lora_magnitude_vector["default"]).__name__, "|", theirs.lora_magnitude_vector["default"])
_ = cmp("scratch vs peftedu (output)", y_scratch, ours(x), atol=tol_y)
_ = cmp("scratch vs peft (output)", y_scratch, theirs(x), atol=tol_y)

# %% [markdown]
# **Step 5 — the gradients.** Equal outputs are not enough: training follows the gradients, and they depend
# on which parts of the graph are detached. We backpropagate the same loss through all three and compare
# the gradients of `A`, `B` and `m`.

# %%
probe = torch.randn(y_scratch.shape, generator=g).to(W.device)  # a fixed random direction in output space
leaves = {"lora_A": A.clone().requires_grad_(), "lora_B": B_trained.clone().requires_grad_(),
          "magnitude": m_trained.clone().requires_grad_()}
(dora_forward(x, W, leaves["lora_A"], leaves["lora_B"], leaves["magnitude"], scaling) * probe).sum().backward()
scratch_grads = {name: t.grad for name, t in leaves.items()}


def layer_grads(layer):
    layer.zero_grad()
    (layer(x) * probe).sum().backward()
    return {"lora_A": layer.lora_A["default"].weight.grad, "lora_B": layer.lora_B["default"].weight.grad,
            "magnitude": layer.lora_magnitude_vector["default"].weight.grad}


ours_grads, theirs_grads = layer_grads(ours), layer_grads(theirs)
# relative (divided by the largest entry, so magnitude 1); the backward pass sums over tokens x input features
tol_grad = rounding_tolerance(torch.float32, magnitude=1.0, terms=x.shape[1] * in_features)
for name in leaves:
    scale = scratch_grads[name].abs().max().item()
    cmp(f"grad {name}: scratch vs peftedu", scratch_grads[name] / scale, ours_grads[name] / scale, atol=tol_grad)
    cmp(f"grad {name}: scratch vs peft", scratch_grads[name] / scale, theirs_grads[name] / scale, atol=tol_grad)

# %% [markdown]
# (Gradients are divided by the largest scratch gradient of each tensor, so `atol` is a *relative* tolerance.
# Like every tolerance here it comes from `rounding_tolerance`, see notebook 00.)
#
# ## 3. Why detach the norm?
#
# If `‖W + sBA‖_c` stays in the graph, autograd must differentiate through it: it keeps the full
# out × in matrix `W + sBA` (and more) for the backward pass of every DoRA layer — a weight-sized
# activation per layer, for a method meant to be light. The paper (section 4.3) treats the norm as a
# constant instead: it still *follows* `ΔW` in the forward pass, but gets no gradient. We count the
# elements autograd saves for backward in both versions, with `torch.autograd.graph.saved_tensors_hooks`:

# %%
def saved_elements(detach_norm):
    """Number of tensor elements autograd keeps for the backward pass of one DoRA forward."""
    count = 0

    def pack(tensor):
        nonlocal count
        count += tensor.numel()
        return tensor

    tensors = [t.clone().requires_grad_() for t in (A, B_trained, m_trained)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = dora_forward(x, W, *tensors, scaling, detach_norm=detach_norm)
    (y * probe).sum().backward()
    return count, [t.grad for t in tensors]


kept_detached, grads_detached = saved_elements(True)
kept_full, grads_full = saved_elements(False)
print(f"elements saved for backward, norm detached:     {kept_detached:>9,}")
print(f"elements saved for backward, norm differentiated: {kept_full:>9,}  (W is {W.numel():,} elements)")
assert kept_full - kept_detached >= W.numel()  # at least one extra weight-sized tensor per layer
for name, a, b in zip(("lora_A", "lora_B", "magnitude"), grads_detached, grads_full):
    print(f"grad {name:<9} changes by {measured((a - b).abs().max() / a.abs().max(), '.1e')} (relative) "
          f"when the norm is differentiated")
assert all((a - b).abs().max() > 1e-2 * a.abs().max() for a, b in zip(grads_detached[:2], grads_full[:2]))
_ = cmp("grad magnitude: detached vs not", grads_detached[2], grads_full[2])

# %% [markdown]
# The magnitude's gradient is the same either way (the norm's *value* is identical); only the gradients of
# `A` and `B` change — by a correction the paper found small enough to drop, for the memory saved (section 4.3 reports a
# clearly lower training memory with the detached norm and no meaningful accuracy loss; we did not reproduce
# its figures here).
#
# ## 4. What DoRA costs: `out` numbers per wrapped layer
#
# LoRA adds `r·(in + out)` parameters to a layer; DoRA adds the magnitude `m` on top: `out` more. With peft's
# default targets of the model in use in all its layers (on SmolLM2, the default: `q_proj` (576 → 576) and
# `v_proj` (576 → 192) in all 30 layers), counted on a copy on the meta device (no weights needed):

# %%
counts = {}
for use_dora in (False, True):
    with torch.device("meta"):                   # the model's architecture, without storage
        meta_model = get_peft_model(transformers.AutoModelForCausalLM.from_config(model.config),
                                    LoraConfig(r=8, lora_alpha=16, target_modules=target_names, use_dora=use_dora))
    counts[use_dora] = meta_model.get_nb_trainable_parameters()[0]
block0 = [module for name, module in model.named_modules()   # the layers wrapped in block 0
          if name.rsplit(".", 1)[-1] in target_names and ".0." in name]
outs = [module.out_features for module in block0]
expected_lora = n_layers * sum(r * (module.in_features + module.out_features) for module in block0)
names = ", ".join(target_names)
print(f"LoRA r=8 on {names}: {counts[False]:,} trainable parameters")
print(f"DoRA r=8 on {names}: {counts[True]:,} trainable parameters "
      f"(+{counts[True] - counts[False]:,} = {n_layers} x ({' + '.join(map(str, outs))}) magnitudes, "
      f"+{100 * (counts[True] / counts[False] - 1):.1f}%)")
assert counts[False] == expected_lora
assert counts[True] - counts[False] == n_layers * sum(outs)

# %% [markdown]
# ## 5. Training DoRA on `topic`
#
# First the base model's score and an answer (DoRA starts equal to the base model, so this is also
# "DoRA before training"). Then we wrap it with `use_dora=True` and train in the current profile with
# the learning rate 2e-3.

# %%
before = evaluate(model, tokenizer, "topic")
example = before["examples"][0]
print(f"topic accuracy before: {before['score']:.3f} on {before['n']} rows")
print(f"input {example['input']!r} | reference {example['reference']!r} | base model {example['prediction']!r}")

# %%
dora_config = LoraConfig(r=8, lora_alpha=16, target_modules=target_names, use_dora=True)
peft_model = get_peft_model(model, dora_config)
peft_model.print_trainable_parameters()
assert peft_model.get_nb_trainable_parameters()[0] == counts[True]
initial_W = {name: module.base_layer.weight.detach().clone() for name, module in peft_model.named_modules()
             if isinstance(module, LoraLinear)}
history = train(peft_model, tokenizer, load_task("topic", "train"), lr=2e-3, progress=False)
print(history.summary())
print("loss per step:", " ".join(measured(loss) for loss in history.loss))
if is_pretrained(model):
    assert history.loss[-1] < history.loss[0] / 2
else:
    # a random model's loss barely moves in a dozen steps, and each step sees other rows: no trend to check
    print("random weights: checking that every step ran with a finite loss")
    assert len(history.loss) == profile.max_steps and all(math.isfinite(loss) for loss in history.loss)
plot_history(history)
plt.show()

# %%
after = evaluate(peft_model, tokenizer, "topic")
example_after = after["examples"][0]
print(f"topic accuracy: before {before['score']:.3f} -> after {measured(after['score'])} ({after['n']} rows)")
print(f"input {example_after['input']!r} | reference {example_after['reference']!r} | "
      f"DoRA {measured(example_after['prediction'])}")
if is_pretrained(model):
    assert after["score"] >= before["score"] + 0.5   # learned: far above the base model
else:
    print("random weights: the score means nothing; checking that the magnitudes moved and the base weights did not")
    assert all(torch.equal(peft_model.get_submodule(name).base_layer.weight, W0) for name, W0 in initial_W.items())
    assert any((module.lora_magnitude_vector["default"].weight != torch.linalg.norm(initial_W[name].float(), dim=1)).any()
               for name, module in peft_model.named_modules() if isinstance(module, LoraLinear))

# %% [markdown]
# ### 5.1 What did DoRA change: magnitude or direction?
#
# For every output row of every wrapped layer we measure, as the paper does, the magnitude change
# ΔM = |‖W'‖ − ‖W‖| and the direction change ΔD = 1 − cos(W', W) of the effective weight
# `W' = m · (W + sBA)/‖W + sBA‖_c` against the pretrained `W`.

# %%
delta_m, delta_d, kinds = [], [], []
for name, module in peft_model.named_modules():
    if not isinstance(module, LoraLinear):
        continue
    W0 = initial_W[name]
    W_eff = module.lora_magnitude_vector["default"].merged_weight(module, "default").detach()
    magnitude = module.lora_magnitude_vector["default"].weight.detach()
    torch.testing.assert_close(torch.linalg.norm(W_eff.float(), dim=1), magnitude.float(),  # the row lengths ARE m
                               atol=0, rtol=rounding_tolerance(W_eff.dtype)  # W_eff rounded once to its dtype
                               + rounding_tolerance(torch.float32, terms=W_eff.shape[1]))  # the norm's sum
    delta_m.append((magnitude.float() - torch.linalg.norm(W0.float(), dim=1)).abs())
    delta_d.append(1 - torch.nn.functional.cosine_similarity(W_eff.float(), W0.float(), dim=1))
    kinds += [name.split(".")[-1]] * W0.shape[0]
delta_m, delta_d = torch.cat(delta_m).cpu(), torch.cat(delta_d).cpu()   # on the CPU, for the plot
assert delta_m.shape == delta_d.shape == (n_layers * sum(outs),)
corr = torch.corrcoef(torch.stack([delta_m, delta_d]))[0, 1].item()

fig, ax = plt.subplots(figsize=(6, 4))
for kind, color in zip(target_names, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
    mask = torch.tensor([k == kind for k in kinds])
    ax.scatter(delta_d[mask], delta_m[mask], s=3, alpha=0.4, color=color, label=kind)
ax.set_xlabel("ΔD = 1 − cos(W', W)  (direction change)")
ax.set_ylabel("ΔM = |‖W'‖ − ‖W‖|  (magnitude change)")
ax.set_title("DoRA after training: one dot per output row")
ax.legend()
plt.show()
print(f"rows: {len(delta_m):,} | mean dM {measured(delta_m.mean(), '.2e')} | mean dD {measured(delta_d.mean(), '.2e')} | "
      f"Pearson correlation(dM, dD) = {measured(corr, '+.2f')}")
assert delta_m.max() > 0 and delta_d.max() > 0  # both parts moved

# %% [markdown]
# The scatter shows the two changes per row as DoRA learned them in this short run; the correlation printed
# above tells whether they moved together. The paper's figure is per layer and over many more steps; with
# a dozen optimizer steps both changes are small, so read this as a measurement of *this* run, not a
# replication. Exercise 1 makes the same plot for plain LoRA.
#
# ## 6. Merging weights (权重合并): no extra cost at inference
#
# `merge_adapter` writes `W' = g · (W + sBA)` into each base layer, so the merged model is a plain model
# again. Unlike LoRA's merge, DoRA's is not a sum: it cannot be undone by subtracting, so `peftedu` keeps a
# copy of `W` to unmerge.

# %%
test_batch = tokenizer([build_prompt(tokenizer, r["instruction"], r["input"]) for r in load_task("topic", "test").select(range(4))],
                       return_tensors="pt", padding=True).to(model.device)
with torch.no_grad():
    unmerged_logits = peft_model(**test_batch).logits
    peft_model.merge_adapter()
    merged_logits = peft_model(**test_batch).logits
    peft_model.unmerge_adapter()
    restored_logits = peft_model(**test_batch).logits
# merged W' vs two matmuls: the rounding differs in the wrapped layers of every block (on SmolLM2: q_proj and
# v_proj of 30 layers, 576-long sums each), in the model's dtype; bf16 matmuls add up in fp32 and round their
# output once, so there it is one bf16 rounding per block
print(f"logits up to {measured(unmerged_logits.abs().max(), '.1f')} in size")
sums = model.config.hidden_size if model.dtype == torch.float32 else 1
tol_logits = rounding_tolerance(model.dtype, magnitude=unmerged_logits.abs().max().item(), terms=n_layers * sums)
_ = cmp("merged vs unmerged logits", merged_logits, unmerged_logits, atol=tol_logits)
_ = cmp("after unmerge vs before merge", restored_logits, unmerged_logits, atol=0)  # W restored from its copy

# %% [markdown]
# ## 7. Saving and loading with HF `peft`
#
# `save_pretrained` writes peft's layout: `adapter_config.json` and `adapter_model.safetensors`, with the
# magnitude stored as `...q_proj.lora_magnitude_vector` (peft's name, without `.weight`). HF `peft` loads
# the file onto a fresh base model and must give the same logits.

# %%
with tempfile.TemporaryDirectory() as directory:
    peft_model.save_pretrained(directory)
    saved = load_file(str(Path(directory) / "adapter_model.safetensors"))
    print(sorted(os.listdir(directory)))
    print(f"{len(saved)} tensors, e.g.:")
    for key in sorted(saved)[:3]:
        print(f"  {key}: {tuple(saved[key].shape)}")
    fresh_base, _ = load_base()
    reloaded = peft.PeftModel.from_pretrained(fresh_base, directory).eval()
    with torch.no_grad():
        reloaded_logits = reloaded(**test_batch).logits
assert sum(key.endswith("lora_magnitude_vector") for key in saved) == len(target_names) * n_layers
_ = cmp("HF peft (reloaded) vs peftedu logits", reloaded_logits, unmerged_logits, atol=tol_logits)  # two libraries

# %% [markdown]
# ## Summary
#
# * DoRA writes each adapted weight as magnitude × direction, `W' = m · (W + sBA)/‖W + sBA‖_c`: LoRA's `B A`
#   steers the **direction**, a trainable vector `m` (one entry per output row, initialised to `‖W‖_c`) sets
#   the **magnitude**. With `B = 0` the layer equals the base layer.
# * The forward pass needs no new weight: `y = g ⊙ (x Wᵀ + s·x Aᵀ Bᵀ)` with `g = m/‖W + sBA‖_c` (the bias,
#   when there is one, is not rescaled).
# * The norm is **detached** (paper section 4.3, and peft): it follows ΔW in the forward pass but gets no
#   gradient, so no weight-sized tensor is kept per layer for the backward pass; `m`'s gradient is unchanged.
# * Our from-scratch layer, `peftedu`'s and HF `peft`'s agree in outputs and gradients (section 2).
# * DoRA costs `out` extra parameters per wrapped layer over LoRA, computes the row norms at every
#   forward pass during training, and merges into the weights like LoRA, so inference costs nothing extra.
#
# ## Interview corner
#
# 1. **What does DoRA decompose, and along which axis?** Each weight matrix into a magnitude vector and a
#    direction matrix; the norm is taken per output row of `W` (out × in) — the paper's column-wise norm of
#    `Wᵀ` — so `m` has `out` entries.
# 2. **How is DoRA initialised, and why does the model not change at step 0?** `B = 0` and `m = ‖W‖_c`, so
#    `W' = ‖W‖_c · W/‖W‖_c = W`.
# 3. **Why is `‖W + sBA‖_c` detached?** Differentiating through it keeps an out × in tensor per layer for
#    the backward pass; treating it as a constant saves that memory, leaves `m`'s gradient exact and
#    changes `A`'s and `B`'s gradients only by a term the paper found negligible in accuracy.
# 4. **Can DoRA be merged? Any caveat?** Yes, `W ← g · (W + sBA)`; but unlike LoRA it is not a sum, so
#    it cannot be unmerged by subtraction (keep a copy of `W`), and several DoRA adapters cannot be merged
#    by simply adding their updates.
# 5. **What does DoRA cost compared with LoRA?** `out` more parameters per wrapped layer (tiny), and
#    during training the row norms of `W + sBA` at every forward pass — the full weight-sized sum is
#    formed, which makes DoRA slower per step than LoRA.
#
# ## Exercises
#
# 1. Train plain LoRA (`use_dora=False`) with the same settings and draw the ΔM/ΔD scatter of section 5.1
#    for it. Does its correlation differ from DoRA's?
#
# <details><summary>Solution</summary>
#
# ```python
# base, _ = load_base()
# lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
# train(lora, tokenizer, load_task("topic", "train"), lr=2e-3, progress=False)
# dm, dd = [], []
# for name, module in lora.named_modules():
#     if isinstance(module, LoraLinear):
#         W0 = module.base_layer.weight.detach()
#         W1 = W0 + module.delta_weight("default").detach()
#         dm.append((W1.norm(dim=1) - W0.norm(dim=1)).abs())
#         dd.append(1 - torch.nn.functional.cosine_similarity(W1, W0, dim=1))
# dm, dd = torch.cat(dm), torch.cat(dd)
# print(torch.corrcoef(torch.stack([dm, dd]))[0, 1])
# ```
# </details>
#
# 2. Show that DoRA with a *frozen* magnitude is not LoRA: freeze `m` (`requires_grad_(False)`) on a layer
#    with non-zero `B` and compare its output with `x (W + sBA)ᵀ`.
#
# <details><summary>Solution</summary>
#
# ```python
# y_frozen_m = dora_forward(x, W, A, B_trained, m0, scaling)
# y_lora = x @ (W + scaling * B_trained @ A).T
# print((y_frozen_m - y_lora).abs().max())  # not 0: the rows of W + sBA are rescaled back to ||W||_c
# ```
# Even with `m` fixed at `‖W‖_c`, DoRA renormalises every row, so `B A` can only rotate rows, never lengthen them.
# </details>
#
# 3. Check that `m`'s gradient equals `(∂L/∂y · (x W'ᵀ)/m)` summed over tokens — i.e. derive it by hand.
#
# <details><summary>Solution</summary>
#
# ```python
# y = dora_forward(x, W, A, B_trained, m_trained, scaling)          # y_j = m_j * u_j, u_j independent of m
# u = y / m_trained
# manual = (probe * u).sum(dim=(0, 1))
# cmp("grad m by hand", manual, scratch_grads["magnitude"])
# ```
# </details>
#
# 4. Make the notebook use DoRA on all linear layers (`target_modules="all-linear"`) and count the
#    parameters: what share of the adapter is magnitude?
#
# <details><summary>Solution</summary>
#
# ```python
# n = {}
# for use_dora in (False, True):
#     mm = get_peft_model(build_from_config("smollm2-135m"), LoraConfig(r=8, target_modules="all-linear", use_dora=use_dora))
#     n[use_dora] = mm.get_nb_trainable_parameters()[0]
# print(n, (n[True] - n[False]) / n[True])
# ```
# </details>
