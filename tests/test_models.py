"""Base-model loading: the bundled default, the hub/local-folder path, shipped architectures on meta."""

from __future__ import annotations

import pytest
import torch

from peftedu.course import models


def test_default_model_answers_paris(smollm2):
    model, tokenizer = smollm2()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_default_model_is_smollm2_135m(smollm2):
    model, tokenizer = smollm2()
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token is not None and tokenizer.chat_template


def test_cache_holds_the_same_weights_as_the_gguf():
    """The fast cache is a faithful copy of what transformers reads from the GGUF file."""
    from transformers import AutoModelForCausalLM

    path = models.gguf_path()
    from_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    cached, _ = models.load_base(device="cpu")
    reference = from_gguf.state_dict()
    for name, tensor in cached.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)


def test_local_folder_and_env_setting(tmp_path, monkeypatch, _smollm2, tiny_llama):
    """Any folder written by save_pretrained loads through the same path as a hub id."""
    _, tokenizer = _smollm2
    tiny = tiny_llama(vocab_size=len(tokenizer))
    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = models.load_base(str(tmp_path), device="cpu")
    assert model.config.num_hidden_layers == 2
    monkeypatch.setenv("PEFTEDU_MODEL", str(tmp_path))
    model2, _ = models.load_base()
    assert model2.config.hidden_size == 32
    assert tok.pad_token is not None


def test_aliases_resolve_to_hub_ids(monkeypatch):
    monkeypatch.delenv("PEFTEDU_MODEL", raising=False)
    assert models.resolve_source("bloom-1b4-zh") == "Langboat/bloom-1b4-zh"
    assert models.resolve_source("tinyllama-1.1b") == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert models.resolve_source("some-org/some-model") == "some-org/some-model"


def test_device_and_dtype_helpers():
    assert models.pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert models.pick_device().type in {"cpu", "mps"}
    assert models.default_dtype("cpu") is torch.float32


@pytest.mark.parametrize("capability,name,dtype,scaled", [
    ((9, 0), "bf16", torch.bfloat16, False),   # H100 / H200
    ((8, 0), "bf16", torch.bfloat16, False),   # A100
    ((8, 6), "bf16", torch.bfloat16, False),   # RTX 3090 / A10
    ((7, 5), "fp16", torch.float16, True),     # T4 (Colab, Kaggle): no bf16
    ((7, 0), "fp16", torch.float16, True),     # V100
])
def test_precision_follows_the_gpu(monkeypatch, capability, name, dtype, scaled):
    """The capability query is faked, so the GPU branches are checked on a CPU-only machine."""
    monkeypatch.delenv("PEFTEDU_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    precision = models.pick_precision("cuda")
    assert (precision.name, precision.dtype, precision.loss_scaling) == (name, dtype, scaled)
    assert models.default_dtype("cuda") is dtype
    assert models.pick_precision("cpu").dtype is torch.float32  # the CPU is never asked about the GPU


def test_precision_override(monkeypatch):
    monkeypatch.setenv("PEFTEDU_PRECISION", "fp16")
    assert models.pick_precision("cpu").dtype is torch.float16 and models.pick_precision("cpu").loss_scaling
    monkeypatch.setenv("PEFTEDU_PRECISION", "int8")
    with pytest.raises(ValueError, match="Unknown precision 'int8'.*fp32, bf16, fp16"):
        models.pick_precision("cpu")


@pytest.mark.parametrize("arch,model_type", [("qwen2", "qwen2"), ("bloom", "bloom"), ("llama", "llama")])
def test_random_model_folder_loads_like_any_model(tmp_path, monkeypatch, arch, model_type):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = models.write_random_model(tmp_path / arch, arch)
    model, tokenizer = models.load_base(str(folder), device="cpu")
    assert model.config.model_type == model_type and not models.is_pretrained(model)
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    ids = tokenizer("hello world", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == model.config.vocab_size
    with pytest.raises(ValueError, match="Unknown architecture 'gpt9'.*qwen2"):
        models.write_random_model(tmp_path / "x", "gpt9")


def test_shipped_config_random_model_keeps_the_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = models.load_model_config("qwen2.5-1.5b")
    config.num_hidden_layers, config.layer_types = 1, config.layer_types[:1]  # the shape of one layer is enough here; write_random_model reads the name
    monkeypatch.setattr(models, "load_model_config", lambda name: config)
    folder = models.write_random_model(tmp_path / "q", "qwen2.5-1.5b", dtype=torch.bfloat16)
    model, _ = models.load_base(str(folder), device="cpu")
    assert model.config.hidden_size == 1536 and model.config.vocab_size == 151936 and not models.is_pretrained(model)


@pytest.mark.parametrize("name,total", [
    ("smollm2-135m", 134_515_008),
    ("tinyllama-1.1b", 1_100_048_384),
    ("smollm2-1.7b", 1_711_376_384),
    ("qwen2.5-1.5b", 1_543_714_304),
    # the source tutorial prints 1,303,111,680 for Langboat/bloom-1b4-zh
    ("bloom-1b4-zh", 1_303_111_680),
])
def test_shipped_architectures_on_meta(name, total):
    model = models.build_from_config(name)
    assert next(model.parameters()).device.type == "meta"
    assert sum(p.numel() for p in model.parameters()) == total


def test_unknown_shipped_config_lists_known():
    with pytest.raises(ValueError, match="known names"):
        models.build_from_config("gpt-17")
