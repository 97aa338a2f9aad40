"""LLaMA-Adapter equals HF peft's adaption prompt (counts, logits, files both ways), is the base model at
step 0 (zero gate), trains the gate first, and refuses bad input."""

import copy

import pytest
import torch
from conftest import make_tiny_bloom, make_tiny_llama

import peftedu.llama_adapter as la
from peftedu.course.models import build_from_config
from peftedu.peft_model import PeftModel, get_peft_model

peft = pytest.importorskip("peft")


def open_gates(model, seed=0):
    """Non-trivial weights: with the zero-init gate every comparison would pass trivially."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "adaption_gate" in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))


@pytest.mark.parametrize("name", ["smollm2-135m", "tinyllama-1.1b"])
def test_counts_equal_peft_on_meta(name):
    ours = get_peft_model(build_from_config(name), la.AdaptionPromptConfig(adapter_len=10, adapter_layers=8))
    theirs = peft.get_peft_model(build_from_config(name), peft.AdaptionPromptConfig(
        task_type="CAUSAL_LM", adapter_len=10, adapter_layers=8))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def test_smollm2_step0_unchanged_then_equal_to_peft(smollm2, tmp_path):
    model, tokenizer = smollm2()
    base_logits_input = tokenizer(["The capital of France is"], return_tensors="pt")
    base = model(**base_logits_input).logits
    ours = get_peft_model(model, la.AdaptionPromptConfig(adapter_len=10, adapter_layers=8))
    assert ours.get_nb_trainable_parameters() == (8 * (10 * 576 + 1), 134_515_008 + 8 * (10 * 576 + 1))
    torch.testing.assert_close(ours(**base_logits_input).logits, base, atol=0, rtol=0)  # gate = 0
    open_gates(ours)
    adapted = ours(**base_logits_input).logits
    assert (adapted - base).abs().max() > 1e-2
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(smollm2()[0], tmp_path)
    # (peft 0.21.2 leaves adaption prompts trainable after from_pretrained(is_trainable=False); we freeze them)
    assert theirs.get_nb_trainable_parameters()[1] == ours.get_nb_trainable_parameters()[1]
    theirs_logits = theirs(**base_logits_input).logits
    print("SmolLM2 max abs diff", (theirs_logits - adapted).abs().max().item())
    torch.testing.assert_close(theirs_logits, adapted, atol=1e-5, rtol=0)


def test_tiny_gqa_files_both_ways(tiny_inputs, tmp_path):
    base = make_tiny_llama()
    ours = get_peft_model(copy.deepcopy(base), la.AdaptionPromptConfig(adapter_len=3, adapter_layers=2))
    open_gates(ours)
    reference = ours(**tiny_inputs).logits
    ours.save_pretrained(tmp_path / "ours")
    loaded_by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    torch.testing.assert_close(loaded_by_peft(**tiny_inputs).logits, reference, atol=1e-5, rtol=0)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.AdaptionPromptConfig(
        task_type="CAUSAL_LM", adapter_len=3, adapter_layers=2))
    open_gates(theirs, seed=1)
    theirs.save_pretrained(tmp_path / "peft")
    loaded_by_us = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(loaded_by_us(**tiny_inputs).logits, theirs(**tiny_inputs).logits, atol=1e-5, rtol=0)
    assert not any(t.requires_grad for t in loaded_by_us.parameters())


def test_zero_gate_trains_first(tiny_inputs):
    """At step 0 only the gate gets a gradient: d out/d g != 0, d out/d P = g * (...) = 0."""
    ours = get_peft_model(make_tiny_llama(), la.AdaptionPromptConfig(adapter_len=3, adapter_layers=1))
    labels = tiny_inputs["input_ids"].masked_fill(tiny_inputs["attention_mask"] == 0, -100)
    ours(**tiny_inputs, labels=labels).loss.backward()
    layer = ours.base_model.model.layers[1].self_attn
    assert layer.adaption_gate["default"].grad.abs().item() > 0
    assert layer.adaption_prompt["default"].grad.abs().sum() == 0
    assert [n for n, t in ours.named_parameters() if t.requires_grad] == [
        "base_model.model.layers.1.self_attn.adaption_prompt.default",
        "base_model.model.layers.1.self_attn.adaption_gate.default"]


def test_generate_disable_and_mixed_batch(tiny_inputs):
    base = make_tiny_llama()
    ours = get_peft_model(copy.deepcopy(base), la.AdaptionPromptConfig(adapter_len=3, adapter_layers=2))
    open_gates(ours)
    logits = ours(**tiny_inputs).logits
    generated = ours.generate(**tiny_inputs, max_new_tokens=2, do_sample=False)
    assert torch.equal(generated[:, 7], logits[:, -1].argmax(-1))
    with ours.disable_adapter():
        torch.testing.assert_close(ours(**tiny_inputs).logits, base(**tiny_inputs).logits)
    ours.add_adapter("other", la.AdaptionPromptConfig(adapter_len=2, adapter_layers=1))
    open_gates(ours, seed=2)
    other = ours(**tiny_inputs).logits
    mixed = ours(**tiny_inputs, adapter_names=["default", "other"]).logits
    ours.set_adapter("default")
    default = ours(**tiny_inputs).logits
    torch.testing.assert_close(mixed[0], default[0])
    torch.testing.assert_close(mixed[1], other[1])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="adapter_len"):
        la.AdaptionPromptConfig(adapter_len=0, adapter_layers=1)
    with pytest.raises(ValueError, match="adapter_layers"):
        la.AdaptionPromptConfig(adapter_len=4)
    with pytest.raises(ValueError, match="only 2 'self_attn' layers"):
        get_peft_model(make_tiny_llama(), la.AdaptionPromptConfig(adapter_len=4, adapter_layers=3))
    with pytest.raises(ValueError, match="matches no module"):
        get_peft_model(make_tiny_bloom(), la.AdaptionPromptConfig(adapter_len=4, adapter_layers=1))
    with pytest.raises(ValueError, match="Llama-style attention"):
        get_peft_model(make_tiny_bloom(), la.AdaptionPromptConfig(adapter_len=4, adapter_layers=1,
                                                                  target_modules="self_attention"))


def test_bloom_refusal_names_the_reason():
    """The notebook prints this message on BLOOM: it must say what LLaMA-Adapter needs and what BLOOM has."""
    with pytest.raises(ValueError, match="rotary") as info:
        get_peft_model(make_tiny_bloom(), la.AdaptionPromptConfig(adapter_len=4, adapter_layers=1))
    assert "query_key_value" in str(info.value) and "BLOOM" in str(info.value)
