"""Scoring a model: greedy answers, batched with left padding, and a task split's score.

:func:`generate_answers` is what every notebook and the showdown generate with; :func:`evaluate` scores a task
split with the task's own rule (:data:`peftedu.course.data.SCORERS`: label match, exact JSON, or a word).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .data import MAX_NEW_TOKENS, SCORERS, load_task
from .tokenization import build_prompt, collate_for_generation
from .training import Profile, get_profile, model_device


def as_prompt(tokenizer, item) -> str:
    """A prompt string as it is; a record (``instruction``, optional ``input``) formatted by ``build_prompt``."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "instruction" in item:
        return build_prompt(tokenizer, item["instruction"], item.get("input") or "")
    raise ValueError(f"Expected a prompt string or a record with an 'instruction' field; got {type(item).__name__}.")


@torch.no_grad()
def generate_answers(model, tokenizer, prompts_or_records, *, batch_size: int = 16, max_new_tokens: int = 32,
                     progress: bool = False) -> list[str]:
    """Greedy answers, batched with LEFT padding; returns only the new text, special tokens removed.

    Strings are used as finished prompts (as :func:`peftedu.course.tokenization.build_prompt` returns them);
    records (dicts with ``instruction`` and optional ``input``) are formatted with ``build_prompt``.
    """
    prompts = [as_prompt(tokenizer, item) for item in prompts_or_records]
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1; got {batch_size}, {max_new_tokens}.")
    was_training = model.training
    model.eval()
    device = model_device(model)
    answers = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
        batch = {k: v.to(device) for k, v in collate_for_generation(tokenizer, prompts[start:start + batch_size]).items()}
        output = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    model.train(was_training)
    return answers


def evaluate(model, tokenizer, task: str, split: str = "test", *, rows: int | str | None = None,
             batch_size: int | None = None, max_new_tokens: int | None = None,
             profile: str | Profile | None = None, progress: bool = False) -> dict:
    """Score the model on a task split: ``{"score", "n", "task", "split", "wall_time_s", "examples"}``.

    ``rows``: the first ``rows`` rows of the split; ``None`` -> the profile's ``eval_rows`` (quick: 48,
    full: all); ``"all"`` -> every row. ``examples``: one dict per row with instruction, input,
    reference, prediction, correct (the whole answer right) and credit (what it scored, in [0, 1]).
    """
    if task not in SCORERS:
        raise ValueError(f"evaluate needs a scored task, one of {sorted(SCORERS)}; got {task!r}.")
    p = get_profile(profile)
    data = load_task(task, split)
    rows = p.eval_rows if rows is None else rows
    if rows == "all" or rows is None:
        rows = len(data)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise ValueError(f"rows must be a positive integer, 'all' or None; got {rows!r}.")
    records = data.select(range(min(rows, len(data))))
    start = time.perf_counter()
    predictions = generate_answers(model, tokenizer, list(records), batch_size=batch_size or p.eval_batch_size,
                                   max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[task], progress=progress)
    wall = time.perf_counter() - start
    scorer = SCORERS[task]
    examples = []
    for r, pred in zip(records, predictions):
        credit = float(scorer(pred, r["output"]))  # 1/0 for a right/wrong answer, a share for partial credit
        examples.append({"instruction": r["instruction"], "input": r["input"], "reference": r["output"],
                         "prediction": pred, "correct": credit == 1.0, "credit": credit})
    return {"score": sum(e["credit"] for e in examples) / len(examples), "n": len(examples), "task": task,
            "split": split, "wall_time_s": wall, "examples": examples}


__all__ = ["as_prompt", "evaluate", "generate_answers"]
