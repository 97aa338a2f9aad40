"""Interview preparation (面试准备): a question bank over the whole series, and a self-check.

The bank is plain data, :data:`QUESTIONS`, one :class:`Question` per entry:

* ``level`` 1 = basic (基础), 2 = intermediate (进阶), 3 = deep (深入);
* ``topic``, one key of :data:`TOPICS` (``"lora"``, ``"qlora"``, ``"serving"``, ...);
* ``where``: the notebooks and sections that demonstrate the answer, as ``(notebook, heading)`` pairs --
  ``heading`` is the section's heading text as written in ``notebooks/src/<notebook>.py`` (``None`` when
  the answer points to the notebook as a whole); the tests check every heading exists;
* ``terms``: the Chinese terms an interviewer may use (keys of :data:`GLOSSARY`);
* ``choices`` / ``correct`` for multiple-choice items (``correct`` is an index into ``choices``);
* ``facts``: every number the answer states, *as written in the answer*; notebook 13 computes each one with
  ``peftedu`` and asserts it, and the tests check that each appears in the answer text.

The logic is a few plain functions -- :func:`select_questions` (filter by topic / level / kind),
:func:`pick_questions` (a seeded sample), :func:`check_answer` (grade a multiple-choice answer),
:func:`to_markdown` (render for a notebook) -- and :class:`SelfCheck`, the state of a quiz. The ipywidgets
front end, :func:`self_check_widget`, only wires controls to them, so notebooks still run headless.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

LEVELS = {1: "basic (基础)", 2: "intermediate (进阶)", 3: "deep (深入)"}

TOPICS = {
    "why-peft": "why PEFT, families of methods",
    "memory": "memory arithmetic (显存估算)",
    "bitfit": "BitFit",
    "prompt-tuning": "prompt tuning",
    "p-tuning": "P-tuning and P-tuning v2",
    "prefix-tuning": "prefix tuning",
    "adapters": "adapters (Houlsby, Pfeiffer)",
    "llama-adapter": "LLaMA-Adapter",
    "lora": "LoRA",
    "rslora": "rsLoRA",
    "loraplus": "LoRA+",
    "qlora": "QLoRA: NF4, double quantization, paged optimizers",
    "dora": "DoRA",
    "adalora": "AdaLoRA",
    "ia3": "IA3",
    "merging": "merging and combining adapters",
    "serving": "serving many adapters",
}

NOTEBOOKS = {
    "00_introduction": "00 · Introduction",
    "01_bitfit": "01 · BitFit",
    "02_prompt_tuning": "02 · Prompt tuning",
    "03_p_tuning": "03 · P-tuning",
    "04_prefix_tuning": "04 · Prefix tuning",
    "05_adapters": "05 · Adapters and LLaMA-Adapter",
    "06_lora": "06 · LoRA",
    "07_qlora": "07 · QLoRA",
    "08_dora": "08 · DoRA",
    "09_adalora": "09 · AdaLoRA",
    "10_ia3": "10 · IA3",
    "11_serving": "11 · Serving many adapters",
    "12_showdown": "12 · The showdown",
    "13_interview": "13 · Interview preparation",
}

GLOSSARY = {
    "参数高效微调": "parameter-efficient fine-tuning (PEFT)",
    "全参数微调": "full fine-tuning",
    "灾难性遗忘": "catastrophic forgetting",
    "显存": "GPU memory",
    "优化器状态": "optimizer states",
    "混合精度": "mixed precision",
    "梯度检查点": "gradient checkpointing",
    "激活值": "activations",
    "添加式": "additive (methods)",
    "选择性微调": "selective fine-tuning (methods)",
    "重参数化": "reparameterization",
    "偏置微调": "bias-term fine-tuning (BitFit)",
    "偏置": "bias",
    "提示微调": "prompt tuning",
    "软提示": "soft prompt",
    "硬提示": "hard (discrete text) prompt",
    "虚拟token": "virtual token",
    "提示编码器": "prompt encoder (P-tuning)",
    "深度提示": "deep prompt (P-tuning v2)",
    "前缀微调": "prefix tuning",
    "键值缓存": "key/value cache (past_key_values)",
    "分组查询注意力": "grouped-query attention (GQA)",
    "位置编码": "position encoding",
    "适配器": "adapter",
    "瓶颈": "bottleneck",
    "瓶颈适配器": "bottleneck adapter (Houlsby, Pfeiffer)",
    "推理延迟": "inference latency",
    "适配提示": "adaption prompt (LLaMA-Adapter)",
    "零初始化注意力": "zero-init attention (LLaMA-Adapter)",
    "门控": "gating / gate",
    "低秩适配": "low-rank adaptation (LoRA)",
    "秩": "rank",
    "缩放系数": "scaling factor (alpha / r)",
    "内在维度": "intrinsic dimension",
    "学习率": "learning rate",
    "量化": "quantization",
    "反量化": "dequantization",
    "量化低秩适配": "QLoRA",
    "4位正态浮点": "4-bit NormalFloat (NF4)",
    "分块量化": "block-wise quantization",
    "双重量化": "double quantization",
    "分页优化器": "paged optimizer",
    "统一内存": "unified memory",
    "权重分解低秩适配": "DoRA (weight-decomposed low-rank adaptation)",
    "幅度": "magnitude",
    "方向": "direction",
    "自适应低秩适配": "AdaLoRA (adaptive low-rank adaptation)",
    "奇异值分解": "singular value decomposition (SVD)",
    "奇异值": "singular value",
    "奇异值分解形式": "SVD form (AdaLoRA's update P Λ Q)",
    "三元组": "triplet (a singular value with its two singular vectors)",
    "重要性评分": "importance score",
    "敏感度": "sensitivity (AdaLoRA's importance)",
    "不确定性": "uncertainty (AdaLoRA's importance)",
    "预算": "(rank) budget (AdaLoRA)",
    "秩分配": "rank allocation",
    "正交正则": "orthogonality regularizer",
    "抑制和放大内部激活": "IA3 (infused adapter by inhibiting and amplifying inner activations)",
    "抑制": "inhibit",
    "放大": "amplify",
    "缩放向量": "scaling vector",
    "权重合并": "merging weights",
    "合并适配器": "combining adapters",
    "多适配器部署": "multi-adapter serving",
    "多任务部署": "multi-task deployment",
    "适配器切换": "adapter switching",
    "混合批次": "mixed batch",
    "吞吐量": "throughput",
    "方法对比": "comparison of methods (the showdown)",
    "面试准备": "interview preparation",
    "术语表": "glossary",
    "勘误表": "errata (the source ledger)",
}


@dataclass(frozen=True)
class Question:
    """One entry of the bank (see the module docstring for the fields)."""

    id: str
    topic: str
    level: int
    question: str
    answer: str
    where: tuple[tuple[str, str | None], ...]
    terms: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    correct: int | None = None
    facts: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)

    @property
    def correct_choice(self) -> str | None:
        return None if self.correct is None else self.choices[self.correct]

    def where_text(self) -> str:
        """``06_lora.ipynb § 9. Several adapters on one model; 11_serving.ipynb`` -- where to look."""
        return "; ".join(f"{nb}.ipynb" + (f" § {heading}" if heading else "") for nb, heading in self.where)


def _q(id, topic, level, question, answer, where, terms=(), choices=(), correct=None, facts=None) -> Question:
    return Question(id=id, topic=topic, level=level, question=question, answer=answer, where=tuple(where),
                    terms=tuple(terms), choices=tuple(choices), correct=correct, facts=dict(facts or {}))


N00, N01, N02, N03, N04, N05, N06 = ("00_introduction", "01_bitfit", "02_prompt_tuning", "03_p_tuning",
                                     "04_prefix_tuning", "05_adapters", "06_lora")
N07, N08, N09, N10, N11, N12 = "07_qlora", "08_dora", "09_adalora", "10_ia3", "11_serving", "12_showdown"

QUESTIONS: tuple[Question, ...] = (
    # ------------------------------------------------------------------------------------------ basic
    _q("why-peft", "why-peft", 1,
       "Why parameter-efficient fine-tuning (参数高效微调)? What goes wrong with full fine-tuning (全参数微调)?",
       "Full fine-tuning with AdamW keeps, for every parameter, the weight, its gradient and two optimizer "
       "states (优化器状态): 16 bytes per parameter in fp32, 20.8 GB for bloom-1b4-zh's 1.3B parameters before "
       "activations. Every task also produces one more full copy of the model to store and serve, and "
       "updating every weight makes catastrophic forgetting (灾难性遗忘) easier. PEFT freezes the base and "
       "trains a small set of parameters: gradients and optimizer states shrink to the adapter's size, and a "
       "task costs megabytes instead of gigabytes.",
       [(N00, "1. Full fine-tuning (全参数微调) vs parameter-efficient fine-tuning (参数高效微调)"),
        (N00, "1.1 GPU memory (显存): the 20.8 GB of the source tutorial, reproduced")],
       terms=("参数高效微调", "全参数微调", "优化器状态", "灾难性遗忘"), facts={"full_fp32_gb": "20.8 GB"}),
    _q("bytes-per-param", "memory", 1,
       "Full fine-tuning in fp32 with AdamW: how many bytes of GPU memory (显存) per parameter, before "
       "activations (激活值)?",
       "16 bytes: 4 for the fp32 weight, 4 for its gradient and 8 for AdamW's two moments m and v (4 each). "
       "Activations come on top and grow with batch size × sequence length, not with the parameter count.",
       [(N00, "1.1 GPU memory (显存): the 20.8 GB of the source tutorial, reproduced")],
       terms=("显存", "激活值", "优化器状态"), choices=("4", "8", "12", "16"), correct=3,
       facts={"bytes": "16 bytes"}),
    _q("families", "why-peft", 1,
       "The methods fall into three families: additive (添加式), selective fine-tuning (选择性微调) and "
       "reparameterization (重参数化). Which family does LoRA belong to?",
       "Reparameterization: LoRA writes the update of an existing weight as a low-rank product ΔW = (α/r)·B A. "
       "Selective methods train a subset of existing weights (BitFit: the biases); additive methods add new "
       "parameters (soft prompts, prefixes, adapters, IA3's vectors).",
       [(N00, "5. Map of the series: additive (添加式), selective (选择性微调) and reparameterization (重参数化) methods")],
       terms=("添加式", "选择性微调", "重参数化"),
       choices=("selective", "additive", "reparameterization", "quantization"), correct=2),
    _q("bitfit", "bitfit", 1,
       "What does BitFit (偏置微调) train? What share of bloom-1b4-zh is that, and what happens on a model "
       "without biases such as SmolLM2?",
       "Only the bias (偏置) vectors. bloom-1b4-zh has 544,768 bias entries, 0.0418% of its parameters (one "
       "source tutorial prints 0.418%, ten times too large). Llama-family models have no biases at all, so "
       "plain BitFit would train nothing; peftedu adds zero-initialised biases to the linear layers, which "
       "leaves the model unchanged at step 0.",
       [(N00, "1.2 BitFit (偏置微调): its share of bloom-1b4-zh is 0.0418%, not 0.418%"), (N01, "1. What BitFit trains: the bias terms (偏置)"),
        (N01, "2. SmolLM2 has no biases at all")],
       terms=("偏置微调", "偏置"), facts={"bias_params": "544,768", "share": "0.0418%"}),
    _q("prompt-tuning", "prompt-tuning", 1,
       "What is a soft prompt (软提示) in prompt tuning (提示微调), and how many parameters does it train?",
       "p trainable vectors of the embedding width, prepended to the input embeddings as virtual tokens "
       "(虚拟token); the whole model stays frozen. Parameters: p × d, e.g. 8 virtual tokens on bloom-1b4-zh "
       "(d = 2048) train 16,384 numbers. A hard prompt (硬提示) is ordinary text and is not trained.",
       [(N02, "2. The soft prompt, from scratch"),
        (N02, "4. How many parameters? The source tutorial's counts on bloom-1b4-zh")],
       terms=("提示微调", "软提示", "硬提示", "虚拟token"), facts={"count": "16,384"}),
    _q("text-init", "prompt-tuning", 1,
       "Prompt tuning with TEXT initialisation means ...",
       "The virtual tokens start from the embeddings of the tokens of a text (e.g. the task's instruction) and "
       "are then trained like a randomly initialised prompt; the text is not added to the examples.",
       [(N02, "6. TEXT init or RANDOM init?")],
       terms=("提示微调",),
       choices=("the virtual tokens start from the embeddings of a text's tokens, then are trained",
                "the text is added in front of every training example",
                "the prompt stays discrete text and is never trained",
                "the tokenizer learns new tokens for the text"), correct=0),
    _q("lora-formula", "lora", 1,
       "Explain LoRA (低秩适配) in one formula. What trains, and how many numbers per layer?",
       "h = W x + (α/r)·B A x with W frozen, A: r × in and B: out × r trainable, r ≪ min(in, out) "
       "(the rank, 秩). A wrapped layer trains r·(in + out) numbers instead of in·out: for SmolLM2's "
       "576 × 576 q_proj at r = 8 that is 9,216 instead of 331,776.",
       [(N06, "1. The idea: learn the update, not the weight"), (N06, "2. LoRA from scratch, in three steps")],
       terms=("低秩适配", "秩"), facts={"lora_q": "9,216", "full_q": "331,776"}),
    _q("lora-init", "lora", 1,
       "How are LoRA's A and B initialised?",
       "A random (Kaiming-uniform), B = 0. Then ΔW = B A = 0 and training starts exactly at the pretrained "
       "model, while the random A gives B a non-zero gradient at the first step. If both were zero, both "
       "gradients would be zero and nothing would ever train.",
       [(N06, "Step 1: `LoRALayer` — the low-rank path alone")],
       terms=("低秩适配",),
       choices=("A random, B zero", "both zero", "A zero, B random", "both random, scaled by α/r"), correct=0),
    _q("lora-alpha", "lora", 1,
       "What does `lora_alpha` (缩放系数) do? With r = 16 and lora_alpha = 32, what scales the update?",
       "The update is multiplied by α/r, here 32/16 = 2. The classic mistakes: scaling by α instead of α/r, "
       "and raising r at fixed α, which shrinks the update (rsLoRA's α/√r addresses the latter).",
       [(N06, "3. The scaling factor (缩放系数): α/r or α/√r? Measuring rsLoRA's argument")],
       terms=("缩放系数", "秩"), facts={"scale": "2"}),
    _q("merge-cost", "merging", 1,
       "After a LoRA adapter is merged (权重合并) into the base weights, inference costs ...",
       "The same as the base model: W + (α/r)·B A is one matrix of the original shape. Unmerged, each wrapped "
       "layer does two extra thin matrix products.",
       [(N06, "11. Merging the weights (权重合并): W ← W + (α/r)·B A"), (N11, "7. Merging weights (权重合并) for single-adapter serving")],
       terms=("权重合并", "推理延迟"),
       choices=("the same as the base model", "two extra matrix products per wrapped layer",
                "twice the base model", "more memory for A and B"), correct=0),
    _q("adapter-size", "serving", 1,
       "Why is LoRA convenient for multi-task deployment (多任务部署)? How big is a LoRA of rank 8 on the four "
       "attention projections of SmolLM2-135M?",
       "One frozen base serves every task; each task only adds its adapter. That adapter has 921,600 "
       "parameters, 0.69% of the base model's parameters, so ten tasks cost ten small files next to one base "
       "instead of ten full copies.",
       [(N11, "8. How big is what you ship?"), (N06, "6. How big is a LoRA? The rank explorer")],
       terms=("多任务部署",), facts={"adapter_params": "921,600", "share": "0.69%"}),
    _q("qlora", "qlora", 1,
       "What is QLoRA (量化低秩适配)?",
       "LoRA on a frozen base stored in 4 bits (NF4, 4位正态浮点) with double quantization (双重量化) of the "
       "constants, plus paged optimizers (分页优化器). The adapters stay 16-bit; each matmul dequantizes (反量化) "
       "the weight to the compute dtype, so the gradient flows through the dequantized weight to the adapters.",
       [(N07, "6. QLoRA = LoRA on `Linear4bit`")],
       terms=("量化低秩适配", "4位正态浮点", "双重量化", "分页优化器", "反量化")),
    _q("ia3", "ia3", 1,
       "What does IA3 (抑制和放大内部激活) train? How many parameters on bloom-1b4-zh?",
       "Learned vectors that rescale activations elementwise (缩放向量): the keys and values of attention and "
       "the hidden activation of the MLP, initialised to ones so the model starts unchanged. On bloom-1b4-zh "
       "(the fused query_key_value output and the input of dense_4h_to_h in each of 24 layers) that is 344,064 "
       "parameters. The vectors can be merged into the weights.",
       [(N10, "3. How many parameters — and which activations?")],
       terms=("抑制和放大内部激活", "缩放向量"), facts={"count": "344,064"}),
    _q("adapters", "adapters", 1,
       "What is a bottleneck adapter (适配器) (Houlsby, Pfeiffer), and why does it add inference latency "
       "(推理延迟)?",
       "A small network inserted after a sub-layer: down-project d → b (瓶颈), a nonlinearity, up-project b → d, "
       "plus a residual connection; up starts at zero so the model starts unchanged. Houlsby puts two per block "
       "(after attention and after the MLP), Pfeiffer one (after the MLP). Each trains 2·d·b + b + d numbers. "
       "The nonlinearity means it cannot be merged into a weight, so it runs at inference too.",
       [(N05, "2. A bottleneck adapter from scratch"), (N05, "6. The price at inference: adapters cannot be merged")],
       terms=("适配器", "瓶颈", "推理延迟")),
    # ------------------------------------------------------------------------------------- intermediate
    _q("soft-prompt-family", "prefix-tuning", 2,
       "Prompt tuning, prefix tuning (前缀微调), P-tuning v2: where do the trainable vectors enter the model?",
       "Prompt tuning: only the input embeddings (p virtual tokens in front). Prefix tuning: trainable keys and "
       "values prepended in every layer's attention (the key/value cache, 键值缓存), p per layer; 10 prefix "
       "tokens on bloom-1b4-zh's 24 layers train 983,040 numbers. P-tuning v2: deep prompts (深度提示) in "
       "every layer, i.e. prefix tuning without the reparameterization.",
       [(N04, "3. The same walkthrough on `bloom-1b4-zh` (meta device)"),
        (N03, "7. P-tuning v2: deep prompts are prefix tuning without the projection")],
       terms=("前缀微调", "键值缓存", "深度提示"), facts={"prefix": "983,040"}),
    _q("prefix-scores", "prefix-tuning", 2,
       "With a prefix of p tokens, T real tokens and h query heads, what shape do the attention scores have?",
       "(N, h, T, T+p): every real token's query attends to the p prefix keys and the T real keys; the prefix "
       "has no queries of its own. With grouped-query attention the prefix keys and values are stored per "
       "key/value head and repeated to the query heads like the model's own keys.",
       [(N04, "2. Every shape, step by step, on the model in use (real tensors)")],
       terms=("前缀微调",),
       choices=("(N, h, T, T+p)", "(N, h, T+p, T+p)", "(N, h, T, T)", "(N, h, T+p, T)"), correct=0),
    _q("reparameterization", "prefix-tuning", 2,
       "Why reparameterize (重参数化) the prefix through an MLP, and what does it cost?",
       "Optimising the prefix directly is unstable; producing it from a smaller embedding through an MLP "
       "smooths training. The MLP exists only during training: the saved adapter is the prefix it produced. "
       "The cost during training is large: on bloom-1b4-zh, 205,641,728 trainable parameters with the "
       "projection against 983,040 without it.",
       [(N04, "7. `prefix_projection`: the reparameterisation and its cost"), (N03, "2. Why reparameterise?")],
       terms=("重参数化", "前缀微调"), facts={"with": "205,641,728", "without": "983,040"}),
    _q("p-tuning", "p-tuning", 2,
       "What is P-tuning's prompt encoder (提示编码器), and what does `save_pretrained` store?",
       "A small network (an MLP or a bidirectional LSTM) that produces the virtual-token embeddings from "
       "trainable inputs; only the input embeddings enter the model. The source tutorial's run on "
       "bloom-1b4-zh (10 tokens, MLP of width 1024) trains 5,267,456 parameters, almost all in the encoder. "
       "What is saved is the prompt the encoder produced, not the encoder.",
       [(N03, "1. The prompt encoder, from scratch"), (N03, "4. The source tutorial's count: 5,267,456 on bloom-1b4-zh"),
        (N03, "6. What `save_pretrained` stores: the prompt, not the encoder")],
       terms=("提示编码器", "虚拟token"), facts={"count": "5,267,456"}),
    _q("cache-api", "prefix-tuning", 2,
       "Prefix tuning broke when transformers moved `past_key_values` from tuples to Cache objects. Why, and "
       "which positions can the real tokens take after a prefix?",
       "The prefix is handed to the model as a pre-filled key/value cache (键值缓存); code that built tuples of "
       "tensors stopped working when the model expected a Cache object. The positions are a design choice. "
       "transformers (and HF peft's forward) count from the cache: after a cache of length p the real tokens "
       "take positions p..p+T-1, as if they followed p tokens that were read. peftedu chooses 0..T-1 (from the "
       "attention mask): the positions the prompt has without a prefix, the same whether it is padded or not. "
       "It matters because the prefix keys were never rotated by a position encoding (位置编码): under RoPE a "
       "query's score against them depends on the query's own position, so shifting the real tokens by p "
       "changes the output (BLOOM's ALiBi counts positions from the mask and leaves no choice). Both choices are "
       "legitimate as long as training and inference use the same one: a prefix trained with one convention "
       "and evaluated with the other gets different scores.",
       [(N04, "4. How the prefix enters the model: from tuples to `Cache` objects"),
        (N04, "5. Position encoding (位置编码): which positions do the real tokens take?"), (N04, "Exercises")],
       terms=("键值缓存", "位置编码")),
    _q("rslora", "rslora", 2,
       "rsLoRA scales the LoRA update by ... (with r = 16, lora_alpha = 8 that is 2.0 instead of LoRA's 0.5)",
       "α/√r. Under α/r the gradient reaching B and the first update shrink as r grows, so large ranks learn "
       "no better than small ones; α/√r keeps them stable. With r = 16, α = 8: 8/4 = 2.0 instead of "
       "8/16 = 0.5. In both libraries: `use_rslora=True`.",
       [(N06, "3. The scaling factor (缩放系数): α/r or α/√r? Measuring rsLoRA's argument")],
       terms=("缩放系数", "秩"), choices=("α/r", "α/√r", "α·r", "α"), correct=1,
       facts={"rs": "2.0", "plain": "0.5"}),
    _q("loraplus", "loraplus", 2,
       "What does LoRA+ change?",
       "Only the optimizer: B gets a larger learning rate (学习率) than A, lr_B = λ·lr_A with λ around 16 "
       "(`loraplus_lr_ratio`). B starts at zero and in wide layers learns too slowly at A's rate. The modules, "
       "the forward pass and the saved adapter are those of plain LoRA.",
       [(N06, "8. LoRA+: a larger learning rate for B")],
       terms=("学习率",)),
    _q("nf4", "qlora", 2,
       "Why NF4 (4位正态浮点) rather than INT4?",
       "Pretrained weights are close to normally distributed. NF4 puts its 16 levels at quantiles of a "
       "normal distribution (with an exact zero), so each level is used about equally often and the expected "
       "error is lower than with evenly spaced INT4 levels; the notebook measures it on real layers. Weights "
       "are scaled per block of 64 (分块量化) by their absolute maximum first.",
       [(N07, "1. NF4 from normal quantiles"), (N07, "4. NF4 vs INT4 vs FP4 on real layers")],
       terms=("4位正态浮点", "分块量化", "量化")),
    _q("nf4-bits", "qlora", 2,
       "NF4 with blocks of 64: how many bits per parameter without / with double quantization (双重量化)?",
       "4.5 bits without: 4 bits per weight plus one fp32 constant per 64 weights (32/64). 4.127 bits with: "
       "the constants are stored in 8 bits (8/64) with one fp32 constant per 256 of them (32/(64·256)). "
       "Double quantization saves 0.373 bits per parameter.",
       [(N07, "3. Double quantization of the constants, by hand")],
       terms=("双重量化", "4位正态浮点"),
       choices=("4.0 / 4.0", "4.5 / 4.127", "4.127 / 4.5", "8 / 4.5"), correct=1,
       facts={"nf4": "4.5", "dq": "4.127", "saved": "0.373"}),
    _q("paged", "qlora", 2,
       "What do paged optimizers (分页优化器) solve?",
       "Out-of-memory crashes from transient memory spikes (a long batch, gradient checkpointing). The "
       "optimizer states live in NVIDIA unified memory (统一内存): when the GPU is full, the driver moves pages "
       "to CPU RAM and back when the optimizer step needs them. They do not shrink the steady-state memory, "
       "and on a CPU there is nothing to page.",
       [(N07, "8. Paged optimizers (分页优化器)")],
       terms=("分页优化器", "统一内存")),
    _q("dora", "dora", 2,
       "What is DoRA (权重分解低秩适配), and what does it add to LoRA?",
       "It splits each weight into a magnitude (幅度, one length per output row) and a direction (方向): "
       "W' = m · (W + s·B A) / ‖W + s·B A‖, row by row. LoRA changes only the direction; the vector m, "
       "initialised to ‖W‖ so that W' = W at step 0, learns the magnitude. Extra cost: `out` numbers per "
       "wrapped layer, 576 for SmolLM2's q_proj. It merges like LoRA.",
       [(N08, "1. The intuition: magnitude and direction"), (N08, "4. What DoRA costs: `out` numbers per wrapped layer"),
        (N08, "6. Merging weights (权重合并): no extra cost at inference")],
       terms=("权重分解低秩适配", "幅度", "方向"), facts={"m": "576"}),
    _q("adalora", "adalora", 2,
       "How does AdaLoRA (自适应低秩适配) decide the rank of each layer?",
       "It writes each update in SVD form (奇异值分解), ΔW = P Λ Q, as rank-one triplets. An importance score "
       "(重要性评分) per triplet (sensitivity |w·∂L/∂w|, smoothed and with an uncertainty term) decides which "
       "triplets to prune, towards a global budget that falls on a cubic schedule; an orthogonality "
       "regularizer (正交正则) keeps P and Q close to orthogonal. Layers that matter keep more rank (秩分配).",
       [(N09, "1. The intuition: an update made of rank-one triplets"),
        (N09, "4. Importance scores (重要性评分) and rank allocation (秩分配), from scratch"),
        (N09, "5. The cubic budget schedule of our training run"), (N09, "3. The orthogonality regulariser")],
       terms=("自适应低秩适配", "奇异值分解", "重要性评分", "正交正则", "秩分配")),
    _q("llama-adapter", "llama-adapter", 2,
       "What is LLaMA-Adapter's zero-init attention (零初始化注意力)?",
       "Learnable adaption prompts in the top layers; each layer attends to its prompt separately from the real "
       "tokens, and that result is multiplied by a gate (门控) initialised to 0. So the model starts exactly as "
       "the base model, yet the gate gets a gradient at the first step and lets the prompt in gradually.",
       [(N05, "4. LLaMA-Adapter: adaption prompts behind a gate (门控), zero-init attention (零初始化注意力)")],
       terms=("零初始化注意力", "门控")),
    _q("multi-adapter", "serving", 2,
       "How do you serve several LoRA adapters on one base model (多适配器部署)?",
       "Keep one frozen base and load the adapters beside it. Either switch (适配器切换) per request "
       "(`set_adapter`), or serve a mixed batch (混合批次): each row names its adapter (`adapter_names=`), one "
       "forward pass through the base serves every row, and each adapter's low-rank path runs on its rows "
       "only (the idea behind S-LoRA, Punica and vLLM's multi-LoRA). The mixed batch gives the same outputs "
       "as switching; merging is for a single adapter per deployment.",
       [(N11, "3. Adapter switching (适配器切换): `set_adapter`, `disable_adapter()`, `delete_adapter`"),
        (N11, "4. A mixed batch: one forward pass, one adapter per row"),
        (N06, "9. Several adapters on one model: switching (适配器切换) and mixed batches (混合批次)")],
       terms=("多适配器部署", "适配器切换", "混合批次")),
    _q("when-not-merge", "merging", 2,
       "When should you NOT merge a LoRA adapter into the base?",
       "When one base serves several adapters (switching or mixed batches need the base unmerged), when the base "
       "is quantized (merging into 4-bit weights re-quantizes and changes outputs), or when you still want to "
       "train or combine the adapter. Merge for single-adapter deployment.",
       [(N11, "4. A mixed batch: one forward pass, one adapter per row"), (N07, "7. Merging into a 4-bit base re-quantizes"),
        (N06, "11. Merging the weights (权重合并): W ← W + (α/r)·B A")],
       terms=("权重合并", "多适配器部署"),
       choices=("when one base serves several adapters in mixed batches",
                "when one task needs the lowest latency",
                "before exporting a standalone transformers model",
                "when the base model is fp32"), correct=0),
    _q("padding", "why-peft", 2,
       "Instruction fine-tuning: why are the prompt's labels -100, and why pad on the right for training but on "
       "the left for generation?",
       "-100 is the ignore_index of PyTorch's cross-entropy, so the loss covers only the answer (and its eos). "
       "Training: right padding keeps the real tokens at their positions, with mask 0 and label -100 on the pads. "
       "Generation: `generate` appends after the last column, so every prompt must end there: left padding.",
       [(N00, "3.1 From a record to training tensors: prompt, answer, and labels of -100"),
        (N00, "3.2 Right padding for training, left padding for generation")]),
    _q("export", "serving", 2,
       "What is in HF peft's adapter format, and can an adapter trained with one library be loaded by another?",
       "A folder with `adapter_config.json` (method, rank, alpha, target modules, base model) and "
       "`adapter_model.safetensors` (only the adapter's tensors, with the adapter name removed from their keys). "
       "peftedu writes and reads that layout, so `peft.PeftModel.from_pretrained` loads a peftedu adapter and "
       "the other way round, with the same logits.",
       [(N11, "6. Exporting in HF peft's layout"), (N06, "10. Saving and reloading — in peft's format")],
       terms=("多适配器部署",)),
    # --------------------------------------------------------------------------------------------- deep
    _q("mixed-precision", "memory", 3,
       "Standard mixed-precision training (混合精度) with AdamW: how many bytes per parameter, and why do some "
       "tables say 8?",
       "16: 16-bit weights (2) and gradients (2), an fp32 master copy (4) and fp32 AdamW states (8). The "
       "8 bytes/param tables (7B → 56 GB) assume everything, optimizer states included, in 16-bit. Mixed "
       "precision saves activation memory and time, not optimizer memory; activations come on top (梯度检查点 "
       "trades them for recomputation).",
       [(N00, "1.3 The 7B / 13B / 70B table: everything 16-bit, or mixed precision (混合精度)?")],
       terms=("混合精度", "优化器状态", "梯度检查点"), choices=("8", "12", "16", "20"), correct=2,
       facts={"mixed": "16", "all16": "8 bytes/param", "7b": "56 GB"}),
    _q("lora-7b", "memory", 3,
       "How many trainable parameters does LoRA with r = 64 on every linear layer of LLaMA-7B's blocks add?",
       "r·(in + out) summed over q, k, v, o, gate, up and down projections of 32 layers: 159,907,840 "
       "trainable parameters (the QLoRA paper's setting). That is 2.32% of all parameters of the adapted model, "
       "LLaMA-7B's 6,738,415,616 plus the adapters: trainable / (base + LoRA), the denominator of peft's "
       "print_trainable_parameters.",
       [(N00, "1.3 The 7B / 13B / 70B table: everything 16-bit, or mixed precision (混合精度)?"), (N07, "9. \"65B on one 48 GB GPU\", \"7B on 24 GB\": the arithmetic")],
       terms=("秩",), facts={"lora": "159,907,840", "share": "2.32%", "n": "6,738,415,616"}),
    _q("qlora-65b", "qlora", 3,
       "How does QLoRA fit the fine-tuning of a 65B model on one 48 GB GPU, when 16-bit full fine-tuning needs "
       "more than 780 GB?",
       "Full fine-tuning at 12 bytes/param (16-bit weights and gradients, fp32 AdamW): 65e9 × 12 = 780 GB. "
       "QLoRA stores the linear weights in NF4 with double quantization (≈4.127 bits), trains only r = 64 "
       "adapters with paged AdamW and checkpoints activations: about 45 GB in total, below 48.",
       [(N07, "9. \"65B on one 48 GB GPU\", \"7B on 24 GB\": the arithmetic")],
       terms=("量化低秩适配", "显存", "分页优化器"), facts={"full16": "780 GB", "qlora": "45 GB"}),
    _q("merge-4bit", "qlora", 3,
       "What goes wrong when you merge a LoRA adapter into a 4-bit base?",
       "Merging means dequantize, add ΔW, quantize again: the sum is rounded to the 4-bit grid of each block, so "
       "much of a small update is lost and the outputs change. Keep the adapter unmerged, or merge into a 16-bit "
       "copy of the dequantized base and serve that.",
       [(N07, "7. Merging into a 4-bit base re-quantizes")],
       terms=("权重合并", "量化", "反量化")),
    _q("combine", "merging", 3,
       "`add_weighted_adapter` with combination_type=\"svd\" and an svd_rank below the sum of the ranks gives ...",
       "The best approximation of that rank of the weighted sum of the updates (Eckart–Young): truncated, not "
       "exact. \"cat\" stacks the factors (rank r₁ + r₂) and is exact. Neither makes a model that does both "
       "tasks: the summed update acts on every prompt.",
       [(N06, "Combining adapters: `add_weighted_adapter`"), (N11, "9. Combining adapters: `add_weighted_adapter`")],
       terms=("合并适配器",),
       choices=("the best approximation of that rank of the summed update", "the exact sum of the updates",
                "the mean of the two adapters' A and B matrices", "a random projection of the updates"), correct=0),
    _q("gradient-collapse", "rslora", 3,
       "Why do large ranks learn slowly under α/r? How can you measure it?",
       "At B = 0 the gradient of B is s·Gᵀ(X Aᵀ): r columns of similar size, so its norm grows like s·√r, and "
       "one gradient step moves the output by about s²·r. With s = α/r that is r^-1/2 and r^-1: the signal "
       "collapses as r grows. With s = α/√r both are flat. Measure ‖∂L/∂B‖ and the output change after one step "
       "on a real layer for several ranks and fit the slope on a log-log plot.",
       [(N06, "3. The scaling factor (缩放系数): α/r or α/√r? Measuring rsLoRA's argument")],
       terms=("秩", "缩放系数")),
    _q("dora-detach", "dora", 3,
       "Why does DoRA treat the norm ‖W + s·B A‖ as a constant in the backward pass?",
       "Memory: differentiating through the row norms would keep the full-size W + s·B A of every layer for "
       "backpropagation. Detaching the norm (the paper's section 4.3) only scales the gradient by m/‖·‖, and "
       "the paper reports no loss in accuracy. The forward pass is unchanged, so the outputs are the same.",
       [(N08, "3. Why detach the norm?")],
       terms=("权重分解低秩适配",)),
    _q("ia3-side", "ia3", 3,
       "Which side of a layer does IA3 scale, and how is it merged?",
       "For keys and values it scales the output of k_proj/v_proj (a vector of out entries: multiply row i of W "
       "by l_i). For the MLP it scales the input of down_proj, i.e. the hidden activation (in entries: multiply "
       "column j of W by l_j). Both are exact merges, W ← W·diag or diag·W.",
       [(N10, "2. IA3 from scratch on real layers"), (N10, "6. Merging weights (权重合并): IA3 at the base model's cost")],
       terms=("抑制和放大内部激活", "缩放向量", "权重合并")),
    _q("mixed-batch-cost", "serving", 3,
       "What does a mixed batch cost compared with switching adapters request by request?",
       "One pass through the frozen base for all rows instead of one per request (or per adapter group): the "
       "base's large matrix products are shared, and each adapter adds two thin products on its own rows. The "
       "price: adapters must stay unmerged, and rows with different lengths are padded. The notebook counts the "
       "base-model passes and measures the throughput (吞吐量) of both.",
       [(N11, "5. Throughput: mixed batch vs switching")],
       terms=("混合批次", "吞吐量", "适配器切换")),
    _q("forgetting", "why-peft", 3,
       "Does PEFT prevent catastrophic forgetting (灾难性遗忘)?",
       "It reduces it and makes it reversible, but does not prevent it. The frozen base is untouched, so "
       "disabling the adapter gives the base model back exactly; with the adapter on, the model can still lose "
       "general abilities — which is why the course scores every method on a retention task.",
       [(N00, "3. The three tasks"), (N11, "3. Adapter switching (适配器切换): `set_adapter`, `disable_adapter()`, `delete_adapter`"),
        (N12, "3. The measured showdown")],
       terms=("灾难性遗忘",)),
    _q("choose-method", "why-peft", 3,
       "A team must fine-tune a 7B model on one 24 GB GPU and serve ten tasks with low latency. Which method, "
       "and why?",
       "QLoRA for training (the NF4 base and the adapters fit a 24 GB card; full mixed-precision fine-tuning of "
       "7B needs more than 100 GB before activations), then LoRA adapters served on one 16-bit base: mixed "
       "batches for the ten tasks, or a merged 16-bit model for a task that needs the lowest latency alone. "
       "Prompt methods and bottleneck adapters would add latency (longer sequences, extra layers).",
       [(N07, "9. \"65B on one 48 GB GPU\", \"7B on 24 GB\": the arithmetic"), (N11, "4. A mixed batch: one forward pass, one adapter per row"),
        (N12, "4. The sources' trade-off table, cell by cell")],
       terms=("量化低秩适配", "多适配器部署", "推理延迟"), facts={"card": "24 GB", "full": "100 GB"}),
)


# ------------------------------------------------------------------------------------------------ logic
def get_question(question_id: str, questions: Sequence[Question] = QUESTIONS) -> Question:
    for question in questions:
        if question.id == question_id:
            return question
    raise KeyError(f"No question with id {question_id!r}; ids look like {[q.id for q in questions[:3]]}.")


def _as_set(value, known: Iterable, what: str) -> set | None:
    if value is None:
        return None
    values = {value} if isinstance(value, (str, int)) else set(value)
    unknown = sorted(map(str, values - set(known)))
    if unknown:
        raise ValueError(f"Unknown {what} {unknown}; choose from {list(known)}.")
    return values


def select_questions(topic: str | Iterable[str] | None = None, level: int | Iterable[int] | None = None, *,
                     max_level: int | None = None, multiple_choice: bool | None = None,
                     questions: Sequence[Question] = QUESTIONS) -> list[Question]:
    """The questions of ``topic`` (a key of TOPICS, or several) at ``level`` (1, 2, 3, or several), in bank order.

    ``max_level=2`` keeps levels 1 and 2; ``multiple_choice=True/False`` keeps only one kind. ``None`` = no filter.
    """
    topics = _as_set(topic, TOPICS, "topic")
    levels = _as_set(level, LEVELS, "level")
    if max_level is not None and max_level not in LEVELS:
        raise ValueError(f"max_level must be one of {list(LEVELS)}, got {max_level!r}.")
    return [q for q in questions
            if (topics is None or q.topic in topics)
            and (levels is None or q.level in levels)
            and (max_level is None or q.level <= max_level)
            and (multiple_choice is None or q.is_multiple_choice == multiple_choice)]


def pick_questions(n: int, *, seed: int = 0, **filters) -> list[Question]:
    """``n`` questions drawn without replacement (seeded: the same seed gives the same draw), easiest first.

    ``filters`` are :func:`select_questions`'s arguments. Asking for more than there are returns them all.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    pool = select_questions(**filters)
    if not pool:
        raise ValueError(f"No question matches {filters}.")
    chosen = random.Random(seed).sample(range(len(pool)), min(n, len(pool)))
    return [pool[i] for i in sorted(chosen, key=lambda i: (pool[i].level, i))]


@dataclass(frozen=True)
class AnswerCheck:
    correct: bool
    chosen: str
    expected: str
    explanation: str

    def feedback(self) -> str:
        verdict = "Correct." if self.correct else f"Not quite: the answer is “{self.expected}”."
        return f"{verdict} {self.explanation}"


def check_answer(question: Question | str, choice: int | str) -> AnswerCheck:
    """Grade a multiple-choice answer, given as the index of the choice or its text."""
    q = get_question(question) if isinstance(question, str) else question
    if not q.is_multiple_choice:
        raise ValueError(f"Question {q.id!r} is an open question: compare your answer with q.answer instead.")
    if isinstance(choice, bool) or not isinstance(choice, (int, str)):
        raise ValueError(f"choice must be an index or the text of a choice, got {choice!r}.")
    if isinstance(choice, int):
        if not 0 <= choice < len(q.choices):
            raise ValueError(f"choice index {choice} is out of range for {len(q.choices)} choices.")
        index = choice
    else:
        matches = [i for i, text in enumerate(q.choices) if text.strip().lower() == choice.strip().lower()]
        if not matches:
            raise ValueError(f"{choice!r} is not one of the choices {list(q.choices)}.")
        index = matches[0]
    return AnswerCheck(correct=index == q.correct, chosen=q.choices[index], expected=q.correct_choice,
                       explanation=q.answer)


_CHINESE_IN_PARENTHESES = re.compile(r"\s*\([^()]*[\u4e00-\u9fff][^()]*\)")


def heading_key(heading: str) -> str:
    """A heading without its Chinese terms in parentheses: ``"2. The soft prompt (软提示), from scratch"`` and
    ``"2. The soft prompt, from scratch"`` cite the same section."""
    return _CHINESE_IN_PARENTHESES.sub("", heading).strip()


def _heading_words(key: str) -> tuple[str | None, set[str]]:
    number = re.match(r"(\d+(?:\.\d+)*)\.?\s", key)
    return (number.group(1) if number else None), set(re.findall(r"[a-z0-9]{2,}", key.lower()))


def cites(heading: str, existing: Iterable[str]) -> bool:
    """Whether a cited heading names one of ``existing``: the same :func:`heading_key`, or -- for a numbered
    section -- the same number and at least half of the cited words (so "3. Switching: ..." still finds
    "3. Adapter switching (适配器切换): ..." after a heading gained a term, but not another section)."""
    key = heading_key(heading)
    keys = {heading_key(h) for h in existing}
    if key in keys:
        return True
    number, words = _heading_words(key)
    if number is None or not words:
        return False
    for other in keys:
        other_number, other_words = _heading_words(other)
        if other_number == number and len(words & other_words) >= len(words) / 2:
            return True
    return False


def validate_bank(questions: Sequence[Question] = QUESTIONS, notebooks_src: str | Path | None = None) -> list[str]:
    """Problems in the bank (an empty list when it is sound); the unit tests assert there are none.

    With ``notebooks_src`` (the folder of the notebook sources), every cited heading must exist in the source of
    its notebook, if that source exists (by :func:`cites`: a Chinese term added to a heading does not break it).
    """
    problems = []
    ids = [q.id for q in questions]
    problems += [f"duplicate id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    headings: dict[str, set[str] | None] = {}
    for q in questions:
        if q.topic not in TOPICS:
            problems.append(f"{q.id}: unknown topic {q.topic!r}")
        if q.level not in LEVELS:
            problems.append(f"{q.id}: level {q.level!r} is not one of {list(LEVELS)}")
        if not q.question.strip() or not q.answer.strip():
            problems.append(f"{q.id}: empty question or answer")
        if q.is_multiple_choice:
            if len(q.choices) < 2 or len(set(q.choices)) != len(q.choices):
                problems.append(f"{q.id}: a multiple-choice item needs at least two distinct choices")
            if not (isinstance(q.correct, int) and 0 <= q.correct < len(q.choices)):
                problems.append(f"{q.id}: correct={q.correct!r} is not an index into its choices")
        elif q.correct is not None:
            problems.append(f"{q.id}: an open question has correct={q.correct!r}")
        if not q.where:
            problems.append(f"{q.id}: points to no notebook")
        for notebook, heading in q.where:
            if notebook not in NOTEBOOKS:
                problems.append(f"{q.id}: unknown notebook {notebook!r}")
                continue
            if heading is None or notebooks_src is None:
                continue
            if notebook not in headings:
                source = Path(notebooks_src) / f"{notebook}.py"
                headings[notebook] = ({m.group(1).strip() for m in re.finditer(r"^# #+ (.+)$", source.read_text(),
                                                                                 re.MULTILINE)}
                                      if source.exists() else None)
            if headings[notebook] is not None and not cites(heading, headings[notebook]):
                problems.append(f"{q.id}: {notebook} has no heading {heading!r}")
        for term in q.terms:
            if term not in GLOSSARY:
                problems.append(f"{q.id}: term {term!r} is not in GLOSSARY")
        for name, text in q.facts.items():
            if text not in q.answer and text not in q.question:
                problems.append(f"{q.id}: fact {name}={text!r} does not appear in the question or answer")
    return problems


def glossary_markdown(glossary: dict[str, str] | None = None, columns: int = 1) -> str:
    """The glossary as a Markdown table, Chinese → English, in order; ``columns=2`` puts two pairs of columns side by
    side (read down the first pair, then the second), half as long."""
    pairs = list((GLOSSARY if glossary is None else glossary).items())
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive int, got {columns!r}.")
    rows = -(-len(pairs) // columns)
    lines = ["| 中文 | English " * columns + "|", "| --- | --- " * columns + "|"]
    for i in range(rows):
        cells = [pairs[i + c * rows] if i + c * rows < len(pairs) else ("", "") for c in range(columns)]
        lines.append("".join(f"| {zh} | {en} " for zh, en in cells) + "|")
    return "\n".join(lines)


def to_markdown(questions: Sequence[Question], *, answers: str = "collapsed", numbered_from: int = 1) -> str:
    """Markdown for a notebook: each question, its choices, and its answer with the notebooks that show it.

    ``answers``: ``"collapsed"`` (inside ``<details>``, as the course's exercises), ``"shown"`` or ``"hidden"``.
    """
    if answers not in ("collapsed", "shown", "hidden"):
        raise ValueError(f"answers must be 'collapsed', 'shown' or 'hidden', got {answers!r}.")
    blocks = []
    for number, q in enumerate(questions, start=numbered_from):
        lines = [f"**{number}. {q.question}** *({LEVELS[q.level].split()[0]}, {TOPICS[q.topic]})*"]
        if q.is_multiple_choice:
            lines += [""] + [f"{chr(ord('a') + i)}) {choice}  " for i, choice in enumerate(q.choices)]
        body = q.answer
        if q.is_multiple_choice:
            body = f"**{chr(ord('a') + q.correct)})** {body}"
        body += f"\n\n*See:* {q.where_text()}"
        if q.terms:
            body += "  \n*Terms:* " + ", ".join(f"{t} ({GLOSSARY[t]})" for t in q.terms)
        if answers == "collapsed":
            lines += ["", "<details><summary>Answer</summary>", "", body, "", "</details>"]
        elif answers == "shown":
            lines += ["", body]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------------------- self-check
class SelfCheck:
    """The state of a quiz: a filtered pool of questions, the current one, and the score.

    >>> quiz = SelfCheck(topic="lora", multiple_choice=True)
    >>> quiz.current.id, quiz.answer(0).correct
    ('lora-init', True)
    """

    def __init__(self, questions: Sequence[Question] = QUESTIONS, **filters):
        self.questions = tuple(questions)
        self.correct = self.attempted = 0
        self.set_filter(**filters)

    def set_filter(self, topic=None, level=None, multiple_choice=None, max_level=None) -> None:
        """Choose the pool (``select_questions``'s filters) and go back to its first question."""
        pool = select_questions(topic, level, max_level=max_level, multiple_choice=multiple_choice,
                                questions=self.questions)
        self.pool, self.index, self.answered = pool, 0, False

    @property
    def current(self) -> Question | None:
        return self.pool[self.index] if self.pool else None

    def to_first_multiple_choice(self) -> Question | None:
        """Go to the pool's first multiple-choice question (stay put if it has none)."""
        for i, q in enumerate(self.pool):
            if q.is_multiple_choice:
                self.index, self.answered = i, False
                break
        return self.current

    def next(self) -> Question | None:
        """Move to the next question of the pool (wrapping around)."""
        if self.pool:
            self.index = (self.index + 1) % len(self.pool)
            self.answered = False
        return self.current

    def answer(self, choice: int | str) -> AnswerCheck:
        """Grade ``choice`` for the current question; only the first answer to a question counts in the score."""
        if self.current is None:
            raise ValueError("No question matches the filter.")
        result = check_answer(self.current, choice)
        if not self.answered:
            self.attempted += 1
            self.correct += result.correct
            self.answered = True
        return result

    @property
    def score(self) -> str:
        return f"{self.correct} / {self.attempted} correct"


def _question_html(quiz: SelfCheck) -> str:
    import html

    q = quiz.current
    if q is None:
        return "<i>No question matches this filter.</i>"
    return (f"<b>{quiz.index + 1} / {len(quiz.pool)} · {html.escape(LEVELS[q.level])} · {html.escape(TOPICS[q.topic])}"
            f"</b><br>{html.escape(q.question)}")


#: The value of the topic and level menus' first entry: no filter (ipywidgets reserves ``None`` for "no selection").
ALL = "all"

#: The line under the self-check's opening question: the buttons do nothing without a kernel.
QUIZ_NOTE = "Run this cell in a live notebook to take the quiz: the controls need a running kernel."


def filter_options(questions: Sequence[Question] = QUESTIONS) -> tuple[list[tuple[str, str]], list[tuple[str, object]]]:
    """The topic and level menus of the self-check: ``(label, value)`` pairs, each label with its question count,
    ``("all topics (N questions)", "all")`` first, then e.g. ``("LoRA: n questions", "lora")``; topics without a
    question are left out."""
    by_topic = {key: sum(q.topic == key for q in questions) for key in TOPICS}
    by_level = {key: sum(q.level == key for q in questions) for key in LEVELS}

    def count(n):
        return f"{n} question{'' if n == 1 else 's'}"

    topics = [(f"all topics ({count(len(questions))})", ALL)] + [
        (f"{label}: {count(n)}", key) for key, label in TOPICS.items() if (n := by_topic[key])]
    levels = [(f"all levels ({count(len(questions))})", ALL)] + [
        (f"{label}: {count(n)}", key) for key, label in LEVELS.items() if (n := by_level[key])]
    return topics, levels


def question_text(quiz: SelfCheck) -> str:
    """The current question as plain text: position, level, topic, the question and its lettered choices."""
    q = quiz.current
    if q is None:
        return "No question matches this filter."
    lines = [f"{quiz.index + 1} / {len(quiz.pool)} · {LEVELS[q.level]} · {TOPICS[q.topic]}", q.question]
    lines += [f"  {chr(ord('a') + i)}) {choice}" for i, choice in enumerate(q.choices)]
    return "\n".join(lines)


def self_check_widget(questions: Sequence[Question] = QUESTIONS, static: bool = True):
    """Topic and level menus, the question, its choices, Check / Show answer / Next buttons, and the score.

    Opens on the first multiple-choice question (and does so again whenever a menu changes the pool). With
    ``static=True`` it first prints that question and :data:`QUIZ_NOTE`, what a view without a kernel can show.
    Returns an ipywidgets ``VBox`` whose ``quiz`` attribute is the :class:`SelfCheck` it drives.
    """
    import html

    import ipywidgets as widgets

    from .explorers import explorer_box

    quiz = SelfCheck(questions)
    quiz.to_first_multiple_choice()
    if static:
        print("Self-check, opening question:")
        print(question_text(quiz))
        print(QUIZ_NOTE)
    topic_options, level_options = filter_options(quiz.questions)
    topic = widgets.Dropdown(options=topic_options, value=ALL, description="topic", layout=widgets.Layout(width="30em"))
    level = widgets.Dropdown(options=level_options, value=ALL, description="level", layout=widgets.Layout(width="22em"))
    question = widgets.HTML()
    choices = widgets.RadioButtons(options=[], value=None, layout=widgets.Layout(width="max-content"))
    check = widgets.Button(description="Check", button_style="primary")
    reveal = widgets.Button(description="Show answer")
    following = widgets.Button(description="Next")
    feedback = widgets.HTML()
    score = widgets.HTML()

    def show():
        q = quiz.current
        question.value = _question_html(quiz)
        choices.options = [] if q is None else list(q.choices)
        choices.value = None
        choices.layout.display = None if q is not None and q.is_multiple_choice else "none"
        check.disabled = q is None or not q.is_multiple_choice
        reveal.disabled = following.disabled = q is None
        feedback.value = ""
        score.value = f"<small>{quiz.score}</small>"

    def on_filter(_change=None):
        quiz.set_filter(topic=None if topic.value == ALL else topic.value,
                        level=None if level.value == ALL else level.value)
        quiz.to_first_multiple_choice()
        show()

    def on_check(_button=None):
        if choices.value is None:
            feedback.value = "<i>Pick an answer first.</i>"
            return
        result = quiz.answer(choices.value)
        feedback.value = html.escape(result.feedback()) + f"<br><small>See: {html.escape(quiz.current.where_text())}</small>"
        score.value = f"<small>{quiz.score}</small>"

    def on_reveal(_button=None):
        q = quiz.current
        feedback.value = html.escape(q.answer) + f"<br><small>See: {html.escape(q.where_text())}</small>"

    def on_next(_button=None):
        quiz.next()
        show()

    topic.observe(on_filter, "value")
    level.observe(on_filter, "value")
    check.on_click(on_check)
    reveal.on_click(on_reveal)
    following.on_click(on_next)
    show()
    box = explorer_box([widgets.HBox([topic, level]), question, choices,
                        widgets.HBox([check, reveal, following]), feedback, score], "self-check quiz")
    box.quiz = quiz
    return box


__all__ = [
    "ALL", "AnswerCheck", "GLOSSARY", "LEVELS", "NOTEBOOKS", "QUESTIONS", "QUIZ_NOTE", "Question", "SelfCheck", "TOPICS",
    "check_answer", "cites", "filter_options", "get_question", "glossary_markdown", "heading_key", "pick_questions", "question_text",
    "select_questions",
    "self_check_widget", "to_markdown", "validate_bank",
]
