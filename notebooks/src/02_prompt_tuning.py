# %% [markdown]
# # 02 · Prompt tuning (提示微调): learn the prompt, not the model
#
# A prompt changes what a frozen model does. Prompt tuning (Lester et al. 2021, arXiv:2104.08691) keeps
# that idea and drops one restriction: the prompt no longer has to be made of real words. It is a handful of
# free vectors, put in front of the input and trained by gradient descent while every weight of the model
# stays frozen.
#
# **After this notebook you can**
#
# * tell a *hard* prompt (硬提示, words a person writes) from a *soft* prompt (软提示, learned vectors), and
#   measure what a hard prompt does to the base model;
# * build prompt tuning from scratch: an `nn.Embedding` of `p` virtual tokens, concatenated to the input
#   embeddings, with the attention mask, the labels and the positions extended to match;
# * show that your cells, `peftedu` and HF `peft` give the same weights and the same logits;
# * reproduce the source tutorial's trainable-parameter counts on bloom-1b4-zh (16,384 and 20,480);
# * train a soft prompt on the `topic` task, look at what it learned, generate with it, save and reload it.

# %%
%matplotlib inline
import logging

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # silence a CPU-dependent notice at import

import inspect
import math
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
from peftedu.course.data import TOPIC_INSTRUCTION, load_task
from peftedu.course.tokenization import TrainingCollator, build_prompt, collate_for_generation, tokenize_example
from peftedu.course.shapes import architecture
from peftedu.course.models import build_from_config, is_pretrained, load_base
from peftedu.peft_model import PeftModel, get_peft_model
from peftedu.prompt_tuning import PromptTuningConfig
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate, generate_answers

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the notebook
torch.manual_seed(0)
profile = get_profile()  # PEFTEDU_PROFILE: "quick" (CPU, default) or "full" (GPU)
model, tok = load_base()
word_embeddings = model.get_input_embeddings()
d = word_embeddings.embedding_dim
print(f"{type(model).__name__}, embedding table {tuple(word_embeddings.weight.shape)}, profile {profile.name!r}")
# Tolerance of the comparisons (notebook 00, section 6): two routes through the model that add the same numbers in
# another order round differently. rounding_tolerance = 10 x eps(dtype) x magnitude x sqrt(terms).
arch = architecture(model)  # the model's shape from its config (notebook 00)
MODEL_TERMS = arch.mlp_hidden * arch.n_layers  # SmolLM2-135M, the default: 30 layers x 1,536-long sums


def model_tol(values):
    """Tolerance for ``values`` computed through the whole model by two routes that round differently."""
    return rounding_tolerance(model.dtype, magnitude=values.abs().max().item(), terms=MODEL_TERMS)

# %% [markdown]
# ## 1. Hard prompts (硬提示): the instruction is already a prompt
#
# Every record of the `topic` task carries an instruction written by a person, a *hard prompt*: discrete
# tokens, each one a row of the frozen embedding table. How much does it help the base model? The test
# sentences (the profile's evaluation rows) go to the model three ways: the sentence alone, with the task's
# own instruction, and with a more explicit hand-written instruction. Two measures:
#
# * **answer loss**: the mean cross-entropy of the reference answer (label word + end-of-turn), the very
#   number training will lower -- one forward pass over the first 16 test rows, for every variant;
# * **score**: greedy generation, counted correct only when the answer *is* the label word
#   (`peftedu.course.evaluation.evaluate`, the zero-shot score of the base model with the task's instruction).

# %%
test_records = list(load_task("topic", "test").select(range(profile.eval_rows or 100)))
collate = TrainingCollator(tok)


def with_instruction(records, instruction):
    """The same sentences under another hard prompt (None: the sentence alone)."""
    if instruction is None:
        return [dict(instruction=r["input"], input="", output=r["output"]) for r in records]
    return [dict(instruction=instruction, input=r["input"], output=r["output"]) for r in records]


@torch.no_grad()
def answer_loss(lm, records, batch_size=16):
    """Mean cross-entropy over the answer tokens of ``records`` (the training loss, without training)."""
    total, count = 0.0, 0
    for start in range(0, len(records), batch_size):
        batch = {k: v.to(model.device) for k, v in collate([tokenize_example(tok, r) for r in records[start:start + batch_size]]).items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += lm(**batch).loss.item() * n
        count += n
    return total / count


hard_prompts = {
    "sentence alone": None,
    "task instruction": TOPIC_INSTRUCTION,
    "explicit instruction": TOPIC_INSTRUCTION + " Reply with the label word only, in lowercase.",
}
loss_records = test_records[:16]  # one batch: the answer loss is cheap to compare, and stable
hard_loss = {name: answer_loss(model, with_instruction(loss_records, instruction))
             for name, instruction in hard_prompts.items()}
for name, value in hard_loss.items():
    print(f"answer loss, {name:<21} {measured(value)}")
before = evaluate(model, tok, "topic")  # the base model with the task's own instruction
print(f"zero-shot score with the task instruction: {before['score']:.3f} on {before['n']} rows; first answers:",
      [e["prediction"] for e in before["examples"][:4]])
if is_pretrained(model):
    assert hard_loss["task instruction"] < hard_loss["sentence alone"]  # the words do steer the model
else:
    print("random weights: words steer nothing yet; checked only that every answer loss is finite")
    assert all(math.isfinite(value) for value in hard_loss.values())

# %% [markdown]
# The instruction lowers the answer loss a lot: the hard prompt moves probability towards the right words.
# Compare the explicit instruction with the task's own: more words are not always better, and which wording
# works is found by trial and error. The first answers show the other catch on a small model: it talks
# *about* the labels instead of answering with one, which the exact-match score does not forgive. Prompt
# tuning replaces the search over wordings by gradient descent.
#
# ## 2. The soft prompt (软提示), from scratch
#
# A hard prompt of `p` tokens is `p` rows of the embedding table `E`. A soft prompt is a `p x d` matrix `P`
# of free numbers: an `nn.Embedding(p, d)` of *virtual tokens* (虚拟token). The model reads
#
# $$\text{inputs\_embeds} = [P_1, \dots, P_p, E[x_1], \dots, E[x_n]] \in \mathbb{R}^{B \times (p+n) \times d}$$
#
# and only `P` receives gradients: `p * d` trainable numbers.
#
# **Initialisation.** `nn.Embedding` draws every entry from N(0, 1), so a random row has norm about
# `sqrt(d)`; the real token rows of SmolLM2 are much shorter. *TEXT init* copies the rows of the tokens of a
# sentence instead, so the soft prompt starts *as a hard prompt* and training moves it from there
# (cut to `p` tokens, or repeated until `p`, as peft does).

# %%
p = 16
init_text = "Classify the topic as sports, cooking, travel or technology:"

torch.manual_seed(0)
soft_prompt = nn.Embedding(p, d, device=model.device)  # p virtual tokens; N(0, 1) entries: the RANDOM init
random_rows = soft_prompt.weight.detach().clone()

text_ids = tok(init_text)["input_ids"]
init_ids = (text_ids * math.ceil(p / len(text_ids)))[:p]  # cut to p, or repeat until p
with torch.no_grad():
    soft_prompt.weight.copy_(word_embeddings.weight[init_ids])  # TEXT init (kept in fp32, as peft does)

assert soft_prompt.weight.shape == (p, d)
assert torch.equal(soft_prompt.weight, word_embeddings.weight[init_ids].float())
print(f"{len(text_ids)} text tokens -> {p} virtual tokens:", tok.convert_ids_to_tokens(init_ids))

# %%
vocab_norms = word_embeddings.weight.detach().float().norm(dim=1).cpu()
random_norms = random_rows.norm(dim=1).cpu()
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(vocab_norms.numpy(), bins=80, alpha=0.7, label="rows of the embedding table (real tokens)")
ax.hist(random_norms.numpy(), bins=8, alpha=0.9, label=f"RANDOM init, N(0, 1): about sqrt(d) = {math.sqrt(d):.0f}")
ax.hist(soft_prompt.weight.detach().norm(dim=1).cpu().numpy(), bins=8, alpha=0.9, label="TEXT init: rows of real tokens")
ax.set_xlabel("vector norm")
ax.set_ylabel("count")
ax.set_yscale("log")
ax.set_title("Where the soft prompt starts")
ax.legend(fontsize=8)
plt.show()
print(f"median norm: vocabulary {measured(vocab_norms.median().item(), '.2f')}, "
      f"RANDOM init {measured(random_norms.median().item(), '.2f')}")
assert random_norms.median() > 3 * vocab_norms.median()  # random rows are far off the embedding manifold

# %% [markdown]
# ### 2.1 Prepend the prompt: embeddings, attention mask, labels
#
# A training batch is padded on the right (`peftedu.course.tokenization.TrainingCollator`). Three tensors grow by `p`
# columns at the front:
#
# * `inputs_embeds`: the prompt, the same for every row, then the token embeddings;
# * `attention_mask`: ones, the prompt is attended to like any token;
# * `labels`: `-100`, there is nothing to predict at the prompt's positions.

# %%
train_data = load_task("topic", "train")
batch = {k: v.to(model.device) for k, v in collate([tokenize_example(tok, r) for r in train_data.select(range(2))]).items()}
input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
B, n = input_ids.shape

token_embeds = word_embeddings(input_ids)  # (B, n, d)
prompt_rows = soft_prompt.weight.unsqueeze(0).expand(B, -1, -1)  # (B, p, d): one prompt, shared by every row
inputs_embeds = torch.cat([prompt_rows, token_embeds], dim=1)
full_mask = torch.cat([attention_mask.new_ones(B, p), attention_mask], dim=1)
full_labels = torch.cat([labels.new_full((B, p), -100), labels], dim=1)

assert inputs_embeds.shape == (B, p + n, d) and torch.equal(inputs_embeds[:, p:], token_embeds)
assert full_mask.shape == (B, p + n) and full_mask[:, :p].eq(1).all() and torch.equal(full_mask[:, p:], attention_mask)
assert full_labels.shape == (B, p + n) and full_labels[:, :p].eq(-100).all() and torch.equal(full_labels[:, p:], labels)
print("inputs_embeds", tuple(inputs_embeds.shape), " attention_mask", tuple(full_mask.shape),
      " labels", tuple(full_labels.shape))

# %% [markdown]
# ### 2.2 Positions: the prompt takes 0..p-1
#
# The prompt is part of the sequence, so it takes the first positions and the real tokens start at `p`.
# We count positions from the attention mask, `cumsum(mask) - 1`, the way `generate` counts them. With a
# left-padded generation batch the order is `[prompt][pads][tokens]` (the prompt goes in front of the padded
# batch, as in peft), and the pads do not count: the first real token sits at position `p` in every row.
# The figure draws the layout of a small left-padded batch, with the position of each cell, computed by the
# same two lines.


# %%
def positions_from(mask):
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


positions = positions_from(full_mask)
assert positions[:, :p].tolist() == [list(range(p))] * B  # the prompt: 0..p-1
assert all(positions[row, p:p + int(attention_mask[row].sum())].tolist() == list(range(p, p + int(attention_mask[row].sum())))
           for row in range(B))  # the real tokens: p, p+1, ...

# the layout of a tiny left-padded batch, p = 3 for the picture
demo_p = 3
demo = collate_for_generation(tok, ["The match ended in a draw", "Bake for ten minutes"])
demo_mask = torch.cat([torch.ones(2, demo_p, dtype=torch.long), demo["attention_mask"]], dim=1)
demo_positions = positions_from(demo_mask)
kinds = [["prompt"] * demo_p + ["pad" if m == 0 else "token" for m in row] for row in demo["attention_mask"].tolist()]
colours = {"prompt": "tab:orange", "pad": "lightgrey", "token": "tab:blue"}
fig, ax = plt.subplots(figsize=(8, 1.6))
for r, row in enumerate(kinds):
    for c, kind in enumerate(row):
        ax.add_patch(plt.Rectangle((c, -r), 0.95, 0.9, color=colours[kind]))
        label = "-" if kind == "pad" else str(int(demo_positions[r, c]))
        ax.text(c + 0.47, -r + 0.45, label, ha="center", va="center", fontsize=8, color="white" if kind != "pad" else "black")
ax.set_xlim(0, len(kinds[0]))
ax.set_ylim(-1.1, 1)
ax.axis("off")
ax.set_title("[prompt][pads][tokens]: orange = virtual tokens, grey = left padding, blue = real tokens (numbers: positions)",
             fontsize=8)
plt.show()
first_real = [demo_p + int((demo["attention_mask"][r] == 0).sum()) for r in range(2)]
assert [int(demo_positions[r, first_real[r]]) for r in range(2)] == [demo_p, demo_p]  # whatever the padding

# %% [markdown]
# ### 2.3 The forward pass and the gradient
#
# The frozen model takes `inputs_embeds` instead of `input_ids`. The loss is the usual causal-LM loss;
# only the soft prompt is trainable, so it is the only tensor that gets a gradient.


# %%
def soft_prompt_forward(lm, prompt_matrix, input_ids, attention_mask, labels=None):
    """Prompt tuning by hand: [P; E[x]], mask of ones, -100 labels, positions from the mask."""
    rows = input_ids.shape[0]
    token_embeds = lm.get_input_embeddings()(input_ids)  # the prompt joins them in the model's dtype
    embeds = torch.cat([prompt_matrix.to(token_embeds.dtype).unsqueeze(0).expand(rows, -1, -1), token_embeds], dim=1)
    mask = torch.cat([attention_mask.new_ones(rows, prompt_matrix.shape[0]), attention_mask], dim=1)
    if labels is not None:
        labels = torch.cat([labels.new_full((rows, prompt_matrix.shape[0]), -100), labels], dim=1)
    return lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from(mask), labels=labels)


model.requires_grad_(False)  # the base model is frozen
scratch_out = soft_prompt_forward(model, soft_prompt.weight, input_ids, attention_mask, labels)
scratch_out.loss.backward()
assert scratch_out.logits.shape == (B, p + n, model.config.vocab_size)
assert soft_prompt.weight.grad is not None and soft_prompt.weight.grad.abs().sum() > 0
assert all(param.grad is None for param in model.parameters())  # nothing else is touched
print(f"loss {measured(scratch_out.loss.item(), '.4f')}; gradient reaches the prompt only: "
      f"{tuple(soft_prompt.weight.grad.shape)}")
soft_prompt.zero_grad()

# %% [markdown]
# ## 3. The same thing three ways: from scratch, `peftedu`, HF `peft`
#
# `peftedu.prompt_tuning` is the module version of the cells above, with peft's API
# (`PromptTuningConfig`, `get_peft_model`, the soft prompt at `prompt_encoder["default"].embedding.weight`).
# HF `peft` gets the tokenizer's folder for its TEXT init. Prompt methods leave the base model untouched, so
# all three share `model`.

# %%
config = PromptTuningConfig(num_virtual_tokens=p, prompt_tuning_init="TEXT", prompt_tuning_init_text=init_text,
                            tokenizer=tok)
ours = get_peft_model(model, config)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    theirs = peft.get_peft_model(model, peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=p, prompt_tuning_init="TEXT", prompt_tuning_init_text=init_text,
        tokenizer_name_or_path=tok.name_or_path))
ours.eval()
theirs.eval()
ours.print_trainable_parameters()
theirs.print_trainable_parameters()
assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
assert ours.get_nb_trainable_parameters()[0] == p * d

cmp("init: scratch vs peftedu", soft_prompt.weight, ours.prompt_encoder["default"].embedding.weight, atol=0)
cmp("init: scratch vs peft", soft_prompt.weight, theirs.prompt_encoder["default"].embedding.weight, atol=0)
with torch.no_grad():
    scratch_logits = soft_prompt_forward(model, soft_prompt.weight, input_ids, attention_mask).logits
    ours_logits = ours(input_ids=input_ids, attention_mask=attention_mask).logits
    theirs_logits = theirs(input_ids=input_ids, attention_mask=attention_mask).logits
real = full_mask.bool()  # compare where there is a token; at right-pad positions peft numbers positions differently
tol = model_tol(scratch_logits)
diffs = [cmp("logits: scratch vs peftedu", scratch_logits, ours_logits, atol=tol),
         cmp("logits: scratch vs peft (real tokens)", scratch_logits[real], theirs_logits[real], atol=tol),
         # a cross-entropy moves by at most twice the largest change of a logit
         cmp("loss: scratch vs peft", scratch_out.loss.detach(), theirs(**batch).loss.detach(), atol=2 * tol)]

# %% [markdown]
# **With left padding peft's `forward` differs.** It passes no position ids, so the pads of a left-padded
# row take positions and push the row's real tokens further right; `peftedu` counts positions from the mask,
# so a padded row gets the logits it gets alone, up to rounding (the batch has another shape). (`generate`
# counts from the mask in both.) A model without position ids has nothing to shift: BLOOM adds ALiBi biases that
# follow the mask, so there peft's padded row equals the row alone too.

# %%
padded = {k: v.to(model.device) for k, v in collate_for_generation(tok, ["The match ended in a draw", "Bake for ten minutes"]).items()}
short_row, pads = 1, int((padded["attention_mask"][1] == 0).sum())
alone = {"input_ids": padded["input_ids"][short_row:, pads:], "attention_mask": padded["attention_mask"][short_row:, pads:]}
with torch.no_grad():
    ours_padded = ours(**padded).logits[short_row, p + pads:]
    theirs_padded = theirs(**padded).logits[short_row, p + pads:]
    ours_alone = ours(**alone).logits[0, p:]
print(f"the short row has {pads} pads")
cmp("peftedu: padded row vs alone", ours_padded, ours_alone, atol=model_tol(ours_alone))
if "position_ids" in inspect.signature(model.forward).parameters:  # rotary or learned positions: Llama, Qwen2
    peft_shift = cmp("peft: padded row vs alone", theirs_padded, ours_alone, atol=model_tol(ours_alone), expect="different")
    assert pads > 0 and peft_shift > 1e-3  # peft's forward: the pads shift the positions
else:
    print(f"{type(model).__name__} takes no position ids (positions follow the mask): peft's pads shift nothing")
    cmp("peft: padded row vs alone", theirs_padded, ours_alone, atol=model_tol(ours_alone))

# %% [markdown]
# ## 4. How many parameters? The source tutorial's counts on bloom-1b4-zh
#
# The source tutorial trains `Langboat/bloom-1b4-zh` (embedding width `d = 2048`) and reports 16,384
# trainable parameters for 8 virtual tokens and 20,480 for 10. We build that architecture on the *meta*
# device (shapes only, no memory, no download) and count with `peftedu` and with `peft`.
#
# The tutorial calls its 8-token run "hard prompt" and its 10-token run "soft prompt". Both are soft prompts:
# the 8-token one only *starts* from the embeddings of a sentence (TEXT init) and is then trained like any
# other; the count is `p * d` either way.

# %%
for virtual_tokens, tutorial_count in ((8, 16_384), (10, 20_480)):
    bloom_ours = get_peft_model(build_from_config("bloom-1b4-zh"), PromptTuningConfig(num_virtual_tokens=virtual_tokens))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a transformers deprecation notice raised inside peft
        bloom_theirs = peft.get_peft_model(build_from_config("bloom-1b4-zh"), peft.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens))
    print(f"p = {virtual_tokens:>2}  peftedu: ", end="")
    bloom_ours.print_trainable_parameters()
    print(f"p = {virtual_tokens:>2}  peft:    ", end="")
    bloom_theirs.print_trainable_parameters()
    assert bloom_ours.get_nb_trainable_parameters() == bloom_theirs.get_nb_trainable_parameters()
    assert bloom_ours.get_nb_trainable_parameters()[0] == virtual_tokens * 2048 == tutorial_count
del bloom_ours, bloom_theirs

# %% [markdown]
# ## 5. Training the soft prompt on `topic`
#
# The `peftedu` model from section 3 (TEXT init, 16 virtual tokens) is trained with the course's loop. A
# soft prompt needs a much larger learning rate than LoRA: it is a handful of vectors whose gradient arrives
# through the whole frozen network. The profile (`PEFTEDU_PROFILE`) sets the number of steps; the learning
# rate, `3e-2`, is the one measured for this setting. The score before training is the base model's zero-shot
# score from section 1.

# %%
LEARNING_RATE = 3e-2
sample = before["examples"][0]  # a test row and the base model's answer (section 1)

prompt_before = ours.prompt_encoder["default"].embedding.weight.detach().clone()
ours.print_trainable_parameters()
history = train(ours, tok, train_data, lr=LEARNING_RATE, progress=False)
print(history.summary())
plot_history(history)
plt.show()

# %%
after = evaluate(ours, tok, "topic")
soft_loss = answer_loss(ours, with_instruction(loss_records, TOPIC_INSTRUCTION))
print(f"score on {after['n']} test rows: base model {before['score']:.3f} -> soft prompt {measured(after['score'])}")
print(f"answer loss: best hard prompt {measured(min(hard_loss.values()))} -> task instruction + soft prompt "
      f"{measured(soft_loss)}")
print(f"input:  {sample['input']!r} (reference {sample['reference']!r})")
print(f"before: {sample['prediction']!r}")
print(f"after:  {measured(after['examples'][0]['prediction'])}")
if is_pretrained(model):
    assert after["score"] >= before["score"] + 0.3  # the trained soft prompt beats zero-shot by a clear margin
    assert soft_loss < min(hard_loss.values())
else:
    print("random weights: the score is not a claim here; checked that the loss stayed finite and the prompt moved")
    assert math.isfinite(soft_loss) and all(math.isfinite(loss) for loss in history.loss)
    assert not torch.equal(ours.prompt_encoder["default"].embedding.weight, prompt_before)

# %% [markdown]
# ## 6. TEXT init or RANDOM init?
#
# Lester et al. found random initialisation the worst of their three choices (random, sampled vocabulary,
# class labels), the gap closing only for very large models. Here the same recipe trains a RANDOM-initialised
# prompt -- built by `peftedu` from the same seed as the `random_rows` of section 2 -- on the same batches in
# the same order, so the two loss curves can be compared step by step.

# %%
torch.manual_seed(0)
random_model = get_peft_model(model, PromptTuningConfig(num_virtual_tokens=p))  # RANDOM is the default init
assert torch.equal(random_model.prompt_encoder["default"].embedding.weight, random_rows)
random_history = train(random_model, tok, train_data, lr=LEARNING_RATE, progress=False)

fig, ax = plt.subplots(figsize=(6, 3.5))
steps = range(1, history.steps + 1)
ax.plot(steps, history.loss, marker="o", markersize=3, label="TEXT init")
ax.plot(steps, random_history.loss, marker="s", markersize=3, label="RANDOM init")
ax.set_xlabel("optimizer step")
ax.set_ylabel("training loss")
ax.set_title(f"Same batches, same learning rate ({LEARNING_RATE:g})")
ax.legend()
plt.show()

tail = max(1, history.steps // 4)
text_tail, random_tail = sum(history.loss[-tail:]) / tail, sum(random_history.loss[-tail:]) / tail
step_size = {name: LEARNING_RATE * math.sqrt(d) / rows.norm(dim=1).median().item()
             for name, rows in (("TEXT", prompt_before), ("RANDOM", random_rows))}
print(f"loss at the first step: TEXT {measured(history.loss[0])}, RANDOM {measured(random_history.loss[0])}")
print(f"mean loss of the last {tail} steps: TEXT {measured(text_tail)}, RANDOM {measured(random_tail)}")
print("an Adam step of size lr per coordinate, relative to the length of a prompt row (lr * sqrt(d) / |row|): "
      + ", ".join(f"{name} {measured(value, '.0%')}" for name, value in step_size.items()))
if is_pretrained(model):
    assert text_tail < random_tail
else:
    print("random weights: real token rows mean nothing yet; checked only that both runs stayed finite")
    assert math.isfinite(text_tail) and math.isfinite(random_tail)

# %% [markdown]
# Look at the first step: the text prompt is not automatically better *before* training (presumably because
# it is glued in front of the chat template, where the model never saw text in its own instruction tuning). Its advantage shows during
# training. Adam moves every coordinate by roughly the learning rate whatever the gradient's size, so the same
# learning rate is a large step for a row of token size and a small one for a random row of length
# `sqrt(d)`: the random prompt needs more steps (or another learning rate) to go anywhere, and it starts
# off the embedding manifold the model knows.

# %% [markdown]
# ## 7. What did the prompt learn? Nearest vocabulary tokens
#
# A trained soft prompt is not text, but we can ask which real token each vector is closest to (cosine
# similarity to every row of `E`). Before training each vector *is* a token row (similarity 1). The figure
# shows how far training moved the vectors away from the vocabulary; the table also says whether each vector's
# nearest token is still the one it started from. (Lester et al. report learned prompt vectors whose nearest
# tokens are semantically related words; the table shows what this short run did.)

# %%
def nearest_tokens(vectors):
    similarity = nn.functional.normalize(vectors.float(), dim=1) @ nn.functional.normalize(word_embeddings.weight.float(), dim=1).T
    best = similarity.max(dim=1)
    return best.values.cpu(), tok.convert_ids_to_tokens(best.indices.tolist())


with torch.no_grad():
    sim_before, tokens_before = nearest_tokens(prompt_before)
    sim_after, tokens_after = nearest_tokens(ours.prompt_encoder["default"].embedding.weight)
    moved = ((ours.prompt_encoder["default"].embedding.weight - prompt_before).norm(dim=1) / prompt_before.norm(dim=1)).cpu()

fig, ax = plt.subplots(figsize=(8, 3))
xs = torch.arange(p)
ax.bar(xs - 0.2, sim_before.numpy(), width=0.4, label="before training (TEXT init)")
ax.bar(xs + 0.2, sim_after.numpy(), width=0.4, label="after training")
ax.set_xticks(xs.tolist(), [f"{i}\n{t}" for i, t in enumerate(tokens_after)], fontsize=7)
ax.set_ylabel("cosine similarity to\nthe nearest token")
ax.set_title("Each virtual token and its nearest vocabulary token (labels: nearest after training)")
ax.legend(fontsize=8)
plt.show()
for i in range(p):  # the distance moved, the nearest token after training and its cosine: results of training
    print(f"{i:>2}  {tokens_before[i]!r:>14}  moved {measured(moved[i].item(), '.0%')}, now nearest to "
          f"{measured(tokens_after[i])} (cosine {measured(sim_after[i].item(), '.2f')})")
kept = sum(a == b for a, b in zip(tokens_before, tokens_after))
print(f"{measured(kept, 'd')} of {p} vectors still have their initial token as nearest")
assert torch.allclose(sim_before, torch.ones(p), atol=1e-5)  # TEXT init: every vector is a token row
assert (sim_after < 1 - 1e-3).all()  # training moved every vector off its token

# %% [markdown]
# ## 8. Generation: a left-padded batch gives what each prompt gives alone
#
# `generate` feeds `[P; E[input_ids]]` as `inputs_embeds` and returns `input_ids` followed by the new tokens
# (peft's output format). Because positions are counted from the mask, batching with left padding changes
# nothing.

# %%
prompts = [r for r in test_records[:3]]
batch_answers = generate_answers(ours, tok, prompts, batch_size=3)
single_answers = [generate_answers(ours, tok, [r], batch_size=1)[0] for r in prompts]
for r, a, s in zip(prompts, batch_answers, single_answers):
    print(f"{r['output']:<11} batched {measured(a)}, alone {measured(s)}")
assert batch_answers == single_answers

# %% [markdown]
# HF peft 0.21.2 with transformers 5.24 only generates correctly with `use_cache=False`: its
# `prepare_inputs_for_generation` looks for the cache under the old name `past_key_values` (transformers now
# calls it `cache`), so with the cache on it puts the prompt in again at every decoding step. A hook on the
# base model records how many positions each forward call receives. Same weights, one row:

# %%
theirs.prompt_encoder["default"].load_state_dict(ours.prompt_encoder["default"].state_dict())
one = {k: v.to(model.device) for k, v in collate_for_generation(tok, [build_prompt(tok, sample["instruction"], sample["input"])]).items()}
n_one = one["input_ids"].shape[1]


def generate_and_record(lm, **kwargs):
    """Greedy generation; also returns the number of positions fed to the base model at each step."""
    fed = []
    record = lambda module, args, kw: fed.append((kw["inputs_embeds"] if kw.get("inputs_embeds") is not None
                                                  else kw["input_ids"]).shape[1])
    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens = lm.generate(**one, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id, **kwargs)
    finally:
        hook.remove()
    return tokens, fed


runs = {"peftedu": generate_and_record(ours),
        "peft, use_cache=False": generate_and_record(theirs, use_cache=False),
        "peft, cache (default)": generate_and_record(theirs)}
for name, (tokens, fed) in runs.items():  # the answer, and so the number of steps, come from the trained prompt
    answer = tok.decode(tokens[0, n_one:], skip_special_tokens=True)
    print(f"{name:<22} positions fed: {fed[0]} at the first step, {fed[1]} at the second "
          f"({measured(len(fed), 'd')} steps in all), answer {measured(answer)}")
assert torch.equal(runs["peftedu"][0], runs["peft, use_cache=False"][0])
assert runs["peftedu"][1][0] == p + n_one and set(runs["peftedu"][1][1:]) == {1}  # prompt once, then 1 token a step
assert set(runs["peft, cache (default)"][1][1:]) == {p + 1}  # peft: the prompt again at every step

# %% [markdown]
# ## 9. Save and reload
#
# The saved adapter is peft's layout: `adapter_config.json` and one tensor, `prompt_embeddings` of shape
# `(p, d)`. That is the whole trained state, so `peftedu` can load it to keep training
# (`is_trainable=True`; HF peft refuses that for prompt methods) and HF peft can load it for inference.

# %%
adapter_dir = Path(tempfile.mkdtemp()) / "topic-prompt"
ours.save_pretrained(adapter_dir)
saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
print(sorted(path.name for path in adapter_dir.iterdir()), {k: tuple(v.shape) for k, v in saved.items()})
assert set(saved) == {"prompt_embeddings"} and saved["prompt_embeddings"].shape == (p, d)

check = {k: v.to(model.device) for k, v in collate_for_generation(tok, [r["input"] for r in test_records[:2]]).items()}
reloaded = PeftModel.from_pretrained(model, adapter_dir).eval()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    peft_reloaded = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
unpadded = {"input_ids": check["input_ids"][:1], "attention_mask": check["attention_mask"][:1]}
with torch.no_grad():
    cmp("logits: trained vs reloaded (peftedu)", ours(**check).logits, reloaded(**check).logits, atol=0)
    unpadded_logits = ours(**unpadded).logits
    cmp("logits: trained vs loaded by peft", unpadded_logits, peft_reloaded(**unpadded).logits,
        atol=model_tol(unpadded_logits))
trainable_again = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
assert trainable_again.get_nb_trainable_parameters()[0] == p * d and reloaded.get_nb_trainable_parameters()[0] == 0

# %% [markdown]
# ## Summary
#
# * A hard prompt is text: rows of the frozen embedding table, chosen by a person. A soft prompt is `p` free
#   vectors, `p * d` parameters, trained by gradient descent while the model stays frozen.
# * From scratch it is three concatenations (embeddings, attention mask of ones, labels of -100) and one
#   convention: the prompt takes positions `0..p-1`, real tokens start at `p`, pads do not count.
# * Our cells, `peftedu` and HF `peft` agree exactly in weights, and in logits up to fp32 rounding; peft's `forward`
#   differs only with left padding, and its `generate` needs `use_cache=False` with transformers 5.24.
# * TEXT init starts from a hard prompt; RANDOM init starts far away from every real token and, with the same
#   learning rate and steps, ends with a higher training loss.
# * The trained soft prompt beats the hand-written hard prompts of section 1 on this task, with a few
#   thousand parameters; its vectors have moved off the token rows they started from.
# * The file is one `(p, d)` tensor, loadable by peft and trainable again in `peftedu`.
#
# ## Interview corner
#
# **Q: What exactly is trained in prompt tuning, and how many parameters is that?**
# A `p x d` matrix of virtual-token embeddings, nothing else: `p * d` numbers (16,384 for 8 tokens on a
# `d = 2048` model). The model, including its embedding table, is frozen.
#
# **Q: Hard prompt vs soft prompt?**
# A hard prompt is discrete text: every token is a row of the embedding table, found by hand or by discrete
# search. A soft prompt lives in the continuous embedding space, need not be any token, and is found by
# gradient descent on task data. A TEXT-initialised soft prompt starts as a hard prompt.
#
# **Q: Why does prompt tuning use such a high learning rate?**
# To change the model's behaviour the prompt vectors must move a distance comparable to the length of a token
# row, and an Adam-type optimiser moves each coordinate by about `lr` per step, so the relative step is
# `lr * sqrt(d) / |row|` (section 6). A LoRA-sized learning rate makes that step tiny. Lester et al. used 0.3
# (Adafactor); this notebook uses 3e-2 with AdamW.
#
# **Q: What are the costs at inference time?**
# The prompt occupies `p` positions of the context window and adds `p` tokens of compute to every request;
# nothing can be merged into the weights. In exchange one frozen model serves many tasks, each a tiny
# `(p, d)` file, and a batch can mix tasks by giving rows different prompts.
#
# **Q: When does prompt tuning match full fine-tuning?**
# In Lester et al. (T5) the gap closes as the model grows, to about 10B parameters; on small models it
# stays behind LoRA-style methods. P-tuning v2 (notebook 03) puts prompts into every layer to fix that.
#
# ## Exercises
#
# 1. Evaluate the RANDOM-init model of section 6 (`evaluate(random_model, tok, "topic")`), then train a fresh
# RANDOM prompt with a learning rate 10x larger. Does a larger step make up for the longer rows?
#
# <details><summary>Solution</summary>
#
# ```python
# print(evaluate(random_model, tok, "topic")["score"])
# torch.manual_seed(0)
# random_fast = get_peft_model(model, PromptTuningConfig(num_virtual_tokens=p))
# fast_history = train(random_fast, tok, train_data, lr=10 * LEARNING_RATE, progress=False)
# print(fast_history.loss[-3:], evaluate(random_fast, tok, "topic")["score"])
# ```
# The relative step size printed in section 6 predicts that a 10x larger rate moves the random rows, relative to
# their length, about as fast as the original rate moves the text rows. Compare the loss curves and the scores
# with TEXT init; with a rate too large the loss jumps between steps. TEXT (or SAMPLE_VOCAB) init avoids the
# question by starting at the scale of real tokens.
# </details>
#
# 2. Change `p` to 4 and to 32 (TEXT init). How do the parameter count and the score change?
#
# <details><summary>Solution</summary>
#
# The count is `p * d` (2,304 and 18,432 on SmolLM2). Build `PromptTuningConfig(num_virtual_tokens=4, ...)`,
# train as in section 6 and evaluate. Lester et al. saw gains up to about 20 tokens and little beyond; with 4
# tokens the text init is cut to its first 4 tokens.
# </details>
#
# 3. Write `soft_prompt_forward` for a batch in which *each row* has its own prompt (a `(B, p, d)` tensor).
# What must change, and why can't LoRA do the same as cheaply?
#
# <details><summary>Solution</summary>
#
# Only the first concatenation: `torch.cat([prompts, embeds], dim=1)` with `prompts` of shape `(B, p, d)`
# instead of an expanded `(p, d)`. The mask, labels and positions are the same. Serving many tasks in one
# batch is therefore free for prompt tuning; a LoRA needs per-row weight deltas
# (`peftedu`'s `adapter_names=` for layer methods).
# </details>
#
# 4. Project the trained soft prompt onto its nearest tokens (section 7) and use those tokens as a *hard*
# prompt. Does the score survive?
#
# <details><summary>Solution</summary>
#
# ```python
# _, ids = (nn.functional.normalize(ours.prompt_encoder["default"].embedding.weight, dim=1)
#           @ nn.functional.normalize(word_embeddings.weight, dim=1).T).max(dim=1)
# projected = get_peft_model(load_base()[0], PromptTuningConfig(num_virtual_tokens=p))
# with torch.no_grad():
#     projected.prompt_encoder["default"].embedding.weight.copy_(word_embeddings.weight[ids])
# print(evaluate(projected, tok, "topic")["score"])
# ```
# Compare with the trained score. The cosines of section 7 show how far each vector is from the token it snaps
# to: the further training moved the vectors between tokens, the more the projection throws away. A soft
# prompt is in general not readable text.
# </details>
