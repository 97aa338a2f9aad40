# %% [markdown]
# # 12 · The showdown (方法对比): every method side by side, measured
#
# The source tutorials compare PEFT methods with words and ranges: "computation cost: low", "inference overhead:
# none (mergeable)", "training memory saved ≈ 60%", "effect ≈ 95–99% of full fine-tuning". This notebook puts a
# measurement next to each of those cells.
#
# **After this notebook you can**
#
# * reproduce the source tutorial's trainable-parameter counts for every method on `bloom-1b4-zh`'s architecture
#   (meta device: no download) and its memory arithmetic;
# * read the showdown table — every method trained on the same task, model, token budget and seed — and say what
#   each column measures and how;
# * check each claim of the sources' trade-off table against the measurement, and say where it holds, where it does
#   not, and why a 135M model on a CPU can and cannot settle it;
# * compare `peftedu` with HF `peft` on speed and memory, method by method;
# * rank methods honestly — learning rates chosen on validation, three seeds, differences against the seed noise —
#   on a task where they differ; explain what the retention column measures and what changes it; test LoRA's
#   low-rank hypothesis on a real full fine-tuning update; and give source 003's practical tips a measured verdict.
#
# The measured table comes from one committed command, `python -m peftedu showdown` (module `peftedu.course.showdown`),
# which wrote `results/showdown_cpu.json`; this notebook reads that file and recomputes nothing it cannot check.
# What it *can* recompute — every parameter count — it recomputes and compares with the file. The committed results
# are the default model's (SmolLM2-135M on a CPU; a 1.7B model on an H100 in section 7), whatever `PEFTEDU_MODEL`
# says: with another model the notebook still reads them, and says so.

# %%
%matplotlib inline
import json
import logging
import math
import statistics
import warnings

import matplotlib.pyplot as plt

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports bitsandbytes; its CPU-kernel notice is noise here
import peft
import torch
import transformers
from IPython.display import Markdown, display

import peftedu
from peftedu.course import gpu_memory, lora_study, lowrank, showdown, showdown_grid
from peftedu.course.data import LEXICON
from peftedu.course.showdown_report import compare_with_peft
from peftedu.course.showdown_setup import Settings
from peftedu.counting import count_parameters
from peftedu.course.memory import nf4_bits_per_param
from peftedu.course.recipes import memory_table
from peftedu.course.shapes import DecoderShape
from peftedu.course.models import DEFAULT_MODEL, REPO_ROOT, build_from_config, load_base, load_model_config, model_name

transformers.utils.logging.disable_progress_bar()
# transformers' deprecation notice when peft wraps a model (it prints the path of transformers on this machine)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
torch.manual_seed(0)
print("peftedu", peftedu.__version__, "| peft", peft.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1. The source tutorial's counts on bloom-1b4-zh, every method
#
# Source 002 trains `Langboat/bloom-1b4-zh` and prints a trainable-parameter count for each method. We build the
# architecture on the **meta device** (shapes, no storage) and apply each method with the source's settings, in
# `peftedu` and in HF `peft` side by side.

# %%
def bloom():
    return build_from_config("bloom-1b4-zh")  # 1,303,111,680 parameters, no memory used


source_settings = {  # method: (peftedu config, peft config or None, the count source 002 prints)
    "BitFit": (peftedu.BitFitConfig(), None, 544_768),
    "prompt tuning, 8 tokens": (peftedu.PromptTuningConfig(num_virtual_tokens=8),
                                peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8), 16_384),
    "prompt tuning, 10 tokens": (peftedu.PromptTuningConfig(num_virtual_tokens=10),
                                 peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10), 20_480),
    "P-tuning, MLP 1024": (peftedu.PromptEncoderConfig(num_virtual_tokens=10, encoder_hidden_size=1024),
                           peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=10,
                                                    encoder_hidden_size=1024), 5_267_456),
    "prefix tuning, 10 tokens": (peftedu.PrefixTuningConfig(num_virtual_tokens=10),
                                 peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10), 983_040),
    "prefix tuning + projection": (peftedu.PrefixTuningConfig(num_virtual_tokens=10, prefix_projection=True),
                                   peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10,
                                                           prefix_projection=True), 205_641_728),
    "LoRA (layers 1, 10-19) + embeddings": (
        peftedu.LoraConfig(target_modules=r".*\.1.*query_key_value", modules_to_save=["word_embeddings"]),
        peft.LoraConfig(task_type="CAUSAL_LM", target_modules=r".*\.1.*query_key_value",
                        modules_to_save=["word_embeddings"]), 95_225_856),
    "IA3": (peftedu.IA3Config(), peft.IA3Config(task_type="CAUSAL_LM"), 344_064),
}
count_rows = ["| method | source 002 | peftedu | HF peft | share of the model |", "| --- | --- | --- | --- | --- |"]
for name, (ours_config, peft_config, claimed) in source_settings.items():
    ours = peftedu.get_peft_model(bloom(), ours_config).get_nb_trainable_parameters()
    theirs = peft.get_peft_model(bloom(), peft_config).get_nb_trainable_parameters() if peft_config else None
    count_rows.append(f"| {name} | {claimed:,} | {ours[0]:,} | {'–' if theirs is None else f'{theirs[0]:,}'} | "
                      f"{100 * ours[0] / ours[1]:.4f}% |")
    assert ours[0] == claimed and (theirs is None or theirs == ours), name
display(Markdown("\n".join(count_rows)))

# %% [markdown]
# Every count matches the source (and `peft`, where it has the method). BitFit has no `peft` twin: `peft` has no
# BitFit. Note the last column: BitFit's share is **0.0418%** (the source prints 0.418%, notebook 00), and the
# "LoRA" count is large only because the source also trains the whole embedding table (`modules_to_save`):

# %%
embeddings = bloom().get_input_embeddings().weight.numel()
lora_only = 95_225_856 - embeddings
print(f"word embeddings of bloom-1b4-zh: {embeddings:,} = {100 * embeddings / 95_225_856:.1f}% of the source's "
      f"'LoRA' count; the LoRA matrices themselves: {lora_only:,}")
assert embeddings / 95_225_856 > 0.99

# %% [markdown]
# ## 2. The memory arithmetic, for bloom-1b4-zh
#
# Source 002 estimates full fp32 fine-tuning at 20.8 GB. `memory_table` gives the weights, gradients and optimizer
# states of each training recipe (before activations), with its assumptions stated in `peftedu.course.memory`;
# notebook 00 derives them byte by byte.

# %%
bloom_params = count_parameters(bloom())[1]
rows = memory_table({"bloom-1b4-zh": bloom_params}, methods=("full-fp32", "full-mixed", "lora", "qlora"),
                    lora_fraction=0.01)
memory_rows = ["| recipe | weights GB | gradients GB | fp32 master copy GB | optimizer GB | total GB |",
               "| --- | --- | --- | --- | --- | --- |"]
for row in rows:
    memory_rows.append(f"| {row['method']} | {row['weights_gb']:.2f} | {row['gradients_gb']:.2f} | "
                       f"{row['master_weights_gb']:.2f} | {row['optimizer_gb']:.2f} | {row['total_gb']:.2f} |")
    parts = row["weights_gb"] + row["gradients_gb"] + row["master_weights_gb"] + row["optimizer_gb"]
    assert abs(parts - row["total_gb"]) < 1e-9, row["method"]  # the columns add up to the total
display(Markdown("\n".join(memory_rows)))
by_method = {row["method"]: row for row in rows}
assert round(by_method["full-fp32"]["total_gb"], 1) == 20.8  # the source's number
assert by_method["qlora"]["total_gb"] < by_method["lora"]["total_gb"] < by_method["full-fp32"]["total_gb"] / 5

# %% [markdown]
# ## 3. The measured showdown
#
# `python -m peftedu showdown` trains every method on the `topic` task with the same quick profile: the same
# optimizer steps, the same training examples in the same order (seed 0), so the same token budget; only the
# learning rate is each method's own (found by short sweeps, listed in `peftedu.course.showdown.METHODS`). Each run starts
# in a fresh Python process so that its peak memory is its own. Per run it measures:
#
# * **trainable** parameters (count and share);
# * **peak training memory**: on a CPU the process's resident memory sampled during training, above where it
#   started (weights of the base model are already loaded, so this is gradients + optimizer states + activations);
# * **time per step** (median over the steps after the first) and tokens/s;
# * **latency**: one forward pass over 8 test prompts, relative to the base model in the same process — unmerged,
#   and merged for the methods that can merge;
# * **score** on the first test rows and **forgetting**: the base model's retention score minus the score after
#   training;
# * for every method HF `peft` has, the same config trained with `peft` right after, and the ratios
#   `peftedu ÷ peft` of time per step and peak memory.

# %%
result = json.loads((REPO_ROOT / "results" / "showdown_cpu.json").read_text())
rows = {r["method"]: r for r in result["rows"] if r["impl"] == "peftedu"}
peft_rows = {r["method"]: r for r in result["rows"] if r["impl"] == "peft"}
base = result["baseline"]
print(f"produced by: {result['command']}   on {result['date']}, device {result['device']}, torch {result['torch']}")
print(f"model {result['model']} ({result['weights']} weights), task {result['settings']['task']}, "
      f"profile {result['settings']['profile']}")
print(f"{len(rows)} methods, {len(peft_rows)} peft twins; every run: {rows['lora']['steps']} steps, "
      f"{rows['lora']['tokens']:,} tokens; scored on {base['eval_rows']} test rows")
print(f"base model: score {base['score']:.3f}, retention {base['retention']:.3f}")
if model_name() != DEFAULT_MODEL:  # PEFTEDU_MODEL names another model: these files do not describe it
    in_use = model_name().rstrip("/").split("/")[-1]
    print(f"note: PEFTEDU_MODEL is {in_use}; the committed tables in this notebook are the default model's "
          f"({DEFAULT_MODEL}), read from results/, not measured on {in_use}. `python -m peftedu showdown` "
          "measures the model in use.")
assert set(rows) == set(showdown.METHODS)
assert len({(r["steps"], r["tokens"]) for r in result["rows"]}) == 1  # one token budget for every run

# %% [markdown]
# Before trusting the file, check it against the code as it is now: the trainable counts it records must be what
# each method's config gives today (built on the meta device, so no training is repeated).

# %%
_, tokenizer = load_base()  # section 7.1 reads the tokenizer
# every method applied with the showdown's settings to a meta-device copy (peftedu.course.gpu_memory.fit_rows, section 7.1)
today = {r["method"]: r["trainable"] for r in gpu_memory.fit_rows(load_model_config("smollm2-135m"), profile="quick")}
for name in showdown.METHODS:
    assert rows[name]["trainable"] == today[name], (name, rows[name]["trainable"], today[name])
print(f"all {len(rows)} recorded trainable counts equal today's configs")

# %% [markdown]
# ### The table

# %%
display(Markdown((REPO_ROOT / "results" / "showdown_cpu.md").read_text()))

# %%
fig, (ax_score, ax_mem, ax_time) = plt.subplots(1, 3, figsize=(15, 4.8))
order = list(rows)
for name in order:
    r = rows[name]
    ax_score.scatter(r["trainable"], r["score"], s=30)
    ax_score.annotate(name, (r["trainable"], r["score"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
ax_score.axhline(base["score"], color="grey", ls="--", lw=1, label="base model")
ax_score.set(xscale="log", xlabel="trainable parameters (log)", ylabel="score on topic", title="score vs size")
ax_score.legend()
for ax, column, label in ((ax_mem, "peak_memory_mb", "peak training memory, MB"),
                          (ax_time, "time_per_step_s", "seconds per step")):
    ax.barh(order, [rows[n][column] for n in order], label="peftedu")
    ax.scatter([peft_rows[n][column] if n in peft_rows else float("nan") for n in order], order, color="black",
               marker="|", s=150, zorder=3, label="HF peft")
    ax.set(xlabel=label, title=label)
    ax.invert_yaxis()
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The sources' trade-off table, cell by cell
#
# Source 003 gives, per method, the share of trainable parameters, the training memory saved, the inference
# overhead and the effect relative to full fine-tuning. We put our measurement beside each claim: the share of
# trainable parameters; the memory saved = 1 − peak(method) ÷ peak(full fine-tuning); the latency of the unmerged
# and merged model relative to the base; the score relative to full fine-tuning's score.

# %%
claims = {  # source 003's table (share, memory saved, inference overhead, effect vs full fine-tuning)
    "lora": ("0.1%~1%", "~60%", "zero (mergeable)", "95-99%"),
    "qlora": ("0.1%~1%", "~75%", "zero after merging", "94-98%"),
    "dora": ("0.1%~1%", "~60%", "zero (mergeable)", "96-99.5%"),
    "adalora": ("adaptive", "~60%", "zero (mergeable)", "96-99%"),
    "prefix_tuning": ("0.01%~0.1%", "~70%", "yes (extra KV)", "90-95%"),
    "prompt_tuning": ("<0.01%", "~75%", "tiny", "88-95%"),
    "houlsby": ("0.5%~3%", "~50%", "yes (serial latency)", "95-98%"),
}
full = rows["full"]
measured = {}
lines = ["| method | share: claimed / measured | memory saved: claimed / measured | inference overhead: claimed / "
         "measured (unmerged, merged) | effect vs full FT: claimed / measured |", "| --- | --- | --- | --- | --- |"]
for name, (share, saved, overhead, effect) in claims.items():
    r = rows[name]
    m = measured[name] = {
        "share": r["trainable_pct"],
        "saved": 1 - r["peak_memory_mb"] / full["peak_memory_mb"],
        "unmerged": r["latency_unmerged_rel"], "merged": r["latency_merged_rel"],
        "effect": r["score"] / full["score"],
    }
    merged = "–" if m["merged"] is None else f"{m['merged']:.2f}"
    lines.append(f"| {name} | {share} / {m['share']:.3f}% | {saved} / {100 * m['saved']:.0f}% | {overhead} / "
                 f"{m['unmerged']:.2f}, {merged} | {effect} / {100 * m['effect']:.0f}% |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# What the measurements say (each sentence is asserted in the cell below):
#
# * **Shares.** LoRA (r = 8 on the four attention projections) trains well inside "0.1%–1%"; prompt tuning's 16
#   vectors are below 0.01%. Prefix tuning is *above* the claimed 0.01%–0.1% on this model even though SmolLM2's
#   grouped-query attention makes the prefix three times narrower than BLOOM's: it has 30 layers × 2 × 192 numbers
#   per virtual token. Houlsby adapters (bottleneck 64, two per block) are above the claimed 0.5%–3% range on a model
#   this small — an adapter's size depends on the bottleneck, not on a percentage.
# * **Memory.** Every PEFT method saves more than 70% of full fine-tuning's peak training memory, at or above the
#   sources' 50–75%: full fine-tuning carries gradients and two AdamW moments for all 134.5M parameters, which PEFT
#   drops. On this small model the activations dominate what is left. The column counts memory *above the loaded
#   model*, so QLoRA's own saving — the frozen weights stored in 4 bits — is not in it; the cell below computes it.
# * **Time.** QLoRA is the slowest method per step: each step dequantizes every 4-bit weight twice (forward, and
#   again in the backward pass instead of keeping a full-precision copy alive). 4-bit storage saves memory, not time.
# * **Inference.** Merged LoRA, DoRA and AdaLoRA run at the base model's speed (the merged model *is* a plain
#   model); unmerged, every method costs something.
# * **Effect.** On this easy task, after 12 steps, the best PEFT methods match full fine-tuning; "95–99%" is a
#   statement about large models on hard benchmarks and our measurement can neither confirm nor refute it.

# %%
for name in ("lora", "dora", "qlora"):
    assert 0.1 <= measured[name]["share"] <= 1.0, name
assert measured["prompt_tuning"]["share"] < 0.01
assert measured["prefix_tuning"]["share"] > 0.1 and measured["houlsby"]["share"] > 3
assert all(m["saved"] > 0.70 for m in measured.values())
for name in ("lora", "dora", "adalora"):
    assert abs(measured[name]["merged"] - 1) < 0.15, (name, measured[name]["merged"])
best_peft = max(r["score"] for n, r in rows.items() if n != "full")
print(f"best PEFT score {best_peft:.3f}, full fine-tuning {full['score']:.3f}")
assert best_peft >= full["score"] - 0.05

# QLoRA's saving is in the frozen weights: the linear layers (not the embedding table) in NF4 with double
# quantization, 4 + 8/64 + 32/(64·256) = 4.127 bits per weight (notebook 07 measures it from the stored tensors).
linear_weights = DecoderShape.from_config(load_model_config("smollm2-135m")).linear_params()
bits = nf4_bits_per_param()
print(f"linear weights: {linear_weights:,}; fp32 {linear_weights * 4 / 1e6:,.0f} MB -> NF4+DQ "
      f"{linear_weights * bits / 8 / 1e6:,.0f} MB at load time; QLoRA's step: {rows['qlora']['time_per_step_s']:.2f} s "
      f"vs LoRA's {rows['lora']['time_per_step_s']:.2f} s")
assert round(bits, 3) == 4.127 and rows["qlora"]["time_per_step_s"] > rows["lora"]["time_per_step_s"]

# %% [markdown]
# ## 5. `peftedu` against HF `peft`
#
# For every method `peft` has, the same configuration was trained with `peft` right after the `peftedu` run, on the
# same machine, and then twice more, the order flipped every other pair (`python -m peftedu showdown --repeats 3`;
# the repeats are in `results/showdown_runs.jsonl`). LLaMA-Adapter, whose three pairs disagreed most, got four more
# (`--methods llama_adapter --repeats 7`: 8 runs, 14 minutes). Each ratio `peftedu ÷ peft` is the **median of the
# pairs**; the table also gives every pair's time ratio, so you can see how far a single pair strays. Scores come
# from the first pair.

# %%
ratio_lines = ["| method | time ÷ peft (median) | time ÷ peft, pair by pair | memory ÷ peft (median) | score peftedu | "
               "score peft |", "| --- | --- | --- | --- | --- | --- |"]
for name, r in rows.items():
    if "time_ratio_vs_peft" in r:
        ratio_lines.append(f"| {name} | {r['time_ratio_vs_peft']:.2f} | "
                           + ", ".join(f"{x:.2f}" for x in r["time_ratios_vs_peft"])
                           + f" | {r['memory_ratio_vs_peft']:.2f} | {r['score']:.2f} | {r['peft_score']:.2f} |")
display(Markdown("\n".join(ratio_lines)))
twins = {n: r for n, r in rows.items() if "time_ratio_vs_peft" in r}
assert set(twins) == set(peft_rows)
assert {n: len(r["time_ratios_vs_peft"]) for n, r in twins.items()} == {n: 7 if n == "llama_adapter" else 3 for n in twins}
for r in twins.values():  # each median recomputed from its pairs
    assert r["time_ratio_vs_peft"] == statistics.median(r["time_ratios_vs_peft"])
    assert r["memory_ratio_vs_peft"] == statistics.median(r["memory_ratios_vs_peft"])
medians = {n: (r["time_ratio_vs_peft"], r["memory_ratio_vs_peft"]) for n, r in twins.items()}
spread = {n: max(r["time_ratios_vs_peft"]) - min(r["time_ratios_vs_peft"]) for n, r in twins.items()}
print(f"median time ratios {min(t for t, _ in medians.values()):.2f} to {max(t for t, _ in medians.values()):.2f}; "
      f"memory {min(m for _, m in medians.values()):.2f} to {max(m for _, m in medians.values()):.2f}; "
      f"one method's pairs differ by up to {max(spread.values()):.2f}")

# %% [markdown]
# Reading the ratios (asserted in the cell below):
#
# * **Memory** is within 5% of `peft` for every method: the same tensors are trained and stored.
# * **Time**: one pair decides nothing on a 2-core machine. Single pairs run from 0.85 to 1.24, and one method's
#   pairs differ by up to 0.35. The first run's LoRA ratio, 1.10, was the largest of its three pairs; its median is
#   1.06. The medians lie between 0.87 and 1.08.
# * **LLaMA-Adapter**: its first three pairs (0.89, 1.24, 1.15) gave a median of 1.15 with a spread more than twice
#   its distance from 1: three pairs could not tell. Seven pairs give 1.08, and six of the seven are above 1. If the
#   two libraries were equally fast, each pair would be above 1 with probability ½, and six or more of seven with
#   probability 8/128 = 0.06 (a one-sided sign test): `peftedu`'s LLaMA-Adapter is probably a few percent slower,
#   but not beyond doubt. The pairs time whole processes; timing one training step of each in one process is
#   exercise 6.
# * **Scores**: the same where both libraries generate the same way. For the three prompt-based methods the
#   training losses agree to two decimals, yet `peft`'s scores are lower. The difference is in `peft` 0.21.2's
#   *generation* with transformers 5.24, not in training: for prompt tuning and P-tuning it feeds the virtual tokens
#   again at every decoding step when the cache is on (notebook 02, section 8, shows it; `use_cache=False` fixes
#   it), and for prefix tuning on Llama its prefix loses to `generate`'s own cache and is dropped
#   (`tests/test_prefix_tuning.py` documents it), so the trained `peft` model answers like the base model.

# %%
all_pairs = [x for r in twins.values() for x in r["time_ratios_vs_peft"]]
assert all(0.95 <= m <= 1.05 for _, m in medians.values())  # memory: within 5%
assert all(0.85 <= t <= 1.2 for t, _ in medians.values())  # time: the medians
assert twins["lora"]["time_ratios_vs_peft"][0] == max(twins["lora"]["time_ratios_vs_peft"])  # the first run's 1.10
assert max(spread.values()) > max(abs(t - 1) for t, _ in medians.values())  # the pairs' noise exceeds every gap
assert min(all_pairs) < 0.9 and max(all_pairs) > 1.1
slowest = max(medians, key=lambda n: medians[n][0])
print(f"pairs {min(all_pairs):.2f} to {max(all_pairs):.2f}; slowest median: {slowest} {medians[slowest][0]:.2f} "
      f"(pairs {', '.join(f'{x:.2f}' for x in twins[slowest]['time_ratios_vs_peft'])})")
assert slowest == "llama_adapter"
first_three = twins[slowest]["time_ratios_vs_peft"][:3]
assert max(first_three) - min(first_three) > 2 * (statistics.median(first_three) - 1)  # three pairs could not tell
above = sum(x > 1 for x in twins[slowest]["time_ratios_vs_peft"])
p_sign = sum(math.comb(7, k) for k in range(above, 8)) / 2 ** 7  # one-sided: P(at least `above` of 7 | equal speed)
print(f"{slowest}: {above} of 7 pairs above 1; sign test p = {p_sign:.2f}")
assert above == 6 and 0.05 < p_sign < 0.1 and 1 < medians[slowest][0] < 1.1
for name in ("prompt_tuning", "p_tuning", "prefix_tuning"):
    assert abs(rows[name]["loss_last"] - peft_rows[name]["loss_last"]) < 0.02, name
    assert peft_rows[name]["score"] < rows[name]["score"]
assert peft_rows["prefix_tuning"]["score"] == base["score"]  # the dropped prefix: the base model's answers

# %% [markdown]
# ## 6. Serving many adapters
#
# Eight LoRA adapters on one base model and sixteen requests, two per adapter. One **mixed batch** — each row
# gathers its own adapter's A and B (`adapter_names=`) — against switching the active adapter request by request.

# %%
serving = result["serving"]
print(f"{serving['adapters']} adapters, {serving['requests']} requests: max logit difference "
      f"{serving['max_logit_diff']:.1e} (the adapters themselves change the logits by up to "
      f"{serving['adapters_differ_by']:.2f}); mixed batch throughput ÷ switching = {serving['throughput_ratio']:.1f}")
assert serving["max_logit_diff"] < 1e-4 < serving["adapters_differ_by"]
assert serving["throughput_ratio"] > 1

# %% [markdown]
# ## 7. The GPU profile: a 1.7B model in bf16 on an H100
#
# The same command on a GPU, with `PEFTEDU_MODEL=smollm2-1.7b` and the `full` profile (75 steps of 16 examples).
# The real weights could not be downloaded where it ran, so the model was built from its shipped config with
# random weights (`--random-weights`, stated in the file) and SmolLM2's tokenizer (`PEFTEDU_TOKENIZER`, the same
# 49,152-token vocabulary): the table measures **cost only** — time, memory, model FLOPs utilisation — and has no
# scores. The tokenizer folder named in the output held SmolLM2-135M-Instruct's tokenizer files (copied from the
# converted GGUF; the 1.7B model uses the same vocabulary). Four methods also ran their HF `peft` twin there.

# %%
gpu = json.loads((REPO_ROOT / "results" / "showdown_gpu_nvidia_h100_80gb_hbm3.json").read_text())
g = {r["method"]: r for r in gpu["rows"] if r["impl"] == "peftedu"}
print(f"{gpu['device']}, torch {gpu['torch']}, {gpu['model']} ({g['lora']['dtype']}), weights: {gpu['weights']}")
print(f"every run: {g['lora']['steps']} steps, {g['lora']['tokens']:,} tokens")
assert "H100" in gpu["device"] and gpu["weights"].startswith("random") and set(g) == set(showdown.METHODS)
display(Markdown("\n".join(line for line in (REPO_ROOT / "results" / "showdown_gpu_nvidia_h100_80gb_hbm3.md")
                           .read_text().splitlines() if line.startswith("|"))))

# %% [markdown]
# Three things the CPU table could not show:
#
# * **Memory is where PEFT pays on a GPU.** Full fine-tuning needs about three times LoRA's training memory above
#   the loaded model (gradients and AdamW moments for 1.7B parameters), and the base weights themselves are 3.4 GB
#   in bf16 — 4-bit QLoRA stores them in under a third of that, with the same training memory as LoRA above them.
# * **Time is not.** With 16 short examples per step the H100 is mostly waiting on kernel launches: full
#   fine-tuning's step is no slower than LoRA's, and model FLOPs utilisation stays below 15% for every method. PEFT
#   methods speed up a step only when the frozen base's backward pass to the weights is a large part of the work
#   (long sequences, big batches). DoRA (a weight norm per step), AdaLoRA (SVD bookkeeping) and QLoRA (dequantizing
#   twice) pay extra per step.
# * **Latency with three repeats of a 10 ms forward pass is noise on a GPU** (merged LoRA 0.9×, AdaLoRA 1.6×: the
#   merged models are plain models); read inference overhead from the CPU table.

# %%
params = count_parameters(build_from_config("smollm2-1.7b"))[1]
linear_17 = DecoderShape.from_config(load_model_config("smollm2-1.7b")).linear_params()
bf16_gb, nf4_gb = params * 2 / 1e9, (linear_17 * bits / 8 + (params - linear_17) * 2) / 1e9
print(f"base weights: bf16 {bf16_gb:.2f} GB, NF4+DQ linears + bf16 rest {nf4_gb:.2f} GB")
print(f"peak training memory above the weights: full {g['full']['peak_memory_mb']:,.0f} MB, LoRA "
      f"{g['lora']['peak_memory_mb']:,.0f} MB, QLoRA {g['qlora']['peak_memory_mb']:,.0f} MB")
print(f"s/step: full {g['full']['time_per_step_s']:.3f}, LoRA {g['lora']['time_per_step_s']:.3f}, "
      f"QLoRA {g['qlora']['time_per_step_s']:.3f}; MFU max {max(r['mfu'] for r in g.values()):.1%}")
assert nf4_gb < bf16_gb / 3
assert g["full"]["peak_memory_mb"] > 2.5 * g["lora"]["peak_memory_mb"]
assert abs(g["qlora"]["peak_memory_mb"] / g["lora"]["peak_memory_mb"] - 1) < 0.05
assert g["full"]["time_per_step_s"] < 1.1 * g["lora"]["time_per_step_s"]
assert max(r["mfu"] for r in g.values()) < 0.15
assert all(g[m]["time_per_step_s"] > g["lora"]["time_per_step_s"] for m in ("dora", "adalora", "qlora"))

# %% [markdown]
# The `peft` twins on the GPU (same settings, each run right after ours). Memory matches; `peft` is slower per
# step here, which we measured but did not profile: in this launch-bound regime, per-layer Python work in the
# forward pass shows up directly in the step time.

# %%
logged = [entry["row"] for entry in showdown.load_log(REPO_ROOT / "results" / "showdown_runs.jsonl",
                                                     Settings(**gpu["settings"])) if "row" in entry]
compare_with_peft(logged)  # the run log holds every finished GPU run, twins included
twin_rows = {r["method"]: r for r in logged if r["impl"] == "peft"}
gpu_ratio_lines = ["| method | s/step peftedu | s/step peft | time ÷ peft | memory ÷ peft |", "| --- | --- | --- | --- | --- |"]
for ours in (r for r in logged if "time_ratio_vs_peft" in r):
    gpu_ratio_lines.append(f"| {ours['method']} | {ours['time_per_step_s']:.3f} | "
                           f"{twin_rows[ours['method']]['time_per_step_s']:.3f} | {ours['time_ratio_vs_peft']:.2f} | "
                           f"{ours['memory_ratio_vs_peft']:.2f} |")
display(Markdown("\n".join(gpu_ratio_lines)))
assert sorted(twin_rows) == ["dora", "ia3", "lora", "prefix_tuning"]
assert all(r["memory_ratio_vs_peft"] <= 1.05 for r in logged if "memory_ratio_vs_peft" in r)

# %% [markdown]
# ### 7.1 Will it fit? Every method at 1B scale against a 16 GB and a 24 GB card (显存)
#
# The learner's question on a T4 or V100 (16 GB) or an RTX 3090/4090, A10 or L4 (24 GB): which method trains
# TinyLlama-1.1B or Qwen2.5-1.5B in the `full` profile (batches of 16) without running out of memory? Each method is
# applied with the showdown's own settings to a **meta-device** copy of each architecture (exact parameter counts, no
# memory), and `peftedu.course.gpu_memory.estimate` adds up weights (bf16 base; NF4 with double quantization for QLoRA),
# gradients and AdamW states (bf16 for full fine-tuning, fp32 for the adapters), the activations of one step without
# recomputation (34·s·b·d bytes per layer, Korthikanti et al. 2022, with SDPA keeping no score matrix), the fp32
# logits of the loss, and the fp32 copies of the inputs that LoRA-family and bottleneck adapters cast before their
# adapter. Batches pad to their longest row, so the length is the longest training row of the two tasks.
#
# These are **estimates**: on an H200 the same arithmetic was 15% under full fine-tuning's measured peak and 2% over
# LoRA's (results/throughput_nvidia_h200.json, at 8 × 2,048 tokens), so "yes" means under 80% of the card, "tight"
# under 100% (it may fit; halve the batch and double `grad_accum` if not), "no" above. The measured column fills
# in when a GPU run of `scripts/gpu_check.sh` has committed its per-method peaks; no such run exists yet.

# %%
from peftedu.course.data import generate_task
from peftedu.course.training import get_profile

full_profile = get_profile("full")
train_rows = generate_task("topic")["train"] + generate_task("extract")["train"]
fit_len = gpu_memory.padded_length(tokenizer, train_rows, full_profile.batch_size, full_profile.max_length)
fit_configs = {"TinyLlama-1.1B": load_model_config("tinyllama-1.1b"), "Qwen2.5-1.5B": load_model_config("qwen2.5-1.5b")}
# a GPU run of scripts/gpu_check.sh commits results/memory_<model>.json: the measured peaks join the table
gpu_runs = {label: REPO_ROOT / "results" / f"memory_{label.lower()}.json" for label in fit_configs}
gpu_runs = {label: path for label, path in gpu_runs.items() if path.exists()}
fit_md, fit = gpu_memory.fit_table(fit_configs, batch_size=full_profile.batch_size, seq_len=fit_len, measured=gpu_runs)
print(f"batch {full_profile.batch_size} x {fit_len} tokens (the longest training row with {model_name()}'s tokenizer), bf16")
print("measured on a GPU:", ", ".join(gpu_runs) or "none yet (estimates only)")
display(Markdown(fit_md))
for label, gb in fit.items():
    peft_methods = [m for m in gb if m != "full"]
    assert all(gb[m] < gb["full"] for m in peft_methods), label  # every PEFT method needs less than full fine-tuning
    assert gb["qlora"] < gb["lora"], label  # the 4-bit base saves what it stores
    print(f"{label}: full fine-tuning {gb['full'] / min(gb[m] for m in peft_methods):.1f}x the leanest PEFT method; "
          f"{sum(gpu_memory.verdict(gb[m], 16) == 'yes' for m in peft_methods)} of {len(peft_methods)} PEFT methods "
          f"fit a 16 GB card with headroom, full fine-tuning: {gpu_memory.verdict(gb['full'], 16)}")

# %% [markdown]
# Your own data will be longer than these short rows. The same estimate at 512 tokens per row (batch 16, no
# gradient checkpointing), where activations grow with the length and the weights do not:

# %%
long_md, long_fit = gpu_memory.fit_table(fit_configs, batch_size=full_profile.batch_size, seq_len=512)
display(Markdown(long_md))
for label in fit:
    print(f"{label} at 512 tokens: {sum(gpu_memory.verdict(gb, 24) != 'no' for gb in long_fit[label].values())} of "
          f"{len(long_fit[label])} methods may fit 24 GB, {sum(gpu_memory.verdict(gb, 16) != 'no' for gb in long_fit[label].values())} may fit 16 GB")
    assert all(long_fit[label][m] > fit[label][m] for m in fit[label])  # longer rows, more activations
    assert all(1 < table[label]["lora"] - table[label]["qlora"] < 2.2 for table in (fit, long_fit))  # QLoRA: 1-2 GB
assert long_fit["TinyLlama-1.1B"]["lora"] > 0.9 * long_fit["TinyLlama-1.1B"]["full"]  # fp32 input copies

# %% [markdown]
# Read the tables with the arithmetic beside them: at the tasks' short length the frozen bf16 weights (2.2 and
# 3.1 GB) and the activations are most of every PEFT row, so the methods differ by a gigabyte or two; at 512 tokens
# the activations dominate every row, and the batch and sequence length (or gradient checkpointing) matter more than
# the choice of PEFT method. The LoRA family pays a visible premium for its fp32 input copies (four attention
# projections per layer, kept for the backward pass): at 512 tokens they bring LoRA within a few percent of full
# fine-tuning on TinyLlama, the same effect the H200 measured at 2,048 tokens (README, "Throughput"). Gradient
# checkpointing, or adapters kept in bf16, removes most of it. QLoRA stores the base in 4 bits and saves 1–2 GB on
# top. Full fine-tuning adds gradients and two AdamW moments for every weight: at the tasks' length on
# Qwen2.5-1.5B that is what separates a 16 GB card from a 24 GB one. Qwen2.5's large vocabulary (151,936 tokens)
# also makes the fp32 logits of the loss a sizeable share of every row.

# %% [markdown]
# ## 8. What this showdown can and cannot tell you
#
# * It is one seed, one small model (135M), one easy task, twelve steps and 48 test rows: a difference of one or two
#   rows (0.02–0.04) is noise. Rankings between the methods that reach the ceiling mean nothing. Section 9 ranks
#   methods on a task where they differ, with learning rates chosen on validation and three seeds.
# * CPU timings depend on the machine and on what else runs on it; ratios measured back to back are more stable
#   than absolute numbers. GPU numbers come from the same command (section 7); with the real weights reachable,
#   `PEFTEDU_MODEL=tinyllama-1.1b python -m peftedu showdown --profile full --device cuda` adds the scores.
# * Memory on a CPU is sampled resident memory: it includes what the allocator keeps and can miss spikes shorter
#   than the 10 ms sampling interval. On CUDA the command reads the allocator's exact peak.

# %% [markdown]
# ## 9. The honest comparison: a task that separates the methods, rates chosen on validation, three seeds
#
# Section 8's limits come from the showdown's design, not from bad luck: on `topic` most methods reach the ceiling
# in twelve steps, each method runs at one hand-set learning rate, and one seed decides. This section runs the
# comparison again, the way a paper should:
#
# * **The task is `lexicon`** (notebook 00): sixteen words of an invented language, so the base model scores 0
#   and a method has to store new knowledge (新知识) in its parameters. 36 steps of 8 examples (0.72 epochs) leave
#   room above every method.
# * **Each method's learning rate is chosen on the validation split**, from the same three-point grid for
#   every method: its default rate × 1/3, 1 and 3, at seed 0. The test split is never used to choose.
# * **Three seeds at the chosen rate**, scored on the first 48 test rows (144 words). We report the mean ± standard
#   deviation of the score and of forgetting. Two methods count as **separated** when their means differ by more
#   than twice the standard error of the difference; otherwise their order is noise.
#
# The methods are full fine-tuning (the reference) and one method of each family the sources' comparison tables
# name: prompt and prefix tuning (soft prompts), Houlsby adapters, LoRA. `python -m peftedu showdown --grid`
# (module `peftedu.course.showdown_grid`) ran the 25 runs — 5 methods × (3 rates + 2 more seeds), 2 to 4.5 minutes
# each on two CPU cores, about 70 minutes in all — and wrote `results/grid_lexicon.{json,md,png}`. This notebook
# reads those files and recomputes every choice and every mean from the logged runs.

# %%
grid = json.loads((REPO_ROOT / "results" / "grid_lexicon.json").read_text())
table = {row["method"]: row for row in grid["table"]}
display(Markdown((REPO_ROOT / "results" / "grid_lexicon.md").read_text()))
defaults = {name: showdown.METHODS[name].lr for name in table}
assert showdown_grid.aggregate(grid["runs"], list(table), defaults, seeds=grid["seeds"]) == grid["table"]
for name, row in table.items():
    tried = sorted(r["lr"] for r in grid["runs"] if r["method"] == name and r["seed"] == grid["seeds"][0])
    assert tried == showdown_grid.grid_lrs(defaults[name], grid["factors"]), name  # one grid for every method
    assert row["seeds"] == len(grid["seeds"]) >= 3 and row["lr"] in tried
print(f"{len(grid['runs'])} runs: {len(table)} methods × {len(grid['factors'])} learning rates (validation), then "
      f"seeds {grid['seeds']} at the chosen rate (test); every choice and mean recomputed from the runs")

# %%
display(showdown_grid.plot(grid))

# %% [markdown]
# Who beats whom? Each cell compares the row's method with the column's: `>` the row is ahead beyond the seed
# noise, `<` behind, `≈` their means are closer than twice the standard error of the difference.

# %%
names = list(table)
verdict = lambda a, b: "–" if a == b else ">" if b in table[a]["beats"] else "<" if a in table[b]["beats"] else "≈"
display(Markdown("\n".join(["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
                           + [f"| **{a}** | " + " | ".join(verdict(a, b) for b in names) + " |" for a in names])))
scores = {name: row["score_mean"] for name, row in table.items()}
assert max(scores.values()) - min(scores.values()) > 0.8  # the task separates the methods
assert table["full"]["beats"] == [n for n in names if n not in ("full", "houlsby")]  # beyond noise: all but one
assert min(table["full"]["scores"] + table["houlsby"]["scores"]) >= 0.98
assert table["lora"]["score_sd"] > 0.05 and "lora" in table["houlsby"]["beats"] and "lora" in table["full"]["beats"]
assert scores["prompt_tuning"] < 0.1 and scores["prefix_tuning"] < 0.25  # about chance: 1 word in 16
peft_methods = [n for n in names if n != "full"]
assert sorted(peft_methods, key=scores.get) == sorted(peft_methods, key=lambda n: table[n]["trainable"])
assert all(row["lr_at_edge"] for row in table.values())

# %% [markdown]
# What the ranking says (each point is asserted in the cell above):
#
# * **The task separates the methods.** Mean scores run from prompt tuning's, which is about what guessing one of
#   sixteen words gives (1/16 ≈ 0.06 a word), to full fine-tuning's 1.00.
# * **Full fine-tuning and Houlsby adapters learn the sixteen words** (at least 0.98 on every seed); they tie
#   within noise, and full fine-tuning is ahead of every other method beyond it.
# * **LoRA (r = 8 on the attention projections) is behind them, and noisy.** Its three seeds spread by more than
#   0.05 (sd), a spread that one seed would have hidden. Both leaders are still ahead of it beyond the noise.
# * **The soft prompts barely store new knowledge.** Prompt tuning and prefix tuning stay close to guessing: sixteen
#   word meanings do not fit in 16 input vectors at this budget.
# * **For new knowledge, trainable parameters matter.** Among the PEFT methods the ranking by score is the ranking
#   by trainable parameters: Houlsby's 4.5M > LoRA's 0.9M > prefix's 0.18M > prompt's 9k. The `topic` table could
#   not show this, because there every method reached the ceiling.
# * **Every chosen rate lies at an edge of its grid** (the table's flag). The ranking compares each method at the
#   best of three rates, not at its best rate: at 36 steps most methods wanted larger steps than their defaults,
#   and prompt tuning a smaller one. Exercise 4 widens the grid.

# %% [markdown]
# ## 10. Forgetting, explained (灾难性遗忘)
#
# Every table in this series has a retention column. It asks 45 general-knowledge questions ("What is the capital
# of France?") with the method switched on and counts the answers that contain the expected word; forgetting is
# the base model's retention (1.00) minus the trained model's. The sources treat forgetting as a property of the
# method:
#
# * full fine-tuning "容易发生灾难性遗忘", forgets easily (sources 000 and 003);
# * PEFT keeps the model's general abilities "because the base weights are frozen" (001);
# * LoRA "will not forget the way full fine-tuning does" (002), and its forgetting risk is "low" (000's list of
#   LoRA's advantages) or even "极低", very low (000's comparison table).
#
# The grid measured retention for every run, with the same seeds and learning rates as the scores. The table gives
# each method at its three learning rates (seed 0). The last column is the share of retention answers made of
# nothing but lexicon's English words (`"white house"` for a capital), pooled over the seeds at the chosen rate
# that kept their answers; the first full fine-tuning run predates the recording of answers.
# Section 13.1 then varies LoRA's rank, targets, steps, dropout and learning rate one at a time.

# %%
meanings = set(LEXICON.values())  # the English words lexicon teaches


def in_task_format(answer):
    """True when a retention answer is nothing but lexicon's English words: the task's format, not a fact."""
    words = [w.strip(".,;:!?").lower() for w in answer.split()]
    return bool(words) and all(w in meanings for w in words)


seed0 = {name: sorted((r for r in grid["runs"] if r["method"] == name and r["seed"] == grid["seeds"][0]),
                      key=lambda r: r["lr"]) for name in table}
lines = ["| method | " + " | ".join(f"lr × {f:.2g}: score / forgetting" for f in grid["factors"])
         + " | retention answers in lexicon's format (chosen rate) |", "| --- " * (len(grid["factors"]) + 2) + "|"]
collapse = {}
for name, runs in seed0.items():
    answers = [a for r in grid["runs"] if r["method"] == name and r["lr"] == table[name]["lr"]
               for a in r.get("retention_answers") or []]  # every seed at the chosen rate that kept its answers
    collapse[name] = sum(map(in_task_format, answers)) / len(answers) if answers else None
    lines.append(f"| {name} | " + " | ".join(f"{r['score']:.2f} / {r['forgetting']:+.2f}" for r in runs)
                 + f" | {'–' if collapse[name] is None else f'{collapse[name]:.0%}'} |")
display(Markdown("\n".join(lines)))
display(showdown_grid.plot_tradeoff(grid))

# %% [markdown]
# What the measurement says (each point is asserted in the cell below):
#
# * **Freezing the base does not prevent forgetting.** Prompt tuning and prefix tuning leave every weight of the model
#   untouched. At their chosen rates both forgot more than 0.9 of the probe while scoring near chance on lexicon. A
#   method's trained parameters take part in every forward pass, the retention questions' too.
# * **The learning rate moves forgetting together with learning.** For full fine-tuning, LoRA and prefix tuning, the
#   largest rate of the grid learned most and forgot most. Choosing the rate on the task's validation score alone
#   picks exactly that edge. Prompt tuning is the exception: at its largest rate the prompt learned nothing and
#   left most answers alone.
# * **At equal learning, full fine-tuning forgot less than LoRA here.** At its middle rate full fine-tuning reached
#   about LoRA's mean score with a fraction of LoRA's forgetting. LoRA on the four attention projections had to be
#   pushed to the top of its grid to learn, and then forgot nearly everything.
# * **What the wrong answers are.** Many answers of a forgetful model are nothing but lexicon's English words
#   ("white house" for a capital city): the model has learned that every question gets a short answer in the task's
#   format. This is forgetting by format, which any narrow instruction set teaches, more than facts erased from the
#   weights; a PEFT adapter turned off gives the base model back exactly (notebook 11).
#
# **Against the literature.** Biderman et al. (2024) fine-tuned Llama-2-7B on code and math. They found that LoRA
# learns less and forgets less than full fine-tuning, and that the two trade learning for forgetting along similar
# curves. Here, on a 135M model, 36 steps and a task of new words, full fine-tuning's curve is the better one. One
# model and one task settle nothing general about LoRA, but they do settle the sources' claims: forgetting is not
# a property of a method's name. It follows how far training moves the outputs and what the data teaches them.

# %%
for name in ("prompt_tuning", "prefix_tuning"):  # frozen base, forgetting anyway, learning almost nothing
    assert table[name]["forgetting_mean"] > 0.9 and table[name]["score_mean"] < 0.25, name
for name in ("full", "lora", "prefix_tuning"):  # the largest rate learned most and forgot most
    low, high = seed0[name][0], seed0[name][-1]
    assert high["score"] > low["score"] and high["forgetting"] > low["forgetting"], name
assert seed0["prompt_tuning"][-1]["forgetting"] < seed0["prompt_tuning"][0]["forgetting"]
matched = min((r for r in seed0["full"] if r["score"] >= table["lora"]["score_mean"] - 0.1), key=lambda r: r["forgetting"])
print(f"full fine-tuning at lr {matched['lr']:g}: score {matched['score']:.2f}, forgetting {matched['forgetting']:+.2f}; "
      f"LoRA at its chosen {table['lora']['lr']:g}: {table['lora']['score_mean']:.2f}, {table['lora']['forgetting_mean']:+.2f}")
assert matched["forgetting"] < table["lora"]["forgetting_mean"] - 0.5
in_format = {name: share for name, share in collapse.items() if share is not None and table[name]["forgetting_mean"] > 0.5}
print("share of retention answers in lexicon's format, forgetful methods:", {k: f"{v:.0%}" for k, v in in_format.items()})
assert max(in_format.values()) > 0.3

# %% [markdown]
# ## 11. LoRA's hypothesis, tested: is the full fine-tuning update low-rank?
#
# LoRA (低秩适配) rests on a hypothesis: the change that fine-tuning makes to a pretrained weight, ΔW, has a low
# "intrinsic rank" (Hu et al. 2021, section 4), so `B @ A` with r = 8 can stand in for it. Here we measure it
# instead of assuming it. The grid's full fine-tuning runs kept every weight matrix before training, and
# `peftedu.course.lowrank` takes the singular values of each ΔW = W_after − W_before in the decoder layers. For
# every matrix we report two numbers:
#
# * the share of ΔW's energy (‖ΔW‖², the sum of its squared singular values) in its top 8 directions — what the
#   best rank-8 approximation keeps (Eckart–Young);
# * how many directions hold 90% of it.
#
# For scale, the same numbers for a Gaussian random matrix of the same shape, whose energy is spread over every
# direction. The table is the chosen run (seed 0); the median is over the layers.

# %%
delta = grid["delta_w"]
assert table["full"]["lr"] == delta["lr"] and delta["seed"] == grid["seeds"][0]  # the chosen full fine-tuning run
summary = {row["kind"]: row for row in delta["summary"]}
assert summary == {row["kind"]: row for row in lowrank.summarize(delta["matrices"])}  # recomputed from the matrices
display(Markdown("\n".join(
    ["| matrix | layers | ΔW: energy in the top 8 directions | a random matrix: the same | ΔW: directions for 90% "
     "| of at most |", "| --- | --- | --- | --- | --- | --- |"]
    + [f"| {kind} | {row['matrices']} | {row['top_k_energy']:.0%} | {row['random_top_k_energy']:.0%} | "
       f"{row['rank_90']:.0f} | {row['max_rank']} |" for kind, row in summary.items()])))
display(showdown_grid.plot_delta_w(grid))

# %% [markdown]
# What the spectra say (each point is asserted in the cell below):
#
# * **The update is concentrated, so LoRA's bet is reasonable.** In every kind of matrix the top 8 of up to 576
#   directions hold more than half of ΔW's energy (53–73%); a random matrix of the same shape keeps 3–10% there.
#   Fine-tuning moves the weights along few directions.
# * **But it is not rank 8.** 90% of the energy needs 30–40 directions in the attention projections and 70–90 in
#   the MLP: 4 to 10 times LoRA's r = 8, and the MLP's update has the higher rank. A rank-8 LoRA on the attention
#   projections (the showdown's) cannot express most of what full fine-tuning did here.
# * **The further training moves, the higher the rank.** In `q_proj` the directions needed for 90% grow with the
#   learning rate.
#
# Biderman et al. (2024, "LoRA Learns Less and Forgets Less": Llama-2-7B, code and math, far longer training) find
# the same thing at scale: full fine-tuning's perturbations need 10–100× the rank of typical LoRA configurations,
# and more for the MLP than for attention. Their advice fits this measurement: put LoRA on every linear layer,
# the MLP included, and do not assume that r = 8 holds new knowledge.

# %%
attention = {kind: summary[kind] for kind in ("q_proj", "k_proj", "v_proj", "o_proj")}
mlp = {kind: summary[kind] for kind in ("gate_proj", "up_proj", "down_proj")}
for kind, row in summary.items():
    assert row["top_k_energy"] > 5 * row["random_top_k_energy"], kind  # concentrated: far from a random matrix
    assert row["top_k_energy"] < 0.8 and row["rank_90"] > 3 * lowrank.TOP_K, kind  # but not a rank-8 matrix
assert all(0.5 < row["top_k_energy"] < 0.75 and row["random_top_k_energy"] < 0.11 for row in summary.values())
assert all(30 <= row["rank_90"] <= 40 for row in attention.values()) and all(70 <= row["rank_90"] <= 90 for row in mlp.values())
assert min(r["rank_90"] for r in mlp.values()) > max(r["rank_90"] for r in attention.values())
by_lr = {run["lr"]: statistics.median(m["rank_90"] for name, m in run["delta_w"].items()
                                      if lowrank.kind_of(name) == "q_proj") for run in seed0["full"]}
print("q_proj, directions for 90% of ΔW (median over layers) by learning rate:",
      ", ".join(f"{lr:g}: {rank:g}" for lr, rank in by_lr.items()))
assert list(by_lr.values()) == sorted(by_lr.values())  # a larger step moves W further, in more directions

# %% [markdown]
# ## 12. LoRA's rank (秩) and scale (缩放系数), trained: r = 1 … 64 under α/r and α/√r
#
# Section 11 says what rank full fine-tuning's update has. The next question is what a LoRA adapter gains from a
# larger rank, and here the scale factor matters as much as r. LoRA multiplies B A by α/r (Hu et al. 2021);
# rsLoRA (rank-stabilized LoRA, Kalajdzievski 2023) by α/√r. Notebook 06 (section 3) measured rsLoRA's argument
# in the size of the first updates: with α/r the update shrinks as r grows, so at a fixed learning rate a larger
# rank learns no faster and its extra directions are wasted; with α/√r it shrinks more slowly. This section
# measures it in scores: LoRA trained on `lexicon` at r = 1, 4, 8, 16 and 64 on the attention projections, at the
# learning rate the grid chose for the showdown's LoRA (r = 8, α = 16), seed 0, 36 steps. There are three rules:
#
# * **α/r, α = 16**: the showdown's LoRA. The scale falls from 16 at r = 1 to 0.25 at r = 64.
# * **α/√r, α = 16**: the same α under rsLoRA. It equals α/r at r = 1 and is larger at every other rank (2.8× at
#   r = 8), so at one learning rate it also takes larger steps.
# * **α/√r, α = 16/√8 ≈ 5.66**: rsLoRA with α chosen so that the scale at r = 8 is the showdown's 2. The two
#   rules then agree at r = 8 and differ only in how the scale moves with r: from 5.7 to 0.7 instead of 16 to 0.25.
#
# `python -m peftedu showdown --study` (module `peftedu.course.lora_study`) ran these runs together with the tips
# of section 13 (20 runs of 2 to 5 minutes, about 75 minutes in all on two CPU cores) and wrote `results/lora_study_lexicon.{json,md}` and `_ranks.png`; the shared points
# (α/√r at r = 1, the matched rule at r = 8) reuse one run. Each point is one seed, so a gap counts only when it
# exceeds 2·√2 times LoRA's seed standard deviation from section 9 (the standard deviation of a difference of
# two single runs).

# %%
study = json.loads((REPO_ROOT / "results" / "lora_study_lexicon.json").read_text())
assert study["lora_lr"] == table["lora"]["lr"] and study["lora_seed_sd"] == table["lora"]["score_sd"]
grid_lora = next(r for r in seed0["lora"] if r["lr"] == table["lora"]["lr"])  # the grid's LoRA, seed 0
assert lora_study.rank_run(study, 8, "α/r")["score"] == grid_lora["score"]  # the same run, read from the same log
header = " | ".join(f"{s}: scale → score / forgetting" for s in lora_study.SCALINGS)
lines = [f"| r | trainable | {header} |", "| --- " * (2 + len(lora_study.SCALINGS)) + "|"]
for r in lora_study.RANKS:
    cells = []
    for s in lora_study.SCALINGS:
        run = lora_study.rank_run(study, r, s)
        cells.append(f"{lora_study.scale(r, s):.3g} → {run['score']:.2f} / {run['forgetting']:+.2f}")
    lines.append(f"| {r} | {lora_study.rank_run(study, r, 'α/r')['trainable']:,} | " + " | ".join(cells) + " |")
display(Markdown("\n".join(lines)))
display(lora_study.plot_ranks(study))
print(f"LoRA at lr {study['lora_lr']:g}, seed 0; two single runs differ beyond noise when more than "
      f"{study['threshold']:.2f} apart (2·√2 × LoRA's seed sd {study['lora_seed_sd']:.3f})")

# %% [markdown]
# What the sweep says (each point is asserted in the cell below):
#
# * **Under α/r, rank buys nothing here.** From r = 1 (115,200 parameters) to r = 64 (7.4M), every score lies
#   within the noise of r = 8's. That is the half of rsLoRA's argument this budget can show: with α/r, a larger
#   adapter does not learn more at a given learning rate.
# * **Under α/√r with the same α = 16, a larger rank does worse**, down to nothing at r = 64, every rank from 4 up
#   beyond the noise below α/r. The rank is not to blame: the rule multiplies B A by up to 8 times α/r's scale, and
#   a learning rate chosen for scale 2 then takes steps that are too big.
# * **Scale × r sorts the runs.** With Adam, every entry of B moves by about the learning rate at the first steps,
#   whatever the size of its gradient, and the r rank-one terms of B A move together. So the first change of the
#   scaled update grows like scale × r (`lora_study.scale`; `tests/test_grid.py` measures it on one Adam step: the
#   same gain at r = 4 and r = 16 under α/r, twice the gain under α/√r). α/r holds scale × r at α for every rank.
#   That is why Hu et al. divide by r: a change of r then needs no new learning rate. Against scale × r (the
#   right-hand plot), every run of the three rules between about 11 and 23 scored high, and every run outside that
#   range scored low, the matched rule's r = 1 (5.7) included. Scale × r is the first-order story, not all of it:
#   at the same 45, r = 64 did worse than r = 8.
# * **What this says about rsLoRA.** Its rule ties the step to the rank: under α/√r a larger rank takes larger
#   steps and needs a smaller learning rate, or a smaller α. Its promised gain is what large ranks learn once the
#   step is right and training is long. At 36 steps and one learning rate, the sweep measures the step size first.
#   The matched rule's best point, r = 16, is level with α/r's within the noise: no rule made rank pay here.
#   Notebook 06 (section 3) measured the argument with plain gradient descent, where the gradient's size sets the
#   step. Adam normalises that size away, and the two analyses differ exactly there.

# %%
rank_runs = {(r, rule): lora_study.rank_run(study, r, rule) for r in lora_study.RANKS for rule in lora_study.SCALINGS}
differ = lambda a, b: lora_study.beyond_noise(study, a["score"], b["score"])
r8 = rank_runs[(8, "α/r")]
assert not any(differ(rank_runs[(r, "α/r")], r8) for r in lora_study.RANKS)  # α/r: rank buys nothing
same_alpha = [rank_runs[(r, "α/√r")]["score"] for r in lora_study.RANKS[1:]]
assert same_alpha == sorted(same_alpha, reverse=True) and same_alpha[-1] < 0.1  # α/√r, α = 16: worse with rank
assert all(differ(rank_runs[(r, "α/√r")], rank_runs[(r, "α/r")]) for r in lora_study.RANKS[1:])
step = {key: lora_study.scale(*key) * key[0] for key in rank_runs}  # scale × r
assert all(step[(r, "α/r")] == lora_study.ALPHA for r in lora_study.RANKS)
middle = [run["score"] for key, run in rank_runs.items() if 10 < step[key] < 24]
outside = [run["score"] for key, run in rank_runs.items() if not 10 < step[key] < 24]
assert min(middle) - max(outside) > study["threshold"] and min(middle) > 0.75 and max(outside) < 0.5
matched = "α/√r, = α/r at r=8"
assert abs(step[(8, "α/√r")] - step[(64, matched)]) < 1e-9 and differ(rank_runs[(8, "α/√r")], rank_runs[(64, matched)])
best = max(lora_study.RANKS, key=lambda r: rank_runs[(r, matched)]["score"])
assert best == 16 and not differ(rank_runs[(best, matched)], max((rank_runs[(r, "α/r")] for r in lora_study.RANKS),
                                                                 key=lambda run: run["score"]))
runs_by_step = sorted({run["label"]: (step[key], run["score"]) for key, run in rank_runs.items()}.values())
print("scale × r → score:", ", ".join(f"{x:.3g} → {score:.2f}" for x, score in runs_by_step))

# %% [markdown]
# ## 13. Source 003's practical tips, measured (实用建议)
#
# Source 003 ends its comparison with practical tips, its 通用实践 Tips. Four of them are knobs that can be measured
# on `lexicon` at this budget, each with LoRA at seed 0 and 36 steps unless the tip changes that, and with the
# same noise threshold as section 12:
#
# 1. "r = 16, α = 32, target_modules = 'all-linear' is a strong baseline": the tip's
#    config against the same r and α on `q_proj` and `v_proj` only (the classic choice of the LoRA paper), at the
#    grid's LoRA rate.
# 2. "LoRA's learning rate is usually 5–10× full fine-tuning's (e.g. 2e-4 vs 2e-5)": the tip's config at 2e-4 and
#    at 2e-5, next to the rates section 9 chose on validation.
# 3. "PEFT usually needs more epochs (3–5 epochs vs 1–3 for full fine-tuning)": the showdown's LoRA at 18, 36 and
#    72 steps (0.36, 0.72 and 1.44 epochs of the 400 training rows), next to full fine-tuning at 36 steps.
# 4. `lora_dropout` (the sources' configs use 0.05 or 0.1): 0, 0.05 and 0.1 on the showdown's LoRA.
#
# Two of 003's tips are not knobs: "data quality beats method choice" needs a second dataset of worse quality, and
# "evaluate after merging" is what notebook 06 proves equal (merged and unmerged outputs agree to float
# precision), so there it is a matter of hygiene, not of measurement.

# %%
tips = {name: lora_study.study_runs(study, name) for name in ("targets", "lr", "steps", "dropout")}
all_linear, qv = tips["targets"]["r16 α32 all-linear"], tips["targets"]["r16 α32 q,v"]
high, low = tips["lr"]["lr 2e-4 (r16 α32 all-linear)"], tips["lr"]["lr 2e-5 (r16 α32 all-linear)"]
full_low = seed0["full"][0]  # the full fine-tuning grid's lowest rate, the nearest to the tip's 2e-5
steps = list(tips["steps"].values())
dropouts = list(tips["dropout"].values())
ratio = table["lora"]["lr"] / table["full"]["lr"]
lexicon_train = len(generate_task(grid["task"])["train"])  # 400 rows
epochs = lambda run: run["steps"] * get_profile(grid["settings"]["profile"]).examples_per_step / lexicon_train
more_steps = "lora" in table["full"]["beats"] and not differ(steps[-1], {"score": table["full"]["score_mean"]})
verdict_rows = [
    ("r = 16, α = 32 on all linear layers is a strong baseline",
     f"all-linear {all_linear['score']:.2f} ({all_linear['trainable']:,} parameters, {all_linear['time_per_step_s']:.1f} "
     f"s/step) vs q,v {qv['score']:.2f} ({qv['trainable']:,}, {qv['time_per_step_s']:.1f} s/step); the showdown's r = 8 "
     f"on q,k,v,o: {grid_lora['score']:.2f}",
     ("ahead of q,v beyond noise" if differ(all_linear, qv) and all_linear["score"] > qv["score"] else "not ahead of q,v")
     + ("; level with r = 8 on q,k,v,o" if not differ(all_linear, grid_lora) else "; apart from r = 8 on q,k,v,o")),
    ("LoRA's learning rate is 5–10× full fine-tuning's (2e-4 vs 2e-5)",
     f"LoRA at 2e-4: {high['score']:.2f}, at 2e-5: {low['score']:.2f}; full fine-tuning at {full_low['lr']:.2g}: "
     f"{full_low['score']:.2f}; chosen on validation: LoRA {table['lora']['lr']:g}, full {table['full']['lr']:g}",
     f"corrected: {ratio:.0f}× here, and both of the tip's rates are too small for 36 steps"),
    ("PEFT needs more epochs than full fine-tuning (3–5 vs 1–3)",
     ", ".join(f"{r['steps']} steps ({epochs(r):.2f} epochs): {r['score']:.2f}" for r in steps)
     + f"; full fine-tuning at {grid['steps']} steps: {table['full']['score_mean']:.2f} ± {table['full']['score_sd']:.2f}; "
     f"Houlsby at {grid['steps']}: {table['houlsby']['score_mean']:.2f} ± {table['houlsby']['score_sd']:.2f}",
     "LoRA (r = 8, attention) needs twice the steps; Houlsby does not" if more_steps else "not here"),
    ("lora_dropout 0.05 or 0.1",
     ", ".join(f"{r['label'].split()[-1]}: {r['score']:.2f}" for r in dropouts),
     "within noise" if not any(differ(r, dropouts[0]) for r in dropouts[1:]) else "beyond noise"),
]
display(Markdown("\n".join(["| source 003's tip | measured (lexicon, seed 0) | verdict |", "| --- | --- | --- |"]
                           + [f"| {tip} | {what} | {verdict} |" for tip, what, verdict in verdict_rows])))
assert differ(all_linear, qv) and all_linear["score"] > qv["score"] and not differ(all_linear, grid_lora)
assert all_linear["trainable"] > 5 * qv["trainable"] and all_linear["time_per_step_s"] > qv["time_per_step_s"]
assert max(high["score"], low["score"]) < 0.25 < table["lora"]["score_mean"] and round(ratio) == 40
assert high["score"] > low["score"] and full_low["score"] < 0.25
assert [r["steps"] for r in steps] == [grid["steps"] // 2, grid["steps"], 2 * grid["steps"]]
assert steps[0]["score"] < steps[1]["score"] < steps[2]["score"] and more_steps
assert "houlsby" not in table["full"]["beats"]
assert not any(differ(r, dropouts[0]) for r in dropouts[1:])

# %% [markdown]
# What the verdicts rest on (each is asserted in the cell above):
#
# 1. **All linear layers: ahead of q,v only, not of the four attention projections.** At the same r = 16,
#    α = 32 and rate, the tip's configuration learned far more than the LoRA paper's `q_proj`, `v_proj` only,
#    beyond the noise. It did not beat the showdown's r = 8 on `q,k,v,o`, though it trains more than five times
#    the parameters and takes longer per step. Its rate was chosen for that r = 8 configuration, so this compares
#    targets at one rate, not at their best rates. Biderman et al. (2024) also recommend every module as
#    the target; section 11's ΔW, whose MLP part needs the most directions, says why it can matter.
# 2. **The learning rate: corrected.** At 36 steps both of the tip's rates are far too small: LoRA scored little
#    at 2e-4 and nothing at 2e-5, and full fine-tuning near 2e-5 stayed low too. On validation the grid chose
#    40× between LoRA's rate and full fine-tuning's, not 5–10×. The tip's numbers are common defaults for long runs
#    on large models; what transfers is the procedure: choose each method's rate on validation, from a grid wide
#    enough that the choice is not at its edge.
# 3. **More epochs: true of this LoRA, not of PEFT.** The showdown's LoRA needed 72 steps to reach what full
#    fine-tuning reached in 36 (and at 36, over three seeds, full fine-tuning is ahead beyond noise). Houlsby
#    adapters, also PEFT, tied full fine-tuning at 36 steps. How many steps a method needs follows its capacity and
#    its rate, not the PEFT label.
# 4. **`lora_dropout`: no effect here.** 0, 0.05 and 0.1 are within noise of each other. Dropout guards against
#    overfitting, and 0.72 epochs of 400 rows leave nothing to overfit yet: the tip is not wrong, but this budget
#    cannot test it.

# %% [markdown]
# ### 13.1 What moves forgetting: rank, targets, steps, dropout, learning rate
#
# Section 10 left a question open: what, besides the method, changes how much the model forgets? The study's runs
# answer it for LoRA, because each varies one knob and measures retention with the same 45 questions. The table
# gives each run's lexicon score and forgetting (seed 0).

# %%
knobs = {
    "rank r = 1, 4, 8, 16, 64 (α/r)": [lora_study.rank_run(study, r, "α/r") for r in lora_study.RANKS],
    "targets: all-linear, q,v (r16 α32)": list(tips["targets"].values()),
    "steps: 18, 36, 72": steps,
    "lora_dropout: 0, 0.05, 0.1": dropouts,
    "learning rate: 2e-5, 2e-4 (r16 α32 all-linear); "
    + ", ".join(f"{r['lr']:.2g}" for r in seed0["lora"]) + " (the grid's r = 8)": [low, high] + seed0["lora"],
}
display(Markdown("\n".join(["| knob (LoRA, seed 0) | runs: score / forgetting |", "| --- | --- |"] + [
    f"| {knob} | " + ", ".join(f"{r['score']:.2f} / {r['forgetting']:+.2f}" for r in runs) + " |"
    for knob, runs in knobs.items()])))
at_chosen_rate = [r for knob, runs in knobs.items() if not knob.startswith("learning rate") for r in runs]
assert all(r["lr"] == table["lora"]["lr"] and r["forgetting"] > 0.9 for r in at_chosen_rate)
assert steps[0]["forgetting"] > 0.9 and steps[0]["score"] < 0.25  # forgetting before learning
by_rate = sorted([low, high] + seed0["lora"], key=lambda r: r["lr"])
assert max(low["forgetting"], high["forgetting"]) < 0.1 and max(low["score"], high["score"]) < 0.25
assert 0.1 < seed0["lora"][0]["forgetting"] < 0.5 and min(r["forgetting"] for r in seed0["lora"][1:]) > 0.9
assert [r["forgetting"] for r in by_rate[:3]] == sorted(r["forgetting"] for r in by_rate[:3])
assert not any(r["score"] > 0.5 and r["forgetting"] < 0.5 for r in study["runs"] + seed0["lora"])  # no LoRA did both

# %% [markdown]
# What the table says (asserted above):
#
# * **At the rate that learns, every knob but the rate leaves forgetting where it is.** Every rank from 1 to 64,
#   both target sets, all three dropouts and 18 as well as 72 steps forgot more than 0.9 of the probe at LoRA's
#   chosen rate. Eighteen steps scored under 0.25 on lexicon and had already forgotten as much: on this probe the
#   forgetting comes first and the learning after it.
# * **The learning rate is the knob.** Below 1e-3 the forgetting falls away: +0.00 and +0.04 for the tip's LoRA at
#   2e-5 and 2e-4, about a third of the probe at the grid's lowest rate, and nearly all of it from 2e-3 up. But
#   those runs also learned little of lexicon: at this budget no LoRA setting learned the words and kept the facts.
#   Full fine-tuning at 5e-5 did better (section 10: 0.85 and +0.22).
# * **Compared with the literature.** Biderman et al. (2024) find that LoRA itself limits forgetting more than
#   dropout or weight decay do, and advise the highest learning rate that still trains stably. Both fit here: dropout
#   changed nothing, and the rate decided. But that advice, followed on the validation score, selects the rate that
#   forgets most, so both halves belong in a recipe: choose the rate on validation, and measure retention before
#   you ship.

# %% [markdown]
# ## Summary
#
# * The source tutorial's counts for every method on bloom-1b4-zh are reproduced exactly, in `peftedu` and `peft`;
#   its "LoRA" count is over 99% embedding table.
# * Measured on one task: PEFT saves far more training memory than the sources' 50–75% (the optimizer states of the
#   frozen weights are gone); merged LoRA-family methods cost nothing at inference; unmerged methods and prompt-based
#   methods cost some; the best PEFT methods reach full fine-tuning's score here.
# * `peftedu` and `peft` train the same configurations within 5% of each other's memory; their time ratios, as
#   medians of three interleaved pairs (seven for LLaMA-Adapter), lie between 0.87 and 1.08, inside the noise of
#   single pairs (0.85–1.24; section 5); LLaMA-Adapter's 1.08 is probably real (six of seven pairs above 1). Where the scores differ, `peft`'s generation is the cause, not its training.
# * On an H100 with a 1.7B model, PEFT's gain is memory (full fine-tuning needs about three times LoRA's training
#   memory, QLoRA stores the base in under a third), not step time: at 16 short examples per step the GPU waits on
#   kernel launches.
# * A mixed batch of many adapters gives the same outputs as switching adapters and serves them faster.
# * At 1B scale (TinyLlama-1.1B, Qwen2.5-1.5B; estimates, section 7.1) every PEFT method trains the tasks' short
#   rows on a 16 GB card; full fine-tuning of Qwen2.5-1.5B needs a 24 GB one, and at 512-token rows activations
#   outweigh the method.
# * On `lexicon` (new knowledge; learning rates chosen on validation, three seeds) the methods separate: full
#   fine-tuning and Houlsby adapters learn the sixteen words (≥ 0.98 on every seed), LoRA (r = 8, attention) reaches 0.87 ± 0.08, prefix
#   and prompt tuning stay near guessing. Among the PEFT methods the score follows the trainable parameters.
# * Forgetting is not a property of freezing: at its chosen rate every method forgot more than 0.9 of the probe,
#   the soft prompts included. The learning rate moves forgetting together with learning, and full fine-tuning at a
#   lower rate learned as much as LoRA while forgetting far less. Many wrong answers are the task's format.
# * Full fine-tuning's ΔW is concentrated (53–73% of its energy in 8 directions; a random matrix: 3–10%) but not
#   rank 8: 90% of it needs 30–40 directions in attention and 70–90 in the MLP.
# * LoRA's rank (r = 1 … 64) changed nothing under α/r at one learning rate; under α/√r a larger rank took larger
#   steps and did worse. With Adam the early step of B A grows like scale × r, and that product, not r, sorted the
#   13 runs: high between about 11 and 23, low outside.
# * Source 003's tips, measured: all linear layers beat q,v only (but not r = 8 on q,k,v,o); 2e-4 and 2e-5 are far
#   too small at this budget (the rates chosen on validation are 40× apart); "PEFT needs more epochs" holds for
#   LoRA r = 8 (twice the steps) but not for Houlsby adapters; `lora_dropout` made no difference.
# * For LoRA at this budget only the learning rate moved forgetting: rank, targets, steps and dropout left it above
#   0.9, and no LoRA run both learned lexicon and kept the facts.
#
# ## Interview corner
#
# 1. **"LoRA has no inference overhead" — true?** Only once merged: W + (α/r)·B A is one matrix. Unmerged, each
#    wrapped layer runs two extra thin matmuls (the latency column). Serving many adapters on one base keeps them
#    unmerged on purpose.
# 2. **Why does PEFT save so much training memory?** Gradients and AdamW's two moments (12 of the 16 bytes per
#    parameter in fp32) exist only for trainable parameters. What is left is the frozen weights and the activations —
#    which PEFT does *not* shrink (they depend on batch × sequence length).
# 3. **Which method would you pick for a latency-critical single-task deployment? For 100 tenants?** Merged
#    LoRA/DoRA (zero overhead); for many tenants, unmerged LoRA adapters on one base with mixed batches.
# 4. **How would you compare two PEFT methods fairly?** Same model, data, order and token budget; a task where they
#    do not all hit the ceiling; each method's learning rate chosen on the validation split from the same grid
#    (their best rates differ by 10×–100×); several seeds on the test split, mean ± sd, and a difference counts only
#    when it is larger than the seed noise (section 9). Memory and time measured the same way, ratios as medians of
#    interleaved repeats.
# 5. **Does a larger LoRA rank help? And is rsLoRA always better?** Not by itself. Under α/r, with Adam, the early
#    step of the scaled update stays at α × the learning rate whatever r is, so at one rate r = 1 … 64 scored alike
#    here (section 12). Under α/√r the step grows like √r: a larger rank needs a smaller rate, or it overshoots
#    (r = 64 at the same α scored 0). Rank pays only when the task needs the directions (section 11: the update
#    that full fine-tuning made needs 30–90 of them) and training is long enough to use them, with the rate tuned
#    for the rule.
#
# ## Exercises
#
# 1. Run the showdown on the `extract` task and compare the ranking with `topic`'s.
#
# <details><summary>Solution</summary>
#
# `python -m peftedu showdown --task extract --no-peft --out results/extract` (about 25 minutes on two cores) writes
# `results/extract/showdown_cpu.*` and leaves the `topic` files alone. Compare the `score` columns of the two JSON
# files method by method. `extract` asks for an exact JSON answer, so a method scores only if every character of the
# answer is right: expect the methods that barely moved `topic` (P-tuning, AdaLoRA at this budget) to stay low, and
# check whether the methods that tie at the top of `topic` separate. One seed decides nothing: run `--methods` of
# the two you care about with `--seed 1` before you believe a gap of one or two rows.
# </details>
#
# 2. Why is prefix tuning's trainable share on SmolLM2 smaller than it would be on a model of the same width without
#    grouped-query attention? Compute both.
#
# <details><summary>Solution</summary>
#
# ```python
# p, L, kv_width, d = 16, 30, 3 * 64, 576
# print(p * L * 2 * kv_width, p * L * 2 * d)  # 184,320 with GQA, 552,960 without
# ```
# </details>
#
# 3. Add a method to `peftedu.course.showdown.METHODS` (e.g. LoRA on all linear layers, `target_modules="all-linear"`) and
#    run only it: `python -m peftedu showdown --methods lora --no-peft` after your change.
#
# <details><summary>Solution</summary>
#
# `Method("lora_all", "reparametrisation", 2e-3, "peft", LoraConfig, lambda model, tok, prof: dict(r=8,
# lora_alpha=16, target_modules="all-linear"), mergeable=True)` (with `from peftedu import LoraConfig`); per layer it adds 8·(576+1536)·3 = 50,688
# parameters for the MLP to the attention's 30,720, 2.65 times as many in all.
# </details>
#
# 4. Every learning rate the grid chose sat at an edge of its three-point grid (section 9). Widen LoRA's grid
#    upwards and see what happens to its score and its forgetting.
#
# <details><summary>Solution</summary>
#
# ```python
# from pathlib import Path
# from peftedu.course import showdown_grid
# from peftedu.course.showdown_setup import Settings
#
# settings = Settings(task="lexicon", max_steps=showdown_grid.GRID_STEPS)
# wider = showdown_grid.run_grid(settings, ["lora"], Path("results/wider/runs.jsonl"), factors=(3, 9, 27))
# print(showdown_grid.markdown(wider))   # 5 runs, about 12 minutes on two cores
# ```
#
# The rates become 6e-3 (the committed choice), 1.8e-2 and 5.4e-2. If the score keeps rising, the committed ranking
# understated LoRA. If it falls, 6e-3 was the peak after all. Either way, compare the forgetting column: section 10's
# trade-off says a larger step will not forget less.
# </details>
#
# 5. Section 12's α/√r at r = 64 (α = 16) scored 0 at LoRA's rate. If scale × r is the story, dividing the rate by
#    8 (scale × r falls from 128 to the showdown's 16) should bring it back. Try it, on validation.
#
# <details><summary>Solution</summary>
#
# ```python
# import json
# from pathlib import Path
# from peftedu.course import lora_study, showdown_grid
# from peftedu.course.showdown_setup import Settings
#
# grid = json.loads(Path("results/grid_lexicon.json").read_text())
# base = Settings(**{**grid["settings"], "lr": None})
# variant = lora_study.Variant("rank", "r=64 α/√r", {"r": 64, "lora_alpha": 16, "use_rslora": True})
# for lr in (6e-3 / 8, 6e-3 / 4, 6e-3 / 2):   # about 4 minutes a run on two cores
#     run = showdown_grid.logged_run("lora", lora_study.variant_settings(base, variant, lr),
#                                    Path("results/rslora/runs.jsonl"), grid["baseline"])
#     print(f"lr {lr:.2g}: validation {run['val_score']:.2f}, test {run['score']:.2f}, forgetting {run['forgetting']:+.2f}")
# ```
#
# Compare each with the α/r runs at scale × r = 16 (0.80–0.94 on test). If lr / 8 lands there, the rank did not
# matter, the step did; if a larger rate than lr / 8 wins, r = 64 under α/√r has found a use for its extra
# directions, which is rsLoRA's claim.
# </details>
#
# 6. Section 5's seven LLaMA-Adapter pairs time whole processes, each with its own load and its own moment on a busy
#    machine. Time one training step (forward and backward on one batch) of `peftedu`'s and `peft`'s LLaMA-Adapter
#    in one process, interleaved, and see whether the 1.08 survives.
#
# <details><summary>Solution</summary>
#
# ```python
# import copy, statistics, time
# import torch
# from peftedu.course.showdown import METHODS, attach
# from peftedu.course.showdown_setup import Settings, load_model
# from peftedu.course.training import get_profile
#
# settings = Settings()
# model, tokenizer, _ = load_model(settings)
# pair = {impl: attach(copy.deepcopy(model), tokenizer, METHODS["llama_adapter"], impl, settings,
#                      get_profile("quick"))[0].train() for impl in ("peftedu", "peft")}
# ids = torch.randint(0, model.config.vocab_size, (8, 96), device=model.device)
#
# def step(wrapped):
#     start = time.perf_counter()
#     wrapped(input_ids=ids, labels=ids).loss.backward()
#     wrapped.zero_grad(set_to_none=True)
#     return time.perf_counter() - start
#
# for wrapped in pair.values():
#     step(wrapped)                                  # warm-up
# times = {impl: [] for impl in pair}
# for k in range(12):                                # the order flipped every other step; about 2 minutes
#     for impl in (("peftedu", "peft") if k % 2 else ("peft", "peftedu")):
#         times[impl].append(step(pair[impl]))
# ratios = [a / b for a, b in zip(times["peftedu"], times["peft"])]
# print(f"median {statistics.median(ratios):.2f}, steps {min(ratios):.2f} to {max(ratios):.2f}")
# ```
#
# Both compute the same thing: the base attention, the query again, the prompt's keys and values through k_proj
# and v_proj, a gated softmax. A median near 1 here and 1.08 across processes would put the gap outside the
# step's arithmetic (the optimizer, the data loader, the machine's load); a median near 1.08 would put it in the
# adapted attention, and `torch.profiler` would show which operation.
# </details>
