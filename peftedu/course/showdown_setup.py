"""What every showdown run starts from: its settings, the base model and tokenizer, the timed forward pass over a
fixed batch of test prompts, the device's FLOPs peak (for model FLOPs utilisation), and the log of finished runs
(JSON Lines, keyed by the settings, so a run is never repeated).

The runs themselves are in :mod:`peftedu.course.showdown`, the many-adapters serving benchmark in
:mod:`peftedu.course.showdown_serving`; both start here.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .data import load_task
from .tokenization import collate_for_generation
from .models import MODEL_ALIASES, build_from_config, default_dtype, load_base, load_model_config, pick_device
from .evaluation import as_prompt

#: the attention projections of a Llama-style block: where the showdown's LoRA variants (and serving's) sit
LLAMA_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for model FLOPs utilisation
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass
class Settings:
    """What a showdown holds fixed for every run; a run log's entries are reused only under equal settings."""

    model: str | None = None  # alias, hub id or folder; "tiny-random" for the smoke run
    task: str = "topic"
    profile: str = "quick"
    seed: int = 0
    device: str | None = None
    max_steps: int | None = None  # overrides the profile (smoke)
    eval_rows: int | None = None
    latency_rows: int = 8
    latency_repeats: int = 3
    random_weights: bool = False  # GPU benchmark when the real weights can't be fetched
    lr: float | None = None  # overrides the method's own learning rate (the learning-rate grid)
    validation: bool = False  # also score the validation split (what the grid chooses a learning rate on)
    delta_w: bool = False  # full fine-tuning: keep the singular values of each update ΔW (peftedu.course.lowrank)
    overrides: dict | None = None  # config keyword arguments that replace the method's (the LoRA study's variants)
    repeat: int = 0  # which timing repeat a run is (the same training; only its timing differs)

    @classmethod
    def from_dict(cls, values: dict) -> "Settings":
        """Settings from a log entry; a key an older log lacks takes its default."""
        return cls(**{**cls().__dict__, **values})

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def load_model(settings: Settings):
    """The base model and tokenizer for a run (``tiny-random``: 2 small layers, SmolLM2's tokenizer)."""
    if settings.model == "tiny-random":
        _, tokenizer = load_base(None, device="cpu")
        torch.manual_seed(settings.seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = LlamaForCausalLM(config).eval()
        model.name_or_path = "tiny-random"
        return model, tokenizer, "random (tiny smoke model)"
    if settings.random_weights and Path(str(settings.model)).is_dir():  # written by scripts/random_model.py
        model, tokenizer = load_base(settings.model, device=settings.device)
        return model, tokenizer, f"random (a {model.config.model_type} folder from scripts/random_model.py)"
    if settings.random_weights:
        device = pick_device(settings.device)
        torch.manual_seed(settings.seed)
        model = build_from_config(settings.model, device=device, dtype=default_dtype(device))
        vocab = load_model_config(settings.model).vocab_size
        named = os.environ.get("PEFTEDU_TOKENIZER")  # a tokenizer folder (or hub id) chosen by the user
        source = named or MODEL_ALIASES.get(settings.model, settings.model)
        try:  # the model's own tokenizer (a few MB) when the hub is reachable, or the one named
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):  # offline: the default model's tokenizer, if its ids fit the embedding table
            if named:
                raise ValueError(f"PEFTEDU_TOKENIZER={named!r} could not be loaded: name a folder that holds "
                                 f"tokenizer.json (or a hub id, when the hub is reachable).") from None
            _, tokenizer = load_base(None, device="cpu")
            source = "SmolLM2-135M-Instruct (bundled)"
        if len(tokenizer) > vocab:
            raise ValueError(f"{settings.model} has {vocab} embeddings but the tokenizer from {source} has "
                             f"{len(tokenizer)} tokens; set PEFTEDU_TOKENIZER to the model's own tokenizer folder, "
                             f"or connect to the hub once to fetch it.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # the tokenizer's name only: a folder's full path belongs to one machine and says nothing to a reader
        label = "PEFTEDU_TOKENIZER folder" if named and Path(named).exists() else source
        return model, tokenizer, f"random (shipped config; real weights not reachable); tokenizer: {label}"
    model, tokenizer = load_base(settings.model, device=settings.device)
    return model, tokenizer, "pretrained"


def latency_batch(tokenizer, settings: Settings, device) -> dict:
    """The first ``settings.latency_rows`` test prompts of the task, padded into one batch on ``device``."""
    rows = load_task(settings.task, "test").select(range(settings.latency_rows))
    prompts = [as_prompt(tokenizer, record) for record in rows]
    return {k: v.to(device) for k, v in collate_for_generation(tokenizer, prompts).items()}


def forward_latency(model, batch: dict, repeats: int) -> float:
    """Median seconds of one forward pass (the prefill of a batch of prompts), after one warm-up pass."""
    device = batch["input_ids"].device
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s (:data:`PEAK_BF16_FLOPS`); None on a CPU or an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def load_log(log: Path | None, settings: Settings) -> list[dict]:
    """The entries of a run log written with the same settings (others are ignored)."""
    if log is None or not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in entries if "settings" in e and Settings.from_dict(e["settings"]) == settings]


def logged_runs(log: Path | None, settings: Settings) -> dict[tuple[str, str], dict]:
    """The finished runs a log holds under these settings, by ``(method, impl)``."""
    return {(e["row"]["method"], e["row"]["impl"]): e["row"] for e in load_log(log, settings) if "row" in e}


def _append_log(log: Path | None, entry: dict, settings: Settings) -> None:
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:  # one short line per write: safe for several processes sharing the log
            f.write(json.dumps({**entry, "settings": settings.__dict__}) + "\n")


def _more_logged_pairs(log: Path | None, settings: Settings, twins: list[str], start: int) -> list[dict]:
    """Complete pairs the log holds beyond ``start`` repeats (repeat ``start``, ``start + 1``, ... up to the first
    repeat with no complete pair): a longer run for some methods (``--methods llama_adapter --repeats 7``) counts in
    the full table."""
    found, k = [], start
    while True:
        logged = logged_runs(log, replace(settings, repeat=k))
        pairs = [logged[(m, impl)] for m in twins if (m, "peft") in logged and (m, "peftedu") in logged
                 for impl in ("peftedu", "peft")]
        if not pairs:
            return found
        found, k = found + pairs, k + 1
