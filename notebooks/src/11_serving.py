# %% [markdown]
# # 11 · Serving many adapters and exporting them (多适配器部署)
#
# A fine-tuned adapter is only useful once it answers requests. LoRA's promise for deployment is that one frozen
# base model can serve many tasks, each costing a small file. This notebook serves two LoRA adapters from one
# base and measures what each serving pattern gives and costs.
#
# **What you will learn in this notebook**
#
# * how to train two adapters on one base model and keep both: `add_adapter`, `set_adapter`,
#   `disable_adapter()`, `delete_adapter`;
# * the **mixed batch** (混合批次): each row names its adapter (`adapter_names=`), one forward pass serves them all,
#   and the outputs equal those of switching adapters request by request (compared, with the max difference);
# * how many passes through the base model each serving pattern needs, and the throughput (吞吐量) measured here;
# * exporting in HF `peft`'s layout (`adapter_config.json` + `adapter_model.safetensors`), loaded by
#   `peft.PeftModel.from_pretrained` with the same logits, and the other way round;
# * merging for single-adapter serving: `merge_and_unload` gives a plain transformers model that transformers alone
#   saves and reloads;
# * what you ship: the size of an adapter next to the size of the model, and combining adapters with
#   `add_weighted_adapter`.

# %%
%matplotlib inline
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

from peftedu import LoraConfig, PeftModel, get_peft_model
from peftedu.counting import count_parameters
from peftedu.course.compare import cmp, measured, rounding_tolerance
from peftedu.course.data import TOPIC_LABELS, load_task
from peftedu.course.tokenization import build_prompt, collate_for_generation
from peftedu.lora import LoraLinear, default_lora_targets
from peftedu.course.models import is_pretrained, load_base
from peftedu.course.training import get_profile, plot_history, train
from peftedu.course.evaluation import evaluate, generate_answers

transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the notebook
# transformers' deprecation notice when peft loads an adapter (it prints an absolute path): not for this lesson
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
torch.manual_seed(0)
profile = get_profile()  # PEFTEDU_PROFILE: "quick" (CPU, default) or "full" (GPU)
model, tokenizer = load_base()
cfg = model.config
FFN_WIDTH = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size  # BLOOM's FFN: 4 x hidden
LOGIT_TERMS = cfg.num_hidden_layers * FFN_WIDTH  # 30 layers x 1,536-long sums on SmolLM2


def logits_tol(*logits):
    """atol for logits that two routes compute from the same weights, differing only in rounding.

    `rounding_tolerance` in the model's dtype (fp32 on a CPU, bf16 on a GPU) with terms = layers x FFN width (the
    MLP's down-projection, the longest sum on the way to a logit: 30 x 1,536 on SmolLM2) and magnitude = the
    logits' size, rounded up to a power of two so that the printed tolerance reads the same on every machine.
    """
    size = max(x.abs().max().item() for x in logits)
    return rounding_tolerance(model.dtype, magnitude=2.0 ** math.ceil(math.log2(size)), terms=LOGIT_TERMS)


base_params = count_parameters(model)[1]
MAX_NEW_TOKENS = 32  # enough for the longest answer of the queue, a JSON line
print(f"{model.name_or_path.split('/')[-1]}: {base_params:,} parameters on {model.device} in {model.dtype}, "
      f"profile {profile.name}")

# %% [markdown]
# ## 1. One base, many adapters: what serving needs
#
# A LoRA adapter changes a layer's output by (α/r)·B A x. The frozen W x part is the same for every task, so a
# server can keep **one** copy of the base model and, per request, add the low-rank path of the adapter that request
# needs. Three ways to use that:
#
# * **switching** (适配器切换): activate the request's adapter (`set_adapter`), run it, switch for the next one;
# * a **mixed batch**: put requests for different adapters in one batch; W x is computed once for all rows, and each
#   row gets its own adapter's B A x (the idea behind S-LoRA, Punica and vLLM's multi-LoRA serving);
# * **merging**: fold one adapter into W and ship a plain model — no extra cost per token, but one model per task.
#
# The figure draws a mixed batch of three requests through one LoRA layer.

# %%
def draw_mixed_batch(ax):
    colors = {"topic": "#f4a582", "extract": "#92c5de", "base": "#d9d9d9"}
    rows = ["topic", "extract", "base"]
    for i, name in enumerate(rows):  # the batch: one row per request
        ax.add_patch(plt.Rectangle((0, 2 - i), 2.2, 0.8, facecolor=colors[name], edgecolor="black"))
        ax.text(1.1, 2.4 - i, f"request {i + 1}\nadapter: {name}", ha="center", va="center", fontsize=9)
    ax.add_patch(plt.Rectangle((3.2, 0), 2.4, 2.8, facecolor="#c6d4e1", edgecolor="black"))
    ax.text(4.4, 1.4, "W x\nfrozen, shared:\none pass for\nall rows", ha="center", va="center", fontsize=9)
    for j, name in enumerate(("topic", "extract")):  # one low-rank path per adapter, applied to its rows only
        ax.add_patch(plt.Rectangle((6.4, 1.6 - 1.4 * j), 2.2, 1.0, facecolor=colors[name], edgecolor="black"))
        ax.text(7.5, 2.1 - 1.4 * j, f"(α/r)·B A x\n{name} rows only", ha="center", va="center", fontsize=9)
    for i in range(3):
        ax.annotate("", xy=(3.2, 2.4 - i), xytext=(2.2, 2.4 - i), arrowprops=dict(arrowstyle="->"))
    ax.text(9.0, 1.4, "+  →  h", fontsize=14, va="center")
    ax.set_xlim(-0.2, 10.4)
    ax.set_ylim(-0.2, 3.0)
    ax.axis("off")


fig, ax = plt.subplots(figsize=(9, 2.8))
draw_mixed_batch(ax)
ax.set_title("a mixed batch: h = W x + (α/r)·B_a A_a x, with adapter a chosen per row")
plt.show()

# %% [markdown]
# ## 2. Two adapters on one base
#
# We train two LoRA adapters (rank 8, α = 16, on the attention projections: `q_proj`, `k_proj`, `v_proj`, `o_proj` on
# Llama and Qwen2, the fused `query_key_value` and `dense` on BLOOM) on the same base model: `topic`
# (one-word topic of a sentence) and `extract` (a JSON line with name, age and city). In the quick profile each run
# is short — 6 optimizer steps of 8 examples, half of notebook 06's run — and we score 16 test rows per task; the
# full profile uses its own steps and the whole test split.
#
# First the base model's scores on the same rows, the baseline each adapter must beat:

# %%
ATTENTION = default_lora_targets(model, "attention")  # every attention projection of this architecture
TASKS = ("topic", "extract")
quick = profile.name == "quick"
eval_rows, train_steps = (16, 6) if quick else (None, None)  # None: the profile's own values
before = {task: evaluate(model, tokenizer, task, rows=eval_rows) for task in TASKS}
for task, result in before.items():
    print(f"base model, {task:<8} score {result['score']:.3f} on {result['n']} test rows")

# %% [markdown]
# `get_peft_model` wraps the base with the first adapter; `add_adapter` adds the second beside it and makes it the
# active one, so that only its tensors are trainable while it trains.
#
# Losses, scores and answers after training are printed behind `≈`: they are measured on this machine, and their
# last digits (or a word of an answer) change with the CPU and the thread count (notebook 00 explains the
# convention). The assertions under them carry the claims. (A model with random weights, such as the tiny test
# models, learns nothing useful in a few steps: for it the notebook checks that training ran, not what it scores.)

# %%
lora_config = dict(r=8, lora_alpha=16, target_modules=ATTENTION)
peft_model = get_peft_model(model, LoraConfig(**lora_config), adapter_name="topic")  # wraps `model` in place
histories = {"topic": train(peft_model, tokenizer, load_task("topic", "train"), max_steps=train_steps, progress=False)}

peft_model.add_adapter("extract", LoraConfig(**lora_config))
trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
print("active:", peft_model.active_adapter, "| trainable tensors:", len(trainable), "e.g.", trainable[0])
assert trainable and all(".extract." in name for name in trainable)  # the topic adapter is frozen now
histories["extract"] = train(peft_model, tokenizer, load_task("extract", "train"), max_steps=train_steps,
                             progress=False)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for ax, (task, history) in zip(axes, histories.items()):
    plot_history(history, ax=ax)
    ax.set_title(f"adapter {task!r}: {history.steps} steps")
plt.tight_layout()
plt.show()
for task, history in histories.items():
    print(f"{task:<8} loss {measured(history.loss[0])} -> {measured(history.loss[-1])}, "
          f"{history.trainable_params:,} trainable parameters")
    assert history.loss[-1] < history.loss[0] if is_pretrained(model) else math.isfinite(history.loss[-1])
if not is_pretrained(model):
    print("random weights: checked that both runs trained with finite losses, not that the loss fell")
assert histories["topic"].trainable_params == histories["extract"].trainable_params

# %%
after = {}
for task in TASKS:
    peft_model.set_adapter(task)
    after[task] = evaluate(peft_model, tokenizer, task, rows=eval_rows)
    print(f"{task:<8} base {before[task]['score']:.3f} -> adapter {task!r} {measured(after[task]['score'])}   "
          f"e.g. {measured(after[task]['examples'][0]['prediction'])}")
    if is_pretrained(model):
        assert after[task]["score"] >= before[task]["score"] + 0.25  # a clear gain: 4 of the 16 rows at least
if not is_pretrained(model):
    print("random weights: the scores mean nothing; checked that each adapter was evaluated on its task")

# %% [markdown]
# On SmolLM2 (the default) both short runs beat the base model on their own task. The two adapters now sit side by
# side in every wrapped layer — two pairs (A, B) next to one frozen W:

# %%
layer = next(m for m in peft_model.modules() if isinstance(m, LoraLinear))  # layer 0's q_proj on SmolLM2
print(layer)
assert isinstance(layer, LoraLinear) and set(layer.lora_A) == {"topic", "extract"}

# %% [markdown]
# ## 3. Adapter switching (适配器切换): `set_adapter`, `disable_adapter()`, `delete_adapter`
#
# The serving queue of this notebook: nine requests in arrival order, three per kind — topic questions for the
# `topic` adapter, extraction requests for `extract`, and general questions that the base model should answer
# without any adapter (the name `"__base__"` means "no adapter", as in peft).

# %%
kinds = {"topic": ("topic", 3), "extract": ("extract", 3), "__base__": ("retention", 3)}
records = {adapter: load_task(task, "test").select(range(n)) for adapter, (task, n) in kinds.items()}
queue = [(adapter, records[adapter][i]) for i in range(3) for adapter in kinds]  # interleaved arrival order
queue_adapters = [adapter for adapter, _ in queue]
queue_prompts = [build_prompt(tokenizer, r["instruction"], r["input"]) for _, r in queue]
for adapter, record in queue[:3]:
    print(f"{adapter:>9}: {record['input'] or record['instruction']!r}")
print("adapters in arrival order:", queue_adapters)


def use(adapter):
    """Make `adapter` the active one; "__base__" runs the base model alone (a context manager either way)."""
    if adapter == "__base__":
        return peft_model.disable_adapter()
    peft_model.set_adapter(adapter)
    return torch.no_grad()  # nothing to undo: the adapter stays active


@torch.no_grad()
def logits_alone(adapter, prompt):
    """Next-token logits of one request run alone (batch of one, no padding) with its adapter."""
    batch = {k: v.to(model.device) for k, v in collate_for_generation(tokenizer, [prompt]).items()}
    with use(adapter):
        return peft_model(**batch).logits[0, -1].float()


# %% [markdown]
# `disable_adapter()` is a context manager: inside it, the model is the base model exactly (the LoRA paths are
# skipped, not zeroed). Each adapter, and the base, on one request of each kind:

# %%
one_of_each = queue_prompts[:3]
answers = {}
for adapter in kinds:
    with use(adapter):
        answers[adapter] = generate_answers(peft_model, tokenizer, one_of_each, max_new_tokens=MAX_NEW_TOKENS)
for adapter, texts in answers.items():  # the base model's answers are the untrained model's, the same everywhere
    print(f"{adapter:>9} adapter:", texts if adapter == "__base__" else measured(texts))
print("active adapter after the `with` block:", peft_model.active_adapter)

base_batch = {k: v.to(model.device) for k, v in collate_for_generation(tokenizer, one_of_each).items()}
with peft_model.disable_adapter(), torch.no_grad():
    disabled_logits = peft_model(**base_batch).logits
plain_logits = torch.stack([logits_alone("__base__", p) for p in one_of_each])
disabled_last = disabled_logits[:, -1].float()
cmp("disable_adapter(): last-token logits, batch vs alone", disabled_last, plain_logits,
    atol=logits_tol(disabled_last, plain_logits))
if is_pretrained(model):
    assert answers["topic"][0].strip().lower() in TOPIC_LABELS  # the topic adapter answers with one label
    assert set(json.loads(answers["extract"][1])) == {"name", "age", "city"}  # the extract adapter writes its JSON
    assert answers["topic"] != answers["extract"] != answers["__base__"]
else:
    print("random weights: the answers mean nothing; checked that each adapter answered every request")
    assert all(len(texts) == len(one_of_each) for texts in answers.values())

# %% [markdown]
# `delete_adapter` removes an adapter's tensors from every layer. Deleting the active adapter activates another one;
# the only adapter cannot be deleted (use `merge_and_unload()` or `unload()` then). A third, untrained adapter shows it:

# %%
peft_model.add_adapter("draft", LoraConfig(r=4, lora_alpha=8, target_modules=ATTENTION[:1]))  # q_proj on Llama
print("after add_adapter:   ", list(peft_model.peft_config), "| active:", peft_model.active_adapter)
assert set(layer.lora_A) == {"topic", "extract", "draft"}
peft_model.delete_adapter("draft")
print("after delete_adapter:", list(peft_model.peft_config), "| active:", peft_model.active_adapter)
assert set(layer.lora_A) == {"topic", "extract"} and peft_model.active_adapter == "topic"
try:
    peft_model.set_adapter("draft")
except ValueError as error:
    print("ValueError:", error)
else:
    raise AssertionError("a deleted adapter must be unknown")

# %% [markdown]
# ## 4. A mixed batch (混合批次): one forward pass, one adapter per row
#
# The whole queue goes into one left-padded batch, and `adapter_names=` names each row's adapter. Inside every LoRA
# layer the frozen W x is computed for all rows at once; then each adapter adds its B A x to its own rows.
#
# **Is it the same as switching?** We compare the next-token logits of every row with the same request served alone
# (batch of one, no padding, its adapter switched on): the numbers differ only by floating-point rounding, because a
# padded batch of nine runs different matrix shapes than a single row. The tolerance is derived from that rounding
# (`logits_tol`, defined at the top: 30 layers of sums up to 1,536 terms long). And on the *same* padded batch, switching the
# adapter for the whole batch and keeping each adapter's rows gives the mixed batch's logits at every real token.

# %%
queue_batch = {k: v.to(model.device) for k, v in collate_for_generation(tokenizer, queue_prompts).items()}
with torch.no_grad():
    mixed_logits = peft_model(**queue_batch, adapter_names=queue_adapters).logits.float()
print("queue batch", tuple(queue_batch["input_ids"].shape), "-> logits", tuple(mixed_logits.shape))

alone = torch.stack([logits_alone(a, p) for a, p in zip(queue_adapters, queue_prompts)])  # switching, one by one
diff_alone = cmp("mixed batch vs one request at a time", mixed_logits[:, -1], alone,
                 atol=logits_tol(mixed_logits[:, -1], alone))

switched = torch.empty_like(mixed_logits)  # switching per adapter on the same padded batch
for adapter in kinds:
    rows = [i for i, a in enumerate(queue_adapters) if a == adapter]
    with use(adapter), torch.no_grad():
        switched[rows] = peft_model(**queue_batch).logits.float()[rows]
real = queue_batch["attention_mask"].bool()
diff_same = cmp("mixed batch vs switching, same batch", mixed_logits[real], switched[real],
                atol=logits_tol(mixed_logits[real], switched[real]))
# the same next token for every request, except where two tokens tie within rounding (a random-weight model)
top2 = alone.topk(2, dim=-1).values
decided = (top2[:, 0] - top2[:, 1]) > 2 * logits_tol(mixed_logits[:, -1], alone)
assert (mixed_logits[:, -1].argmax(-1) == alone.argmax(-1))[decided].all()

# %% [markdown]
# The same holds for generation: `generate(..., adapter_names=...)` keeps each row's adapter for every new token.
# Greedy answers of the mixed batch against the answers of switching — the queue grouped by adapter, each group
# generated with its adapter active:

# %%
with torch.no_grad():
    new_tokens = peft_model.generate(**queue_batch, adapter_names=queue_adapters, max_new_tokens=MAX_NEW_TOKENS,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
new_tokens = new_tokens[:, queue_batch["input_ids"].shape[1]:]  # the prompts' columns removed
mixed_answers = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
switched_answers = [None] * len(queue)
for adapter in kinds:
    rows = [i for i, a in enumerate(queue_adapters) if a == adapter]
    with use(adapter):
        for i, answer in zip(rows, generate_answers(peft_model, tokenizer, [queue_prompts[i] for i in rows],
                                                    max_new_tokens=MAX_NEW_TOKENS)):
            switched_answers[i] = answer
for adapter, mixed_answer, switched_answer in zip(queue_adapters, mixed_answers, switched_answers):
    shown = repr(mixed_answer) if adapter == "__base__" else measured(mixed_answer)  # the base model's: untrained
    print(f"{adapter:>9}: {'==' if mixed_answer == switched_answer else '!='} switching   {shown}")
if model.dtype == torch.float32:
    assert mixed_answers == switched_answers
else:  # 8 bits of mantissa: another padding rounds differently, and a near tie can flip a greedy token
    same = sum(m == s for m, s in zip(mixed_answers, switched_answers))
    print(f"{model.dtype}: {same} of {len(queue)} answers identical (a token-for-token claim holds in fp32 only)")

# %% [markdown]
# A name that matches no adapter is an error, not a row silently served by the base model (section 7 shows the other
# rule: the adapters must stay unmerged).

# %%
try:
    peft_model(**queue_batch, adapter_names=queue_adapters[:-1] + ["extrcat"])
except ValueError as error:
    print("ValueError:", error)
else:
    raise AssertionError("an unknown adapter name must raise")

# %% [markdown]
# ## 5. Throughput (吞吐量): mixed batch vs switching
#
# What does batching save? Three ways to serve the queue: switch for every request (nine batches of one), group the
# queue by adapter (three batches of three), or one mixed batch. We count the passes through the base model with a
# hook on its embedding layer, which every forward pass calls once:

# %%
def serve_one_by_one():
    return [logits_alone(adapter, prompt) for adapter, prompt in zip(queue_adapters, queue_prompts)]


@torch.no_grad()
def serve_grouped():
    out = {}
    for adapter in kinds:
        rows = [i for i, a in enumerate(queue_adapters) if a == adapter]
        batch = {k: v.to(model.device) for k, v in collate_for_generation(tokenizer, [queue_prompts[i] for i in rows]).items()}
        with use(adapter):
            logits = peft_model(**batch).logits[:, -1].float()
        out.update(zip(rows, logits))
    return [out[i] for i in range(len(queue))]


@torch.no_grad()
def serve_mixed():
    return list(peft_model(**queue_batch, adapter_names=queue_adapters).logits[:, -1].float())


strategies = {"switch per request": serve_one_by_one, "group by adapter": serve_grouped, "mixed batch": serve_mixed}
embed = peft_model.base_model.get_input_embeddings()
passes = {}
for label, serve in strategies.items():
    calls = []
    hook = embed.register_forward_hook(lambda *args: calls.append(1))
    try:
        outputs = serve()
    finally:
        hook.remove()
    passes[label] = len(calls)
    print(f"{label:<20} {passes[label]} pass(es) through the base model for {len(queue)} requests")
    outputs = torch.stack(outputs)  # switching per request repeats the very computation of `alone`: bit for bit
    atol = 0 if serve is serve_one_by_one else logits_tol(outputs, alone)
    cmp("  same next-token logits as one by one", outputs, alone, atol=atol)
assert passes == {"switch per request": len(queue), "group by adapter": len(kinds), "mixed batch": 1}

# %% [markdown]
# Time per strategy on this machine (the cell's output is not compared by the notebook tests: timings vary from run
# to run and from machine to machine). On a CPU the work is mostly the matrix products themselves, so batching saves
# less than on a GPU, where a batch of one leaves most of the chip idle; padding the shorter prompts of a batch costs
# some of the saving back.

# %% tags=["nbval-ignore-output"]
def seconds_per_call(fn, repeats=3):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


timings = {label: seconds_per_call(serve, repeats=2) for label, serve in strategies.items()}
for label, seconds in timings.items():
    print(f"{label:<20} {1000 * seconds:8.1f} ms for {len(queue)} requests = {len(queue) / seconds:6.1f} requests/s, "
          f"{timings['switch per request'] / seconds:4.2f}x the throughput of switching per request")

# %% [markdown]
# ## 6. Exporting in HF peft's layout
#
# `save_pretrained` writes the layout HF `peft` reads: per adapter a folder with `adapter_config.json` (method, rank,
# alpha, target modules, base model) and `adapter_model.safetensors` (the adapter's tensors only, with the adapter's
# name removed from their keys). An adapter named `default` goes at the top; others go to sub-folders named after them.

# %%
export_dir = Path(tempfile.mkdtemp()) / "smollm2-adapters"
peft_model.save_pretrained(export_dir)
files = sorted(str(p.relative_to(export_dir)) for p in export_dir.rglob("*") if p.is_file())
print(files)
assert files == [f"{a}/{f}" for a in ("extract", "topic") for f in ("adapter_config.json", "adapter_model.safetensors")]
saved_config = json.loads((export_dir / "topic" / "adapter_config.json").read_text())
print({k: saved_config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "target_modules")})
saved_tensors = load_file(str(export_dir / "topic" / "adapter_model.safetensors"))
print(len(saved_tensors), "tensors, e.g.", next(iter(saved_tensors)))
assert saved_config["peft_type"] == "LORA" and saved_config["r"] == 8 and saved_config["lora_alpha"] == 16
assert len(saved_tensors) == 2 * len(ATTENTION) * model.config.num_hidden_layers  # an A and a B per wrapped layer
assert all(k.startswith("base_model.model.") and ".topic" not in k for k in saved_tensors)

# %% [markdown]
# HF `peft` loads both adapters onto a fresh copy of the base model. For each adapter, its logits on the queue equal
# ours — and `peft`'s own mixed batch equals ours too.

# %%
with torch.no_grad():
    ours_by_adapter = {}
    for adapter in TASKS:
        peft_model.set_adapter(adapter)
        ours_by_adapter[adapter] = peft_model(**queue_batch).logits.float()

fresh, _ = load_base()
theirs = peft.PeftModel.from_pretrained(fresh, export_dir / "topic", adapter_name="topic")
theirs.load_adapter(export_dir / "extract", adapter_name="extract")
print(type(theirs).__module__, "| adapters:", list(theirs.peft_config))
with torch.no_grad():
    for adapter in TASKS:
        theirs.set_adapter(adapter)
        theirs_logits, ours_logits = theirs(**queue_batch).logits.float()[real], ours_by_adapter[adapter][real]
        cmp(f"HF peft == peftedu, adapter {adapter!r}", theirs_logits, ours_logits,
            atol=logits_tol(theirs_logits, ours_logits))
    theirs_mixed = theirs(**queue_batch, adapter_names=queue_adapters).logits.float()
_ = cmp("HF peft mixed batch == peftedu mixed batch", theirs_mixed[real], mixed_logits[real],
        atol=logits_tol(theirs_mixed[real], mixed_logits[real]))

# %% [markdown]
# And the other way round: `peft` saves the adapters with its own writer, `peftedu` loads them onto the base model
# that `peft`'s `unload()` hands back (its LoRA layers removed). The files of the two writers hold the same tensors
# under the same names.

# %%
peft_dir = Path(tempfile.mkdtemp()) / "saved-by-peft"
theirs.save_pretrained(peft_dir, save_embedding_layers=False)  # LoRA only: no embedding check
for adapter in TASKS:
    theirs_file = load_file(str(peft_dir / adapter / "adapter_model.safetensors"))
    ours_file = load_file(str(export_dir / adapter / "adapter_model.safetensors"))
    assert theirs_file.keys() == ours_file.keys() and all(torch.equal(theirs_file[k], ours_file[k]) for k in ours_file)
print("peft's files hold the same tensors under the same names as ours:", sorted(p.name for p in peft_dir.iterdir()))

reloaded = PeftModel.from_pretrained(theirs.unload(), peft_dir / "topic", adapter_name="topic")
reloaded.load_adapter(peft_dir / "extract", adapter_name="extract")
del theirs
with torch.no_grad():
    for adapter in TASKS:
        reloaded.set_adapter(adapter)
        # the same tensors (asserted above), the same base weights, the same code: bit for bit
        cmp(f"peftedu, loading peft's files, {adapter!r}", reloaded(**queue_batch).logits.float()[real],
            ours_by_adapter[adapter][real], atol=0)

# %% [markdown]
# ## 7. Merging weights (权重合并) for single-adapter serving
#
# A deployment that serves one task only does not need the adapter machinery at all. `merge_and_unload()` folds the
# active adapter into W (W ← W + (α/r)·B A) and removes every LoRA layer: what is left is an ordinary transformers
# model. We merge the `topic` adapter of the model we just loaded from `peft`'s files, save it with transformers'
# `save_pretrained`, and load it back with transformers alone — no `peftedu`, no `peft`. On the way, the second rule
# of mixed batches: once an adapter is merged (`merge_adapter()`), it is inside W for every row, so a mixed batch is
# refused.

# %%
reloaded.set_adapter("topic")
topic_prompts = [prompt for prompt, adapter in zip(queue_prompts, queue_adapters) if adapter == "topic"]
topic_batch = {k: v.to(model.device) for k, v in collate_for_generation(tokenizer, topic_prompts).items()}
with torch.no_grad():
    adapter_logits = reloaded(**topic_batch).logits.float()
reloaded.merge_adapter()  # W <- W + (α/r)·B A for the active adapter, in every wrapped layer
try:  # a merged adapter is inside W for every row: mixed batches are refused
    reloaded(**queue_batch, adapter_names=queue_adapters)
except ValueError as error:
    print("mixed batch after merging: ValueError:", error)
else:
    raise AssertionError("a mixed batch on merged weights must raise")
merged = reloaded.merge_and_unload()  # merged already: this removes the LoRA layers
print(type(merged).__name__, "| LoRA layers left:", sum(isinstance(m, LoraLinear) for m in merged.modules()))
assert isinstance(merged, transformers.PreTrainedModel) and not any(isinstance(m, LoraLinear) for m in merged.modules())

merged_dir = Path(tempfile.mkdtemp()) / "smollm2-topic-merged"
merged.save_pretrained(merged_dir)
standalone = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, dtype=merged.dtype).to(model.device).eval()
with torch.no_grad():
    merged_logits = merged(**topic_batch).logits.float()
    standalone_logits = standalone(**topic_batch).logits.float()
topic_real = topic_batch["attention_mask"].bool()
cmp("merged vs unmerged adapter", merged_logits[topic_real], adapter_logits[topic_real],
    atol=logits_tol(merged_logits[topic_real], adapter_logits[topic_real]))
cmp("reloaded with transformers alone", standalone_logits, merged_logits, atol=0)  # the same weights, reloaded
standalone_answers = generate_answers(standalone, tokenizer, topic_prompts, max_new_tokens=MAX_NEW_TOKENS)
print("the standalone model's topic answers:", measured(standalone_answers))
queue_topic_answers = [a for a, name in zip(mixed_answers, queue_adapters) if name == "topic"]
if model.dtype == torch.float32:
    assert standalone_answers == queue_topic_answers
else:  # W + ΔW rounded to 8 bits of mantissa: a near tie can flip a greedy token
    print(f"{model.dtype}: {sum(a == b for a, b in zip(standalone_answers, queue_topic_answers))} of "
          f"{len(topic_prompts)} answers as in the queue (a token-for-token claim holds in fp32 only)")
del reloaded, merged

# %% [markdown]
# The merged logits differ from the unmerged ones only by rounding (W + ΔW is rounded once to the weights' dtype); the
# standalone model answers exactly as the `topic` adapter did in the queue (in fp32; in bf16 a near tie between two
# tokens can flip one greedy choice).
#
# ## 8. How big is what you ship?
#
# An adapter file holds r·(in + out) numbers per wrapped layer; the merged model holds every weight. Their file sizes
# (printed in MB; the notebook tests mask byte sizes because they depend on the file format version) are in the
# ratio of their parameter counts, times the ratio of the bytes per number (both fp32 on a CPU; on a GPU the merged
# model is stored in bf16, the adapter in fp32). A safetensors file is an 8-byte length, a JSON header, then the
# numbers: without the header, each file is exactly its parameters times their bytes.

# %%
adapter_bytes = (export_dir / "topic" / "adapter_model.safetensors").stat().st_size
model_bytes = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
adapter_params = sum(t.numel() for t in saved_tensors.values())
# r (in + out) per wrapped layer: on SmolLM2 q, o map d -> d and k, v map d -> kv_dim: 30 x 8 x (2 x 1,152 + 2 x 768)
wrapped_layers = [m for m in peft_model.modules() if isinstance(m, LoraLinear)]
assert adapter_params == sum(8 * (m.in_features + m.out_features) for m in wrapped_layers)
assert len(wrapped_layers) == cfg.num_hidden_layers * len(ATTENTION)
size_ratio, param_ratio = model_bytes / adapter_bytes, base_params / adapter_params
print(f"adapter: {adapter_params:,} parameters, {adapter_bytes / 1e6:.1f} MB | merged model: {base_params:,} "
      f"parameters, {model_bytes / 1e6:.0f} MB")
print(f"the model file is {size_ratio:.0f} times the adapter file; the parameter ratio is {param_ratio:.0f}")
print(f"the adapter is {100 * adapter_params / base_params:.2f}% of the base model's parameters")


def payload_bytes(path):
    """A safetensors file's size without its 8-byte length field and JSON header: the numbers alone."""
    with open(path, "rb") as f:
        return path.stat().st_size - 8 - int.from_bytes(f.read(8), "little")


adapter_number = next(iter(saved_tensors.values())).element_size()  # 4: adapters are saved in fp32
assert payload_bytes(export_dir / "topic" / "adapter_model.safetensors") == adapter_params * adapter_number
assert sum(payload_bytes(p) for p in merged_dir.glob("*.safetensors")) == base_params * standalone.dtype.itemsize

n_tasks = range(1, 21)
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(n_tasks, [n * model_bytes / 1e9 for n in n_tasks], marker="o", label="one merged model per task")
ax.plot(n_tasks, [(model_bytes + n * adapter_bytes) / 1e9 for n in n_tasks], marker="o", label="one base + an adapter per task")
ax.set(xlabel="number of tasks", ylabel="storage (GB = 1e9 bytes)",
       title=f"what you store and load, {model.name_or_path.split('/')[-1]}, LoRA r=8")
ax.legend()
plt.show()
assert model_bytes + 20 * adapter_bytes < 2 * model_bytes  # twenty adapters cost less than a second model

# %% [markdown]
# ## 9. Combining adapters (合并适配器): `add_weighted_adapter`
#
# A new adapter can also be built from existing ones, aiming at the weighted sum of their updates
# ΔW = Σᵢ wᵢ·sᵢ·Bᵢ Aᵢ on every layer (notebook 06 introduced it). `"cat"` stacks the factors (rank r₁ + r₂ = 16) and
# is exact; `"svd"` keeps the top `svd_rank` singular values of ΔW. By the Eckart–Young theorem that is the best
# approximation of its rank, and its error is exactly the size of the singular values it drops — which we check.

# %%
for name, kwargs in (("both_cat", dict(combination_type="cat")),
                     ("both_svd8", dict(combination_type="svd", svd_rank=8)),
                     ("both_svd16", dict(combination_type="svd", svd_rank=16))):
    peft_model.add_weighted_adapter(list(TASKS), [1.0, 1.0], name, **kwargs)
print({name: peft_model.peft_config[name].r for name in ("both_cat", "both_svd8", "both_svd16")}, "(ranks)")
middle = cfg.num_hidden_layers // 2  # a layer in the middle of the model (layer 15 of SmolLM2's 30)
layer = next(m for name, m in peft_model.named_modules() if isinstance(m, LoraLinear) and f".{middle}." in name)
target_delta = layer.delta_weight("topic") + layer.delta_weight("extract")
singular_values = torch.linalg.svdvals(target_delta)
cmp("cat: exact sum of the updates", layer.delta_weight("both_cat"), target_delta, atol=1e-5)
cmp("svd, rank 16: exact (the sum has rank 16)", layer.delta_weight("both_svd16"), target_delta, atol=1e-5)
svd8_error = (layer.delta_weight("both_svd8").double() - target_delta.double()).norm().item()  # Frobenius norm
dropped = singular_values[8:].double().square().sum().sqrt().item()
print(f"svd, rank 8: error ‖ΔW₈ − ΔW‖ = {measured(svd8_error, '.3e')}; the dropped singular values: "
      f"√Σσ²ᵢ₍ᵢ>₈₎ = {measured(dropped, '.3e')} ({measured(100 * svd8_error / target_delta.norm().item(), '.0f')}% of ‖ΔW‖)")
assert torch.linalg.matrix_rank(target_delta).item() == 16
assert abs(svd8_error / dropped - 1) < 1e-2  # Eckart–Young: the error is what the truncation drops
for name in ("both_cat", "both_svd8", "both_svd16"):
    peft_model.delete_adapter(name)
assert list(peft_model.peft_config) == list(TASKS)

# %% [markdown]
# A combined adapter is one more adapter to serve, not a model that does both tasks: the summed update acts on every
# prompt (notebook 06 shows its answers). To serve two tasks, keep two adapters and use a mixed batch.
#
# ## Summary
#
# * One frozen base holds several adapters: `add_adapter` adds one (and activates it, so only it trains),
#   `set_adapter` switches, `disable_adapter()` runs the base model alone, `delete_adapter` removes one.
# * A mixed batch (`adapter_names=`, `"__base__"` for no adapter) serves requests for different adapters in one
#   forward pass; its logits equal switching request by request up to floating-point rounding (max differences
#   printed in section 4), and its greedy answers are identical.
# * Serving the queue of nine requests took nine passes through the base model when switching per request, three when
#   grouped by adapter, one as a mixed batch; the measured throughput is printed in section 5.
# * `save_pretrained` writes HF `peft`'s layout; `peft.PeftModel.from_pretrained` loads it with the same logits (and
#   `peft`'s mixed batch agrees with ours), and `peftedu` loads `peft`'s files, which hold the same tensors.
# * `merge_and_unload` gives a plain transformers model for single-adapter serving, saved and reloaded with
#   transformers alone; the adapter file is a small fraction of the model file (ratio printed in section 8).
# * `add_weighted_adapter`: `cat` is exact, `svd` truncates to the best approximation of its rank.
#
# ## Interview corner
#
# 1. **How would you serve 100 LoRA fine-tunes of the same base model?** One copy of the base in memory, the adapters
#    beside it (a few MB each), and mixed batches: each request names its adapter, the base's matrix products are shared
#    by the whole batch, and each adapter's low-rank path runs on its rows. Systems such as S-LoRA, Punica and vLLM add
#    custom kernels and page adapters between CPU and GPU memory. Merging would need 100 full models.
# 2. **Does a mixed batch give the same answers as serving each request alone?** Yes, up to floating-point rounding:
#    each row sees W x + its own adapter's path, exactly what switching computes; this notebook compares the logits and
#    gets identical greedy answers.
# 3. **When do you merge?** When one deployment serves one adapter and latency matters: the merged model costs what the
#    base costs. Not when several adapters share the base, and not into a quantized base (notebook 07).
# 4. **What is in a peft adapter folder, and why does that matter?** `adapter_config.json` and
#    `adapter_model.safetensors` with the adapter's tensors only; any library that reads the layout (peft, vLLM,
#    peftedu) can load it on the same base model. The config records the base model: an adapter on another base is
#    meaningless, and peftedu refuses tensors of the wrong shape.
# 5. **Can you combine two task adapters into one that does both?** You can add their updates exactly (`cat`) or
#    approximately (`svd`), but the sum acts on every prompt, so each task's update disturbs the other; serving both
#    adapters side by side is the reliable way.
#
# ## Exercises
#
# 1. Add a third adapter trained on `retention` (or on `topic` with another seed) and serve a queue with three
#    adapters plus `"__base__"` in one mixed batch. Check it against switching.
#
# <details><summary>Solution</summary>
#
# ```python
# peft_model.add_adapter("topic_seed1", LoraConfig(**lora_config))
# train(peft_model, tokenizer, load_task("topic", "train"), max_steps=train_steps, seed=1, progress=False)
# names = ["topic", "topic_seed1", "extract", "__base__"] * 2
# prompts = [queue_prompts[0], queue_prompts[0], queue_prompts[1], queue_prompts[2]] * 2
# batch = collate_for_generation(tokenizer, prompts)
# with torch.no_grad():
#     mixed = peft_model(**batch, adapter_names=names).logits[:, -1]
# alone = torch.stack([logits_alone(a, p) for a, p in zip(names, prompts)])
# cmp("mixed vs alone", mixed, alone, atol=logits_tol(mixed, alone))
# ```
# </details>
#
# 2. Measure the throughput of the three serving strategies with longer answers: time `generate` with
#    `max_new_tokens=24` instead of a single forward pass. Which strategy gains most, and why?
#
# <details><summary>Solution</summary>
#
# Wrap each strategy's generation in `seconds_per_call(..., repeats=1)`. Generation makes one forward pass per new
# token, each on a batch whose rows are all at the last position, so the per-pass overhead (and, on a GPU, the idle
# chip of a batch of one) is paid 24 times: the mixed batch gains more than for one pass. Its rows also wait for the
# longest answer — the `topic` rows finish after a few tokens but stay in the batch.
# </details>
#
# 3. Export only the `extract` adapter as peft's `default` adapter (`save_pretrained(dir, selected_adapters=[...])`
#    writes the adapter's own name; rename it by loading it as `default`), and check that `peft` loads it without an
#    `adapter_name`.
#
# <details><summary>Solution</summary>
#
# ```python
# base, _ = load_base()
# single = PeftModel.from_pretrained(base, export_dir / "extract")  # adapter_name="default"
# out = Path(tempfile.mkdtemp())
# single.save_pretrained(out)  # "default" goes at the top of the folder
# print(sorted(p.name for p in out.iterdir()))  # ['adapter_config.json', 'adapter_model.safetensors']
# theirs = peft.PeftModel.from_pretrained(single.unload(), out)
# ```
# </details>
#
# 4. Combine the adapters with weights `[1.0, -1.0]` and `combination_type="cat"`. What does the new adapter compute,
#    and what does `svd_rank=16` give for it?
#
# <details><summary>Solution</summary>
#
# ΔW = Δ_topic − Δ_extract, exactly (cat puts the weight into the stacked A). It still has rank at most 16, so
# `svd` with `svd_rank=16` is exact as well; check with `layer.delta_weight(...)` as in section 9.
# </details>
