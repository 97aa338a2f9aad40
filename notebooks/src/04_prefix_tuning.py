# %% [markdown]
# # 04 · Prefix tuning (前缀微调): trainable keys and values in every layer
#
# Prompt tuning (notebook 02) adds trainable vectors to the *input*. Prefix tuning
# (Li & Liang 2021, arXiv:2101.00190) goes deeper: every attention layer gets `p` extra **keys and values**
# that every real token can attend to. The model's weights, its queries and the tokens stay untouched.
#
# **Learning goals**
#
# 1. Follow every tensor shape of a prefix-tuned attention layer — Q, K, V per head, the prefix parameter, its
#    reshape into per-layer keys and values, the concatenation to `p + T`, the scores `(N, h, T, p + T)`, the
#    output `(N, h, T, d_h)` and back to `d_model` — on the model in use (the default SmolLM2-135M has
#    grouped-query attention, 9 query / 3 key-value heads) and on the source tutorial's `bloom-1b4-zh` (16 heads,
#    fused `query_key_value`).
# 2. Feed a hand-written prefix through a transformers `DynamicCache` and show it equals `peftedu` and HF `peft`.
# 3. Know what changed when transformers moved from tuples of `(key, value)` to `Cache` objects, and which
#    positions the real tokens take next to a prefix (and why that matters).
# 4. Count the parameters with and without `prefix_projection` (the reparameterisation) and reproduce the source
#    tutorial's BLOOM numbers; train a prefix on the bundled task and watch where the attention goes.

# %%
%matplotlib inline
import copy
import inspect
import math
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from transformers import DynamicCache

import logging

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # silence a CPU-dependent notice when peft imports it
import peft  # HF peft, the reference
import datasets

import transformers

datasets.disable_progress_bars()  # "Generating split" bars appear only on a cold cache: keep outputs reproducible
transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the notebook

import peftedu
from peftedu import PeftModel, PrefixTuningConfig, cmp, get_peft_model, measured, rounding_tolerance
from peftedu.course.data import load_task
from peftedu.course.tokenization import TrainingCollator, collate_for_generation, tokenize_dataset
from peftedu.course.models import is_pretrained
from peftedu.course.prefix_shapes import (attention_layers, attention_projections, format_walkthrough,
                                   prefix_shape_explorer, prefix_shape_walkthrough)
from peftedu.prefix_tuning import cache_argument, positions_from_mask, prefix_geometry, prefix_key_values
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate, generate_answers

notebook_start = time.perf_counter()
torch.manual_seed(0)
model, tokenizer = peftedu.load_base(dtype=torch.float32)  # fp32 on any device: the checks are at fp32 rounding
device = next(model.parameters()).device
print(f"{type(model).__name__}: {sum(t.numel() for t in model.parameters()):,} parameters on {device.type}")
# Rotary models (Llama, Qwen2) take position ids; BLOOM (ALiBi) takes none: its positions come from the mask.
takes_positions = "position_ids" in inspect.signature(model.forward).parameters
print("profile:", get_profile().name)

# %% [markdown]
# ## 1. The intuition: a memory of `p` tokens the model never read (a key/value cache, 键值缓存)
#
# When a decoder generates text it caches the keys and values of the tokens it has already read (the
# *key/value cache*, `past_key_values`, KV cache). Prefix tuning hands the model a cache that no text produced:
# `p` trainable key/value pairs in **every** layer. Each real token then attends to `p + T` keys instead of `T` —
# the whole prefix (it comes "before" every token) and, causally, the tokens up to itself:
#
# $$K'_l = [P_{K,l};\,K_l],\qquad V'_l = [P_{V,l};\,V_l],\qquad
#   \mathrm{head}_i = \mathrm{softmax}\!\Big(\frac{Q_i K'^{\top}_i}{\sqrt{d_h}} + M\Big)\,V'_i$$
#
# The queries are untouched, so the output still has `T` rows: the prefix changes *what* each token reads,
# never *how many* tokens there are. The figure draws the mask `M` (left) and where the trainable numbers sit
# (right).

# %%
p_demo, T_demo, layers_demo = 4, 6, 5
rows = torch.arange(T_demo)[:, None]
cols = torch.arange(p_demo + T_demo)[None, :]
allowed = (cols < p_demo) | (cols - p_demo <= rows)  # the whole prefix, then causal over the real tokens
assert allowed[:, :p_demo].all() and allowed.sum() == T_demo * p_demo + T_demo * (T_demo + 1) // 2

fig, (ax_mask, ax_layers) = plt.subplots(1, 2, figsize=(11, 3.4))
picture = torch.where(allowed, torch.where(cols < p_demo, 2, 1), 0).expand(T_demo, -1)
ax_mask.imshow(picture, cmap=plt.matplotlib.colors.ListedColormap(["white", "tab:blue", "tab:orange"]))
ax_mask.set_xticks(range(p_demo + T_demo), [f"P{j}" for j in range(p_demo)] + [f"t{j}" for j in range(T_demo)])
ax_mask.set_yticks(range(T_demo), [f"t{i}" for i in range(T_demo)])
ax_mask.set_xlabel("keys (p prefix + T tokens)")
ax_mask.set_ylabel("queries (T tokens)")
ax_mask.set_title("which keys a query may attend to")
ax_mask.set_xticks(torch.arange(p_demo + T_demo + 1) - 0.5, minor=True)
ax_mask.set_yticks(torch.arange(T_demo + 1) - 0.5, minor=True)
ax_mask.grid(which="minor", color="grey", linewidth=0.5)
stack = torch.cat([torch.full((layers_demo, p_demo), 2), torch.ones(layers_demo, T_demo)], dim=1)
ax_layers.imshow(stack, cmap=plt.matplotlib.colors.ListedColormap(["tab:blue", "tab:orange"]), aspect="auto")
ax_layers.set_yticks(range(layers_demo), [f"layer {l}" for l in range(layers_demo)])
ax_layers.set_xticks([(p_demo - 1) / 2, p_demo + (T_demo - 1) / 2],
                     ["prefix K, V: trainable,\nits own values in every layer",
                      "token K, V: computed by the\nfrozen W_K, W_V"])
ax_layers.set_title("the keys/values each layer attends over")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Every shape, step by step, on the model in use (real tensors)
#
# Symbols: batch `N`, real tokens `T`, prefix length `p`, layers `L`, query heads `h`, key/value heads `h_kv`,
# head size `d_h`, model width `d_model`, all read from the model's config (printed below). SmolLM2-135M, the
# default, uses **grouped-query attention** (GQA, 分组查询注意力): 9 query heads share 3 key/value heads, so its
# keys and values are `3 × 64 = 192` wide, not 576. The prefix lives among the keys and values, so it has the
# key/value width too.
#
# We compute layer 0's attention by hand. Its input `x` is captured with a forward pre-hook (the embeddings after
# the layer's input norm), and `attention_projections` gives the layer's Q, K, V and output projections (Llama
# and Qwen2 have `q_proj`, `k_proj`, `v_proj`, `o_proj`; BLOOM one fused `query_key_value`, split per head, and
# `dense`). Each step records its shape in `shapes` and asserts the shape the equations predict.

# %%
config = model.config
geometry = prefix_geometry(config)  # reads Llama/Qwen2 and BLOOM config names alike
L, h_kv, d_h = geometry["num_layers"], geometry["num_kv_heads"], geometry["head_dim"]
h, d_model = config.num_attention_heads, config.hidden_size
N, T, p = 2, 6, 4
print(f"L={L}, d_model={d_model}, h={h}, h_kv={h_kv}, d_h={d_h}; walkthrough with N={N}, T={T}, p={p}")
if model.name_or_path == peftedu.course.models.MODEL_ALIASES[peftedu.DEFAULT_MODEL]:
    assert (L, d_model, h, h_kv, d_h) == (30, 576, 9, 3, 64)  # SmolLM2-135M

shapes = {}


def check(name, tensor, expected):
    """Assert a shape, remember it, print it."""
    assert tuple(tensor.shape) == tuple(expected), f"{name}: {tuple(tensor.shape)} != {tuple(expected)}"
    shapes[name] = tuple(tensor.shape)
    print(f"{name:<18} {str(tuple(tensor.shape)):<20}")


sentences = ["The striker scored twice in the final ten minutes.", "My grandmother baked a loaf of sourdough bread."]
input_ids = torch.tensor([tokenizer(s)["input_ids"][:T] for s in sentences], device=device)
attention = attention_layers(model)[0]
q_proj, k_proj, v_proj, o_proj = attention_projections(attention)
read = {}  # what layer 0's attention reads: the hidden states, by keyword (Llama) or first argument (BLOOM)
hook = attention.register_forward_pre_hook(
    lambda module, args, kwargs: read.update(x=kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]),
    with_kwargs=True)
with torch.no_grad():
    model(input_ids=input_ids)
hook.remove()
x = read["x"]
check("x", x, (N, T, d_model))

# %% [markdown]
# **Q, K, V per head.** Each projection is a linear map of `x`; `view` splits the last axis into heads and
# `transpose` moves the head axis before the tokens. Queries have `h` heads, keys and values `h_kv` (fewer with
# GQA; as many without).

# %%
with torch.no_grad():
    Q = q_proj(x).view(N, T, h, d_h).transpose(1, 2)
    K = k_proj(x).view(N, T, h_kv, d_h).transpose(1, 2)
    V = v_proj(x).view(N, T, h_kv, d_h).transpose(1, 2)
check("Q", Q, (N, h, T, d_h))
check("K", K, (N, h_kv, T, d_h))
check("V", V, (N, h_kv, T, d_h))

# %% [markdown]
# **The prefix parameter.** One trainable row per virtual token holds, side by side, a key and a value for every
# layer and every key/value head: width `L × 2 × h_kv × d_h` (this is HF peft's `PrefixEncoder.embedding` without
# projection, initialised N(0, 1)).

# %%
torch.manual_seed(0)
prefix = torch.nn.Parameter(torch.randn(p, L * 2 * h_kv * d_h, device=device))
check("prefix parameter", prefix, (p, L * 2 * h_kv * d_h))
print(f"{prefix.numel():,} trainable numbers = p {p} x L {L} x 2 x h_kv {h_kv} x d_h {d_h}")
assert prefix.numel() == p * L * 2 * h_kv * d_h

# %% [markdown]
# **Its reshape into per-layer keys and values** (peft's layout): view the row as `(2L, h_kv, d_h)`, move the
# virtual tokens next to the head size, so entry `2l` is layer `l`'s key and `2l + 1` its value, and expand over
# the batch (every row of the batch gets the same prefix; `expand` copies nothing).

# %%
per_entry = prefix.view(p, 2 * L, h_kv, d_h).permute(1, 2, 0, 3)  # (2L, h_kv, p, d_h)
assert tuple(per_entry.shape) == (2 * L, h_kv, p, d_h)
P_K = per_entry[0].unsqueeze(0).expand(N, -1, -1, -1)  # layer 0's key
P_V = per_entry[1].unsqueeze(0).expand(N, -1, -1, -1)  # layer 0's value
check("P_K (layer 0)", P_K, (N, h_kv, p, d_h))
check("P_V (layer 0)", P_V, (N, h_kv, p, d_h))
# the same numbers, read straight from the flat row: layer l's key of virtual token j, head g
l, j, g = L // 2, p // 2, h_kv - 1  # the middle layer, a middle token, the last key/value head
start = (2 * l * h_kv + g) * d_h
assert torch.equal(per_entry[2 * l, g, j], prefix[j, start:start + d_h])
pairs = prefix_key_values(prefix, L, h_kv, d_h, N)  # the module's function gives the same tensors
assert torch.equal(pairs[0][0], P_K) and torch.equal(pairs[L - 1][1], per_entry[2 * L - 1].expand(N, -1, -1, -1))

# %% [markdown]
# **Concatenation to `p + T`.** The prefix comes first, so key `j < p` is virtual token `j` and key `p + t` is
# real token `t`. With GQA each key/value head then serves `h / h_kv` query heads: `repeat_interleave` copies the
# `h_kv` key/value heads to `h` (on SmolLM2-135M, the default, 3 to 9) so they line up with the queries
# (transformers' `repeat_kv` does the same). Without GQA (`h = h_kv`, BLOOM) there is nothing to repeat.

# %%
K_all = torch.cat([P_K, K], dim=2)
V_all = torch.cat([P_V, V], dim=2)
check("K' = [P_K; K]", K_all, (N, h_kv, p + T, d_h))
check("V' = [P_V; V]", V_all, (N, h_kv, p + T, d_h))
groups = h // h_kv
K_heads, V_heads = K_all.repeat_interleave(groups, dim=1), V_all.repeat_interleave(groups, dim=1)
if groups > 1:
    check("K' per query head", K_heads, (N, h, p + T, d_h))
    assert torch.equal(K_heads[:, 0], K_heads[:, groups - 1]) and torch.equal(K_heads[:, 0], K_all[:, 0])
    if h_kv > 1:
        assert torch.equal(K_heads[:, groups], K_all[:, 1])
        print(f"query heads 0..{groups - 1} read key/value head 0, heads {groups}..{2 * groups - 1} head 1, ...")
    else:
        print(f"all {h} query heads read the one key/value head")
else:
    print(f"no GQA: {h} query heads, {h_kv} key/value heads, nothing to repeat")

# %% [markdown]
# **Scores, mask, softmax.** `Q K'^T / sqrt(d_h)` has one score per (query token, key): `(N, h, T, p + T)`. The
# mask lets every token see the whole prefix and, causally, the real tokens up to itself; each row of `A` sums to 1.

# %%
with torch.no_grad():
    scores = Q @ K_heads.transpose(-1, -2) / math.sqrt(d_h)
    check("scores", scores, (N, h, T, p + T))
    keep = (torch.arange(p + T, device=device)[None, :] < p) | \
        (torch.arange(p + T, device=device)[None, :] - p <= torch.arange(T, device=device)[:, None])
    A = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
check("A", A, (N, h, T, p + T))
assert torch.allclose(A.sum(-1), torch.ones_like(A[..., 0]))  # every row of A sums to 1
assert (A[..., :p] > 0).all()  # and every token sees the whole prefix
print(f"share of attention on the (random) prefix, layer 0: {measured(A[..., :p].sum(-1).mean().item())}")

# %% [markdown]
# **Output and back to `d_model`.** `A V'` mixes `p + T` values into one vector per token and head — the prefix
# adds no output rows. Merging the heads and the output projection return to the model width.

# %%
with torch.no_grad():
    O = A @ V_heads
    check("O = A V'", O, (N, h, T, d_h))
    merged = O.transpose(1, 2).reshape(N, T, h * d_h)
    check("heads merged", merged, (N, T, h * d_h))
    output = o_proj(merged)
check("output", output, (N, T, d_model))

# %% [markdown]
# **Is this what the real layer computes?** The walkthrough left out the positions, which change values, not
# shapes. Rotary models (Llama, Qwen2) rotate the real tokens' queries and keys (RoPE) — the prefix keys are
# stored unrotated. BLOOM rotates nothing: ALiBi adds `slope_head × key position` to every score, the positions
# counted from the attention mask, where the prefix takes `0..p-1` and the tokens `p..p+T-1`. Add the model's
# own scheme, and the hand-built layer must equal layer 0's output projection in the model run with the prefix in
# a `DynamicCache` (captured with a forward hook).

# %%
positions = torch.arange(T, device=device).expand(N, T)  # real tokens at 0..T-1 (section 5 says why)
position_kwargs = {"position_ids": positions} if takes_positions else {}  # BLOOM takes none
rotary = getattr(getattr(model, "model", None), "rotary_emb", None)  # Llama, Qwen2
with torch.no_grad():
    if rotary is not None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = rotary(x, positions)
        Q_pos, K_pos = apply_rotary_pos_emb(Q, K, cos, sin)
        position_bias = torch.zeros(())
    elif config.model_type == "bloom":
        from transformers.models.bloom.modeling_bloom import build_alibi_tensor

        Q_pos, K_pos = Q, K  # ALiBi: slope_head x key position 0..p+T-1, added to the scores
        position_bias = build_alibi_tensor(torch.ones(N, p + T, dtype=torch.long, device=device), h, Q.dtype)
        position_bias = position_bias.view(N, h, 1, p + T)
    else:
        raise ValueError(f"model_type {config.model_type!r}: this cell knows rotary (Llama, Qwen2) and ALiBi (BLOOM)")
    K_pos_all = torch.cat([P_K, K_pos], dim=2).repeat_interleave(groups, dim=1)
    scores_pos = Q_pos @ K_pos_all.transpose(-1, -2) / math.sqrt(d_h) + position_bias.to(device)
    weights_pos = torch.softmax(scores_pos.masked_fill(~keep, float("-inf")), -1)
    by_hand = o_proj((weights_pos @ V_heads).transpose(1, 2).reshape(N, T, h * d_h))

    captured = {}
    hook = o_proj.register_forward_hook(lambda module, args, out: captured.update(output=out))
    cache = DynamicCache(prefix_key_values(prefix.detach(), L, h_kv, d_h, N), config=model.config)
    model(input_ids=input_ids, attention_mask=torch.ones(N, p + T, dtype=torch.long, device=device),
          cache=cache, **position_kwargs)
    hook.remove()
_ = cmp("layer 0 attention: by hand vs the model", by_hand, captured["output"])

# %% [markdown]
# ## 3. The same walkthrough on `bloom-1b4-zh` (meta device)
#
# The source tutorial trains `Langboat/bloom-1b4-zh`. We build its architecture on the **meta device**: tensors
# have shapes but no storage, so a model of over a billion parameters (counted in section 7) costs nothing and
# every shape can still be checked. BLOOM differs in two ways that matter here: it has no GQA (16 query heads,
# 16 key/value heads, so the prefix is `d_model` wide), and one fused `query_key_value` linear layer produces Q, K
# and V together, laid out per head as `[q | k | v]`. (It also has no position embeddings: ALiBi biases the scores by distance instead.)

# %%
bloom = peftedu.build_from_config("bloom-1b4-zh")
bloom_config = bloom.config
L_b, d_model_b, h_b = bloom_config.n_layer, bloom_config.hidden_size, bloom_config.n_head
d_h_b, p_b = d_model_b // h_b, 10
bloom_attention = bloom.transformer.h[0].self_attention
print(f"L={L_b}, d_model={d_model_b}, h={h_b}, d_h={d_h_b}; fused projection: {bloom_attention.query_key_value}")
assert (L_b, d_model_b, h_b, d_h_b) == (24, 2048, 16, 128)

shapes_bloom, shapes_model = {}, shapes
shapes = shapes_bloom  # check() now records BLOOM's shapes
x_b = torch.empty(N, T, d_model_b, device="meta")
check("x", x_b, (N, T, d_model_b))
fused = bloom_attention.query_key_value(x_b)
assert tuple(fused.shape) == (N, T, 3 * d_model_b)  # [q|k|v] of head 0, [q|k|v] of head 1, ...
fused_heads = fused.view(N, T, h_b, 3, d_h_b)
Q_b, K_b, V_b = (fused_heads[..., i, :].transpose(1, 2) for i in range(3))
check("Q", Q_b, (N, h_b, T, d_h_b))
check("K", K_b, (N, h_b, T, d_h_b))
check("V", V_b, (N, h_b, T, d_h_b))

# %%
prefix_b = torch.empty(p_b, L_b * 2 * h_b * d_h_b, device="meta")
check("prefix parameter", prefix_b, (p_b, L_b * 2 * d_model_b))
print(f"{prefix_b.numel():,} trainable numbers (p={p_b}); the source tutorial reports 983,040")
assert prefix_b.numel() == 983_040
per_entry_b = prefix_b.view(p_b, 2 * L_b, h_b, d_h_b).permute(1, 2, 0, 3)
P_K_b, P_V_b = (per_entry_b[i].unsqueeze(0).expand(N, -1, -1, -1) for i in (0, 1))
check("P_K (layer 0)", P_K_b, (N, h_b, p_b, d_h_b))
check("P_V (layer 0)", P_V_b, (N, h_b, p_b, d_h_b))
K_all_b, V_all_b = torch.cat([P_K_b, K_b], dim=2), torch.cat([P_V_b, V_b], dim=2)
check("K' = [P_K; K]", K_all_b, (N, h_b, p_b + T, d_h_b))
check("V' = [P_V; V]", V_all_b, (N, h_b, p_b + T, d_h_b))
scores_b = Q_b @ K_all_b.transpose(-1, -2) / math.sqrt(d_h_b)  # no GQA: no repeat needed
check("scores", scores_b, (N, h_b, T, p_b + T))
A_b = torch.softmax(scores_b, dim=-1)  # (the mask changes values, not shapes; meta tensors have none)
check("A", A_b, (N, h_b, T, p_b + T))
O_b = A_b @ V_all_b
check("O = A V'", O_b, (N, h_b, T, d_h_b))
merged_b = O_b.transpose(1, 2).reshape(N, T, d_model_b)
check("heads merged", merged_b, (N, T, d_model_b))
check("output", bloom_attention.dense(merged_b), (N, T, d_model_b))
shapes = shapes_model

# %% [markdown]
# ### Compared with `peftedu.course.prefix_shapes.prefix_shape_walkthrough`
#
# The package runs the same steps (with an explanation for each) on any model or architecture name. Its shapes
# must equal the ones our cells recorded, step for step and in the same order.

# %%
steps = prefix_shape_walkthrough(model, batch=N, seq_len=T, num_virtual_tokens=p)
print(format_walkthrough(steps))
assert [(s.name, s.shape) for s in steps] == list(shapes_model.items())

# %%
steps_bloom = prefix_shape_walkthrough("bloom-1b4-zh", batch=N, seq_len=T, num_virtual_tokens=p_b)
print(format_walkthrough(steps_bloom))
assert [(s.name, s.shape) for s in steps_bloom] == list(shapes_bloom.items())
assert "K' per query head" not in shapes_bloom  # 16 = 16 heads: nothing to repeat

# %% [markdown]
# **Correcting the sources.** The source tutorial writes the prefix as `(L, h, p, d_h)` with vectors as wide as
# `d_model`; one interview note counts `p × L × 2 × hidden_dim`. Both hold for BLOOM, not for GQA models: the
# prefix is as wide as the **keys**, `h_kv × d_h`. Per layer it enters as `(N, h_kv, p, d_h)` — one copy per batch
# row, the layer picked from the stacked `2L` entries.

# %%
hidden_dim_formula = 10 * L * 2 * d_model
with torch.device("meta"):  # the same architecture without weights: counting needs no numbers
    meta_model = transformers.AutoModelForCausalLM.from_config(model.config)
counted = get_peft_model(meta_model, PrefixTuningConfig(num_virtual_tokens=10)).get_nb_trainable_parameters()[0]
print(f"p=10 on this model: p x L x 2 x hidden_dim = {hidden_dim_formula:,}; counted {counted:,} = "
      f"p x L x 2 x (h_kv x d_h)")
assert counted == 10 * L * 2 * h_kv * d_h
if h_kv < h:
    assert counted == hidden_dim_formula * h_kv // h

# %% [markdown]
# **Prefix tuning vs prompt tuning (提示微调), per virtual token.** Prompt tuning (notebook 02) trains one input
# embedding of `d_model` numbers per virtual token; prefix tuning trains a key and a value in each layer,
# `2 × L × h_kv × d_h` numbers. The ratio is `2L` only when `h_kv × d_h = d_model` (no GQA, as in BLOOM); with GQA it
# is `2L × h_kv / h`. From the config of the model in use, checked against the trainable parameters that both methods
# really create with the same `p` (on the meta device):

# %%
prefix_per_token, prompt_per_token = 2 * L * h_kv * d_h, d_model
with torch.device("meta"):
    counted_prefix = get_peft_model(transformers.AutoModelForCausalLM.from_config(model.config),
                                    PrefixTuningConfig(num_virtual_tokens=p)).get_nb_trainable_parameters()[0]
    counted_prompt = get_peft_model(transformers.AutoModelForCausalLM.from_config(model.config),
                                    peftedu.PromptTuningConfig(num_virtual_tokens=p)).get_nb_trainable_parameters()[0]
ratio = prefix_per_token / prompt_per_token
print(f"per virtual token: prefix 2 x L x h_kv x d_h = 2 x {L} x {h_kv} x {d_h} = {prefix_per_token:,}; "
      f"prompt d_model = {prompt_per_token:,}")
print(f"p={p}: prefix tuning trains {counted_prefix:,}, prompt tuning {counted_prompt:,}: "
      f"{ratio:g} x (2L would say {2 * L})")
assert (counted_prefix, counted_prompt) == (p * prefix_per_token, p * prompt_per_token)
assert counted_prefix * prompt_per_token == counted_prompt * prefix_per_token  # the counted ratio is the formula's
assert (ratio == 2 * L) == (h_kv * d_h == d_model)
if model.name_or_path == peftedu.course.models.MODEL_ALIASES[peftedu.DEFAULT_MODEL]:
    assert ratio == 20  # SmolLM2-135M: 2 x 30 x 3 x 64 / 576, not 2L = 60

# %% [markdown]
# ### Explore the shapes yourself
#
# Sliders for `p`, `T` and `N` and a dropdown of architectures (all built on the meta device, so even the 1.7B
# models cost nothing); every change redraws the walkthrough as a monospace table (wide lines scroll sideways,
# never break mid-word). The controls need a live Jupyter kernel: a static rendering of this notebook shows the
# table of the default setting instead, with a line saying so.

# %% tags=["nbval-ignore-output"]
explorer = prefix_shape_explorer()
print("controls:", [control.description for control in explorer.children[0].children])
explorer

# %% [markdown]
# ## 4. How the prefix enters the model: from tuples to `Cache` objects
#
# The prefix *is* a key/value cache, so it rides on the model's cache argument — and that argument changed
# under prefix tuning several times:
#
# | transformers | the model's cache argument | prefix tuning in HF peft |
# |---|---|---|
# | up to 4.35 | a tuple per layer of `(key, value)` tensors; BLOOM with its own layout, keys `(N·h, d_h, p)` | passes tuples; re-shapes BLOOM's prefix (`bloom_model_postprocess_past_key_value`) |
# | 4.36 – 4.55 | `Cache` objects (`DynamicCache`) arrive; tuples still accepted, then deprecated; BLOOM moves to the standard layout | wraps its tuples with `DynamicCache.from_legacy_cache` |
# | 4.56 – 4.x | `DynamicCache` built from a list of `(key, value)` pairs | `DynamicCache(pairs)` |
# | 5.x (here 5.24) | only `Cache` objects; the argument is `cache`, `past_key_values` a deprecated alias; no `from_legacy_cache` | `peftedu`: `DynamicCache([(key_0, value_0), …], config=...)` as `cache` |
#
# (The version boundaries are the ones peft's own source tests for.) Each change broke prefix tuning for a while:
# tuples deprecated (peft issue #1962, fixed in PR #2096), `_supports_cache_class` removed (PR #2662), the
# `key_cache` attribute removed (PR #2737, issue #2821).
# The cell checks what this notebook's transformers does.

# %%
print("the forward argument:", cache_argument(model))
assert "cache" in inspect.signature(model.forward).parameters
assert not hasattr(DynamicCache, "from_legacy_cache")
legacy = tuple(prefix_key_values(prefix.detach(), L, h_kv, d_h, N))  # the old format: per layer (key, value)
mask = torch.ones(N, p + T, dtype=torch.long, device=device)
try:
    model(input_ids=input_ids, attention_mask=mask, cache=legacy)
    raise AssertionError("a tuple cache was accepted")
except AttributeError as error:
    print("a tuple of (key, value) pairs is refused:", error)

cache = DynamicCache(list(legacy), config=model.config)
print(f"a DynamicCache: {len(cache.layers)} layers, layer 0 keys {tuple(cache.layers[0].keys.shape)}, "
      f"length {cache.get_seq_length()}")
with torch.no_grad():
    new_name = model(input_ids=input_ids, attention_mask=mask, **position_kwargs,
                     cache=DynamicCache(list(legacy), config=model.config)).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old_name = model(input_ids=input_ids, attention_mask=mask, **position_kwargs,
                         past_key_values=DynamicCache(list(legacy), config=model.config)).logits
print("the old name warns:", caught[0].message)
_ = cmp("logits: cache= vs past_key_values=", new_name, old_name, atol=0)

# %% [markdown]
# A `DynamicCache` also *grows*: the model appends the new tokens' keys and values to it. That is why
# `peftedu` builds a fresh cache for every call — reusing one would feed the previous batch's tokens as prefix.

# %%
assert cache.get_seq_length() == p  # the one handed over above was untouched...
with torch.no_grad():
    model(input_ids=input_ids, attention_mask=mask, **position_kwargs, cache=cache)
print("after one forward the cache holds", cache.get_seq_length(), "positions")
assert cache.get_seq_length() == p + T  # ...this one now holds prefix + tokens

# %% [markdown]
# ## 5. Position encoding (位置编码): which positions do the real tokens take?
#
# A cache normally holds tokens that *were* read, at positions `0..p-1`, so by default transformers places new
# tokens after it, at `p..p+T-1`. But the prefix was never read at any position: its keys are stored **unrotated**.
# `peftedu`'s convention: real tokens take positions `0..T-1`, counted from the attention mask (`cumsum - 1`, so
# left padding is skipped), in `forward` and in `generate` alike — the positions the prompt has without any prefix,
# and the same whether a prompt is padded or not.
#
# RoPE is relative between two *rotated* vectors, but a query at position `i` meets an unrotated prefix key, so
# its score with the prefix depends on `i` itself: shifting the tokens changes the output. BLOOM has no position
# ids to choose: ALiBi counts every key's position from the attention mask (prefix `0..p-1`, pads skipped), and
# only distances matter, so there is one answer and nothing to shift.

# %%
prompts = ["The capital of France is", "Hi"]
batch = collate_for_generation(tokenizer, prompts)
batch = {k: v.to(device) for k, v in batch.items()}
assert batch["attention_mask"][1, 0] == 0  # left-padded
tokens = batch["attention_mask"].bool()
print("positions from the mask:\n", positions_from_mask(batch["attention_mask"]))

ours = get_peft_model(copy.deepcopy(model), PrefixTuningConfig(num_virtual_tokens=p))
with torch.no_grad():
    ours.prompt_encoder["default"].embedding.weight.copy_(prefix)  # the prefix of section 2
    at_zero = ours(**batch).logits
    if takes_positions:
        at_p = ours(**batch, position_ids=positions_from_mask(batch["attention_mask"]) + p).logits
        _ = cmp("logits: positions 0..T-1 vs p..p+T-1", at_zero[tokens], at_p[tokens], atol=1e-3, expect="different")
    else:
        print(f"{type(model).__name__} takes no position ids (ALiBi): no convention to choose, nothing to shift")

# %% [markdown]
# **What HF peft 0.21.2 does with transformers 5.24.** Its `forward` leaves the positions to transformers, which
# counts from the cache length: real tokens at `p..p+T-1` (given `position_ids`, it adds `p` to them). Its
# `generate` passes the prefix as `past_key_values` next to generate's own (empty) `cache`, which wins — the
# prefix is silently dropped (on BLOOM too). Both measured here on an unpadded prompt (peft's calls warn about
# the deprecated name; we silence that one warning). On BLOOM, which takes no positions, peft's forward equals ours.

# %%
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated")  # peft's calls use the old name
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # and a deprecated attribute
theirs = peft.get_peft_model(copy.deepcopy(model), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p))
theirs.prompt_encoder["default"].embedding.weight.data.copy_(prefix.data)
one = {k: v[:1] for k, v in batch.items()}  # "The capital of France is", no padding
T_one = one["input_ids"].shape[1]
with torch.no_grad():
    peft_forward = theirs(**one).logits
    shifted = {"position_ids": torch.arange(p, p + T_one, device=device)[None]} if takes_positions else {}
    ours_shifted = ours(**one, **shifted).logits
    peft_first = theirs.generate(**one, max_new_tokens=1, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True).scores[0]
    base_last = model(**one).logits[:, -1]


def logits_tolerance(logits):
    """Two routes to these logits (another library, a cached path) differ only in rounding: L layers x the MLP's
    long sums (its intermediate width; BLOOM's is 4 x d_model), at the logits' size and in the model's dtype (see
    notebook 00, Reading the outputs)."""
    mlp_width = getattr(config, "intermediate_size", None) or 4 * d_model
    return rounding_tolerance(model.dtype, magnitude=logits.abs().max().item(), terms=L * mlp_width)


cmp("peft forward vs ours at positions p..p+T-1" if takes_positions else "peft forward vs ours (ALiBi, no positions)",
    peft_forward, ours_shifted, atol=logits_tolerance(ours_shifted))
cmp("peft generate's first scores vs NO prefix", peft_first, base_last, atol=logits_tolerance(base_last))
assert (peft_first - peft_forward[:, -1]).abs().max() > 1e-2  # generate disagrees with its own forward
del theirs

# %% [markdown]
# ## 6. From scratch == `peftedu` == HF `peft`
#
# Prefix tuning from scratch is four lines: a tensor, the reshape, a `DynamicCache`, and a model call with the
# mask extended by `p` ones and positions from the mask. We run it on a left-padded batch and compare with
# `peftedu` (same prefix) and HF `peft` (same prefix, given `position_ids - p` so that after its `+ p` the real
# tokens sit at our `0..T-1`; BLOOM takes no positions, so peft gets none). Logits at pad positions mean nothing
# and are left out.

# %%
def prefix_forward(base, flat_prefix, input_ids, attention_mask):
    """Prefix tuning by hand: the flat prefix as a DynamicCache, real tokens at positions 0..T-1."""
    n = input_ids.shape[0]
    cache = DynamicCache(prefix_key_values(flat_prefix, L, h_kv, d_h, n), config=base.config)
    prefix_mask = torch.ones(n, flat_prefix.shape[0], dtype=attention_mask.dtype, device=attention_mask.device)
    positions = {"position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)} if takes_positions else {}
    return base(input_ids=input_ids, attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
                cache=cache, **positions)


theirs = peft.get_peft_model(copy.deepcopy(model), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p))
theirs.prompt_encoder["default"].embedding.weight.data.copy_(prefix.data)
with torch.no_grad():
    scratch = prefix_forward(model, prefix, **batch).logits
    ours_logits = ours(**batch).logits
    peft_shift = {"position_ids": positions_from_mask(batch["attention_mask"]) - p} if takes_positions else {}
    peft_logits = theirs(**batch, **peft_shift).logits
prefix_tol = logits_tolerance(scratch[tokens])
cmp("scratch vs peftedu", scratch[tokens], ours_logits[tokens], atol=prefix_tol)
cmp("scratch vs HF peft (position_ids - p)" if takes_positions else "scratch vs HF peft", scratch[tokens],
    peft_logits[tokens], atol=prefix_tol)
cmp("scratch changes the base model's logits", scratch[tokens], model(**batch).logits[tokens], atol=prefix_tol,
    expect="different")
del theirs, ours

# %% [markdown]
# ## 7. `prefix_projection`: the reparameterisation (重参数化) and its cost
#
# Li & Liang found that optimising the prefix directly was unstable, so they trained a small MLP that *produces*
# it: an embedding `(p, token_dim)` → `Linear(token_dim, encoder_hidden_size)` → `tanh` →
# `Linear(encoder_hidden_size, L × 2 × token_dim)`. After training only the MLP's output is needed — that is what
# gets saved. P-tuning v2 uses the same deep prefix, usually without the MLP (`prefix_projection=False`).
#
# The source tutorial reports, for `bloom-1b4-zh` with `p = 10`, 983,040 trainable parameters without and
# 205,641,728 with projection. Reproduced on the meta device, and the projection's three parts counted by hand:

# %%
def bloom_prefix(projection):
    return get_peft_model(peftedu.build_from_config("bloom-1b4-zh"),
                          PrefixTuningConfig(num_virtual_tokens=10, prefix_projection=projection))


plain, projected = bloom_prefix(False), bloom_prefix(True)
plain.print_trainable_parameters()
projected.print_trainable_parameters()
token_dim, width = d_model_b, L_b * 2 * d_model_b
by_hand = {"embedding (p, token_dim)": 10 * token_dim,
           "Linear(token_dim, hidden) + bias": token_dim * token_dim + token_dim,
           "Linear(hidden, L*2*token_dim) + bias": token_dim * width + width}
for part, count in by_hand.items():
    print(f"  {part:<38} {count:>12,}")
assert plain.get_nb_trainable_parameters() == (983_040, 1_304_094_720)
assert projected.get_nb_trainable_parameters() == (205_641_728, 1_508_753_408) == (sum(by_hand.values()), 1_508_753_408)
ratio = 205_641_728 / 983_040
print(f"with projection: {ratio:.0f} x the numbers of the prefix it produces; "
      f"{by_hand['Linear(hidden, L*2*token_dim) + bias'] / 205_641_728:.1%} of them in the last linear layer")

# %% [markdown]
# So the projection trains far more numbers than the prefix it produces — the cell above prints the factor and
# the share of the whole BLOOM model — nearly all of them in the last linear layer, `hidden × L·2·token_dim`.
# The source tutorial files prefix tuning under "low cost, low storage"; with projection that holds for the saved
# prefix, not for training (the optimizer states follow the trainable count). The MLP's output *is* the prefix;
# here is the reparameterisation by hand on the model in use:

# %%
torch.manual_seed(0)
with_mlp = get_peft_model(copy.deepcopy(model), PrefixTuningConfig(num_virtual_tokens=p, prefix_projection=True))
encoder = with_mlp.prompt_encoder["default"]
print(encoder)
first, _, last = encoder.transform
with torch.no_grad():
    by_hand_prefix = last(torch.tanh(first(encoder.embedding.weight)))
assert tuple(by_hand_prefix.shape) == (p, L * 2 * h_kv * d_h)
cmp("MLP by hand vs PrefixEncoder()", by_hand_prefix, encoder())
with_mlp.print_trainable_parameters()
del with_mlp, plain, projected, bloom

# %% [markdown]
# ## 8. Training on the bundled task
#
# Task `topic`: name the topic of a sentence with one word (sports, cooking, travel, technology). Settings: `p = 16`
# virtual tokens without projection, learning rate `1e-2` (prompt methods need much larger rates than LoRA's
# `2e-3`: the prefix is the only thing that moves), the rest from the profile (`PEFTEDU_PROFILE=quick`: 12 steps of 8
# examples). First the base model's zero-shot score and a sample answer.

# %%
train_data, test_data = load_task("topic", "train"), load_task("topic", "test")
sample = test_data[0]
print("input:", sample["input"], "| reference:", sample["output"])
before = evaluate(model, tokenizer, "topic")
sample_before = generate_answers(model, tokenizer, [sample], max_new_tokens=8)[0]
print(f"zero-shot: {before['score']:.3f} on {before['n']} rows; sample answer {sample_before!r}")

# %%
num_virtual_tokens = 16
peft_model = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=num_virtual_tokens))  # base frozen in place
peft_model.print_trainable_parameters()
assert peft_model.get_nb_trainable_parameters()[0] == num_virtual_tokens * L * 2 * h_kv * d_h

# %% [markdown]
# **Initialisation matters.** peft draws the prefix from N(0, 1): keys and values unlike anything the model has
# produced, so the first loss is far above the base model's, and a short run spends its steps undoing the noise
# (Adam moves each number by about the learning rate per step). Li & Liang initialise the prefix with the
# activations of **real words** instead. A prefix *is* a cache, so we take a real one: run a task-like text of `p`
# tokens, read its `DynamicCache`, and write it into the prefix layout — the inverse of the reshape in section 2.
# The text runs at positions `-p..-1`, so it sits just before the real tokens at `0..T-1`, as if the model had read
# it first (RoPE is fine with negative positions: only differences of positions reach the scores). BLOOM takes no
# positions: the text is read at `0..p-1`, the places its ALiBi gives the prefix keys anyway.

# %%
@torch.no_grad()
def prefix_from_text(base, text, n_tokens):
    """Li & Liang's initialisation: the key/value cache of the text's first n_tokens, in peft's prefix layout."""
    ids = tokenizer(text)["input_ids"]
    assert len(ids) >= n_tokens, f"the text has {len(ids)} tokens; need {n_tokens}"
    ids = torch.tensor([ids[:n_tokens]], device=device)
    before = {"position_ids": torch.arange(-n_tokens, 0, device=device)[None]} if takes_positions else {}
    cache = base(input_ids=ids, use_cache=True, **before).cache
    per_entry = torch.stack([t for layer in cache.layers for t in (layer.keys[0], layer.values[0])])  # (2L,h_kv,p,d_h)
    flat = per_entry.permute(2, 0, 1, 3).reshape(n_tokens, -1)  # (p, L * 2 * h_kv * d_h)
    assert torch.equal(prefix_key_values(flat, L, h_kv, d_h, 1)[L - 1][1], cache.layers[L - 1].values)  # the inverse
    return flat


init_text = "Classify the topic of the sentence as sports, cooking, travel or technology."
text_prefix = prefix_from_text(model, init_text, num_virtual_tokens)
first_batch = TrainingCollator(tokenizer)(tokenize_dataset(tokenizer, list(train_data.select(range(8))),
                                                           get_profile().max_length))
first_batch = {k: v.to(device) for k, v in first_batch.items()}
weight = peft_model.prompt_encoder["default"].embedding.weight
with torch.no_grad():
    with peft_model.disable_adapter():
        loss_base = peft_model(**first_batch).loss.item()
    loss_random = peft_model(**first_batch).loss.item()
    weight.copy_(text_prefix)
    loss_text = peft_model(**first_batch).loss.item()
print(f"loss on 8 training examples: no prefix {measured(loss_base)}, N(0, 1) prefix {measured(loss_random)}, "
      f"prefix from real words {measured(loss_text)}")
if is_pretrained(model):
    assert loss_random > loss_base + 1 and abs(loss_text - loss_base) < abs(loss_random - loss_base)
else:
    print("random weights: no text is 'real words' to them; checked only that all three losses are finite")
    assert all(math.isfinite(v) for v in (loss_base, loss_random, loss_text))

# %% [markdown]
# **A zero prefix is not "no prefix".** Zeros look like a neutral start (`init_weights="zero"`), but a zero key still
# gets a score — `q · 0 = 0`, plus ALiBi's bias on BLOOM — and so still takes softmax mass, while its zero value adds
# nothing to the output. In every head and for every token, the output is the no-prefix output scaled by
#
# $$\frac{Z}{Z + \sum_{j<p} e^{s_j}},\qquad Z = \sum_{\text{real keys } k} e^{s_k}$$
#
# (scores `s` shifted by the row's maximum, as softmax does; on a rotary model every `s_j = 0`, so the sum is `p`
# before the shift: `Z / (Z + p)`). Every attention layer's output shrinks, so the model is not the base model. We
# check the prediction on layer 0 — it reads the same `x` with and without a prefix — with the scores of section 2
# (the model's real attention, its ALiBi bias included), then compare the losses. LLaMA-Adapter (notebook 05) avoids
# exactly this: its prompt gets its own softmax, multiplied by a gate that starts at 0.

# %%
base = peft_model.base_model  # the frozen model under the prefix (what model was)
out_proj = attention_projections(attention_layers(base)[0])[3]  # layer 0's o_proj (BLOOM: dense)
heads_in = []  # what it reads: the heads side by side, (N, T, h * d_h)
hook = out_proj.register_forward_pre_hook(lambda module, args: heads_in.append(args[0]))
zero_prefix = torch.zeros(p, L * 2 * h_kv * d_h, device=device, dtype=model.dtype)  # p virtual tokens, as in section 2
with torch.no_grad():
    base(input_ids=input_ids, **position_kwargs)  # no prefix
    base(input_ids=input_ids, attention_mask=torch.ones(N, p + T, dtype=torch.long, device=device),
         cache=DynamicCache(prefix_key_values(zero_prefix, L, h_kv, d_h, N), config=base.config), **position_kwargs)
hook.remove()
without_prefix, with_zero_prefix = heads_in

# The prediction, from section 2's scores (layer 0 reads the same x with or without a prefix; BLOOM: with ALiBi).
with torch.no_grad():
    bias = position_bias.to(device).expand(N, h, T, p + T)  # 0 on rotary models
    real_scores = Q_pos @ K_pos.repeat_interleave(groups, dim=1).transpose(-1, -2) / math.sqrt(d_h) + bias[..., p:]
    real_scores = real_scores.masked_fill(~keep[:, p:], float("-inf"))  # causal over the real tokens
    zero_key_scores = bias[..., :p]  # q . 0 = 0, plus ALiBi's bias on BLOOM
    shift = torch.maximum(real_scores.amax(-1), zero_key_scores.amax(-1))[..., None]  # softmax's max shift
    Z = torch.exp(real_scores - shift).sum(-1)  # (N, h, T)
    Z_prefix = torch.exp(zero_key_scores - shift).sum(-1)  # = p e^(-shift) when the zero keys score 0
    scale = Z / (Z + Z_prefix)
    predicted = (without_prefix.view(N, T, h, d_h) * scale.transpose(1, 2)[..., None]).reshape(N, T, h * d_h)
if rotary is not None:
    assert torch.allclose(Z_prefix * torch.exp(shift[..., 0]), torch.full_like(Z_prefix, p))  # exactly p e^0
print(f"layer 0, per head and token: the output is scaled by Z/(Z + Σ e^s_j), between {measured(scale.min().item())} "
      f"and {measured(scale.max().item())}")
assert (scale < 1).all()
# two routes (the model's attention over p + T keys; ours over T, then scaled): d_h-long scores, p + T-long sums
zero_prefix_tol = rounding_tolerance(model.dtype, magnitude=without_prefix.abs().max().item(), terms=d_h * (p + T))
cmp("layer 0 heads: zero prefix vs Z/(Z+p) x none", with_zero_prefix, predicted, atol=zero_prefix_tol)
cmp("layer 0 heads: zero prefix vs no prefix", with_zero_prefix, without_prefix, atol=zero_prefix_tol,
    expect="different")

with torch.no_grad():
    weight.copy_(torch.zeros_like(weight))  # the whole prefix of section 8 (p = 16) at zero
    zero_prefix_output = peft_model(**first_batch)
    weight.copy_(text_prefix)  # back to the real-word prefix for training
    with peft_model.disable_adapter():
        no_prefix_logits = peft_model(**first_batch).logits
loss_zero = zero_prefix_output.loss.item()
print(f"loss on the 8 training examples: no prefix {measured(loss_base)}, zero prefix {measured(loss_zero)}")
_ = cmp("logits: zero prefix vs no prefix", zero_prefix_output.logits, no_prefix_logits,
        atol=logits_tolerance(no_prefix_logits), expect="different")
if is_pretrained(model):
    _ = cmp("loss: zero prefix vs no prefix", torch.tensor(loss_zero), torch.tensor(loss_base),
            atol=logits_tolerance(torch.tensor(loss_base)), expect="different")
else:
    print("random weights: near-uniform logits make the loss insensitive; the verdict is on the logits")
del zero_prefix_output, no_prefix_logits

# %% [markdown]
# Before training we also record how much attention the last prompt token — the one whose logits pick the
# answer's first token — puts on the prefix, per layer, over 16 test prompts. Attention weights need the "eager"
# attention implementation (SDPA does not return them).

# %%
probe = collate_for_generation(tokenizer, [peftedu.build_prompt(tokenizer, r["instruction"], r["input"])
                                           for r in test_data.select(range(16))])
probe = {k: v.to(device) for k, v in probe.items()}


@torch.no_grad()
def attention_on_prefix(peft_model, batch):
    """Per layer: mean over prompts and heads of the attention weight the last token puts on the p prefix keys."""
    base = peft_model.base_model
    implementation = base.config._attn_implementation
    base.set_attn_implementation("eager")
    try:
        attentions = peft_model(**batch, output_attentions=True).attentions  # L x (N, h, T, p + T)
    finally:
        base.set_attn_implementation(implementation)
    n_prefix = peft_model.peft_config[peft_model.active_adapter].num_virtual_tokens
    assert attentions[0].shape[-1] == n_prefix + batch["input_ids"].shape[1]
    return torch.stack([a[:, :, -1, :n_prefix].sum(-1).mean() for a in attentions]).cpu()


on_prefix_before = attention_on_prefix(peft_model, probe)
print(f"attention on the initial prefix, mean over layers: {measured(on_prefix_before.mean().item())}")

# %%
history = train(peft_model, tokenizer, train_data, lr=1e-2, progress=False)
print(f"loss {measured(history.loss[0])} -> {measured(history.loss[-1])} over {history.steps} steps")
print(history.summary())
plot_history(history)
plt.show()
if is_pretrained(model):
    assert history.loss[-1] < history.loss[0]
else:
    moved = not torch.equal(weight.detach(), text_prefix)
    print(f"random weights: checked that the loss stayed finite, the prefix moved ({moved}) and the base stayed "
          "frozen")
    assert all(math.isfinite(v) for v in history.loss) and moved
    assert not any(t.requires_grad for t in peft_model.base_model.parameters())

# %%
after = evaluate(peft_model, tokenizer, "topic")
sample_after = generate_answers(peft_model, tokenizer, [sample], max_new_tokens=8)[0]
print(f"score: {before['score']:.3f} (zero-shot) -> {measured(after['score'])} (prefix tuning) on {after['n']} rows")
print(f"sample: {sample['input']!r}\n  before: {sample_before!r}\n  after:  {measured(sample_after)}")
if is_pretrained(model):
    assert after["score"] > before["score"] + 0.2
else:
    print("random weights: the scores mean nothing; checked only that evaluation ran on every row")
    assert after["n"] == before["n"] > 0

# %% [markdown]
# ### Where does the attention go?
#
# The same measurement after training. The figure shows, layer by layer, the share of the last prompt token's
# attention that lands on the prefix (the rest goes to the real tokens), before (the real-word prefix) and after
# training.

# %%
on_prefix_after = attention_on_prefix(peft_model, probe)
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.plot(range(L), on_prefix_before, marker="o", markersize=3, label="before training (prefix from real words)")
ax.plot(range(L), on_prefix_after, marker="o", markersize=3, label="after training")
ax.set_xlabel("layer")
ax.set_ylabel("attention on the prefix")
ax.set_ylim(0, 1)
ax.set_title(f"last prompt token, mean over {probe['input_ids'].shape[0]} prompts and {h} heads; "
             f"the rest goes to the real tokens")
ax.legend()
plt.show()
print(f"mean over layers: before {measured(on_prefix_before.mean().item())}, "
      f"after {measured(on_prefix_after.mean().item())}; "
      f"layers where it grew: {measured(int((on_prefix_after > on_prefix_before).sum()), 'd')} of {L}")

# %% [markdown]
# ## 9. Generation: a left-padded batch equals one prompt at a time
#
# Because the real tokens take positions `0..T-1` from the mask in `generate` too, padding must not change
# anything: each prompt of a left-padded batch generates what it generates alone.

# %%
records = list(test_data.select(range(1, 5)))
prompt_texts = [peftedu.build_prompt(tokenizer, r["instruction"], r["input"]) for r in records]
padded = collate_for_generation(tokenizer, prompt_texts)
assert (padded["attention_mask"] == 0).any(), "the batch should need padding"
batched = generate_answers(peft_model, tokenizer, prompt_texts, batch_size=len(prompt_texts), max_new_tokens=8)
alone = [generate_answers(peft_model, tokenizer, [text], batch_size=1, max_new_tokens=8)[0] for text in prompt_texts]
for record, answer in zip(records, batched):
    print(f"reference {record['output']!r:<14} answer {measured(answer)}")
assert batched == alone

# %% [markdown]
# ## 10. Saving and reloading
#
# The file holds one tensor, `prompt_embeddings` `(p, L × 2 × token_dim)`, in HF peft's layout: peft loads it too.

# %%
with tempfile.TemporaryDirectory() as folder:
    peft_model.save_pretrained(folder)
    print(sorted(path.name for path in Path(folder).iterdir()))
    reloaded = PeftModel.from_pretrained(copy.deepcopy(peft_model.base_model), folder)
    by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(peft_model.base_model), folder)
with torch.no_grad():
    trained_logits = peft_model(**batch).logits
    cmp("logits: trained vs reloaded", trained_logits[tokens], reloaded(**batch).logits[tokens], atol=0)
    peft_positions = positions_from_mask(batch["attention_mask"]) - num_virtual_tokens  # peft adds p back
    peft_reloaded = by_peft(**batch, **({"position_ids": peft_positions} if takes_positions else {})).logits
    cmp("logits: trained vs reloaded by HF peft", trained_logits[tokens], peft_reloaded[tokens],
        atol=logits_tolerance(trained_logits[tokens]))
print(f"notebook ran in {time.perf_counter() - notebook_start:.0f} s")

# %% [markdown]
# **Two position conventions, and which one a file carries.** The weights move between the libraries bit for bit,
# but the two number positions differently (sections 5 and 6):
#
# | | real tokens at | pads |
# | --- | --- | --- |
# | `peftedu` (`position_convention="peftedu"`, the default) | 0..T−1, counted from the attention mask | skipped |
# | HF peft 0.21.2's forward (`"peft"`) | p..p+T−1, counted from the cache length | counted |
#
# `peftedu` writes its convention into the safetensors header (peft ignores it). A file written by HF peft has
# none and loads with `"peft"`: a learner who loads a peft-trained prefix gets peft's forward logits, padded rows
# included. `PeftModel.from_pretrained(..., position_convention="peftedu")` asks for ours instead.

# %%
with tempfile.TemporaryDirectory() as folder:
    with warnings.catch_warnings():  # peft looks for the base model's config on the (offline) hub: not needed here
        warnings.filterwarnings("ignore", message="Could not find a config file")
        by_peft.save_pretrained(folder)  # a file written by HF peft
    as_peft = PeftModel.from_pretrained(copy.deepcopy(peft_model.base_model), folder)
    as_ours = PeftModel.from_pretrained(copy.deepcopy(peft_model.base_model), folder, position_convention="peftedu")
print("convention read from peft's file:", as_peft.peft_config["default"].position_convention)
assert as_peft.peft_config["default"].position_convention == "peft"
with torch.no_grad():
    peft_plain = by_peft(**batch).logits  # peft's own forward on the left-padded batch, no position ids
    cmp("peft's file: peftedu vs peft's own forward", as_peft(**batch).logits[tokens], peft_plain[tokens],
        atol=logits_tolerance(peft_plain[tokens]))
    cmp("peft's file, peftedu positions vs trained", as_ours(**batch).logits[tokens], trained_logits[tokens],
        atol=logits_tolerance(trained_logits[tokens]))
del as_peft, as_ours, by_peft

# %% [markdown]
# ## Summary
#
# * Prefix tuning trains `p` key/value pairs per layer and nothing else; queries, weights and tokens are frozen.
#   The prefix is `(p, L × 2 × h_kv × d_h)`, viewed per layer as `(N, h_kv, p, d_h)`; keys and values grow to
#   `p + T`, the scores are `(N, h, T, p + T)`, the output keeps `T` rows.
# * With GQA the prefix has the *key/value* heads (SmolLM2: 3, repeated to 9 for the scores), so counts written
#   with `d_model` overstate it.
# * The prefix reaches the model as a key/value cache: once tuples, now `DynamicCache` objects passed as `cache`.
#   Each API change broke prefix tuning somewhere; build a fresh cache per call.
# * Positions are a convention you must pick and test: here real tokens sit at `0..T-1` in `forward` and
#   `generate`, which makes padded batches equal single prompts. HF peft 0.21.2 with transformers 5.24 puts them at
#   `p..p+T-1` in `forward` and drops the prefix in `generate`.
# * `prefix_projection=True` trains an MLP that produces the prefix (Li & Liang: more stable; many more trainable
#   numbers); only its output is saved.
# * Initialise from real words: a prefix is a cache, so the cache of a task-like text (placed at positions `-p..-1`)
#   starts training near the base model's loss, where peft's N(0, 1) prefix starts far above it.
#
# ## Interview corner
#
# **Q1. Prefix tuning vs prompt tuning?** Prompt tuning adds trainable *input embeddings* (`p × d_model` numbers)
# that the first layer reads like words; prefix tuning adds trainable *keys and values in every layer*
# (`p × L × 2 × h_kv × d_h`). The prefix acts directly inside each layer instead of having to survive the whole
# stack, which is why deep prompts hold up on smaller models where input-only prompts fall behind (the P-tuning v2
# paper's finding), at the cost of more parameters and a longer attention in every layer. Per virtual token that is
# `2 × L × h_kv × d_h` against `d_model`: `2L` times more only without GQA (BLOOM); on SmolLM2-135M
# `2 × 30 × 3 × 64 / 576 = 20×`, not 60× (computed and checked from the config in section 3).
#
# **Q2. Why prefix the keys and values, not the queries?** A query only produces an output for its own position.
# Extra queries would add output rows that no real token reads. Extra keys and values change what every real
# token *attends to and reads*, while the sequence length of the output stays `T`.
#
# **Q3. How does GQA change prefix tuning?** The prefix lives in the key/value cache, which has `h_kv` heads, so
# it is `h_kv × d_h` wide per layer (SmolLM2: 192, not 576); each prefix head is shared by `h / h_kv` query heads.
# Parameter counts and cache layouts written for multi-head attention are wrong by a factor `h / h_kv`.
#
# **Q4. What broke when transformers moved `past_key_values` to `Cache` objects?** Code that handed the model a
# tuple of `(key, value)` tensors, or read `cache.key_cache`, stopped working: tuples needed
# `DynamicCache.from_legacy_cache`, which itself is gone in 5.x, and the argument became `cache`. A prefix must now
# be built as a fresh `DynamicCache` per call (it grows as the model runs), and the positions of the real tokens
# have to be set explicitly, since by default they are counted after the cache.
#
# **Q5. Does prefix tuning cost anything at inference?** Yes: every layer attends over `p` extra keys, and the
# prefix occupies `p` slots of the context window. LoRA can be merged into the weights; a prefix cannot.
#
# ## Exercises
#
# **1.** Run `prefix_shape_walkthrough("qwen2.5-1.5b", batch=1, seq_len=3, num_virtual_tokens=8)`. How many
# query heads share one key/value head, and how wide is the prefix row?
#
# <details><summary>Solution</summary>
#
# Qwen2.5-1.5B has 12 query heads and 2 key/value heads of 128, so 6 query heads share each key/value head
# ("K' per query head" repeats 2 → 12). The prefix row is `L × 2 × 2 × 128 = 28 × 512 = 14,336` wide.
# </details>
#
# **2.** Train the same prefix with `prefix_projection=True` (same `p`, same learning rate). Compare the trainable
# parameters, the wall time and the score. What does `save_pretrained` write, and can you continue training
# from that file?
#
# <details><summary>Solution</summary>
#
# ```python
# model, tokenizer = peftedu.load_base()
# projected = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=16, prefix_projection=True))
# projected.print_trainable_parameters()   # embedding + two linear layers: far more than 16 x 11,520
# history = train(projected, tokenizer, train_data, lr=1e-2, progress=False)
# print(evaluate(projected, tokenizer, "topic")["score"])
# ```
# The file holds the MLP's *output*, `(16, 11520)`, like a plain prefix. The MLP weights cannot be recovered from
# it, so `PeftModel.from_pretrained(..., is_trainable=True)` refuses (HF peft does too); it loads for inference.
# </details>
#
# **3.** Give the real tokens peft's positions `p..p+T-1` during evaluation of the trained prefix
# (`peft_model(..., position_ids=...)` in a loop of your own, or generate with peft). Does the score change?
#
# <details><summary>Solution</summary>
#
# Shift the positions by 16 in a greedy loop (or compare the first-token argmax on the test prompts):
# ```python
# batch = collate_for_generation(tokenizer, prompt_texts)
# pos = positions_from_mask(batch["attention_mask"])
# a = peft_model(**batch).logits[:, -1].argmax(-1)
# b = peft_model(**batch, position_ids=pos + 16).logits[:, -1].argmax(-1)
# print((a != b).sum().item(), "of", len(a), "first tokens change")
# ```
# The prefix was trained with the real tokens at `0..T-1`; moving them changes every query's score against the
# unrotated prefix keys, so the prediction may change — training and inference must use the same convention.
# </details>
#
# **4.** Why does `peftedu` build a new `DynamicCache` in every `forward` call? Show what goes wrong if you reuse
# one cache for two batches.
#
# <details><summary>Solution</summary>
#
# The model appends each batch's keys and values to the cache (section 4 shows the length growing from `p` to
# `p + T`). Reusing it, the second batch would attend to the first batch's tokens as if they were prefix, and the
# shapes only match if the batch size is the same:
# ```python
# cache = DynamicCache(prefix_key_values(prefix.detach(), L, h_kv, d_h, N), config=model.config)
# model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache)
# print(cache.get_seq_length())   # p + T: no longer just the prefix
# ```
# </details>
#
# **5.** Replace the real-word initialisation by peft's default (N(0, 1)) and by `init_weights="zero"`, each with
# learning rates `1e-2` and `5e-2`. Compare the first loss and the final score. Why do all 16 virtual tokens of the
# zero-initialised prefix stay identical during training?
#
# <details><summary>Solution</summary>
#
# ```python
# for init, lr in [(None, 1e-2), (None, 5e-2), ("zero", 1e-2), ("zero", 5e-2)]:
#     model, tokenizer = peftedu.load_base()
#     candidate = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=16, init_weights=init))
#     history = train(candidate, tokenizer, train_data, lr=lr, progress=False)
#     print(init, lr, round(history.loss[0], 2), evaluate(candidate, tokenizer, "topic")["score"])
# ```
# The N(0, 1) prefix starts with a loss far above the base model's and, in 12 steps of Adam (each moving a number by
# about the learning rate), barely gets rid of its noise at `1e-2`. The zero prefix does *not* start at the base
# model's loss: its keys score 0 and still take softmax mass while its values add nothing, so every head's output
# shrinks by `Z / (Z + p)` (section 8 measures it; LLaMA-Adapter's zero-initialised gate is what avoids this).
# And every zero virtual token gets the same score from every query and the same gradient, so the tokens
# never become different: a zero prefix of any length behaves like `p` copies of one key/value pair per layer.
# Real-word (or random) initialisation breaks that symmetry.
# </details>
