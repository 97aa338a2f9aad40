"""Prompts, tokenization and collation: from a record to a batch of tensors.

A record uses the alpaca field names (``instruction``, ``input``, ``output``); the tasks of
:mod:`peftedu.course.data` and hub instruction datasets such as alpaca-zh go through the same code.

Conventions (the classic silent bugs of causal-LM fine-tuning, each one tested):

* labels of the prompt tokens are ``-100`` (ignored by the loss); the answer is followed by the
  eos token, which *is* labelled, so the model learns to stop;
* training batches are padded on the RIGHT, labels with ``-100``, attention mask 0 on pads --
  the pad token may equal the eos token (SmolLM2: both ``<|im_end|>``), so pads are never found
  by comparing ids;
* generation batches are padded on the LEFT, so every prompt ends where generation starts.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from datasets.utils import logging as datasets_logging

IGNORE_INDEX = -100
#: The plain prompt format of the source tutorials, used when a tokenizer has no chat template.
PLAIN_PROMPT = "Human: {instruction}\n{input}\n\nAssistant: "


# ---------------------------------------------------------------------------------------------
# Prompts and tokenization
# ---------------------------------------------------------------------------------------------
def build_prompt(tokenizer, instruction: str, input: str = "") -> str:
    """The text the model sees before its answer.

    With a chat template: one user message (instruction, then the input on a new line) and the
    generation prompt, e.g. for SmolLM2 ``...<|im_start|>user\\n{message}<|im_end|>\\n<|im_start|>assistant\\n``.
    Without one: the source tutorials' plain format ``"Human: {instruction}\\n{input}\\n\\nAssistant: "``.
    """
    if getattr(tokenizer, "chat_template", None):
        content = f"{instruction}\n{input}" if input else instruction
        return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
    return PLAIN_PROMPT.format(instruction=instruction, input=input)


def _ids(tokenizer, text: str) -> list[int]:
    # add_special_tokens=False: the prompt format already holds every special token it needs.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_example(tokenizer, example: dict, max_length: int = 256) -> dict[str, list[int]]:
    """One record -> ``input_ids``, ``attention_mask`` and ``labels`` (lists of ints).

    ``input_ids = prompt + answer + [eos]``; ``labels = [-100] * len(prompt) + answer + [eos]``.
    Truncation keeps the answer: when the pair is longer than ``max_length`` the prompt loses tokens
    from its *start* (its end, the assistant marker, stays next to the answer) down to
    ``max_length // 2`` tokens; only an answer longer than the rest is cut, at its end.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (a prompt token and an answer token); got {max_length}.")
    for field in ("instruction", "output"):
        if field not in example:
            raise ValueError(f"Record lacks the field {field!r}; records need instruction, input and output "
                             f"(alpaca names); got fields {sorted(example)}.")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; the answer must end with one so the model learns to stop.")
    prompt = _ids(tokenizer, build_prompt(tokenizer, example["instruction"], example.get("input") or ""))
    answer = _ids(tokenizer, example["output"]) + [tokenizer.eos_token_id]
    if len(prompt) + len(answer) > max_length:
        prompt_budget = max(max_length - len(answer), min(len(prompt), max_length // 2))
        prompt = prompt[len(prompt) - prompt_budget:]
        answer = answer[:max_length - len(prompt)]
    return {
        "input_ids": prompt + answer,
        "attention_mask": [1] * (len(prompt) + len(answer)),
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
    }


@contextlib.contextmanager
def quiet_datasets():
    """No ``datasets`` progress bars inside: they appear only when a result is not cached yet, so a notebook's
    output would depend on what ran before (nbval compares outputs)."""
    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()


def tokenize_dataset(tokenizer, dataset, max_length: int = 256):
    """``tokenize_example`` over a ``datasets.Dataset`` (raw columns removed) or a list of records."""
    if isinstance(dataset, (list, tuple)):
        return [tokenize_example(tokenizer, record, max_length) for record in dataset]
    with quiet_datasets():
        return dataset.map(lambda r: tokenize_example(tokenizer, r, max_length),
                           remove_columns=dataset.column_names, desc="tokenize")


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------
def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set one, e.g. tokenizer.pad_token = tokenizer.eos_token.")
    return tokenizer.pad_token_id


class TrainingCollator:
    """Features from :func:`tokenize_example` -> a RIGHT-padded batch of tensors.

    Pads ``input_ids`` with the pad id, ``attention_mask`` with 0 and ``labels`` with -100, all to
    the longest example (times ``pad_to_multiple_of`` if given). Use as ``DataLoader(collate_fn=...)``.
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad_token_id = _pad_id(tokenizer)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot collate an empty list of features.")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            ids = list(f["input_ids"])
            labels = list(f["labels"]) if "labels" in f else list(ids)
            mask = list(f.get("attention_mask", [1] * len(ids)))
            if not len(ids) == len(labels) == len(mask):
                raise ValueError(f"input_ids, labels and attention_mask differ in length: "
                                 f"{len(ids)}, {len(labels)}, {len(mask)}.")
            pad = length - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["attention_mask"].append(mask + [0] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def collate_for_training(tokenizer, features: Sequence[dict]) -> dict[str, torch.Tensor]:
    """One right-padded training batch (see :class:`TrainingCollator`)."""
    return TrainingCollator(tokenizer)(features)


def collate_for_generation(tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Prompts (strings, or token-id lists) -> a LEFT-padded batch: ``input_ids``, ``attention_mask``.

    Left padding puts every prompt's last token in the last column, where ``generate`` appends.
    """
    if len(prompts) == 0:
        raise ValueError("Cannot collate an empty list of prompts.")
    pad_id = _pad_id(tokenizer)
    rows = [_ids(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    length = max(len(r) for r in rows)
    input_ids = [[pad_id] * (length - len(r)) + r for r in rows]
    attention_mask = [[0] * (length - len(r)) + [1] * len(r) for r in rows]
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long)}
