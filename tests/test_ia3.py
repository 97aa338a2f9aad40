"""(IA)^3: which side is scaled, same logits as HF peft (files interchangeable both ways), counts, merging."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

import peftedu.ia3 as ia3
from peftedu.course.models import build_from_config
from peftedu.peft_model import PeftModel, get_peft_model

from conftest import make_tiny_bloom, make_tiny_llama

MAKERS = {"llama": make_tiny_llama, "bloom": make_tiny_bloom}


def _randomize(peft_model, seed=0, adapter="default"):
    """Non-trivial vectors (all ones would make every comparison pass trivially)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in ia3.IA3Tuner().layers(peft_model.base_model):
            if adapter in layer.ia3_l:
                layer.ia3_l[adapter].copy_(0.5 + torch.rand_like(layer.ia3_l[adapter]))


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("name, expected", [("smollm2-135m", 57_600), ("tinyllama-1.1b", 135_168),
                                            ("bloom-1b4-zh", 344_064)])
def test_counts_equal_peft_and_the_tutorial(name, expected):
    ours = get_peft_model(build_from_config(name), ia3.IA3Config())
    theirs = peft.get_peft_model(build_from_config(name), peft.IA3Config(task_type="CAUSAL_LM"))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert ours.get_nb_trainable_parameters()[0] == expected  # bloom: 24 x (6144 + 8192), the tutorial's count


def test_defaults_follow_peft_per_architecture():
    llama = get_peft_model(make_tiny_llama(), ia3.IA3Config())
    assert llama.peft_config["default"].target_modules == ["k_proj", "v_proj", "down_proj"]
    assert llama.peft_config["default"].feedforward_modules == ["down_proj"]
    bloom = get_peft_model(make_tiny_bloom(), ia3.IA3Config())
    wrapped = {n.split(".", 3)[-1]: m.is_feedforward for n, m in bloom.base_model.named_modules()
               if isinstance(m, ia3.IA3Linear)}
    assert wrapped == {"self_attention.query_key_value": False, "mlp.dense_4h_to_h": True}


def test_feedforward_scales_the_input_others_the_output():
    peft_model = get_peft_model(make_tiny_llama(), ia3.IA3Config())
    _randomize(peft_model)
    layers = peft_model.base_model.model.layers[0]
    x = torch.randn(3, 5, 32)
    v_proj = layers.self_attn.v_proj  # (out, 1): y = (x W^T) * l
    assert v_proj.ia3_l["default"].shape == (v_proj.out_features, 1)
    torch.testing.assert_close(v_proj(x), v_proj.base_layer(x) * v_proj.ia3_l["default"].flatten())
    down = layers.mlp.down_proj  # (1, in): y = (x * l) W^T
    x = torch.randn(3, 5, 64)
    assert down.ia3_l["default"].shape == (1, down.in_features)
    torch.testing.assert_close(down(x), down.base_layer(x * down.ia3_l["default"].flatten()))
    # peft's layers have the same shapes
    theirs = peft.get_peft_model(make_tiny_llama(), peft.IA3Config(task_type="CAUSAL_LM"))
    theirs_layer = theirs.base_model.model.model.layers[0]
    assert theirs_layer.mlp.down_proj.ia3_l["default"].shape == down.ia3_l["default"].shape
    assert theirs_layer.self_attn.v_proj.ia3_l["default"].shape == v_proj.ia3_l["default"].shape


@pytest.mark.parametrize("kind", ["llama", "bloom"])
def test_same_logits_as_peft_both_ways(kind, tiny_inputs, tmp_path):
    make = MAKERS[kind]
    ours = get_peft_model(make(), ia3.IA3Config())
    with torch.no_grad():  # step 0: the base model
        torch.testing.assert_close(_logits(ours, tiny_inputs), _logits(make(), tiny_inputs), rtol=0, atol=0)
    _randomize(ours)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path / "ours")
    torch.testing.assert_close(_logits(ours, tiny_inputs), _logits(theirs, tiny_inputs), rtol=0, atol=1e-5)
    # the other way: peft's random vectors, saved by peft, loaded here
    theirs = peft.get_peft_model(make(), peft.IA3Config(task_type="CAUSAL_LM", init_ia3_weights=False))
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = PeftModel.from_pretrained(make(), tmp_path / "theirs")
    torch.testing.assert_close(_logits(loaded, tiny_inputs), _logits(theirs, tiny_inputs), rtol=0, atol=1e-5)


def test_same_logits_as_peft_on_smollm2(smollm2, tmp_path):
    model, tokenizer = smollm2()
    theirs_base, _ = smollm2()
    inputs = tokenizer(["(IA)3 rescales keys, values and the MLP.", "Short"], return_tensors="pt", padding=True)
    ours = get_peft_model(model, ia3.IA3Config())
    _randomize(ours, seed=3)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(theirs_base, tmp_path)
    diff = (_logits(ours, inputs) - _logits(theirs, inputs)).abs().max().item()
    print(f"max |logits diff| vs peft on SmolLM2-135M: {diff:.2e}")
    assert diff <= 1e-5
    with ours.disable_adapter():  # the vectors do change the model, so the comparison means something
        assert (_logits(ours, inputs) - _logits(theirs, inputs)).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["llama", "bloom"])
def test_merge_multiplies_and_unmerge_divides(kind, tiny_inputs, tmp_path):
    make = MAKERS[kind]
    ours = get_peft_model(make(), ia3.IA3Config())
    _randomize(ours)
    expected = _logits(ours, tiny_inputs)
    layer = next(m for m in ia3.IA3Tuner().layers(ours.base_model) if not m.is_feedforward)
    weight, bias = layer.base_layer.weight.detach().clone(), layer.base_layer.bias
    bias = None if bias is None else bias.detach().clone()
    ours.merge_adapter()
    scale = layer.ia3_l["default"].detach()
    torch.testing.assert_close(layer.base_layer.weight, weight * scale)  # rows scaled: (out, 1)
    if bias is not None:  # BLOOM: the bias is scaled with the output
        torch.testing.assert_close(layer.base_layer.bias, bias * scale.flatten())
    torch.testing.assert_close(_logits(ours, tiny_inputs), expected, rtol=0, atol=1e-5)
    ours.unmerge_adapter()
    torch.testing.assert_close(layer.base_layer.weight, weight, rtol=1e-6, atol=1e-7)
    # merged weights equal peft's merge of the same vectors
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path)
    mine, reference = ours.merge_and_unload(), theirs.merge_and_unload()
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(mine.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(_logits(mine, tiny_inputs), expected, rtol=0, atol=1e-5)


def test_a_zero_scale_still_unmerges_exactly():
    ours = get_peft_model(make_tiny_llama(), ia3.IA3Config())
    layer = ours.base_model.model.layers[0].mlp.down_proj
    weight = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.ia3_l["default"][0, :3] = 0.0
    ours.merge_adapter()
    assert torch.all(layer.base_layer.weight[:, :3] == 0)
    ours.unmerge_adapter()
    assert torch.equal(layer.base_layer.weight, weight)


def test_mixed_batch_and_disable(tiny_inputs):
    ours = get_peft_model(make_tiny_llama(), ia3.IA3Config())
    ours.add_adapter("other", ia3.IA3Config())
    _randomize(ours, seed=1, adapter="default")
    _randomize(ours, seed=2, adapter="other")
    other = _logits(ours, tiny_inputs)
    ours.set_adapter("default")
    default = _logits(ours, tiny_inputs)
    with ours.disable_adapter():
        base = _logits(ours, tiny_inputs)
    mixed = ours(**tiny_inputs, adapter_names=["__base__", "other"]).logits.detach()
    torch.testing.assert_close(mixed[0], base[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], other[1], rtol=0, atol=1e-6)
    assert not torch.allclose(default, other) and not torch.allclose(default, base)
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("ia3_l.default") for n in trainable)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="must also be a target"):
        ia3.IA3Config(target_modules=["k_proj"], feedforward_modules=["down_proj"])
    with pytest.raises(ValueError, match="match none of the targeted layers"):
        get_peft_model(make_tiny_llama(), ia3.IA3Config(target_modules=".*k_proj", feedforward_modules=".*down"))
    with pytest.raises(ValueError, match="No default IA3 target_modules"):
        get_peft_model(nn.Sequential(nn.Linear(4, 4)), ia3.IA3Config())
    with pytest.raises(ValueError, match="matched no module"):
        get_peft_model(make_tiny_llama(), ia3.IA3Config(target_modules=["qkv"], feedforward_modules=[]))
    with pytest.raises(ValueError, match="feedforward_modules must be"):
        ia3.IA3Config(feedforward_modules=7)


def test_bf16_base_keeps_fp32_vectors_and_merges(tiny_inputs):
    ours = get_peft_model(make_tiny_llama().to(torch.bfloat16), ia3.IA3Config())
    _randomize(ours)
    assert ours.base_model.model.layers[0].mlp.down_proj.ia3_l["default"].dtype == torch.float32
    before = _logits(ours, tiny_inputs)
    merged = ours.merge_and_unload()
    assert merged.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    torch.testing.assert_close(_logits(merged, tiny_inputs), before, rtol=0.05, atol=0.05)


def _tiny_qwen2(seed: int = 0):
    """A random 2-layer Qwen2: biases on q/k/v, untied embeddings, GQA 4:1 (peft's IA3 default scales q_proj)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)).eval()


def test_default_targets_per_architecture_and_a_clear_error():
    from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as PEFT_FF,
                                      TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as PEFT_TARGETS)

    for model_type in ("llama", "qwen2", "bloom", "mistral"):
        assert ia3.default_ia3_targets(model_type) == (PEFT_TARGETS[model_type], PEFT_FF[model_type])
    assert ia3.default_ia3_targets(make_tiny_bloom()) == (["query_key_value", "mlp.dense_4h_to_h"],
                                                          ["mlp.dense_4h_to_h"])
    with pytest.raises(ValueError, match="No default IA3 target_modules for model_type 'gpt2'.*known"):
        ia3.default_ia3_targets("gpt2")


def test_qwen2_same_logits_as_peft_and_merges_the_bias(tiny_inputs):
    ours = get_peft_model(_tiny_qwen2(), ia3.IA3Config())
    theirs = peft.get_peft_model(_tiny_qwen2(), peft.IA3Config(task_type="CAUSAL_LM"))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    assert ours.get_nb_trainable_parameters()[0] == 2 * (32 + 8 + 64)  # q_proj out, v_proj out, down_proj in
    _randomize(ours)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "ia3_l" in name:
                param.copy_(ours.get_parameter(name.replace("base_model.model.", "", 1)))
    torch.testing.assert_close(_logits(ours, tiny_inputs), _logits(theirs, tiny_inputs), rtol=0, atol=1e-5)
    q_proj = ours.base_model.model.layers[0].self_attn.q_proj
    bias, scale = q_proj.base_layer.bias.detach().clone(), q_proj.ia3_l["default"].detach().flatten()
    unmerged = _logits(ours, tiny_inputs)
    merged = ours.merge_and_unload()
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.bias, bias * scale)  # the output's bias scaled
    torch.testing.assert_close(_logits(merged, tiny_inputs), unmerged, rtol=0, atol=1e-5)
