"""The showdown's serving benchmark: 8 LoRA adapters on one base model, one mixed batch (each row gathers its own
adapter) against switching adapters request by request, and the verdict on how far their logits differ."""

from __future__ import annotations

import statistics
import time

import torch

from ..lora import LoraConfig
from ..peft_model import get_peft_model
from .compare import rounding_tolerance
from .showdown_setup import LLAMA_ATTN, Settings, latency_batch, load_model


def serving_benchmark(settings: Settings, n_adapters: int = 8, rows_per_adapter: int = 2, repeats: int = 3) -> dict:
    """8 LoRA adapters on one base: one mixed batch (each row its own adapter) vs one request at a time."""
    model, tokenizer, _ = load_model(settings)
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    wrapped = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA_ATTN), adapter_name="a0")
    for i in range(1, n_adapters):
        wrapped.add_adapter(f"a{i}", LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA_ATTN))
    with torch.no_grad():  # trained adapters differ; give each its own non-zero B so the outputs differ too
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    names = [f"a{i}" for i in range(n_adapters) for _ in range(rows_per_adapter)]
    batch = latency_batch(tokenizer, Settings(**{**settings.__dict__, "latency_rows": len(names)}), device)
    wrapped.eval()

    def mixed():
        return wrapped(**batch, adapter_names=names).logits

    def switching():
        outputs = []
        for row, name in enumerate(names):
            wrapped.set_adapter(name)
            outputs.append(wrapped(input_ids=batch["input_ids"][row:row + 1],
                                   attention_mask=batch["attention_mask"][row:row + 1]).logits)
        return torch.cat(outputs)

    def timed(fn):
        times = []
        with torch.no_grad():
            result = fn()  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
        return result, statistics.median(times)

    mixed_logits, mixed_s = timed(mixed)
    switch_logits, switch_s = timed(switching)
    keep = batch["attention_mask"].bool()  # compare real tokens only (pads differ by design)
    max_diff = (mixed_logits - switch_logits)[keep].abs().max().item()
    with torch.no_grad():  # the same rows all through adapter a0: how much the choice of adapter matters
        one_adapter = wrapped(**batch, adapter_names=["a0"] * len(names)).logits
    distinct = (mixed_logits - one_adapter)[keep].abs().max().item()
    return {"adapters": n_adapters, "requests": len(names), "mixed_batch_s": mixed_s, "switching_s": switch_s,
            "throughput_ratio": switch_s / mixed_s, "max_logit_diff": max_diff,
            "adapters_differ_by": distinct, "dtype": str(mixed_logits.dtype).removeprefix("torch."),
            "max_abs_logit": mixed_logits[keep].abs().max().item()}


def serving_verdict(serving: dict) -> str:
    """How the mixed batch compares with switching, against the rounding its dtype allows (never 'same' beyond it).

    The tolerance is :func:`peftedu.course.compare.rounding_tolerance` at the size of the largest logit (10 ε · |logit|):
    in fp32 the two routes agree far inside it; in bf16 one rounding of a logit of 20 is already 0.06.
    """
    diff = serving["max_logit_diff"]
    if diff == 0.0:
        return "the same logits, bit for bit"
    if "dtype" not in serving or "max_abs_logit" not in serving:  # an older run recorded neither
        between = serving.get("adapters_differ_by")
        return (f"logits within {diff:.1e} of each other"
                + (f", against {between:.1f} between two adapters" if between is not None else "")
                + " (its dtype was not recorded, so no rounding tolerance is stated)")
    tol = rounding_tolerance(getattr(torch, serving["dtype"]), magnitude=serving["max_abs_logit"])
    relation = "within" if diff <= tol else "beyond"
    return (f"logits {relation} {serving['dtype']} rounding: max difference {diff:.1e} against a tolerance of "
            f"{tol:.1e} (10 ε × the largest logit, {serving['max_abs_logit']:.1f}), while two different adapters "
            f"differ by {serving['adapters_differ_by']:.1f}")
