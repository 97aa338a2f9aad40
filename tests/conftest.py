"""Shared fixtures: the real default model (loaded once, handed out as fresh copies) and tiny models.

Every test runs offline on the CPU. ``get_peft_model`` changes a model in place, so tests never
share a model instance: the factories below return a fresh copy each call.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def _smollm2():
    from peftedu.course.models import load_base

    return load_base(device="cpu", dtype=torch.float32)


@pytest.fixture
def smollm2(_smollm2):
    """A factory: ``model, tokenizer = smollm2()`` gives a fresh fp32 copy of SmolLM2-135M-Instruct."""
    model, tokenizer = _smollm2
    return lambda: (copy.deepcopy(model), tokenizer)


def make_tiny_llama(seed: int = 0, **overrides):
    """A random 2-layer Llama with grouped-query attention (4 query heads, 2 kv heads), ~0.1M params."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def make_tiny_bloom(seed: int = 0, **overrides):
    """A random 2-layer BLOOM (fused query_key_value, biases everywhere), like bloom-1b4-zh but tiny."""
    from transformers import BloomConfig, BloomForCausalLM

    settings = dict(vocab_size=128, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0,
                    bos_token_id=1, eos_token_id=2)
    settings.update(overrides)
    torch.manual_seed(seed)
    return BloomForCausalLM(BloomConfig(**settings)).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama


@pytest.fixture
def tiny_bloom():
    return make_tiny_bloom


@pytest.fixture
def tiny_inputs():
    """A left-padded batch of two rows for the tiny models (row 0 has two pads)."""
    torch.manual_seed(1)
    input_ids = torch.randint(3, 128, (2, 7))
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :2] = 0
    attention_mask[0, :2] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}
