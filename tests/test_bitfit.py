"""BitFit: counts by hand (and the tutorial's bloom count), step-0 equality, only biases train, merging.

HF peft has no BitFit, so the invariants are tested instead of parity.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import peftedu.bitfit as bitfit
from peftedu.peft_model import PeftModel, get_peft_model
from peftedu.course.models import build_from_config
from conftest import make_tiny_bloom, make_tiny_llama


def _randomize(peft_model, seed=0, adapter="default"):
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in bitfit.BitFitTuner().layers(peft_model.base_model):
            if adapter in layer.bitfit_bias:
                layer.bitfit_bias[adapter].add_(torch.randn_like(layer.bitfit_bias[adapter]) * 0.1)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_bloom_count_reproduces_the_tutorial():
    """bloom-1b4-zh has biases everywhere: plain BitFit trains 544,768 of 1,303,111,680 parameters."""
    model = build_from_config("bloom-1b4-zh")
    biases_by_hand = sum(p.numel() for name, p in model.named_parameters() if name.endswith("bias"))
    total_before = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, bitfit.BitFitConfig())
    assert peft_model.get_nb_trainable_parameters() == (biases_by_hand, total_before)
    assert (biases_by_hand, total_before) == (544_768, 1_303_111_680)


@pytest.mark.parametrize("name", ["smollm2-135m", "tinyllama-1.1b", "qwen2.5-1.5b"])
def test_llama_family_gets_zero_biases_on_every_linear_but_the_head(name):
    model = build_from_config(name)
    total_before = sum(p.numel() for p in model.parameters())
    linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    existing = sum(m.bias.numel() for m in linear.values() if m.bias is not None)  # Qwen2: q/k/v only
    expected = sum(m.out_features for m in linear.values())
    peft_model = get_peft_model(model, bitfit.BitFitConfig())
    assert peft_model.get_nb_trainable_parameters() == (expected, total_before + expected - existing)
    assert not isinstance(peft_model.base_model.lm_head, bitfit.BitFitLayer)
    if name == "smollm2-135m":
        assert expected == 30 * (576 + 192 + 192 + 576 + 3 * 1536 - 1536 + 576) == 155_520


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_bloom])
def test_unchanged_at_step_0_and_only_biases_train(make, tiny_inputs):
    base = make()
    expected = _logits(base, tiny_inputs)
    peft_model = get_peft_model(make(), bitfit.BitFitConfig())
    torch.testing.assert_close(_logits(peft_model, tiny_inputs), expected, rtol=0, atol=0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("bitfit_bias.default") for n in trainable)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model(**tiny_inputs, labels=tiny_inputs["input_ids"]).loss.backward()
    optimizer.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)
    assert not torch.allclose(_logits(peft_model, tiny_inputs), expected)
    with peft_model.disable_adapter():
        torch.testing.assert_close(_logits(peft_model, tiny_inputs), expected, rtol=0, atol=0)


def test_unchanged_at_step_0_on_smollm2(smollm2):
    model, tokenizer = smollm2()
    inputs = tokenizer(["BitFit trains only the biases."], return_tensors="pt")
    expected = _logits(model, inputs)
    peft_model = get_peft_model(model, bitfit.BitFitConfig())
    torch.testing.assert_close(_logits(peft_model, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_bloom])
def test_merge_and_unload_gives_a_plain_model_with_the_learned_biases(make, tiny_inputs):
    peft_model = get_peft_model(make(), bitfit.BitFitConfig())
    _randomize(peft_model)
    expected = _logits(peft_model, tiny_inputs)
    learned = {name: layer.bitfit_bias["default"].detach().clone()
               for name, layer in peft_model.base_model.named_modules() if isinstance(layer, bitfit.BitFitLayer)}
    peft_model.merge_adapter()
    torch.testing.assert_close(_logits(peft_model, tiny_inputs), expected, rtol=0, atol=1e-5)
    peft_model.unmerge_adapter()
    merged = peft_model.merge_and_unload()
    assert not any(isinstance(m, bitfit.BitFitLayer) for m in merged.modules())
    params = dict(merged.named_parameters())
    for name, bias in learned.items():
        assert torch.equal(params[f"{name}.bias"], bias), name
    torch.testing.assert_close(_logits(merged, tiny_inputs), expected, rtol=0, atol=1e-5)
    # the same parameter names as a model built with these biases (nothing left of the wrapper)
    assert all(".base_layer." not in name and "bitfit" not in name for name in params)


def test_unload_without_merging_restores_the_original_layers(tiny_inputs):
    original = make_tiny_bloom()
    expected = _logits(original, tiny_inputs)
    peft_model = get_peft_model(make_tiny_bloom(), bitfit.BitFitConfig())
    _randomize(peft_model)
    model = peft_model.unload()
    assert dict(model.state_dict()).keys() == original.state_dict().keys()
    torch.testing.assert_close(_logits(model, tiny_inputs), expected, rtol=0, atol=0)
    llama = get_peft_model(make_tiny_llama(), bitfit.BitFitConfig()).unload()
    assert all(m.bias is None for m in llama.modules() if isinstance(m, nn.Linear))


def test_save_and_load_roundtrip(tmp_path, tiny_inputs):
    peft_model = get_peft_model(make_tiny_llama(), bitfit.BitFitConfig())
    _randomize(peft_model)
    expected = _logits(peft_model, tiny_inputs)
    peft_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BITFIT" and saved["add_missing_biases"] is True
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path)
    torch.testing.assert_close(_logits(loaded, tiny_inputs), expected, rtol=0, atol=0)
    assert loaded.get_nb_trainable_parameters()[0] == 0  # inference mode


def test_two_adapters_switch_and_mix(tiny_inputs):
    peft_model = get_peft_model(make_tiny_bloom(), bitfit.BitFitConfig())
    _randomize(peft_model, seed=1)
    peft_model.add_adapter("other", bitfit.BitFitConfig())
    # a new adapter starts from the base model's biases, not from the first adapter's
    with peft_model.disable_adapter():
        base = _logits(peft_model, tiny_inputs)
    torch.testing.assert_close(_logits(peft_model, tiny_inputs), base, rtol=0, atol=0)
    _randomize(peft_model, seed=2, adapter="other")
    other = _logits(peft_model, tiny_inputs)
    peft_model.set_adapter("default")
    default = _logits(peft_model, tiny_inputs)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".default") for n in trainable)
    mixed = peft_model(**tiny_inputs, adapter_names=["other", "__base__"]).logits.detach()
    torch.testing.assert_close(mixed[0], other[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[1], base[1], rtol=0, atol=1e-5)
    assert not torch.allclose(default, other)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="no bias terms.*add_missing_biases=True"):
        get_peft_model(make_tiny_llama(), bitfit.BitFitConfig(add_missing_biases=False))
    with pytest.raises(ValueError, match="have no bias"):
        get_peft_model(make_tiny_llama(), bitfit.BitFitConfig(target_modules=["q_proj"], add_missing_biases=False))
    with pytest.raises(ValueError, match="matched no module"):
        get_peft_model(make_tiny_llama(), bitfit.BitFitConfig(target_modules="nothing.*"))
    with pytest.raises(ValueError, match="add_missing_biases must be True or False"):
        bitfit.BitFitConfig(add_missing_biases="yes")
    with pytest.raises(ValueError, match="target_modules must be"):
        bitfit.BitFitConfig(target_modules=3)


def test_explicit_targets_include_layernorms_on_bloom():
    model = make_tiny_bloom()
    peft_model = get_peft_model(model, bitfit.BitFitConfig(target_modules=["input_layernorm", "query_key_value"]))
    d = model.config.hidden_size
    assert peft_model.get_nb_trainable_parameters()[0] == 2 * (d + 3 * d)


def test_bf16_base_trains_fp32_biases_and_merges_back_to_bf16(tiny_inputs):
    peft_model = get_peft_model(make_tiny_bloom().to(torch.bfloat16), bitfit.BitFitConfig())
    layer = peft_model.base_model.transformer.h[0].self_attention.query_key_value
    assert layer.bitfit_bias["default"].dtype == torch.float32
    _randomize(peft_model)
    assert _logits(peft_model, tiny_inputs).dtype == torch.bfloat16
    merged = peft_model.merge_and_unload()
    assert merged.transformer.h[0].self_attention.query_key_value.bias.dtype == torch.bfloat16
    assert _logits(merged, tiny_inputs).dtype == torch.bfloat16


def test_merged_bitfit_on_llama_saves_and_reloads_with_its_learned_biases(tmp_path):
    """Llama's config says it has no biases; merge_and_unload must declare the ones BitFit added."""
    import transformers

    from conftest import make_tiny_llama

    model = make_tiny_llama()
    ids = torch.randint(3, 128, (1, 7))
    wrapped = get_peft_model(model, bitfit.BitFitConfig())
    with torch.no_grad():
        for p in wrapped.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
        trained = wrapped(input_ids=ids).logits
    merged = wrapped.merge_and_unload()
    assert merged.config.attention_bias and merged.config.mlp_bias
    merged.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)


def _tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


def test_merged_bitfit_warns_about_biases_a_qwen2_config_cannot_declare():
    """Qwen2 has biases on q/k/v only and no config flag for the others: merging names what a reload would drop."""
    with pytest.warns(UserWarning, match="from_pretrained of a saved copy would drop them"):
        merged = get_peft_model(_tiny_qwen2(), bitfit.BitFitConfig()).merge_and_unload()
    merged_names = bitfit.undeclared_biases(merged)
    assert {name.rsplit(".", 1)[-1] for name in merged_names} == {"o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(merged_names) == 2 * 4
    # the q/k/v biases the architecture has are declared; so is everything on Llama (config flags) and BLOOM
    for make in (make_tiny_llama, make_tiny_bloom):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert bitfit.undeclared_biases(get_peft_model(make(), bitfit.BitFitConfig()).merge_and_unload()) == []
