# %% [markdown]
# # 05 · Adapters (适配器): small networks inserted into a frozen model
#
# An adapter is a small trainable module placed *inside* each block of a frozen model. This notebook covers the
# three designs a learner meets:
#
# * **Houlsby adapters** (Houlsby et al. 2019, arXiv:1902.00751): a bottleneck network (瓶颈适配器) after the attention
#   sub-layer *and* after the MLP of every block;
# * **Pfeiffer adapters** (Pfeiffer et al. 2020, arXiv:2005.00247): the same bottleneck after the MLP only — half the
#   parameters;
# * **LLaMA-Adapter** (Zhang et al. 2023, arXiv:2303.16199): learned *adaption prompts* (适配提示) in the top layers,
#   let in through a gate that starts at zero (零初始化注意力, zero-init attention).
#
# **After this notebook you can**
#
# * build a bottleneck adapter from scratch — down-projection, nonlinearity, up-projection, residual — and explain
#   why the up-projection starts at zero (the model is unchanged at step 0, asserted);
# * show that your cells equal `peftedu.adapters` (HF peft has no Houlsby or Pfeiffer adapters);
# * build LLaMA-Adapter's gated attention module from scratch and show that it equals `peftedu.AdaptionPromptConfig`
#   and HF peft's `AdaptionPromptConfig` with the same prompts and gates;
# * count the parameters of each design, check the source tutorials' counts and shares, and measure the inference
#   overhead that adapters — unlike LoRA — cannot merge away;
# * train a Houlsby adapter on the `topic` task, save it and reload it.

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
import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

from peftedu import AdapterConfig, AdaptionPromptConfig, PeftModel, get_peft_model
from peftedu.counting import count_parameters, print_trainable_parameters
from peftedu.adapters import BottleneckAdapterLayer, default_adapter_targets
from peftedu.course.compare import cmp, measured, rounding_tolerance
from peftedu.course.data import load_task
from peftedu.course.tokenization import TrainingCollator, build_prompt, collate_for_generation, tokenize_example
from peftedu.llama_adapter import AdaptedAttention
from peftedu.course.models import DEFAULT_MODEL, MODEL_ALIASES, build_from_config, is_pretrained, load_base
from peftedu.course.shapes import decoder_layers
from peftedu.course.prefix_shapes import attention_layers
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate, generate_answers

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the notebook
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
torch.manual_seed(0)
profile = get_profile()  # PEFTEDU_PROFILE: "quick" (CPU, default) or "full" (GPU)
model, tokenizer = load_base()
cfg = model.config
d, n_layers = cfg.hidden_size, cfg.num_hidden_layers
is_default = model.name_or_path == MODEL_ALIASES[DEFAULT_MODEL]  # the text quotes SmolLM2-135M's numbers
print(f"{model.name_or_path}: {count_parameters(model)[1]:,} parameters, {n_layers} blocks of width {d}, "
      f"on {model.device} in {model.dtype}, profile {profile.name}")

# %% [markdown]
# A fixed probe batch — three `topic` test prompts, left-padded as for generation — is used to compare logits
# throughout; we keep the base model's logits on it.

# %%
probe_records = list(load_task("topic", "test").select(range(3)))
probe_prompts = [build_prompt(tokenizer, r["instruction"], r["input"]) for r in probe_records]
probe = {k: v.to(model.device) for k, v in collate_for_generation(tokenizer, probe_prompts).items()}


@torch.no_grad()
def logits_of(m):
    """Logits of the probe batch under model ``m`` (a transformers, peftedu or peft model)."""
    return m(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits.float()


base_logits = logits_of(model)
print("probe batch:", tuple(probe["input_ids"].shape), "-> logits", tuple(base_logits.shape))
# Two routes to the same logits (two implementations, the same equation with its operations in another order)
# differ only in rounding: L layers x the MLP's long sums (on SmolLM2-135M, the default, 30 x 1,536; BLOOM's MLP is
# 4 d wide), at the size of the logits (the base model's; the adapters below keep them of that order). See
# notebook 00, Reading the outputs.
mlp_width = getattr(cfg, "intermediate_size", None) or 4 * d
LOGITS_TOL = rounding_tolerance(model.dtype, magnitude=base_logits.abs().max().item(), terms=n_layers * mlp_width)

# %% [markdown]
# ## 1. Where the adapters go
#
# A decoder block computes `h = x + o_proj(attention(norm(x)))`, then `y = h + down_proj(mlp(norm(h)))` (Llama and
# Qwen2 names; BLOOM calls the two projections `self_attention.dense` and `mlp.dense_4h_to_h`). A
# bottleneck adapter takes the output of a sub-layer's last projection, `z` (width d), and returns
#
# $$ z + W_\text{up}\, \sigma(W_\text{down} z + b_\text{down}) + b_\text{up}, \qquad W_\text{down} \in \mathbb{R}^{b \times d},\; W_\text{up} \in \mathbb{R}^{d \times b},\; b \ll d $$
#
# before the block's residual add. Houlsby puts one after `o_proj` and one after `down_proj`; Pfeiffer only the
# second. LLaMA-Adapter works differently: it changes no projection, but lets the attention of the top layers read
# from a few learned prompt vectors, through a gate g that starts at 0.

# %%
def draw_block(ax, title, adapters=(), gate_prompt=False):
    """One decoder block, bottom to top; orange boxes are what trains."""
    def box(y, label, color="#c6d4e1", x=0.0, w=3.0):
        ax.add_patch(plt.Rectangle((x, y), w, 0.7, facecolor=color, edgecolor="black"))
        ax.text(x + w / 2, y + 0.35, label, ha="center", va="center", fontsize=8)
    y = 0.0
    for name in ("attention", "o_proj", "adapter:attention", "+ residual", "MLP", "down_proj", "adapter:mlp", "+ residual"):
        if name.startswith("adapter:"):
            if name.split(":")[1] in adapters:
                box(y, "adapter: down→σ→up (+z)", "#f4a582")
                y += 1.0
            continue
        box(y, name)
        if name == "attention" and gate_prompt:
            box(y, "prompt P, gate g=0", "#f4a582", x=3.3, w=2.2)
        y += 1.0
    ax.set_xlim(-0.2, 5.7)
    ax.set_ylim(-0.3, 8.2)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


fig, axes = plt.subplots(1, 3, figsize=(12, 4))
draw_block(axes[0], "Houlsby: 2 adapters per block", adapters=("attention", "mlp"))
draw_block(axes[1], "Pfeiffer: 1 adapter per block", adapters=("mlp",))
draw_block(axes[2], "LLaMA-Adapter: prompts in the top layers", gate_prompt=True)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. A bottleneck (瓶颈) adapter from scratch
#
# ### Step 1: the bottleneck module
#
# Two linear layers and a ReLU, with a skip connection. The initialisation is the important part:
#
# * **up = 0** (weight and bias), so the adapter returns exactly its input and the model starts as the pretrained
#   one — the same idea as LoRA's B = 0;
# * **down keeps `nn.Linear`'s random init** (Kaiming-uniform) with a zero bias. If down were zero too,
#   σ(down(z)) would be 0, `up` would get no gradient, and nothing would ever train.

# %%
class Bottleneck(nn.Module):
    """z -> z + up(relu(down(z))).  down: Linear(d -> b), up: Linear(b -> d), up = 0 at the start."""

    def __init__(self, d_model: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)  # Kaiming-uniform weight
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # the adapter starts as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, z):
        return z + self.up(self.act(self.down(z)))


BOTTLENECK = 64
adapter = Bottleneck(d, BOTTLENECK)
z = torch.randn(2, 5, d)  # (batch, tokens, d)
print("down", tuple(adapter.down.weight.shape), "up", tuple(adapter.up.weight.shape), "->", tuple(adapter(z).shape))
assert adapter.down.weight.shape == (BOTTLENECK, d) and adapter.up.weight.shape == (d, BOTTLENECK)
assert torch.equal(adapter(z), z)  # up = 0: the identity, bit for bit
assert sum(p.numel() for p in adapter.parameters()) == 2 * d * BOTTLENECK + BOTTLENECK + d

# %% [markdown]
# Per adapter: 2·d·b weights plus b + d biases — the count asserted above (on SmolLM2-135M, the default, d = 576).
#
# ### Step 2: after a frozen projection
#
# `LinearWithAdapter` runs the original layer, then the adapter on its output. On the real attention output
# projection of layer 0 (`o_proj`; BLOOM's `dense`) the output is unchanged.

# %%
class LinearWithAdapter(nn.Module):
    """y = adapter(linear(x)); the wrapped linear layer is left as it is (freeze it separately)."""

    def __init__(self, linear: nn.Linear, bottleneck: int):
        super().__init__()
        self.linear = linear
        self.adapter = Bottleneck(linear.out_features, bottleneck).to(linear.weight.device, linear.weight.dtype)

    def forward(self, x):
        return self.adapter(self.linear(x))


HOULSBY_PLACES = tuple(default_adapter_targets(model, "houlsby"))  # this architecture's two output projections
PFEIFFER_PLACES = tuple(default_adapter_targets(model, "pfeiffer"))
o_proj = next(m for n, m in model.named_modules() if n.endswith(HOULSBY_PLACES[0]))  # layer 0's
wrapped = LinearWithAdapter(o_proj, BOTTLENECK)
x = torch.randn(3, d, device=model.device, dtype=o_proj.weight.dtype)
with torch.no_grad():
    assert torch.equal(wrapped(x), o_proj(x))  # up = 0: bit-identical
    wrapped.adapter.up.weight.normal_(0, 0.02)  # pretend it was trained
    change = (wrapped(x) - o_proj(x)).abs().max().item()
print(f"after a (fake) update, max |y - y_base| = {measured(change, '.4f')}")
assert change > 0

# %% [markdown]
# ### Step 3: every block — Houlsby and Pfeiffer
#
# We replace, in a copy of the model, the projections that end each sub-layer: `self_attn.o_proj` and
# `mlp.down_proj` (Houlsby) or `mlp.down_proj` only (Pfeiffer) — the names `peftedu.adapters.default_adapter_targets`
# gives for this architecture (printed). Everything else is frozen.

# %%
print("Houlsby places:", HOULSBY_PLACES, "| Pfeiffer places:", PFEIFFER_PLACES)


def add_adapters(module: nn.Module, places, bottleneck: int) -> int:
    """Wrap every nn.Linear whose name ends with one of ``places``; returns how many."""
    targets = [name for name, child in module.named_modules()
               if isinstance(child, nn.Linear) and any(name.endswith(p) for p in places)]
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, child_name, LinearWithAdapter(getattr(parent, child_name), bottleneck))
    return len(targets)


def per_adapter(width, bottleneck):
    return 2 * width * bottleneck + bottleneck + width


torch.manual_seed(0)
scratch = copy.deepcopy(model)
scratch.requires_grad_(False)
n_wrapped = add_adapters(scratch, HOULSBY_PLACES, BOTTLENECK)
print(next(m for n, m in scratch.named_modules() if n.endswith(PFEIFFER_PLACES[0])))  # layer 0's MLP output
print_trainable_parameters(scratch)
houlsby_count = count_parameters(scratch)[0]
assert n_wrapped == 2 * n_layers
assert houlsby_count == 2 * n_layers * per_adapter(d, BOTTLENECK)
if is_default:
    assert houlsby_count == 4_462_080
assert torch.equal(logits_of(scratch), base_logits)  # every adapter is the identity: the same model, bit for bit

# %% [markdown]
# On SmolLM2-135M, the default, 4,462,080 trainable parameters: 2 adapters × 30 blocks × (2·576·64 + 64 + 576).
# Pfeiffer's placement halves it — counted on the meta device (the same architecture, no weights), without copying
# the model again:

# %%
with torch.device("meta"):
    pfeiffer_meta = transformers.AutoModelForCausalLM.from_config(cfg)
pfeiffer_meta.requires_grad_(False)
n_pfeiffer = add_adapters(pfeiffer_meta, PFEIFFER_PLACES, BOTTLENECK)
pfeiffer_count = count_parameters(pfeiffer_meta)[0]
print(f"Pfeiffer: {n_pfeiffer} adapters, {pfeiffer_count:,} trainable parameters")
assert pfeiffer_count == n_layers * per_adapter(d, BOTTLENECK) == houlsby_count // 2
if is_default:
    assert pfeiffer_count == 2_231_040

# %% [markdown]
# ### Step 4: the first gradient reaches `up` only
#
# With up = 0 the gradient of `down` is zero at step 0 (it is multiplied by up's weights), while `up` gets a
# gradient because σ(down(z)) ≠ 0. After the first step up ≠ 0 and `down` starts to learn too — the mirror image
# of LoRA, where A starts random and B at zero.

# %%
collate = TrainingCollator(tokenizer)
train_data = load_task("topic", "train")
train_batch = {k: v.to(model.device) for k, v in
               collate([tokenize_example(tokenizer, r) for r in train_data.select(range(4))]).items()}
scratch.train()
scratch(**train_batch).loss.backward()
scratch.eval()
adapters_of = [m.adapter for m in scratch.modules() if isinstance(m, LinearWithAdapter)]
up_grad = max(a.up.weight.grad.abs().max().item() for a in adapters_of)
down_grad = max(a.down.weight.grad.abs().max().item() for a in adapters_of)
print(f"step 0: max |grad| of up {measured(up_grad, '.2e')}, of down {down_grad:.1e}")  # down's: 0 exactly
assert up_grad > 0 and down_grad == 0
scratch.zero_grad(set_to_none=True)

# %% [markdown]
# ## 3. From scratch == `peftedu.adapters`
#
# `peftedu.AdapterConfig(adapter_type="houlsby" | "pfeiffer", bottleneck_size=64)` places the same adapters (the
# defaults know the output projections of Llama, Mistral, Qwen2 and BLOOM) as `BottleneckAdapterLayer` wrappers, with
# `adapter_down` / `adapter_up` per adapter name. **HF peft has no Houlsby or Pfeiffer adapters** — the check below
# scans its method list; the AdapterHub `adapters` library is where they live — so the reference here is our own
# cells. At initialisation up = 0 makes every comparison trivial, so we first give the scratch adapters random
# up-projections and copy all weights across.

# %%
assert not any(key in m for m in peft.PeftType.__members__ for key in ("HOULSBY", "PFEIFFER", "BOTTLENECK"))
print("peft methods with 'ADAPT' in their name:", [m for m in peft.PeftType.__members__ if "ADAPT" in m])

ours = get_peft_model(copy.deepcopy(model), AdapterConfig(adapter_type="houlsby", bottleneck_size=BOTTLENECK))
ours.print_trainable_parameters()
assert ours.get_nb_trainable_parameters() == count_parameters(scratch)
assert torch.equal(logits_of(ours), base_logits)

torch.manual_seed(1)
layers_of_ours = {name: m for name, m in ours.base_model.named_modules() if isinstance(m, BottleneckAdapterLayer)}
with torch.no_grad():
    for name, layer in layers_of_ours.items():
        mine = scratch.get_submodule(name).adapter
        mine.up.weight.normal_(0, 0.02)
        mine.up.bias.normal_(0, 0.02)
        for theirs_part, mine_part in ((layer.adapter_down["default"], mine.down), (layer.adapter_up["default"], mine.up)):
            theirs_part.load_state_dict(mine_part.state_dict())
assert len(layers_of_ours) == n_wrapped
scratch_logits = logits_of(scratch)
cmp("logits: scratch vs peftedu (Houlsby)", scratch_logits, logits_of(ours), atol=LOGITS_TOL)
# the random up-projections did change the model (by far more than rounding; > 0.1 on a pretrained model)
assert (scratch_logits - base_logits).abs().max() > (0.1 if is_pretrained(model) else LOGITS_TOL)
del scratch, ours

# %% [markdown]
# ### Counts, and what the source tutorials say about them
#
# Source 003 gives the Houlsby count as `num_layers × 2 × (d·r + r·d) ≈ 4·L·d·r` (r: the bottleneck); sources 003 and
# 004 say adapters train "0.5 %–3 %" and "1 %–3 %" of a model. `peftedu` on the meta device, for SmolLM2 and for
# bloom-1b4-zh's architecture (d = 2048):

# %%
print(f"{'model':<14} {'design':<9} {'b':>4} {'trainable':>12} {'share':>8}   4·L·d·b (source 003)")
shares = {}
for arch in ("smollm2-135m", "bloom-1b4-zh"):
    for design in ("houlsby", "pfeiffer"):
        meta = get_peft_model(build_from_config(arch), AdapterConfig(adapter_type=design, bottleneck_size=BOTTLENECK))
        trainable, total = meta.get_nb_trainable_parameters()
        width, layers = meta.config.hidden_size, meta.config.num_hidden_layers
        places = 2 if design == "houlsby" else 1
        assert trainable == layers * places * per_adapter(width, BOTTLENECK)
        shares[arch, design] = 100 * trainable / total
        formula = 4 * layers * width * BOTTLENECK if design == "houlsby" else None
        print(f"{arch:<14} {design:<9} {BOTTLENECK:>4} {trainable:>12,} {shares[arch, design]:>7.2f}%   "
              f"{'' if formula is None else f'{formula:,}'}")
        if formula is not None:
            assert trainable - formula == layers * places * (BOTTLENECK + width)  # the formula leaves out the biases
assert shares["smollm2-135m", "houlsby"] > 3 and shares["bloom-1b4-zh", "houlsby"] < 1
del meta

# %% [markdown]
# * Source 003's formula counts the two weight matrices and forgets the biases, b + d per adapter: close, but below
#   the real count (the difference is asserted above).
# * The share is not a property of "adapters": an adapter has about 2·d·b parameters while a block has a multiple of
#   d², so the share falls like b/d — the *same* b = 64 is more than 3 % of SmolLM2 (d = 576) and under 1 % of
#   bloom-1b4-zh (d = 2048). The sources' ranges describe common
#   choices of b, not a law.
# * Source 004 draws one adapter "after each feed-forward module" — that is Pfeiffer's placement; Houlsby's has two.
#   And source 003 draws a LayerNorm inside the Houlsby adapter: the paper's adapter is down → nonlinearity → up with a
#   skip connection (Houlsby et al. also train the model's own layer-norm parameters, which we keep frozen).
#
# ## 4. LLaMA-Adapter: adaption prompts behind a gate (门控), zero-init attention (零初始化注意力)
#
# In each of the top `adapter_layers` attention layers, LLaMA-Adapter learns a prompt P (adapter_len × d). The layer's
# own frozen projections turn it into keys and values, and the queries of the real tokens attend to them in a
# **separate** softmax, scaled by a gate g:
#
# $$ \text{out} = \text{attention}(x) + W_o\big[\, g \cdot \text{softmax}(Q K_P^\top / \sqrt{d_h})\, V_P \big], \qquad K_P = P W_k^\top,\; V_P = P W_v^\top $$
#
# g starts at **0**, so the model is the pretrained one at step 0 — yet g receives a gradient (the bracket is not
# zero), and once g moves, so does P. We build it step by step for the top layer from the inputs its attention
# module really receives on the probe batch (captured with a hook), checking each shape, then as a whole module.
#
# LLaMA-Adapter needs Llama-style attention: separate `q_proj`, `k_proj`, `v_proj`, `o_proj` and rotary positions
# (the queries are rotated before they meet the prompt). Llama, Mistral and Qwen2 have them; BLOOM has a fused
# `query_key_value` and ALiBi instead, so on BLOOM the cells of this section say so and skip the method.

# %%
ADAPTER_LEN, ADAPTER_LAYERS = 10, min(8, n_layers)  # the top 8 layers (all of them in a smaller model)
top_attention = attention_layers(model)[-1]
captured = {}
hook = top_attention.register_forward_pre_hook(lambda m, args, kwargs: captured.update(kwargs), with_kwargs=True)
with torch.no_grad():
    model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"], use_cache=False)
hook.remove()
llama_style = hasattr(top_attention, "q_proj") and captured.get("position_embeddings") is not None
if not llama_style:
    print(f"{cfg.model_type}: LLaMA-Adapter does not apply (it needs separate q_proj/k_proj/v_proj/o_proj and rotary "
          f"positions; this model has {type(top_attention).__name__} with fused query_key_value and ALiBi). "
          "Section 4 is skipped; only the LLaMA-7B count below runs.")
    with torch.device("meta"):  # the library refuses with a reason (shown on the architecture, without weights)
        meta_model = transformers.AutoModelForCausalLM.from_config(cfg)
    try:
        get_peft_model(meta_model, AdaptionPromptConfig(adapter_len=ADAPTER_LEN, adapter_layers=ADAPTER_LAYERS))
        raise AssertionError("peftedu accepted LLaMA-Adapter on an architecture it cannot apply to")
    except ValueError as error:
        print("peftedu:", error)
else:
    hidden = captured["hidden_states"]
    cos, sin = captured["position_embeddings"]
    N, T, _ = hidden.shape
    head_dim = top_attention.head_dim
    n_heads, n_kv_heads = top_attention.q_proj.out_features // head_dim, top_attention.k_proj.out_features // head_dim
    print(f"hidden {tuple(hidden.shape)}, {n_heads} query heads and {n_kv_heads} key/value heads of {head_dim}")
    assert (n_heads, n_kv_heads) == (cfg.num_attention_heads, cfg.num_key_value_heads)

    torch.manual_seed(0)
    prompt = torch.randn(1, ADAPTER_LEN, d, device=model.device, dtype=model.dtype)  # the adaption prompt, N(0, 1)
    with torch.no_grad():
        key_p = top_attention.k_proj(prompt).view(1, ADAPTER_LEN, n_kv_heads, head_dim).transpose(1, 2)
        value_p = top_attention.v_proj(prompt).view(1, ADAPTER_LEN, n_kv_heads, head_dim).transpose(1, 2)
        assert key_p.shape == value_p.shape == (1, n_kv_heads, ADAPTER_LEN, head_dim)
        key_p = key_p.repeat_interleave(n_heads // n_kv_heads, dim=1)  # grouped-query attention: share each kv head
        value_p = value_p.repeat_interleave(n_heads // n_kv_heads, dim=1)
        query = top_attention.q_proj(hidden).view(N, T, n_heads, head_dim).transpose(1, 2)
        query = query * cos.unsqueeze(1) + rotate_half(query) * sin.unsqueeze(1)
        assert key_p.shape == (1, n_heads, ADAPTER_LEN, head_dim) and query.shape == (N, n_heads, T, head_dim)
        scores = query @ key_p.transpose(2, 3) / math.sqrt(head_dim)
        assert scores.shape == (N, n_heads, T, ADAPTER_LEN)  # every token, every head, over the prompt only
        mixed = torch.softmax(scores, dim=-1) @ value_p
        assert mixed.shape == (N, n_heads, T, head_dim)
        bracket = top_attention.o_proj(mixed.transpose(1, 2).reshape(N, T, n_heads * head_dim))
    print("query", tuple(query.shape), "prompt keys", tuple(key_p.shape), "scores", tuple(scores.shape),
          "-> added to the attention output", tuple(bracket.shape))
    assert bracket.shape == hidden.shape and bracket.abs().max() > 0  # the gate's gradient is this, summed: not zero

# %% [markdown]
# ### The whole module from scratch
#
# The same steps as one `nn.Module` that wraps a frozen attention layer: an adaption prompt of `adapter_len` tokens
# (N(0, 1)) and a gate (0), the prompt's keys and values from the layer's own `k_proj` and `v_proj`, repeated to the
# query heads (GQA), its own softmax, and `g · W_o[...]` added to the layer's output. `add_llama_adapter` wraps the
# top `adapter_layers` blocks. Checks: with g = 0 the model is the base model, bit for bit; the module's addition
# equals the step-by-step bracket above.

# %%
class LlamaAdapterAttention(nn.Module):
    """out = attention(x) + g * W_o [softmax(Q K_P^T / sqrt(d_h)) V_P],  K_P = k_proj(P), V_P = v_proj(P); g = 0 at first."""

    def __init__(self, attention: nn.Module, adapter_len: int):
        super().__init__()
        self.attention = attention  # frozen Llama-style attention: q_proj, k_proj, v_proj, o_proj, head_dim
        weight = attention.q_proj.weight
        self.prompt = nn.Parameter(torch.randn(1, adapter_len, attention.q_proj.in_features,
                                               device=weight.device, dtype=weight.dtype))  # (1, adapter_len, d)
        self.gate = nn.Parameter(torch.zeros(1, device=weight.device, dtype=weight.dtype))  # zero-init

    def prompt_attention(self, hidden_states, cos, sin):
        """W_o [softmax(Q K_P^T / sqrt(d_h)) V_P]: what the prompt adds before the gate, (N, T, d)."""
        attn, d_h, length = self.attention, self.attention.head_dim, self.prompt.shape[1]
        n, t, _ = hidden_states.shape
        heads, kv_heads = attn.q_proj.out_features // d_h, attn.k_proj.out_features // d_h
        key = attn.k_proj(self.prompt).view(1, length, kv_heads, d_h).transpose(1, 2)  # (1, h_kv, adapter_len, d_h)
        value = attn.v_proj(self.prompt).view(1, length, kv_heads, d_h).transpose(1, 2)
        key = key.repeat_interleave(heads // kv_heads, dim=1)  # GQA: each kv head serves heads // kv_heads queries
        value = value.repeat_interleave(heads // kv_heads, dim=1)
        query = attn.q_proj(hidden_states).view(n, t, heads, d_h).transpose(1, 2)  # (N, h, T, d_h)
        query = query * cos.unsqueeze(1) + rotate_half(query) * sin.unsqueeze(1)  # rotary: queries only
        weights = torch.softmax(query @ key.transpose(2, 3) / math.sqrt(d_h), dim=-1)  # own softmax, no mask
        mixed = (weights @ value).transpose(1, 2).reshape(n, t, heads * d_h)
        return nn.functional.linear(mixed, attn.o_proj.weight)  # W_o; an o_proj bias is in the base output already

    def forward(self, hidden_states, position_embeddings, **kwargs):
        output, *rest = self.attention(hidden_states=hidden_states, position_embeddings=position_embeddings, **kwargs)
        return (output + self.gate * self.prompt_attention(hidden_states, *position_embeddings), *rest)


def add_llama_adapter(module: nn.Module, adapter_len: int, adapter_layers: int) -> list:
    """Wrap the attention of the top ``adapter_layers`` blocks, freeze the rest; returns the wrappers."""
    module.requires_grad_(False)
    blocks = decoder_layers(module)[-adapter_layers:]
    for block in blocks:
        block.self_attn = LlamaAdapterAttention(block.self_attn, adapter_len)
    return [block.self_attn for block in blocks]


if llama_style:
    torch.manual_seed(0)
    scratch_adapted = copy.deepcopy(model)
    scratch_layers = add_llama_adapter(scratch_adapted, ADAPTER_LEN, ADAPTER_LAYERS)
    print_trainable_parameters(scratch_adapted)
    assert count_parameters(scratch_adapted)[0] == ADAPTER_LAYERS * (ADAPTER_LEN * d + 1)  # a prompt and a gate each
    assert torch.equal(logits_of(scratch_adapted), base_logits)  # g = 0 in every layer: the base model, bit for bit
    with torch.no_grad():
        scratch_layers[-1].prompt.copy_(prompt)  # the prompt of the steps above
        module_bracket = scratch_layers[-1].prompt_attention(hidden, cos, sin)
    o_bias = top_attention.o_proj.bias  # the step-by-step bracket went through o_proj, bias included
    _ = cmp("top layer: module vs the steps above", module_bracket,
            bracket if o_bias is None else bracket - o_bias, atol=0)
else:
    print(f"{cfg.model_type}: no Llama-style attention to wrap; the scratch module is defined but not applied.")

# %% [markdown]
# The prompt keys get no rotary embedding (they have no position) and no mask: every token sees all ten. Now
# `peftedu.AdaptionPromptConfig` with `adapter_len=10, adapter_layers=8` (all layers of a model with fewer): it wraps
# the attention of the top eight blocks. Its count is 8 × (10·d + 1) — a prompt and one gate per layer (on
# SmolLM2-135M, the default, 8 × (10·576 + 1) = 46,088). We put our prompt and an open gate
# (g = 0.5, as if trained) into its top layer and compare its attention output with our module's; then we open every
# gate, copy `peftedu`'s prompts into our scratch model and compare the logits.

# %%
if llama_style:
    llama_adapted = get_peft_model(copy.deepcopy(model), AdaptionPromptConfig(adapter_len=ADAPTER_LEN,
                                                                              adapter_layers=ADAPTER_LAYERS))
    llama_adapted.print_trainable_parameters()
    llama_adapter_count = llama_adapted.get_nb_trainable_parameters()[0]
    assert llama_adapter_count == ADAPTER_LAYERS * (ADAPTER_LEN * d + 1)
    if is_default:
        assert llama_adapter_count == 46_088
    wrapped_layers = [n for n, m in llama_adapted.base_model.named_modules() if isinstance(m, AdaptedAttention)]
    print("wrapped:", wrapped_layers[0], "...", wrapped_layers[-1])
    assert len(wrapped_layers) == ADAPTER_LAYERS and wrapped_layers[-1] == f"model.layers.{n_layers - 1}.self_attn"
    assert torch.equal(logits_of(llama_adapted), base_logits)  # g = 0 in every layer: the base model, bit for bit

    GATE = 0.5
    top_adapted = llama_adapted.base_model.get_submodule(wrapped_layers[-1])
    with torch.no_grad():
        top_adapted.adaption_prompt["default"].copy_(prompt)
        top_adapted.adaption_gate["default"].fill_(GATE)
        kwargs = {**captured, "hidden_states": hidden}
        peftedu_out = top_adapted(**kwargs)[0]
        base_out = top_attention(**kwargs)[0]
    one_layer_tol = rounding_tolerance(model.dtype, magnitude=peftedu_out.abs().max().item(),
                                       terms=2 * d)  # the query and output projections: two d-long sums
    with torch.no_grad():
        scratch_layers[-1].gate.fill_(GATE)
        scratch_out = scratch_layers[-1](**kwargs)[0]
    _ = cmp("top attention: scratch module vs peftedu", scratch_out, peftedu_out, atol=one_layer_tol)

    # the whole model: every gate open (g = 0.5), peftedu's random prompts copied into the scratch modules
    with torch.no_grad():
        for name, mine in zip(wrapped_layers, scratch_layers):
            theirs = llama_adapted.base_model.get_submodule(name)
            theirs.adaption_gate["default"].fill_(GATE)
            mine.prompt.copy_(theirs.adaption_prompt["default"])
            mine.gate.copy_(theirs.adaption_gate["default"])
    scratch_adapted_logits = logits_of(scratch_adapted)
    _ = cmp("logits: scratch vs peftedu (LLaMA-Adapter)", scratch_adapted_logits, logits_of(llama_adapted),
            atol=LOGITS_TOL)
    del scratch_adapted, scratch_layers

# %% [markdown]
# ### `peftedu` == HF peft's `AdaptionPromptConfig`
#
# HF peft does implement LLaMA-Adapter. We save the `peftedu` model with every gate open (its random prompts, the
# ones our scratch modules copied, gates 0.5), and load the file with **HF peft** onto a fresh copy of the base
# model: the file formats are the same, and so are the logits — peftedu's and our scratch model's — up to fp32
# rounding. peft writes the same equation with its operations in another order (how it
# reshapes, scales and multiplies), and with open gates and N(0, 1) prompts in eight layers those roundings reach the
# logits; hence `LOGITS_TOL`, the tolerance derived from the arithmetic at the top of the notebook. In float64
# the rounding disappears (exercise 5). HF peft 0.21.2 accepts only some model types here (llama, mistral, gpt2; not
# qwen2): on another one the cell says so and skips the comparison.

# %%
peft_model_types = peft.tuners.adaption_prompt.config.TRANSFORMERS_MODEL_CONFIG  # what HF peft's version accepts
if llama_style and cfg.model_type not in peft_model_types:
    print(f"HF peft's AdaptionPromptConfig does not support model_type {cfg.model_type!r} (only "
          f"{sorted(peft_model_types)}): no comparison with peft on this model; the scratch == peftedu checks above "
          "ran.")
    del llama_adapted
elif llama_style:
    with torch.no_grad():
        for name in wrapped_layers:
            llama_adapted.base_model.get_submodule(name).adaption_gate["default"].fill_(GATE)
    adapted_logits = logits_of(llama_adapted)
    llama_dir = Path(tempfile.mkdtemp()) / "llama-adapter"
    llama_adapted.save_pretrained(llama_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(model), llama_dir)
    print("saved config:", {k: v for k, v in json.loads((llama_dir / "adapter_config.json").read_text()).items()
                            if k in ("peft_type", "adapter_len", "adapter_layers", "target_modules")})
    print("loaded by peft as", type(by_peft.base_model).__name__)
    assert count_parameters(by_peft)[1] == count_parameters(llama_adapted)[1]
    peft_adapted_logits = logits_of(by_peft)
    llama_diff = cmp("logits: peftedu vs HF peft (LLaMA-Adapter)", adapted_logits, peft_adapted_logits, atol=LOGITS_TOL)
    _ = cmp("logits: scratch vs HF peft (LLaMA-Adapter)", scratch_adapted_logits, peft_adapted_logits, atol=LOGITS_TOL)
    # the open gates changed the model (by far more than rounding; > 0.1 on a pretrained model)
    assert (adapted_logits - base_logits).abs().max() > (0.1 if is_pretrained(model) else LOGITS_TOL)
    del by_peft, llama_adapted  # free the two model copies

# %% [markdown]
# Source 003 says LLaMA-Adapter trains "1.2M" parameters on LLaMA-7B. The paper uses prompts of 10 tokens in the top
# 30 of LLaMA-7B's 32 layers (d = 4096); on that architecture, built on the meta device:

# %%
llama7b_config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
with torch.device("meta"):
    llama7b = transformers.LlamaForCausalLM(llama7b_config)
llama7b_adapted = get_peft_model(llama7b, AdaptionPromptConfig(adapter_len=10, adapter_layers=30))
llama7b_trainable, llama7b_total = llama7b_adapted.get_nb_trainable_parameters()
print(f"LLaMA-7B architecture: {llama7b_trainable:,} trainable of {llama7b_total:,} "
      f"({100 * llama7b_trainable / llama7b_total:.4f} %)")
assert llama7b_trainable == 30 * (10 * 4096 + 1) and round(llama7b_trainable / 1e6, 1) == 1.2
del llama7b, llama7b_adapted

# %% [markdown]
# The source's 1.2M is right: 1,228,830, about 0.02 % of the model (printed above) — far below the bottleneck
# adapters' shares in the table of section 3.
#
# ## 5. Training a Houlsby adapter on `topic`
#
# The base model's zero-shot score first (the profile's test rows), then a Houlsby adapter (b = 64) with `peftedu` on
# the real model, the course's training loop in the current profile (quick: 12 optimizer steps of 8 examples) at a
# learning rate of 1e-3.

# %%
LEARNING_RATE = 1e-3
before = evaluate(model, tokenizer, "topic")
print(f"zero-shot topic accuracy: {before['score']:.3f} on {before['n']} test rows")

peft_model = get_peft_model(model, AdapterConfig(adapter_type="houlsby", bottleneck_size=BOTTLENECK))  # in place
peft_model.print_trainable_parameters()
assert peft_model.get_nb_trainable_parameters()[0] == houlsby_count
assert torch.equal(logits_of(peft_model), base_logits)  # up = 0: training starts from the base model

history = train(peft_model, tokenizer, train_data, lr=LEARNING_RATE, progress=False)
print(history.summary())
plot_history(history)
plt.show()
if is_pretrained(model):
    assert history.loss[-1] < history.loss[0] / 3
else:
    moved = any(layer.adapter_up["default"].weight.abs().max() > 0 for layer in peft_model.base_model.modules()
                if isinstance(layer, BottleneckAdapterLayer))
    print(f"random weights: checked that the loss stayed finite and the up-projections moved from 0 ({moved})")
    assert all(math.isfinite(v) for v in history.loss) and moved

# %%
after = evaluate(peft_model, tokenizer, "topic")
print(f"topic accuracy: zero-shot {before['score']:.3f} -> after Houlsby {measured(after['score'])} "
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
# A sentence the model has never seen, with the adapter switched off (`disable_adapter()`: the base model) and on:

# %%
new_sentence = "The night train from Vienna reached Venice just after sunrise."
new_prompt = build_prompt(tokenizer, probe_records[0]["instruction"], new_sentence)
with peft_model.disable_adapter():
    answer_before = generate_answers(peft_model, tokenizer, [new_prompt], max_new_tokens=16)[0]
answer_after = generate_answers(peft_model, tokenizer, [new_prompt], max_new_tokens=16)[0]
print(f"base model: {answer_before!r}\nHoulsby:    {measured(answer_after)}")
if is_pretrained(model):
    assert answer_after.strip().lower() == "travel"
else:
    print("random weights: no answer is expected to be right; checked only that generation ran")

# %% [markdown]
# ## 6. The price at inference (推理延迟): adapters cannot be merged
#
# LoRA's update W + (α/r)·B A is a matrix again, so it merges into W (notebook 06). An adapter's ReLU sits between
# down and up: no single matrix gives z + up(σ(down z)) for every z, so the adapter runs at every forward pass.
# `peftedu` refuses to merge it rather than pretend:

# %%
merge_refused = False
try:
    peft_model.merge_adapter()
except ValueError as error:
    print("merge_adapter():", str(error)[:120], "...")
    merge_refused = True
assert merge_refused

# %% [markdown]
# **Why no merged layer can stand in for it: the additivity test.** A merged layer is affine, `f(z) = W z + b`, so
# `f(z₁ + z₂) − f(z₁) − f(z₂) + f(0) = 0` for every z₁, z₂. The `+ f(0)` matters: without it the test computes
# `−b`, and any layer with a bias would "fail" it although it is a single matrix plus a vector. An `nn.Linear` with a
# bias passes the corrected test and fails the old one; the trained adapter `f(z) = z + up(σ(down z))` (layer 0's
# first one) fails the corrected test: the ReLU makes it non-affine, so no `W, b` can replace it.

# %%
def additivity_gap(f, z1, z2, with_f0=True):
    """f(z1 + z2) - f(z1) - f(z2) (+ f(0)): zero for every affine f only with the + f(0) term."""
    gap = f(z1 + z2) - f(z1) - f(z2)
    return gap + f(torch.zeros_like(z1)) if with_f0 else gap


torch.manual_seed(0)
z1, z2 = (torch.randn(4, d, device=model.device, dtype=model.dtype) for _ in range(2))
affine = nn.Linear(d, d, device=model.device, dtype=model.dtype)  # with a bias: mergeable by definition
first_adapter = next(m for m in peft_model.base_model.modules() if isinstance(m, BottleneckAdapterLayer))
trained_adapter = lambda z: z + first_adapter.adapter_output(z, "default")
zero = torch.zeros_like(z1)
with torch.no_grad():
    for name, f in (("nn.Linear with bias", affine), ("trained adapter", trained_adapter)):
        tol = rounding_tolerance(model.dtype, magnitude=f(z1 + z2).abs().max().item(), terms=d)  # d-long sums
        if f is affine:
            cmp(f"{name}: gap without + f(0) vs 0", additivity_gap(f, z1, z2, with_f0=False), zero, atol=tol,
                expect="different")  # the old test: it is -b
        cmp(f"{name}: gap with + f(0) vs 0", additivity_gap(f, z1, z2), zero, atol=tol,
            expect="equal" if f is affine else "different")

# %% [markdown]
# How much does it cost? Counted in multiply-adds per token: each adapter adds 2·d·b to a block's work, and a
# forward pass costs about one multiply-add per weight (the embedding lookup aside, the output head included; on
# SmolLM2-135M, the default, the head is the tied embedding matrix):

# %%
# every frozen weight is used once per token (the tied output head multiplies by the embedding matrix; norms are
# elementwise and attention scores depend on the length, both left out)
lookup_only = 0 if cfg.tie_word_embeddings else model.get_input_embeddings().weight.numel()  # an untied input table
base_macs = count_parameters(peft_model)[1] - houlsby_count - lookup_only
extra = {"Houlsby": 2 * n_layers * 2 * d * BOTTLENECK, "Pfeiffer": n_layers * 2 * d * BOTTLENECK}
for name, macs in extra.items():
    print(f"{name:<9} +{macs:,} multiply-adds per token = +{100 * macs / base_macs:.1f} % of the base model")
assert extra["Houlsby"] == 2 * extra["Pfeiffer"]

# %% [markdown]
# A few percent of the arithmetic; in wall time the adapter adds small matrix products and elementwise operations that
# run one after another on the critical path, which on a small batch costs more than the count suggests. A simple
# timing — mean of a few forward passes of the probe batch, the machine's noise included, so the times and ratios are
# printed behind ≈ — of the base model, the trained Houlsby adapter and a Pfeiffer adapter (added beside it):

# %%
def mean_forward_ms(m, repeats=3):
    with torch.no_grad():
        logits_of(m)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            logits_of(m)
    return 1000 * (time.perf_counter() - start) / repeats


peft_model.add_adapter("pfeiffer", AdapterConfig(adapter_type="pfeiffer", bottleneck_size=BOTTLENECK))
timings = {}
with peft_model.disable_adapter():
    timings["base model"] = mean_forward_ms(peft_model)
timings["Pfeiffer (b = 64)"] = mean_forward_ms(peft_model)
peft_model.set_adapter("default")
timings["Houlsby (b = 64)"] = mean_forward_ms(peft_model)
for name, ms in timings.items():
    print(f"{name:<24} {measured(ms, '.1f')} ms   ({measured(ms / timings['base model'], '.2f')} x the base model)")
peft_model.delete_adapter("pfeiffer")
assert peft_model.active_adapter == "default"

# %% [markdown]
# Read the ratios with the machine's noise in mind; run the cell twice to see how much they move. Sources 000 and 003
# are right that adapters add latency that merging cannot remove — the main reason LoRA replaced them in practice.
#
# ## 7. Saving and reloading
#
# `save_pretrained` writes peft's layout with `peftedu`'s own `peft_type` "BOTTLENECK_ADAPTER" (HF peft cannot read it:
# it has no such method). Four tensors per adapter: down and up, weight and bias.

# %%
save_dir = Path(tempfile.mkdtemp()) / "houlsby"
peft_model.save_pretrained(save_dir)
saved = load_file(str(save_dir / "adapter_model.safetensors"))
for path in sorted(save_dir.iterdir()):
    print(f"{path.name:<30} {path.stat().st_size:>12,} bytes")
example = sorted(saved)[0]
print(len(saved), "tensors, e.g.", example, tuple(saved[example].shape))
saved_config = json.loads((save_dir / "adapter_config.json").read_text())
print({k: saved_config[k] for k in ("peft_type", "adapter_type", "bottleneck_size", "non_linearity")})
assert saved_config["peft_type"] == "BOTTLENECK_ADAPTER" and len(saved) == 4 * 2 * n_layers
assert sum(t.numel() for t in saved.values()) == houlsby_count

trained_logits = logits_of(peft_model)
fresh, _ = load_base()
reloaded = PeftModel.from_pretrained(fresh, save_dir)
_ = cmp("reloaded vs trained", logits_of(reloaded), trained_logits, atol=0)
print("reloaded answer:", measured(generate_answers(reloaded, tokenizer, [new_prompt], max_new_tokens=6)))

# %% [markdown]
# ## Summary
#
# * A bottleneck adapter is z + up(σ(down z)) after a sub-layer's output projection: 2·d·b + b + d parameters.
#   up = 0 makes it the identity at step 0 (asserted: the same logits, bit for bit), and down must stay random or
#   nothing trains — at step 0 only up receives a gradient.
# * Houlsby places two per block (after attention and after the MLP), Pfeiffer one (after the MLP): on SmolLM2-135M with
#   b = 64, 4,462,080 and 2,231,040 trainable parameters. The share depends on b/d, so "0.5–3 %" is a habit, not a law.
# * LLaMA-Adapter adds a gated prompt to the attention of the top layers: 46,088 parameters on SmolLM2 (10 tokens,
#   8 layers), 1,228,830 on LLaMA-7B (the source's "1.2M"). g = 0 keeps the model unchanged at step 0.
# * Our cells equal `peftedu.adapters`; our LLaMA-Adapter module equals `peftedu`'s and HF peft's (up to fp32
#   rounding), files included. HF peft has no Houlsby or Pfeiffer adapters.
# * An adapter fails the additivity test `f(z₁ + z₂) − f(z₁) − f(z₂) + f(0) = 0` that every affine (mergeable) layer
#   passes; without `+ f(0)` even an `nn.Linear` with a bias fails it.
# * Adapters cannot be merged (a nonlinearity sits inside), so they cost time at every forward pass; LoRA can.
# * A Houlsby adapter learns `topic` in the quick profile on the default SmolLM2-135M (scores in section 5).
#
# ## Interview corner
#
# 1. **Why is the up-projection initialised to zero — and why not the down-projection too?** up = 0 makes the
#    adapter the identity, so fine-tuning starts exactly at the pretrained model. If down were zero as well, the
#    hidden activation σ(down z) would be 0 and up's gradient (∝ σ(down z)) would vanish too: nothing would train.
# 2. **Houlsby vs Pfeiffer?** Houlsby: two adapters per block, after the attention output and after the MLP output.
#    Pfeiffer: one, after the MLP — half the parameters and half the extra latency; Pfeiffer et al. found it about as
#    good.
# 3. **Adapters vs LoRA at inference?** LoRA's update is linear and merges into W: zero overhead. An adapter contains
#    a nonlinearity, cannot be merged, and adds sequential work on every layer (section 6). Adapters keep the base
#    weights untouched and are easy to stack or swap, but pay at inference time.
# 4. **What is "zero-init attention" in LLaMA-Adapter?** The adaption prompts' attention output is multiplied by a
#    learnable gate that starts at 0, so the random prompts cannot disturb the pretrained model at the start; the
#    gate still gets a gradient, opens gradually, and lets the prompt in as it becomes useful. It is computed with a
#    separate softmax over the prompt tokens.
# 5. **How do you pick the bottleneck size?** It sets the parameter count (≈ 2·d·b per adapter) and capacity. Start
#    with b = d/16 or 64; raise it if the task is far from pre-training and the loss stalls, lower it when many task
#    adapters must be stored.
#
# ## Exercises
#
# 1. Train a Pfeiffer adapter instead (`AdapterConfig(adapter_type="pfeiffer", bottleneck_size=64)`) on a fresh base
#    model, and compare loss and score with the Houlsby run.
#
# <details><summary>Solution</summary>
#
# ```python
# pfeiffer = get_peft_model(load_base()[0], AdapterConfig(adapter_type="pfeiffer", bottleneck_size=64))
# h = train(pfeiffer, tokenizer, train_data, lr=1e-3, progress=False)
# print(h.summary(), evaluate(pfeiffer, tokenizer, "topic")["score"])
# ```
# Half the parameters (2,231,040); compare `h.loss` with `history.loss` of section 5.
# </details>
#
# 2. Train the LLaMA-Adapter of section 4 (fresh, with zero gates) on `topic`. Why does it need a larger learning
#    rate than the bottleneck adapters?
#
# <details><summary>Solution</summary>
#
# ```python
# la = get_peft_model(load_base()[0], AdaptionPromptConfig(adapter_len=10, adapter_layers=8))
# h = train(la, tokenizer, train_data, lr=1e-2, progress=False)
# print(h.summary(), evaluate(la, tokenizer, "topic")["score"])
# ```
# Everything the adapter adds passes through the gates, which start at 0 and move by about the learning rate per
# Adam step; at 1e-3 they would stay near 0 for the whole short run. A larger rate (1e-2) opens them within a few
# steps — the same reason prompt tuning uses large learning rates.
# </details>
#
# 3. Replace the ReLU by a GELU (`non_linearity="gelu"`). Does the model still start unchanged? Does the step-0
#    gradient of `down` still vanish?
#
# <details><summary>Solution</summary>
#
# Yes to both: up = 0 makes the output z + 0 whatever σ is, and down's gradient is multiplied by up's (zero) weights.
# Only the first gradient of up changes (it is ∝ σ(down z)).
# </details>
#
# 4. Show that an adapter cannot be merged: find two inputs z₁, z₂ with f(z₁ + z₂) − f(z₁) − f(z₂) + f(0) ≠ 0 for a
#    trained adapter f. Why is the `+ f(0)` needed?
#
# <details><summary>Solution</summary>
#
# ```python
# layer = next(m for m in peft_model.base_model.modules() if isinstance(m, BottleneckAdapterLayer))
# z1, z2 = torch.randn(2, d), torch.randn(2, d)
# f = lambda z: z + layer.adapter_output(z, "default")
# print((f(z1 + z2) - f(z1) - f(z2) + f(torch.zeros_like(z1))).abs().max())  # not 0: f is not affine
# ```
# A merged layer is affine, W z + b, and every affine map gives exactly 0 here; the ReLU breaks it. Without `+ f(0)`
# the test gives −b for an affine map, so an `nn.Linear` with a bias would "fail" it too and prove nothing (section 6
# runs both tests on both).
# </details>
#
# 5. Is the difference between `peftedu` and HF peft in section 4 a bug or rounding? Repeat the comparison with the
#    model in float64.
#
# <details><summary>Solution</summary>
#
# ```python
# base64 = load_base(dtype=torch.float64)[0]
# ours64 = get_peft_model(copy.deepcopy(base64), AdaptionPromptConfig(adapter_len=10, adapter_layers=8))
# for m in ours64.modules():
#     if isinstance(m, AdaptedAttention):
#         m.adaption_gate["default"].data.fill_(0.5)
# ours64.save_pretrained(llama_dir / "fp64")
# theirs64 = peft.PeftModel.from_pretrained(copy.deepcopy(base64), llama_dir / "fp64")
# cmp("float64: peftedu vs HF peft", logits_of(ours64), logits_of(theirs64), atol=1e-9)
# ```
# The difference falls to float64's rounding level (or vanishes): the two implementations compute the same
# function, and the fp32 difference was rounding.
# </details>
