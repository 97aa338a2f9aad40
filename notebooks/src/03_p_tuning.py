# %% [markdown]
# # 03 · P-tuning: a soft prompt (软提示) made by a small network, the prompt encoder (提示编码器)
#
# Prompt tuning (notebook 02) learns the `p` prompt vectors directly. P-tuning (Liu et al. 2021, "GPT
# Understands, Too", arXiv:2103.10385) learns them *through* a small network, the prompt encoder: an MLP, or a
# bidirectional LSTM followed by an MLP. The model still reads `[P; E[x]]` exactly as in prompt tuning; only
# where `P` comes from changes. This reparameterisation (重参数化) is thrown away after training: what is
# kept is its output.
#
# **After this notebook you can**
#
# * build the MLP and the LSTM prompt encoders from scratch and count their parameters;
# * explain, and see on a small experiment, what the encoder changes for training (scale at the start,
#   virtual tokens tied together);
# * show that your encoder, `peftedu` and HF `peft` give the same weights, prompt and logits;
# * reproduce the source tutorial's count on bloom-1b4-zh (5,267,456) and see where those parameters sit;
# * train P-tuning on `topic`, and explain why a saved P-tuning adapter can be used but not trained further;
# * explain P-tuning v2 (deep prompts) as prefix tuning without the projection, and count it.

# %%
%matplotlib inline
import logging

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # silence a CPU-dependent notice at import

import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import peft
import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from peftedu.course.compare import cmp, measured, rounding_tolerance
from peftedu.course.data import load_task
from peftedu.course.tokenization import build_prompt, collate_for_generation
from peftedu.course.shapes import architecture
from peftedu.course.models import build_from_config, is_pretrained, load_base
from peftedu.p_tuning import PromptEncoderConfig
from peftedu.peft_model import PeftModel, get_peft_model
from peftedu.prefix_tuning import PrefixTuningConfig, prefix_geometry, prefix_key_values
from peftedu.prompt_tuning import PromptTuningConfig
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the notebook
torch.manual_seed(0)
profile = get_profile()  # PEFTEDU_PROFILE: "quick" (CPU, default) or "full" (GPU)
model, tok = load_base()
model.requires_grad_(False)
word_embeddings = model.get_input_embeddings()
d = word_embeddings.embedding_dim
print(f"{type(model).__name__}, embedding width d = {d}, profile {profile.name!r}")
# Tolerance of the comparisons (notebook 00, section 6): two routes through the model that add the same numbers in
# another order round differently. rounding_tolerance = 10 x eps(dtype) x magnitude x sqrt(terms).
arch = architecture(model)  # the model's shape from its config (notebook 00)
MODEL_TERMS = arch.mlp_hidden * arch.n_layers  # SmolLM2-135M, the default: 30 layers x 1,536-long sums
dev = model.device  # the encoders are built where the model is, as peftedu and peft build them


def model_tol(values):
    """Tolerance for ``values`` computed through the whole model by two routes that round differently."""
    return rounding_tolerance(model.dtype, magnitude=values.abs().max().item(), terms=MODEL_TERMS)

# %% [markdown]
# ## 1. The prompt encoder, from scratch
#
# Both encoders start from an `nn.Embedding(p, d)` -- one input vector `e_i` per virtual token -- and map it
# to the prompt vectors `P` of the same shape `(p, d)`:
#
# $$\text{MLP:}\quad P_i = W_3\,\mathrm{ReLU}(W_2\,\mathrm{ReLU}(W_1 e_i + b_1) + b_2) + b_3,
# \qquad W_1 \in \mathbb{R}^{H\times d},\ W_2 \in \mathbb{R}^{H\times H},\ W_3 \in \mathbb{R}^{d\times H}$$
#
# $$\text{LSTM:}\quad h = \mathrm{BiLSTM}(e_1, \dots, e_p) \in \mathbb{R}^{p \times 2H},\qquad
# P_i = W_5\,\mathrm{ReLU}(W_4 h_i + b_4) + b_5$$
#
# `H` is `encoder_hidden_size`. The modules are created in peft's order (embedding first), so the same seed
# gives the same weights in all three implementations below.

# %%
p, H = 16, 128
indices = torch.arange(p, device=dev)  # the virtual tokens 0..p-1

torch.manual_seed(0)
mlp_embedding = nn.Embedding(p, d, device=dev)
mlp_head = nn.Sequential(nn.Linear(d, H, device=dev), nn.ReLU(), nn.Linear(H, H, device=dev), nn.ReLU(),
                         nn.Linear(H, d, device=dev))
P_mlp = mlp_head(mlp_embedding(indices))

mlp_count = sum(t.numel() for t in [*mlp_embedding.parameters(), *mlp_head.parameters()])
assert P_mlp.shape == (p, d)
assert mlp_count == p * d + (d * H + H) + (H * H + H) + (H * d + d)
print(f"MLP encoder: P {tuple(P_mlp.shape)}, {mlp_count:,} trainable numbers "
      f"(embedding {p * d:,} + MLP {mlp_count - p * d:,})")

# %%
torch.manual_seed(0)
lstm_embedding = nn.Embedding(p, d, device=dev)
lstm_head = nn.LSTM(input_size=d, hidden_size=H, num_layers=2, bidirectional=True, batch_first=True, device=dev)
lstm_mlp = nn.Sequential(nn.Linear(2 * H, 2 * H, device=dev), nn.ReLU(), nn.Linear(2 * H, d, device=dev))
hidden = lstm_head(lstm_embedding(indices).unsqueeze(0))[0]  # (1, p, 2H): forward and backward states
P_lstm = lstm_mlp(hidden)[0]

lstm_count = sum(t.numel() for t in [*lstm_embedding.parameters(), *lstm_head.parameters(), *lstm_mlp.parameters()])
per_direction = lambda inputs: 4 * H * (inputs + H) + 2 * 4 * H  # 4 gates: input and hidden weights, two biases
assert hidden.shape == (1, p, 2 * H) and P_lstm.shape == (p, d)
assert lstm_count == p * d + 2 * per_direction(d) + 2 * per_direction(2 * H) + (2 * H * 2 * H + 2 * H) + (2 * H * d + d)
print(f"LSTM encoder: hidden {tuple(hidden.shape)}, P {tuple(P_lstm.shape)}, {lstm_count:,} trainable numbers")

# %% [markdown]
# **The MLP works token by token; the LSTM mixes them.** Change the input vector of virtual token 0 only: the
# MLP changes row 0 of `P` and nothing else, the bidirectional LSTM changes every row.

# %%
def encode_mlp(inputs):
    return mlp_head(inputs)


def encode_lstm(inputs):
    return lstm_mlp(lstm_head(inputs.unsqueeze(0))[0])[0]


with torch.no_grad():
    inputs_e = mlp_embedding(indices)
    nudged = inputs_e.clone()
    nudged[0] += 0.5  # move e_0 only
    mlp_change = (encode_mlp(nudged) - encode_mlp(inputs_e)).abs().amax(dim=1)
    lstm_change = (encode_lstm(nudged) - encode_lstm(inputs_e)).abs().amax(dim=1)
show = lambda changes: "[" + ", ".join(measured(x, ".0e") if x else "0" for x in changes.tolist()) + "]"
print("largest change of each row of P after moving e_0 (0: the row did not change at all):")
print("  MLP ", show(mlp_change))
print("  LSTM", show(lstm_change))
assert mlp_change[0] > 1e-3 and mlp_change[1:].eq(0).all()  # token by token
assert (lstm_change > 1e-6).all()  # every row depends on every virtual token

# %% [markdown]
# ## 2. Why reparameterise (重参数化)?
#
# The P-tuning paper gives two reasons for the encoder. Optimised directly, the prompt vectors move in an
# embedding space that pretraining made very uneven ("discrete"), and the optimiser easily ends in a poor
# local minimum; and the prompt vectors should depend on each other instead of being learned independently.
# The paper reports more stable, faster training with the encoder (the v2 paper later found the benefit to
# depend on the task). Two of its effects can be seen without training:
#
# * **Scale at the start.** A directly learned prompt with random init starts with rows of norm about
#   `sqrt(d)`, far from every real token (notebook 02). The encoder's output starts small, at or below the scale
#   of real token embeddings.
# * **Tied vectors.** With a direct prompt a gradient on one virtual token moves that vector only. Through
#   the encoder's shared weights it moves all of them together: the `p` vectors are learned as one object.

# %%
torch.manual_seed(1)
direct = nn.Embedding(p, d, device=dev)  # prompt tuning, RANDOM init
row_norms = lambda rows: rows.detach().float().norm(dim=1).cpu()
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(row_norms(word_embeddings.weight).numpy(), bins=80, alpha=0.6, label="real token rows")
ax.hist(row_norms(direct.weight).numpy(), bins=6, alpha=0.9, label="prompt tuning, RANDOM init")
ax.hist(row_norms(P_mlp).numpy(), bins=6, alpha=0.9, label="P-tuning MLP output at init")
ax.hist(row_norms(P_lstm).numpy(), bins=6, alpha=0.9, label="P-tuning LSTM output at init")
ax.set_yscale("log")
ax.set_xlabel("norm of a prompt vector")
ax.set_ylabel("count")
ax.legend(fontsize=8)
ax.set_title("Where each kind of prompt starts")
plt.show()
medians = {"vocabulary": row_norms(word_embeddings.weight).median().item(), "direct": row_norms(direct.weight).median().item(),
           "MLP": row_norms(P_mlp).median().item(), "LSTM": row_norms(P_lstm).median().item()}
print("median norms:", ", ".join(f"{k} {measured(v, '.2f')}" for k, v in medians.items()))
if is_pretrained(model):
    assert max(medians["MLP"], medians["LSTM"]) < medians["vocabulary"] * 1.5 < medians["direct"]
else:  # a random embedding table is tiny (std 0.02): only the comparison with the RANDOM init is checked
    print("random weights: the token rows are not a trained scale; checked that both encoders start closer to 0 than "
          "the RANDOM init")
    assert max(medians["MLP"], medians["LSTM"]) < medians["direct"]


# %%
def rows_moved_by_one_step(parameters, make_prompt):
    """One SGD step on a loss that depends on virtual token 0 only; which rows of P moved?"""
    before = make_prompt().detach().clone()
    make_prompt()[0].pow(2).sum().backward()
    with torch.no_grad():
        for param in parameters:
            param -= 1e-3 * param.grad
            param.grad = None
    return ((make_prompt().detach() - before).abs().amax(dim=1) > 0).sum().item()


direct_moved = rows_moved_by_one_step(list(direct.parameters()), lambda: direct.weight)
mlp_moved = rows_moved_by_one_step([*mlp_embedding.parameters(), *mlp_head.parameters()],
                                   lambda: mlp_head(mlp_embedding(indices)))
print(f"a gradient on virtual token 0 moves: direct prompt {direct_moved} row(s), MLP encoder {mlp_moved} rows")
assert direct_moved == 1 and mlp_moved == p

# restore the encoder built in section 1 (the step above changed it)
torch.manual_seed(0)
mlp_embedding = nn.Embedding(p, d, device=dev)
mlp_head = nn.Sequential(nn.Linear(d, H, device=dev), nn.ReLU(), nn.Linear(H, H, device=dev), nn.ReLU(),
                         nn.Linear(H, d, device=dev))
assert torch.equal(mlp_head(mlp_embedding(indices)), P_mlp)

# %% [markdown]
# ## 3. From scratch, `peftedu` and HF `peft` agree
#
# The prompt enters the model as in notebook 02: `[P; E[x]]`, the prompt at positions `0..p-1`. For one
# unpadded row that is a single concatenation. `peftedu.p_tuning` reuses prompt tuning's forward and swaps
# the encoder; with the same seed both libraries build the same encoder.

# %%
text = build_prompt(tok, "Name a sport.")  # the chat template, as in every notebook
inputs = {k: v.to(dev) for k, v in collate_for_generation(tok, [text]).items()}  # one row, no padding
with torch.no_grad():
    token_embeds = word_embeddings(inputs["input_ids"])
    scratch_logits = model(inputs_embeds=torch.cat([P_mlp.to(token_embeds.dtype).unsqueeze(0), token_embeds], dim=1)).logits

encoders = {"MLP": dict(encoder_reparameterization_type="MLP"), "LSTM": dict(encoder_reparameterization_type="LSTM")}
scratch_modules = {"MLP": {"embedding": mlp_embedding, "mlp_head": mlp_head},
                   "LSTM": {"embedding": lstm_embedding, "lstm_head": lstm_head, "mlp_head": lstm_mlp}}
built = {}
for kind, options in encoders.items():
    torch.manual_seed(0)
    ours = get_peft_model(model, PromptEncoderConfig(num_virtual_tokens=p, encoder_hidden_size=H, **options)).eval()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(model, peft.PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=p, encoder_hidden_size=H, **options)).eval()
    built[kind] = ours, theirs
    scratch_state = {f"{name}.{key}": value for name, module in scratch_modules[kind].items()
                     for key, value in module.state_dict().items()}
    ours_state = ours.prompt_encoder["default"].state_dict()
    theirs_state = theirs.prompt_encoder["default"].state_dict()
    assert list(scratch_state) == list(ours_state) == list(theirs_state)  # the same modules, the same names
    assert all(torch.equal(scratch_state[k], ours_state[k]) and torch.equal(ours_state[k], theirs_state[k])
               for k in scratch_state)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    print(f"{kind}: {len(scratch_state)} encoder tensors equal in all three;", end=" ")
    ours.print_trainable_parameters()

# %%
ours, theirs = built["MLP"]
# the encoders' own rounding: 3 linear layers of sums up to d = 576 long; the LSTM adds its 16 recurrent steps
P_tol = rounding_tolerance(torch.float32, magnitude=P_mlp.abs().max().item(), terms=3 * d)
P_lstm_tol = rounding_tolerance(torch.float32, magnitude=P_lstm.abs().max().item(), terms=3 * (d + H) * p)
logits_tol = model_tol(scratch_logits)
with torch.no_grad():
    cmp("P (MLP): scratch vs peftedu", P_mlp, ours.tuner.prompt(ours, "default"), atol=P_tol)
    cmp("P (MLP): scratch vs peft", P_mlp, theirs.prompt_encoder["default"](indices.unsqueeze(0))[0], atol=P_tol)
    cmp("logits: scratch vs peftedu", scratch_logits, ours(**inputs).logits, atol=logits_tol)
    cmp("logits: scratch vs peft", scratch_logits, theirs(**inputs).logits, atol=logits_tol)
    lstm_ours, lstm_theirs = built["LSTM"]
    # compared with autograd off on both sides: PyTorch's LSTM takes another kernel when it records gradients,
    # which changes P in the 8th digit
    cmp("P (LSTM): scratch vs peftedu", encode_lstm(lstm_embedding(indices)), lstm_ours.tuner.prompt(lstm_ours, "default"),
        atol=P_lstm_tol)
    lstm_logits = lstm_ours(**inputs).logits
    cmp("logits (LSTM): peftedu vs peft", lstm_logits, lstm_theirs(**inputs).logits, atol=model_tol(lstm_logits))
del built, lstm_ours, lstm_theirs

# %% [markdown]
# ## 4. The source tutorial's count: 5,267,456 on bloom-1b4-zh
#
# The tutorial runs P-tuning on bloom-1b4-zh (`d = 2048`) with 10 virtual tokens, the MLP encoder and
# `encoder_hidden_size=1024`, and reports 5,267,456 trainable parameters. On the meta device (no weights,
# no download):

# %%
bloom = get_peft_model(build_from_config("bloom-1b4-zh"),
                       PromptEncoderConfig(num_virtual_tokens=10, encoder_hidden_size=1024))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a transformers deprecation notice raised inside peft
    bloom_peft = peft.get_peft_model(build_from_config("bloom-1b4-zh"), peft.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=10, encoder_hidden_size=1024))
bloom.print_trainable_parameters()
bloom_peft.print_trainable_parameters()
for name, param in bloom.prompt_encoder["default"].named_parameters():
    print(f"  {name:<20} {str(tuple(param.shape)):<14} {param.numel():>10,}")
bloom_trainable = bloom.get_nb_trainable_parameters()[0]
assert bloom_trainable == bloom_peft.get_nb_trainable_parameters()[0] == 5_267_456
assert bloom_trainable == 10 * 2048 + (2048 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 2048 + 2048)
print(f"the prompt the model reads: {10 * 2048:,} numbers = {10 * 2048 / bloom_trainable:.2%} of what is trained")
del bloom, bloom_peft

# %% [markdown]
# Almost all of those parameters (the cell prints the share of the prompt itself) are the encoder, which
# exists only during training. The prompt the model reads is the same `(10, 2048)` matrix as prompt tuning's
# 20,480 numbers.
#
# ## 5. Training P-tuning on `topic`
#
# MLP encoder, 16 virtual tokens, `encoder_hidden_size=128`, built from the same seed as the encoder of
# section 1. One step on the encoder's weights moves all `p` vectors at once (section 2), and P-tuning is trained
# with a smaller learning rate than notebook 02's prompt tuning; the value below is the one measured for this
# setting. The score before training is the base model's zero-shot score.

# %%
LEARNING_RATE = 3e-3
train_data = load_task("topic", "train")
before = evaluate(model, tok, "topic")  # zero-shot: the base model with the task's instruction

torch.manual_seed(0)
ptuned = get_peft_model(model, PromptEncoderConfig(num_virtual_tokens=p, encoder_hidden_size=H))
assert torch.equal(ptuned.prompt_encoder["default"].mlp_head[0].weight, mlp_head[0].weight)  # section 1's encoder
ptuned.print_trainable_parameters()
history = train(ptuned, tok, train_data, lr=LEARNING_RATE, progress=False)
print(history.summary())
plot_history(history)
plt.show()

# %%
after = evaluate(ptuned, tok, "topic")
sample_before, sample_after = before["examples"][0], after["examples"][0]
print(f"score on {after['n']} test rows: base model {before['score']:.3f} -> P-tuning {measured(after['score'])}")
print(f"input:  {sample_before['input']!r} (reference {sample_before['reference']!r})")
print(f"before: {sample_before['prediction']!r}")
print(f"after:  {measured(sample_after['prediction'])}")
if is_pretrained(model):
    assert after["score"] >= before["score"] + 0.25  # P-tuning beats zero-shot by a clear margin
else:
    print("random weights: the score is not a claim here; checked that the loss stayed finite and the encoder moved")
    assert torch.isfinite(torch.tensor(history.loss)).all()
    assert not torch.equal(ptuned.prompt_encoder["default"].mlp_head[0].weight, mlp_head[0].weight)

# %% [markdown]
# ## 6. What `save_pretrained` stores: the prompt, not the encoder
#
# peft's file for P-tuning holds one tensor, `prompt_embeddings`: the encoder's *output* `P`, shape `(p, d)`.
# The embedding and the MLP that produced it are not saved. Loaded for inference, the adapter uses `P` as is
# and gives the same logits. Loaded for training, there is nothing to train: the weights that made `P` are
# gone, so `peftedu` refuses with a ValueError that says what to do instead (HF peft refuses
# `is_trainable=True` for every prompt method).

# %%
adapter_dir = Path(tempfile.mkdtemp()) / "topic-p-tuning"
ptuned.save_pretrained(adapter_dir)
saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
print({k: tuple(v.shape) for k, v in saved.items()},
      f"-> {saved['prompt_embeddings'].numel():,} numbers saved of {ptuned.get_nb_trainable_parameters()[0]:,} trained")
assert set(saved) == {"prompt_embeddings"} and saved["prompt_embeddings"].shape == (p, d)

check = {k: v.to(dev) for k, v in collate_for_generation(tok, [sample_before["input"]]).items()}
reloaded = PeftModel.from_pretrained(model, adapter_dir).eval()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    peft_reloaded = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
with torch.no_grad():
    trained_logits = ptuned(**check).logits
    cmp("logits: trained vs reloaded (peftedu)", trained_logits, reloaded(**check).logits, atol=model_tol(trained_logits))
    cmp("logits: trained vs loaded by peft", trained_logits, peft_reloaded(**check).logits, atol=model_tol(trained_logits))
assert reloaded.get_nb_trainable_parameters()[0] == 0
assert not hasattr(reloaded.prompt_encoder["default"], "mlp_head")  # inference: no encoder, P only

# %%
try:
    PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
except ValueError as error:
    print(f"ValueError: {error}")
else:
    raise AssertionError("a P-tuning file must not load for training")

# %% [markdown]
# The saved `P` is still a perfectly good soft prompt. To keep training it, load it as *prompt tuning*:

# %%
as_prompt_tuning = get_peft_model(model, PromptTuningConfig(num_virtual_tokens=p)).eval()
as_prompt_tuning.load_adapter_state_dict(saved, "default")
with torch.no_grad():
    cmp("logits: trained vs prompt tuning from the file", trained_logits, as_prompt_tuning(**check).logits,
        atol=model_tol(trained_logits))
as_prompt_tuning.print_trainable_parameters()

# %% [markdown]
# ## 7. P-tuning v2: deep prompts (深度提示) are prefix tuning (前缀微调) without the projection
#
# P-tuning (v1) and prompt tuning put their vectors at the *input* only; on small models and hard
# sequence-labelling tasks they stay behind fine-tuning. P-tuning v2 (Liu et al. 2021, arXiv:2110.07602) adds
# trainable prompts to **every layer** ("deep prompt tuning"): in each attention layer `l`, `p` extra keys and
# values that every real token can attend to. That is exactly prefix tuning (Li & Liang 2021, notebook 04),
# with the prefix learned directly -- no reparameterisation: in peft terms
# `PrefixTuningConfig(prefix_projection=False)`. (The v2 paper treats an MLP reparameterisation as optional
# and found its benefit depends on the task; it also replaces the language-model verbalizer with a
# classification head for NLU tasks.)
#
# The source texts disagree with this in two places. One says v2 "switched P-tuning's LSTM to an MLP"; but
# v2's change is the *depth* of the prompts, not the encoder. Another counts a prefix as
# `prefix_length x num_layers x 2 x hidden_dim`; that holds for BLOOM, but with grouped-query attention the
# prefix has the width of the *key/value* heads, `kv_heads x head_dim`, which SmolLM2 makes three times
# narrower than its hidden size:

# %%
smol = build_from_config("smollm2-135m")  # the architecture only (meta device): counting needs no weights
geometry = prefix_geometry(smol.config)
deep = get_peft_model(smol, PrefixTuningConfig(num_virtual_tokens=p, prefix_projection=False))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    deep_peft = peft.get_peft_model(build_from_config("smollm2-135m"),
                                    peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p))
deep.print_trainable_parameters()
deep_peft.print_trainable_parameters()
L, kv_width = geometry["num_layers"], geometry["token_dim"]
prefix = deep.prompt_encoder["default"].embedding.weight
per_layer = prefix_key_values(prefix, L, geometry["num_kv_heads"], geometry["head_dim"], batch=1)
print(f"{smol.config.num_attention_heads} query heads, {geometry['num_kv_heads']} key/value heads of size "
      f"{geometry['head_dim']}: kv width {kv_width}, hidden size {smol.config.hidden_size}")
print(f"{L} layers x (key + value) x {p} virtual tokens x kv width {kv_width}")
print(f"prefix table {tuple(prefix.shape)}; layer 0 key {tuple(per_layer[0][0].shape)}, value {tuple(per_layer[0][1].shape)}"
      " = (batch, kv heads, p, head_dim)")
print(f"per layer: {2 * p * kv_width:,}   all {L} layers: {L * 2 * p * kv_width:,}   "
      f"with hidden_dim instead of the kv width: {p * L * 2 * smol.config.hidden_size:,} "
      f"({smol.config.hidden_size // kv_width}x too many)")
assert deep.get_nb_trainable_parameters() == deep_peft.get_nb_trainable_parameters()
assert deep.get_nb_trainable_parameters()[0] == L * 2 * p * kv_width == len(per_layer) * 2 * per_layer[0][0][0].numel()
assert kv_width == smol.config.num_key_value_heads * (smol.config.hidden_size // smol.config.num_attention_heads)
assert smol.config.hidden_size == 3 * kv_width
v1_input_only = p * smol.config.hidden_size
print(f"for comparison, what the model reads from P-tuning v1 / prompt tuning: {v1_input_only:,} numbers at the input")
del smol, deep, deep_peft

# %% [markdown]
# ## Summary
#
# * P-tuning = prompt tuning whose prompt `P` is the output of a prompt encoder: `embedding -> MLP` or
#   `embedding -> BiLSTM -> MLP`. The model sees the same `[P; E[x]]` with the prompt at positions `0..p-1`.
# * The encoder is a training-time device: its output starts at or below the scale of real tokens, and its shared
#   weights move all virtual tokens together. The MLP maps each token separately; the LSTM mixes them.
# * From scratch, `peftedu` and HF `peft` build the same modules from the same seed and give the same logits (up to
#   fp32 rounding).
# * Most trainable parameters are the encoder (5,267,456 on bloom-1b4-zh, of which 20,480 are the prompt).
#   peft saves only `P`, so a reloaded P-tuning adapter is inference-only; keep training it as prompt tuning.
# * P-tuning v2 is deep prompt tuning: a prefix of keys and values in every layer, i.e. prefix tuning without
#   the projection; its size is `L x 2 x p x kv_width`.
#
# ## Interview corner
#
# **Q: Prompt tuning vs P-tuning vs prefix tuning -- what is trained and where does it act?**
# Prompt tuning trains `p x d` input vectors directly. P-tuning trains an encoder (embedding + MLP/LSTM) whose
# output is those `p x d` input vectors. Prefix tuning trains keys and values for every layer
# (`L x 2 x p x kv_width`), optionally through an MLP (`prefix_projection=True`). The first two change only the
# input sequence; prefix tuning changes every attention layer.
#
# **Q: Why does P-tuning use an encoder if it is discarded after training?**
# It changes the optimisation, not the model: the prompt vectors share parameters, so they are learned jointly
# and move at a controlled scale, which the authors found more stable and faster to converge than optimising
# free vectors. At inference only the output `P` matters, so it is computed once and stored.
#
# **Q: P-tuning v1 vs v2?**
# v1 (GPT Understands, Too): continuous prompts at the input only, produced by an LSTM/MLP encoder, with
# prompt tokens that may sit between input parts and anchor tokens. v2: prompts in every layer (deep prompt
# tuning, as prefix tuning), no mandatory encoder, a classification head instead of a verbalizer; it matches
# fine-tuning across model sizes (from ~300M parameters) and on sequence labelling, where v1 and prompt tuning
# fall short.
#
# **Q: Can you continue training a P-tuning adapter you loaded from disk?**
# Not as P-tuning: the file holds only the encoder's output. Either keep the encoder's weights yourself
# (`state_dict()` of `prompt_encoder`) or continue as prompt tuning from the saved `P`.
#
# **Q: Does P-tuning cost more at inference than prompt tuning?**
# No: both prepend `p` vectors; the encoder is not run at inference (peft's inference mode uses the stored
# `P`). Prefix tuning / v2 cost `p` extra keys and values in every layer instead.
#
# ## Exercises
#
# 1. Train the LSTM encoder with the same settings. Compare the trainable parameters, the loss curve and the
# score with the MLP.
#
# <details><summary>Solution</summary>
#
# ```python
# torch.manual_seed(0)
# lstm_model = get_peft_model(load_base()[0], PromptEncoderConfig(num_virtual_tokens=p, encoder_hidden_size=H,
#                                                                 encoder_reparameterization_type="LSTM"))
# lstm_model.print_trainable_parameters()
# lstm_history = train(lstm_model, tok, train_data, lr=LEARNING_RATE, progress=False)
# print(lstm_history.loss[-1], evaluate(lstm_model, tok, "topic")["score"])
# ```
# The LSTM encoder has more parameters (two bidirectional LSTM layers, about 8x the MLP's here) and mixes the
# virtual tokens. Its output starts smaller (section 2), so the learning rate that suits the MLP need not suit
# it: compare the loss curves before concluding which encoder is better.
# </details>
#
# 2. Compute the P-tuning count on bloom-1b4-zh for the LSTM encoder with `encoder_hidden_size=1024` by hand,
# then check it with `get_peft_model(build_from_config("bloom-1b4-zh"), ...)`.
#
# <details><summary>Solution</summary>
#
# Embedding `10 x 2048`; LSTM layer 1, per direction `4H(d + H) + 8H`; layer 2 per direction
# `4H(2H + H) + 8H`; MLP `(2H x 2H + 2H) + (2H x d + d)`. With `H = 1024`, `d = 2048`:
# 20,480 + 2 x 12,591,104 + 2 x 12,591,104 + 4,196,352 + 4,196,352 = 58,777,600.
# ```python
# m = get_peft_model(build_from_config("bloom-1b4-zh"), PromptEncoderConfig(
#     num_virtual_tokens=10, encoder_hidden_size=1024, encoder_reparameterization_type="LSTM"))
# m.print_trainable_parameters()
# ```
# </details>
#
# 3. Take the trained P-tuning model and continue training its saved `P` as prompt tuning (section 6) for the
# same number of steps with notebook 02's learning rate. Does the score improve further?
#
# <details><summary>Solution</summary>
#
# ```python
# history2 = train(as_prompt_tuning, tok, train_data, lr=3e-2, progress=False)
# print(evaluate(as_prompt_tuning, tok, "topic")["score"])
# ```
# `as_prompt_tuning` holds `P` as a trainable `(p, d)` embedding, so training continues from the P-tuning
# result; without the encoder the steps act on each vector separately.
# </details>
#
# 4. Count P-tuning v2 (prefix tuning without projection, `p = 16`) per layer on `smollm2-135m`,
# `tinyllama-1.1b`, `qwen2.5-1.5b` and `bloom-1b4-zh`. Why do TinyLlama (hidden size 2048) and Qwen2.5-1.5B
# (hidden size 1536) need prefixes of the same size per layer?
#
# <details><summary>Solution</summary>
#
# ```python
# for name in ("smollm2-135m", "tinyllama-1.1b", "qwen2.5-1.5b", "bloom-1b4-zh"):
#     g = prefix_geometry(build_from_config(name).config)
#     print(f"{name:<15} {g}  per layer: {2 * 16 * g['token_dim']:,}")
# ```
# The per-layer size is `2 x p x kv_heads x head_dim`: it follows the key/value width, not the hidden size.
# TinyLlama has 4 kv heads of 64, Qwen2.5-1.5B 2 kv heads of 128: both 256 wide, 8,192 numbers per layer.
# BLOOM has no grouped-query attention (16 heads of 128 = 2048): 65,536 per layer.
# </details>
