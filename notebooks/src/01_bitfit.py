# %% [markdown]
# # 01 · BitFit (偏置微调, bias-term fine-tuning): train the biases, freeze everything else
#
# BitFit (Ben Zaken, Ravfogel & Goldberg 2021, arXiv:2106.10199) is the simplest *selective* PEFT method
# (选择性微调): it adds nothing to the model, it only chooses which of its existing parameters train — the bias
# vectors, a tiny fraction of all parameters. It is the first method of the series because it needs no new idea
# beyond `requires_grad`, and because it already shows the two questions every later method answers: *how many*
# parameters train, and *does the model start exactly where the pretrained one was*.
#
# **After this notebook you can**
#
# * say what BitFit trains, and reproduce the source tutorial's count on bloom-1b4-zh's architecture — 544,768
#   trainable parameters — with the share it gets wrong (it is 0.0418 %, not 0.418 %);
# * explain why BitFit "as written" trains *nothing* on Llama-family models such as SmolLM2, and what to do about it
#   (zero-initialised biases, 155,520 of them on SmolLM2);
# * build BitFit from scratch in a few lines, and show that it equals `peftedu.BitFitConfig` (and HF peft's nearest
#   relative, BEFT);
# * train it on the `topic` task, look at what moved, save, reload and merge it.

# %%
%matplotlib inline
import copy
import json
import math
import logging
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports bitsandbytes; its CPU-kernel notice is noise here
import peft
import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from peftedu import BitFitConfig, PeftModel, get_peft_model
from peftedu.counting import count_parameters, print_trainable_parameters
from peftedu.bitfit import BitFitLayer, undeclared_biases
from peftedu.course.compare import cmp, measured, rounding_tolerance
from peftedu.course.data import load_task
from peftedu.course.tokenization import TrainingCollator, build_prompt, collate_for_generation, tokenize_example
from peftedu.course.explorers import linear_suffixes
from peftedu.course.shapes import architecture, decoder_layers
from peftedu.course.models import DEFAULT_MODEL, build_from_config, is_pretrained, load_base, model_name
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate, generate_answers

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the notebook
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
torch.manual_seed(0)
profile = get_profile()  # PEFTEDU_PROFILE: "quick" (CPU, default) or "full" (GPU)
model, tokenizer = load_base()
# Tolerances of the comparisons (notebook 00, section 6): two routes that add the same numbers in another order (a
# bias inside the matrix product vs added after it, a merged weight) round differently, and the model's layers carry
# that to the logits. rounding_tolerance = 10 x eps(dtype) x magnitude x sqrt(terms).
arch = architecture(model)  # the model's shape from its config (notebook 00)
MODEL_TERMS = arch.mlp_hidden * arch.n_layers  # SmolLM2-135M, the default: 30 layers x 1,536-long sums


def model_tol(values):
    """Tolerance for ``values`` computed through the whole model by two routes that round differently."""
    return rounding_tolerance(model.dtype, magnitude=values.abs().max().item(), terms=MODEL_TERMS)


def same_output(a, b):
    """Adding an exact zero changes no bit; on a GPU a layer with a bias may take another matrix kernel than one
    without, which adds the same products in another order: there, equal up to rounding."""
    return torch.equal(a, b) if model.device.type == "cpu" else (a - b).abs().max().item() <= model_tol(b)


print(f"{model.name_or_path}: {count_parameters(model)[1]:,} parameters on {model.device} in {model.dtype}, "
      f"profile {profile.name}")

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

# %% [markdown]
# ## 1. What BitFit trains: the bias terms (偏置)
#
# Almost every layer of a transformer ends by adding a vector. A linear layer and a LayerNorm compute
#
# $$ y = x W^\top + b, \qquad y = \gamma \odot \frac{x - \mu}{\sigma} + \beta $$
#
# BitFit freezes W and γ and trains only the biases b and β. A bias has one entry per *output* feature while its
# weight has one per output *and* input feature, so the biases are a few hundredths of a percent of a large model.
# Each bias adds the same vector to every token: BitFit cannot make a layer react differently to different inputs,
# it can only shift where the layer's outputs sit (and, through the nonlinearities after it, which units fire).
#
# The source tutorial (002) uses Langboat/bloom-1b4-zh, a BLOOM model with biases everywhere. We build its
# architecture on the **meta device** — shapes without storage, no download — and apply the tutorial's recipe: set
# `requires_grad = False` on every parameter whose name does not contain `bias`.

# %%
bloom = build_from_config("bloom-1b4-zh")  # meta device: 1.3B parameters, no memory
for name, param in bloom.named_parameters():
    param.requires_grad_("bias" in name)  # the tutorial's recipe
bloom_trainable, bloom_total = count_parameters(bloom)
print_trainable_parameters(bloom)

bloom_cfg = bloom.config
d_bloom, n_layers_bloom = bloom_cfg.hidden_size, bloom_cfg.n_layer
# per block: input LayerNorm d, fused query_key_value 3d, attention output dense d, post-attention LayerNorm d,
# MLP dense_h_to_4h 4d, MLP dense_4h_to_h d  -> 11 d;  plus the embedding LayerNorm and the final LayerNorm: 2 d
by_hand = n_layers_bloom * 11 * d_bloom + 2 * d_bloom
share = 100 * bloom_trainable / bloom_total
print(f"by hand: {n_layers_bloom} x 11 x {d_bloom} + 2 x {d_bloom} = {by_hand:,}")
print(f"share: {bloom_trainable:,} / {bloom_total:,} = {share:.4f} %  (source 002 says 0.418 %)")
assert (bloom_trainable, bloom_total) == (544_768, 1_303_111_680) == (by_hand, bloom_total)
assert round(share, 4) == 0.0418  # the tutorial's 0.418 % is ten times too large

# %% [markdown]
# The count 544,768 of 1,303,111,680 is exactly the tutorial's — and the formula shows where it comes from:
# 11·d biases per block, 2·d outside the blocks. The share the tutorial prints next to it, 0.418 %, is off by a
# factor of ten: 544,768 / 1,303,111,680 = 0.000418 = **0.0418 %** (a ratio was read as a percentage). It
# matters when you compare methods: a share ten times too large makes BitFit look ten times more expensive than it
# is.
#
# Where do the biases sit? Grouping bloom's parameters by kind (summed over the blocks) shows weights and biases
# side by side:

# %%
kinds = defaultdict(lambda: [0, 0])  # kind -> [weight entries, bias entries]
for name, param in bloom.named_parameters():
    kind = name.split(".h.")[-1].split(".", 1)[-1].rsplit(".", 1)[0] if ".h." in name else name.rsplit(".", 1)[0]
    kind = kind.replace("transformer.", "")
    kinds[kind][name.endswith("bias")] += param.numel()
fig, ax = plt.subplots(figsize=(10, 3.6))
labels = list(kinds)
xs = torch.arange(len(labels)).float()
ax.bar(xs - 0.2, [kinds[k][0] for k in labels], width=0.4, label="weights (frozen)", color="#c6d4e1")
ax.bar(xs + 0.2, [kinds[k][1] for k in labels], width=0.4, label="biases (trained by BitFit)", color="#f4a582")
ax.set_yscale("log")
ax.set_xticks(xs.tolist(), labels, rotation=25, ha="right", fontsize=8)
ax.set_ylabel("parameters (all blocks)")
ax.set_title(f"bloom-1b4-zh: BitFit trains {bloom_trainable:,} of {bloom_total:,} parameters ({share:.4f} %)")
ax.legend()
plt.tight_layout()
plt.show()
for kind in labels:
    print(f"{kind:<40} weights {kinds[kind][0]:>13,}   biases {kinds[kind][1]:>8,}")
assert sum(bias for _, bias in kinds.values()) == bloom_trainable

# %% [markdown]
# The embedding table (and the output head that shares it) has no bias at all; the
# weights of every linear layer are thousands of times larger than its bias.
#
# Source 001 cites BitFit's paper: "BERT-large needs only 0.1 % of its parameters". The same count on BERT-large's
# architecture (meta device again) agrees, more precisely 0.08 %:

# %%
with torch.device("meta"):
    bert_large = transformers.BertModel(transformers.BertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096))
bert_biases = sum(p.numel() for n, p in bert_large.named_parameters() if n.endswith("bias"))
bert_share = 100 * bert_biases / count_parameters(bert_large)[1]
print(f"BERT-large: {bert_biases:,} biases of {count_parameters(bert_large)[1]:,} parameters = {bert_share:.3f} %")
assert round(bert_share, 2) == 0.08
del bert_large

# %% [markdown]
# ## 2. SmolLM2 has no biases at all
#
# Llama-family models (SmolLM2, TinyLlama, Llama itself) were built without biases: `bias=False` in every linear
# layer, and RMSNorm instead of LayerNorm — a norm with a scale γ and no β. Apply the tutorial's recipe to the
# course's model and it trains nothing. (The cell shows the model in use: Qwen2 has biases on its query, key and value
# projections only, BLOOM everywhere; the meta-device SmolLM2 below is the default's architecture in any case.)

# %%
bias_names = [name for name, _ in model.named_parameters() if "bias" in name]
block = decoder_layers(model)[0]
block_linears = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
first_norm = next(m for m in block.modules() if "norm" in type(m).__name__.lower())  # before the attention
print("parameters with 'bias' in their name:", len(bias_names))
print("layer 0:", {name: m.bias is None for name, m in block_linears.items()}, "(bias is None)")
print("norms:", type(first_norm).__name__, [n for n, _ in first_norm.named_parameters()])
if bias_names:  # Qwen2 (q, k, v), BLOOM (everywhere): plain BitFit trains these, and the rest need added biases
    print(f"{arch.model_type} has {sum(model.get_parameter(n).numel() for n in bias_names):,} bias entries: "
          "plain BitFit would train those; section 3 adds zero biases where a linear layer has none")
else:  # the Llama family, SmolLM2 the default
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))

smol_meta = build_from_config("smollm2-135m")  # the same architecture on the meta device
refused = False
try:
    get_peft_model(smol_meta, BitFitConfig(add_missing_biases=False))  # plain BitFit, as in the paper
except ValueError as error:
    print("plain BitFit:", error)
    refused = True
assert refused

# %% [markdown]
# Training a model with zero trainable parameters would not fail quietly here (`peftedu.train` and
# `BitFitConfig(add_missing_biases=False)` both raise), but a hand-written loop would happily "train" for hours and
# change nothing. The fix is to **add** the missing biases, initialised to zero so that the model is unchanged at
# step 0, and train those. Which layers? Every linear layer but the output head (`lm_head`: a bias there would only
# shift each token's logit by a constant, and its weight is tied to the embeddings). RMSNorm layers get no β: a β
# added before a linear layer W is the same as the linear bias W β, so the linear biases already cover it. One
# line checks that identity on the real layer 0:

# %%
x = torch.randn(2, 5, arch.hidden, device=model.device, dtype=model.dtype)
beta = torch.randn(arch.hidden, device=model.device, dtype=model.dtype)
first_name, first_linear = next(iter(block_linears.items()))  # q_proj (Llama, Qwen2), query_key_value (BLOOM)
short_name = first_name.rsplit(".", 1)[-1]
with torch.no_grad():
    beta_inside = first_linear(first_norm(x) + beta)
    beta_after = first_linear(first_norm(x)) + first_linear.weight @ beta
# equal up to the rounding of sums of hidden-size products (576 on SmolLM2; notebook 00, section 6)
cmp(f"{short_name}(norm(x) + β) == {short_name}(norm(x)) + W β", beta_inside, beta_after,
    atol=rounding_tolerance(model.dtype, magnitude=beta_inside.abs().max().item(), terms=arch.hidden))

# %% [markdown]
# ## 3. BitFit from scratch, in three steps
#
# We work on a copy of the model (`model` stays the pretrained one).
#
# ### Step 1: give one layer a zero bias
#
# `nn.Linear` adds `self.bias` when it is not `None`, so adding a bias is assigning a parameter. With zeros the
# output does not change — not approximately: adding exact zeros changes no bit. The layer is the first one of block 0
# without a bias (`q_proj` on SmolLM2; a model with biases everywhere, such as BLOOM, has none to give one).

# %%
scratch = copy.deepcopy(model)
scratch_block = decoder_layers(scratch)[0]
bias_less = [name for name, m in scratch_block.named_modules() if isinstance(m, nn.Linear) and m.bias is None]
layer = scratch_block.get_submodule(bias_less[0]) if bias_less else None
if layer is None:
    print(f"every linear layer of {arch.model_type}'s blocks has a bias already: no bias to add")
else:
    x = torch.randn(3, 7, layer.in_features, device=model.device, dtype=model.dtype)
    with torch.no_grad():
        before_bias = layer(x)
        layer.bias = nn.Parameter(torch.zeros(layer.out_features, device=model.device, dtype=layer.weight.dtype))
        after_bias = layer(x)
    print(layer, "| bias", tuple(layer.bias.shape))
    assert layer.bias.shape == (layer.out_features,)
    assert same_output(after_bias, before_bias)  # zero bias: bit-identical (on the CPU)

# %% [markdown]
# ### Step 2: every linear layer but the head

# %%
def add_zero_biases(module: nn.Module, skip=("lm_head",)) -> int:
    """Give every bias-less nn.Linear (except those named in ``skip``) a zero bias; returns the entries added."""
    added = 0
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear) and child.bias is None and name.rsplit(".", 1)[-1] not in skip:
            child.bias = nn.Parameter(torch.zeros(child.out_features, device=child.weight.device, dtype=child.weight.dtype))
            added += child.out_features
    return added


added = add_zero_biases(scratch) + (layer.out_features if layer is not None else 0)  # step 1's layer has its bias
per_block = {name.rsplit(".", 1)[-1]: m.out_features for name, m in block_linears.items() if m.bias is None}
print("biases per block:", per_block, "=", sum(per_block.values()))
print(f"{arch.n_layers} blocks x {sum(per_block.values()):,} = {added:,} new bias entries")
assert added == arch.n_layers * sum(per_block.values())
# the widths follow from the config: queries and outputs d wide, keys and values n_kv_heads x head_dim, the MLP's
llama_widths = {"q_proj": arch.hidden, "k_proj": arch.kv_dim, "v_proj": arch.kv_dim, "o_proj": arch.hidden,
                "gate_proj": arch.mlp_hidden, "up_proj": arch.mlp_hidden, "down_proj": arch.hidden}
assert all(width == llama_widths[name] for name, width in per_block.items() if name in llama_widths)
if model_name() == DEFAULT_MODEL:
    assert added == 155_520  # SmolLM2-135M: 30 x (576 + 192 + 192 + 576 + 1536 + 1536 + 576)
assert scratch.get_output_embeddings().bias is None

# %% [markdown]
# On SmolLM2-135M, the default, grouped-query attention makes `k_proj` and `v_proj` narrow (3 key/value heads of 64:
# 192 outputs), and the MLP's two 1536-wide projections hold most of the biases.
#
# ### Step 3: freeze everything but the biases
#
# Now the tutorial's recipe works. At step 0 the model is the pretrained one, exactly; after one backward pass only
# the biases have gradients.

# %%
def mark_only_biases_trainable(module: nn.Module) -> None:
    for name, param in module.named_parameters():
        param.requires_grad_(name.endswith(".bias"))


mark_only_biases_trainable(scratch)
print_trainable_parameters(scratch)
n_bitfit = count_parameters(scratch)[0]  # the biases the model had, plus the added ones: 155,520 on SmolLM2
own_biases = sum(p.numel() for name, p in model.named_parameters() if name.endswith(".bias"))
assert count_parameters(scratch) == (own_biases + added, count_parameters(model)[1] + added)
assert same_output(logits_of(scratch), base_logits)  # zero biases: the same model, bit for bit (on the CPU)

collate = TrainingCollator(tokenizer)
train_data = load_task("topic", "train")
train_batch = {k: v.to(model.device) for k, v in
               collate([tokenize_example(tokenizer, r) for r in train_data.select(range(4))]).items()}
scratch.train()
scratch(**train_batch).loss.backward()
scratch.eval()
with_grad = {name for name, p in scratch.named_parameters() if p.grad is not None}
print(f"{len(with_grad)} tensors got a gradient, e.g. {sorted(with_grad)[0]}")
assert with_grad == {name for name, p in scratch.named_parameters() if name.endswith(".bias")}
assert all(scratch.get_parameter(name).grad.abs().sum() > 0 for name in with_grad)

# %% [markdown]
# ## 4. From scratch == `peftedu` == HF peft's BEFT
#
# `peftedu.BitFitConfig` does the same with a wrapper per layer (`BitFitLayer`): each adapter owns a bias vector
# `bitfit_bias[name]` — a copy of the layer's bias, or zeros where it has none — and the layer's own bias becomes a
# frozen buffer, so a second adapter or `disable_adapter()` still sees the original. Its default targets are what we
# chose by hand: every module with a bias plus every linear layer but the head.
#
# **HF peft has no BitFit.** Its nearest relative is BEFT (`peft.BeftConfig`, arXiv:2509.15974): a zero-initialised
# bias *delta* added to chosen `nn.Linear` layers (by default only `v_proj`). On a model without biases, targeted at
# the same seven projections, that is the same computation. To compare, we give the scratch biases random values,
# copy them into the other two, and compare logits. (At step 0 the gradients already agree — they are compared too.)
#
# `peftedu` and BEFT compute `base(x) + b`; our scratch layers let `nn.Linear` add the bias inside its matrix
# product (`addmm`). The same numbers added in another order round differently in fp32, and 30 layers carry the
# rounding to the logits. The comparisons below therefore allow the rounding of 30 layers of 1,536-long sums
# (`model_tol`, from `rounding_tolerance`; notebook 00, section 6): a bound on what another order of the same
# additions can do (exercise 4 shows the difference is rounding).

# %%
targets = linear_suffixes(model)  # every linear layer but the head: the seven projections on SmolLM2
theirs_config = peft.BeftConfig(target_modules=targets)
ours = get_peft_model(copy.deepcopy(model), BitFitConfig())
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # BEFT warns once per layer that a bias-less layer cannot be merged
    theirs = peft.get_peft_model(copy.deepcopy(model), theirs_config)
for name, m in (("scratch", scratch), ("peftedu", ours), ("peft BEFT", theirs)):
    print(f"{name:<10}", end=" ")
    print_trainable_parameters(m)

bitfit_layers = {name: m for name, m in ours.base_model.named_modules() if isinstance(m, BitFitLayer)}
beft_layers = {name.replace("base_model.model.", "", 1): m for name, m in theirs.named_modules()
               if hasattr(m, "beft_bias") and "default" in m.beft_bias}
# BEFT wraps nn.Linear only: a LayerNorm's bias (BLOOM) is trained by peftedu and the scratch model, not by BEFT
not_in_beft = {name: layer for name, layer in bitfit_layers.items() if not isinstance(layer.base_layer, nn.Linear)}
if not_in_beft:
    print(f"BEFT wraps nn.Linear only: {sum(l.bitfit_bias['default'].numel() for l in not_in_beft.values()):,} "
          f"LayerNorm biases of {len(not_in_beft)} layers are not in its count, and keep their values below")
assert count_parameters(ours)[0] == count_parameters(scratch)[0] == n_bitfit
assert count_parameters(theirs)[0] + sum(l.bitfit_bias["default"].numel() for l in not_in_beft.values()) == n_bitfit
assert set(beft_layers) == set(bitfit_layers) - set(not_in_beft) and len(beft_layers) == len(targets) * arch.n_layers

# gradients at step 0, on the same training batch
ours.train()
ours(**train_batch).loss.backward()
ours.eval()
scratch_grads = torch.cat([scratch.get_submodule(n).bias.grad.flatten() for n in bitfit_layers])
ours_grads = torch.cat([bitfit_layers[n].bitfit_bias["default"].grad.flatten() for n in bitfit_layers])
cmp("step-0 bias gradients: scratch vs peftedu", scratch_grads, ours_grads, atol=model_tol(scratch_grads))

# the same random biases in all three (BEFT adds a delta to a layer's own bias, where it has one: Qwen2's q, k, v)
torch.manual_seed(1)
with torch.no_grad():
    for name, layer in beft_layers.items():
        random_bias = 0.05 * torch.randn(bitfit_layers[name].bias_shape, device=model.device)
        own_bias = layer.base_layer.bias
        scratch.get_submodule(name).bias.copy_(random_bias)
        bitfit_layers[name].bitfit_bias["default"].copy_(random_bias)
        layer.beft_bias["default"].copy_((random_bias - (0 if own_bias is None else own_bias.float())).view(1, -1))
scratch_logits = logits_of(scratch)
ours_logits = logits_of(ours)
cmp("logits: peftedu vs peft (BEFT)", ours_logits, logits_of(theirs), atol=model_tol(ours_logits))
cmp("logits: scratch vs peftedu", scratch_logits, ours_logits, atol=model_tol(ours_logits))
assert (scratch_logits - base_logits).abs().max() > model_tol(base_logits)  # the random biases changed the model
del scratch, ours, theirs

# %% [markdown]
# ### On a model *with* biases, `peftedu` is the tutorial's recipe
#
# On a BLOOM (biases everywhere, LayerNorm included) `BitFitConfig()` adds no bias: it makes the existing ones
# trainable. A tiny random BLOOM shows that the tutorial's `requires_grad` recipe and `peftedu` train the same
# tensors to the same values: same counts, then one identical SGD step, then the same logits.

# %%
def tiny_bloom():
    torch.manual_seed(0)
    return transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=128, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()


recipe, wrapped = tiny_bloom(), get_peft_model(tiny_bloom(), BitFitConfig())
for name, param in recipe.named_parameters():
    param.requires_grad_("bias" in name)
print("tutorial's recipe:", count_parameters(recipe), "| peftedu:", wrapped.get_nb_trainable_parameters())
assert count_parameters(recipe) == wrapped.get_nb_trainable_parameters()
tiny_ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
for m in (recipe, wrapped):
    optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    m(input_ids=tiny_ids, labels=tiny_ids).loss.backward()
    optimizer.step()
with torch.no_grad():
    _ = cmp("tiny BLOOM after one step: recipe vs peftedu", recipe(input_ids=tiny_ids).logits,
            wrapped(input_ids=tiny_ids).logits)

# %% [markdown]
# ## 5. Training BitFit on `topic`
#
# The base model's zero-shot score first (the profile's test rows), then BitFit with `peftedu` on the real model, the
# course's training loop in the current profile (quick: 12 optimizer steps of 8 examples) at a learning rate of
# 1e-3.

# %%
LEARNING_RATE = 1e-3
before = evaluate(model, tokenizer, "topic")
print(f"zero-shot topic accuracy: {before['score']:.3f} on {before['n']} test rows")

peft_model = get_peft_model(model, BitFitConfig())  # wraps `model` in place
peft_model.print_trainable_parameters()
assert peft_model.get_nb_trainable_parameters()[0] == n_bitfit  # 155,520 on SmolLM2
assert torch.equal(logits_of(peft_model), base_logits)  # zero biases: training starts from the base model

history = train(peft_model, tokenizer, train_data, lr=LEARNING_RATE, progress=False)
print(history.summary())
plot_history(history)
plt.show()
if is_pretrained(model):
    assert history.loss[-1] < history.loss[0] / 3
else:
    print("random weights: checked that the loss stayed finite (and, below, that every bias moved)")
    assert all(math.isfinite(loss) for loss in history.loss)

# %%
after = evaluate(peft_model, tokenizer, "topic")
print(f"topic accuracy: zero-shot {before['score']:.3f} -> after BitFit {measured(after['score'])} "
      f"({after['n']} test rows)")
for b, a in list(zip(before["examples"], after["examples"]))[:4]:
    print(f"- {b['input']}\n    reference {b['reference']!r}   before {b['prediction']!r}   "
          f"after {measured(a['prediction'])}")
if is_pretrained(model):
    assert after["score"] >= before["score"] + 0.5
else:
    print("random weights: the score is not a claim here (section 5 checked that training ran)")

# %% [markdown]
# A sentence the model has never seen, with the adapter switched off (`disable_adapter()`: the base model) and on:

# %%
new_sentence = "The night train from Vienna reached Venice just after sunrise."
new_prompt = build_prompt(tokenizer, probe_records[0]["instruction"], new_sentence)
with peft_model.disable_adapter():
    answer_before = generate_answers(peft_model, tokenizer, [new_prompt], max_new_tokens=16)[0]
answer_after = generate_answers(peft_model, tokenizer, [new_prompt], max_new_tokens=16)[0]
print(f"base model: {answer_before!r}\nBitFit:     {measured(answer_after)}")
if is_pretrained(model):
    assert answer_after.strip().lower() == "travel"
else:
    print("random weights: the answer is noise; checked only that both generations returned text")
    assert isinstance(answer_before, str) and isinstance(answer_after, str)

# %% [markdown]
# 155,520 numbers — 0.12 % of the model, each one a constant shift — turn a model that talks *about* the labels into
# one that answers with a label. Which biases moved most? The mean size of the learned biases, per kind of layer:

# %%
learned = defaultdict(list)
for name, layer in peft_model.base_model.named_modules():
    if isinstance(layer, BitFitLayer):
        learned[name.rsplit(".", 1)[-1]].append(layer.bitfit_bias["default"].detach().abs().mean().item())
fig, ax = plt.subplots(figsize=(8, 3))
for kind, values in learned.items():
    ax.plot(range(len(values)), values, marker="o", markersize=3, label=kind)
ax.set_xlabel("block")
ax.set_ylabel("mean |bias| after training")
ax.set_title("Where BitFit put its change")
ax.legend(fontsize=8, ncol=4)
plt.show()
for kind, values in learned.items():
    print(f"{kind:<10} mean |b| over the blocks {measured(sum(values) / len(values), '.2e')}")
assert all(v > 0 for values in learned.values() for v in values)  # every added bias moved off zero

# %% [markdown]
# ## 6. Saving, reloading and merging
#
# `save_pretrained` writes peft's layout — `adapter_config.json` and `adapter_model.safetensors` — with `peftedu`'s own
# `peft_type` "BITFIT" (HF peft cannot read it: it has no BitFit). One tensor per wrapped layer.

# %%
save_dir = Path(tempfile.mkdtemp()) / "smollm2-bitfit"
peft_model.save_pretrained(save_dir)
saved = load_file(str(save_dir / "adapter_model.safetensors"))
for path in sorted(save_dir.iterdir()):
    print(f"{path.name:<30} {path.stat().st_size:>10,} bytes")
print(len(saved), "tensors, e.g.", next(iter(sorted(saved))), tuple(saved[sorted(saved)[0]].shape))
saved_config = json.loads((save_dir / "adapter_config.json").read_text())
n_layers_wrapped = sum(isinstance(m, BitFitLayer) for m in peft_model.modules())  # 7 x 30 on SmolLM2
assert saved_config["peft_type"] == "BITFIT" and len(saved) == n_layers_wrapped
assert sum(t.numel() for t in saved.values()) == n_bitfit  # 155,520 on SmolLM2

trained_logits = logits_of(peft_model)
fresh, _ = load_base()
reloaded = PeftModel.from_pretrained(fresh, save_dir)
_ = cmp("reloaded vs trained", logits_of(reloaded), trained_logits, atol=0)
del reloaded, fresh

# %% [markdown]
# A bias merges for free: `merge_and_unload()` writes the learned biases into the layers and returns a plain
# transformers model, as fast as the base model. One pitfall: SmolLM2's *config* says `attention_bias=False`
# and `mlp_bias=False`, so a model saved like that and loaded by transformers would be built without biases and
# silently drop the learned ones. `merge_and_unload` therefore sets both flags when BitFit added biases (checked
# below; exercise 5 shows what happens without them).

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # on Qwen2, merge_and_unload warns about the biases checked just below
    merged = peft_model.merge_and_unload()
print("bias parameters in the merged model:", sum(1 for n, _ in merged.named_parameters() if n.endswith(".bias")))
cmp("merged vs trained", logits_of(merged), trained_logits, atol=model_tol(trained_logits))
lost = undeclared_biases(merged)  # biases that a model built from the config would not have
if lost:  # Qwen2: its config has no flag for biases on o_proj and the MLP
    print(f"{arch.model_type}'s config cannot declare {len(lost)} of the merged biases (e.g. {lost[0]}): "
          "transformers would build those layers without a bias and drop the learned values, so the merged model is "
          "not reloaded here; the adapter file of section 6 keeps them")
else:
    if hasattr(merged.config, "mlp_bias"):  # Llama-style: set by merge_and_unload, q..o and gate..down have biases
        assert merged.config.attention_bias and merged.config.mlp_bias
    merged_dir = Path(tempfile.mkdtemp()) / "smollm2-topic-bitfit-merged"
    merged.save_pretrained(merged_dir)
    plain = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, dtype=merged.dtype).to(merged.device).eval()
    _ = cmp("reloaded with transformers alone", logits_of(plain), logits_of(merged))
    assert all(isinstance(m.bias, nn.Parameter) for m in decoder_layers(plain)[0].modules() if isinstance(m, nn.Linear))

# %% [markdown]
# ## Summary
#
# * BitFit is selective fine-tuning (选择性微调): it trains the bias vectors and freezes everything else: on
#   bloom-1b4-zh's architecture 544,768 of 1,303,111,680 parameters, **0.0418 %** (source 002's 0.418 % is ten times
#   too large); on BERT-large 0.08 %.
# * Llama-family models have no biases, so the tutorial's recipe trains nothing there. Adding zero-initialised biases
#   to every linear layer but the head (155,520 on SmolLM2) keeps the model unchanged at step 0 and makes BitFit work.
# * From scratch it is two small functions (`add_zero_biases`, `mark_only_biases_trainable`); `peftedu.BitFitConfig`
#   and HF peft's BEFT (on the same layers) compute the same logits, up to fp32 rounding; on a BLOOM `peftedu` equals
#   the tutorial's recipe.
# * On `topic` in the quick profile, BitFit lifts the score from the zero-shot value to the one printed in section 5.
# * The adapter is a small file; merging is free (a bias is a bias), but a bias-less architecture's config must be
#   told about the new biases before the merged model is saved.
#
# ## Interview corner
#
# 1. **What does BitFit train, and what does that cost at inference?** Only the bias terms (linear layers and
#    LayerNorm β); everything else is frozen. Nothing at inference: the learned biases replace the old ones, so the
#    network has the same shape and speed.
# 2. **How many parameters is that on a 1.3B BLOOM?** 544,768 — 11·d per block plus 2·d, with d = 2048 and 24
#    blocks — which is 0.0418 % of 1,303,111,680 (tutorials often print 0.418 %: a ratio read as a percentage).
# 3. **Can you use BitFit on LLaMA?** Not as published: Llama models have no biases (`bias=False`, RMSNorm without
#    β), so "train the biases" trains zero parameters. You add zero-initialised biases to the linear layers (the
#    model is unchanged at step 0) — this is what `BitFitConfig(add_missing_biases=True)` and peft's BEFT do — and
#    make sure the config declares them (`attention_bias`/`mlp_bias`) before saving a merged model.
# 4. **Why does a bias-only update work at all, and where does it stop?** Each bias shifts a layer's outputs by a
#    constant; through the nonlinearities that follow, shifts can switch units on and off and steer the model toward a
#    task format — enough for classification-style tasks. It cannot change *how* a layer mixes its inputs, so tasks
#    that need new input-dependent behaviour do better with LoRA or adapters.
# 5. **Does BitFit save as much memory as its parameter count suggests?** It saves the gradients and optimizer
#    states of all weights (the largest part of full fine-tuning's memory), but the frozen weights are still in
#    memory and the backward pass still runs through every layer, so activations are still kept.
#
# ## Exercises
#
# 1. Train only the biases of the MLP (`BitFitConfig(target_modules=["gate_proj", "up_proj", "down_proj"])`). How
#    many parameters is that, and how does the score compare?
#
# <details><summary>Solution</summary>
#
# ```python
# mlp_only = get_peft_model(load_base()[0], BitFitConfig(target_modules=["gate_proj", "up_proj", "down_proj"]))
# assert mlp_only.get_nb_trainable_parameters()[0] == 30 * (1536 + 1536 + 576)  # 109,440
# history = train(mlp_only, tokenizer, train_data, lr=1e-3, progress=False)
# print(evaluate(mlp_only, tokenizer, "topic")["score"])
# ```
# The count is 70 % of the full 155,520 (the MLP's wide projections dominate). Compare the loss curve and the score
# with section 5.
# </details>
#
# 2. The tutorial's recipe tests `"bias" in name`. Find a model where that picks the wrong parameters, and write a
#    safer test.
#
# <details><summary>Solution</summary>
#
# Any parameter whose *module* name contains "bias" would be caught, e.g. a module called `bias_proj` or a relative
# position table called `relative_attention_bias` (T5: its `...relative_attention_bias.weight` is an embedding
# table, not a bias). Test the last part of the name instead: `name.rsplit(".", 1)[-1] == "bias"`, or walk the
# modules and pick `module.bias` of `nn.Linear`/`nn.LayerNorm` as `peftedu.bitfit` does.
# </details>
#
# 3. Write the count of section 1 as a function of the config, `bitfit_count(cfg) = cfg.n_layer * 11 * d + 2 * d`,
#    and check it on `build_from_config("bloom-1b4-zh")` with `BitFitConfig()` instead of the recipe.
#
# <details><summary>Solution</summary>
#
# ```python
# def bitfit_count(cfg):
#     return cfg.n_layer * 11 * cfg.hidden_size + 2 * cfg.hidden_size
# meta_bloom = build_from_config("bloom-1b4-zh")
# wrapped_bloom = get_peft_model(meta_bloom, BitFitConfig())
# assert wrapped_bloom.get_nb_trainable_parameters() == (bitfit_count(meta_bloom.config), 1_303_111_680)
# ```
# The 11 comes from the MLP's 4·d expansion; a model with another expansion (Llama's 8/3·d with three projections)
# needs its own formula, as in section 3.
# </details>
#
# 4. Is the scratch-vs-peftedu difference of section 4 a bug or rounding? Repeat the comparison with the model in
#    float64 (`load_base(dtype=torch.float64)`) and random biases in float64.
#
# <details><summary>Solution</summary>
#
# Build both models from `load_base(dtype=torch.float64)[0]` as in sections 3 and 4, draw the biases with
# `dtype=torch.float64`, and `cmp` the logits with `atol=1e-9`. The difference falls to float64's rounding level
# (or vanishes): it was fp32 rounding of the same sums taken in another order, not a different computation.
# </details>
#
# 5. Set `attention_bias` and `mlp_bias` of the merged model of section 6 back to `False`, save it, reload it with
#    transformers and compare the logits with the trained model. What happened, and what did transformers say?
#
# <details><summary>Solution</summary>
#
# The reloaded model is built from the config, so its linear layers have `bias=None`; the saved bias tensors have no
# place to go and are reported as unexpected keys (a warning, not an error). Its logits are the *base* model's, not the
# trained ones: the adaptation is silently lost. Setting the two flags makes transformers build the biases and load them.
# </details>
