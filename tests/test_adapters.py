"""Bottleneck adapters (Houlsby, Pfeiffer): counts by formula, y = h + up(act(down(h))), step-0 equality,
several adapters, and the clear refusal to merge. HF peft has no bottleneck adapters."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import peftedu.adapters as adapters
from peftedu.adapters import AdapterConfig, BottleneckAdapterLayer
from peftedu.course.models import build_from_config
from peftedu.peft_model import PeftModel, get_peft_model

from conftest import make_tiny_bloom, make_tiny_llama


def _randomize(peft_model, seed=0, adapter="default"):
    """Give up() non-zero weights (at init it is zero, which would make comparisons trivial)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in adapters.AdapterTuner().layers(peft_model.base_model):
            if adapter in layer.adapter_up:
                for p in layer.adapter_up[adapter].parameters():
                    p.copy_(torch.randn_like(p) * 0.1)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _per_adapter(d, b):
    return 2 * d * b + b + d


@pytest.mark.parametrize("name", ["smollm2-135m", "tinyllama-1.1b"])
@pytest.mark.parametrize("adapter_type, per_layer", [("houlsby", 2), ("pfeiffer", 1)])
def test_counts_by_hand(name, adapter_type, per_layer):
    model = build_from_config(name)
    d, layers = model.config.hidden_size, model.config.num_hidden_layers
    total = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, AdapterConfig(adapter_type=adapter_type, bottleneck_size=64))
    expected = layers * per_layer * _per_adapter(d, 64)
    assert peft_model.get_nb_trainable_parameters() == (expected, total + expected)
    if (name, adapter_type) == ("smollm2-135m", "houlsby"):
        assert expected == 4_462_080


def test_reduction_factor_sets_the_bottleneck():
    model = build_from_config("smollm2-135m")
    peft_model = get_peft_model(model, AdapterConfig(adapter_type="pfeiffer", reduction_factor=16))
    assert peft_model.get_nb_trainable_parameters()[0] == 30 * _per_adapter(576, 576 // 16)


def test_default_placement_per_architecture():
    def wrapped(model, adapter_type):
        peft_model = get_peft_model(model, AdapterConfig(adapter_type=adapter_type, bottleneck_size=4))
        return sorted({n.split(".", 3)[-1] for n, m in peft_model.base_model.named_modules()
                       if isinstance(m, BottleneckAdapterLayer)})

    assert wrapped(make_tiny_llama(), "houlsby") == ["mlp.down_proj", "self_attn.o_proj"]
    assert wrapped(make_tiny_llama(), "pfeiffer") == ["mlp.down_proj"]
    assert wrapped(make_tiny_bloom(), "houlsby") == ["mlp.dense_4h_to_h", "self_attention.dense"]
    assert wrapped(make_tiny_bloom(), "pfeiffer") == ["mlp.dense_4h_to_h"]


@pytest.mark.parametrize("non_linearity, act", [("relu", torch.relu), ("gelu", nn.functional.gelu),
                                                 ("silu", nn.functional.silu)])
def test_layer_computes_h_plus_up_act_down_h(non_linearity, act):
    peft_model = get_peft_model(make_tiny_llama(), AdapterConfig(bottleneck_size=8, non_linearity=non_linearity))
    _randomize(peft_model)
    layer = peft_model.base_model.model.layers[1].self_attn.o_proj
    down, up = layer.adapter_down["default"], layer.adapter_up["default"]
    assert down.weight.shape == (8, 32) and up.weight.shape == (32, 8)
    x = torch.randn(2, 5, 32)
    h = layer.base_layer(x)
    by_hand = h + (act(h @ down.weight.T + down.bias) @ up.weight.T + up.bias)
    torch.testing.assert_close(layer(x), by_hand)


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_bloom])
def test_unchanged_at_step_0_and_both_matrices_learn(make, tiny_inputs):
    expected = _logits(make(), tiny_inputs)
    peft_model = get_peft_model(make(), AdapterConfig(bottleneck_size=8))
    torch.testing.assert_close(_logits(peft_model, tiny_inputs), expected, rtol=0, atol=0)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter_down.default." in n or ".adapter_up.default." in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    for _ in range(2):  # step 1 moves up (down's gradient is 0 while up = 0); step 2 moves down too
        optimizer.zero_grad()
        peft_model(**tiny_inputs, labels=tiny_inputs["input_ids"]).loss.backward()
        optimizer.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert any("adapter_up" in n for n in changed) and any("adapter_down" in n for n in changed)
    assert changed <= trainable


def test_unchanged_at_step_0_on_smollm2(smollm2):
    model, tokenizer = smollm2()
    inputs = tokenizer(["Adapters sit after attention and after the MLP."], return_tensors="pt")
    expected = _logits(model, inputs)
    peft_model = get_peft_model(model, AdapterConfig())
    torch.testing.assert_close(_logits(peft_model, inputs), expected, rtol=0, atol=0)


def test_merging_is_refused_with_the_reason(tiny_inputs):
    peft_model = get_peft_model(make_tiny_llama(), AdapterConfig(bottleneck_size=4))
    with pytest.raises(ValueError, match="nonlinear"):
        peft_model.merge_adapter()
    with pytest.raises(ValueError, match="nonlinear"):
        peft_model.merge_and_unload()
    with pytest.raises(ValueError, match="Nothing is merged"):
        peft_model.unmerge_adapter()
    expected = _logits(make_tiny_llama(), tiny_inputs)  # unload() drops the adapters
    torch.testing.assert_close(_logits(peft_model.unload(), tiny_inputs), expected, rtol=0, atol=0)


def test_several_adapters_switch_disable_delete_and_mix(tiny_inputs):
    peft_model = get_peft_model(make_tiny_llama(), AdapterConfig(bottleneck_size=4))
    peft_model.add_adapter("pf", AdapterConfig(adapter_type="pfeiffer", bottleneck_size=6, non_linearity="gelu"))
    _randomize(peft_model, seed=1, adapter="default")
    _randomize(peft_model, seed=2, adapter="pf")
    pf = _logits(peft_model, tiny_inputs)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".pf." in n for n in trainable)
    peft_model.set_adapter("default")
    default = _logits(peft_model, tiny_inputs)
    with peft_model.disable_adapter():
        base = _logits(peft_model, tiny_inputs)
    torch.testing.assert_close(base, _logits(make_tiny_llama(), tiny_inputs), rtol=0, atol=0)
    assert not torch.allclose(pf, default) and not torch.allclose(default, base)
    mixed = peft_model(**tiny_inputs, adapter_names=["pf", "__base__"]).logits.detach()
    torch.testing.assert_close(mixed[0], pf[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], base[1], rtol=0, atol=1e-6)
    peft_model.delete_adapter("pf")
    assert not any("pf" in n for n, _ in peft_model.named_parameters())
    torch.testing.assert_close(_logits(peft_model, tiny_inputs), default, rtol=0, atol=0)


def test_save_and_load_roundtrip(tmp_path, tiny_inputs):
    config = AdapterConfig(adapter_type="pfeiffer", reduction_factor=4, non_linearity="silu")
    peft_model = get_peft_model(make_tiny_bloom(), config)
    _randomize(peft_model)
    expected = _logits(peft_model, tiny_inputs)
    peft_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK_ADAPTER" and saved["reduction_factor"] == 4
    loaded = PeftModel.from_pretrained(make_tiny_bloom(), tmp_path)
    torch.testing.assert_close(_logits(loaded, tiny_inputs), expected, rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="'houlsby'.*'pfeiffer'"):
        AdapterConfig(adapter_type="lora")
    with pytest.raises(ValueError, match="not both"):
        AdapterConfig(bottleneck_size=8, reduction_factor=4)
    with pytest.raises(ValueError, match="bottleneck_size must be a positive integer"):
        AdapterConfig(bottleneck_size=0)
    with pytest.raises(ValueError, match="non_linearity must be one of"):
        AdapterConfig(non_linearity="tanh")
    with pytest.raises(ValueError, match="No default adapter placement"):
        get_peft_model(nn.Sequential(nn.Linear(4, 4)), AdapterConfig())
    with pytest.raises(ValueError, match="leaves no bottleneck"):
        get_peft_model(make_tiny_llama(), AdapterConfig(reduction_factor=64))


def test_bf16_base_gets_fp32_adapters(tiny_inputs):
    peft_model = get_peft_model(make_tiny_llama().to(torch.bfloat16), AdapterConfig(bottleneck_size=4))
    layer = peft_model.base_model.model.layers[0].mlp.down_proj
    assert layer.adapter_down["default"].weight.dtype == torch.float32
    _randomize(peft_model)
    assert _logits(peft_model, tiny_inputs).dtype == torch.bfloat16
