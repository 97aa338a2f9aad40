"""DoRA (peftedu/dora.py) against HF peft: same logits, same gradients, same counts, merging."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

import peftedu.dora  # noqa: F401
from peftedu.dora import DoraMagnitude
from peftedu.lora import LoraConfig, LoraLinear
from peftedu.course.models import build_from_config
from peftedu.peft_model import PeftModel, get_peft_model

from conftest import make_tiny_bloom, make_tiny_llama
from test_lora import logits, max_diff, peft_copy, randomize_adapters

TARGETS = ["q_proj", "v_proj", "down_proj"]


def dora_pair(base, tmp_path, targets=TARGETS, **config):
    """Ours with non-trivial A, B and m, and peft's copy of the same adapter (trainable)."""
    ours = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                          use_dora=True, **config))
    randomize_adapters(ours, std=0.05)  # lora_A, lora_B and lora_magnitude_vector all move away from init
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    return ours, theirs


def adapter_grads(model) -> dict[str, torch.Tensor]:
    """{name without the wrapper prefix: grad}: peft names have one more ``model.`` level than ours."""
    prefix = "base_model.model." if isinstance(model, peft.PeftModel) else "base_model."
    return {n.removeprefix(prefix): p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_magnitude_starts_at_row_norms_and_logits_are_unchanged(tiny_inputs):
    base = make_tiny_llama()
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=TARGETS, use_dora=True)).eval()
    layer = model.base_model.model.layers[1].mlp.down_proj
    assert isinstance(layer.lora_magnitude_vector["default"], DoraMagnitude)
    magnitude = layer.lora_magnitude_vector["default"].weight
    assert magnitude.shape == (32,) and magnitude.requires_grad
    torch.testing.assert_close(magnitude, layer.base_layer.weight.norm(dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, tiny_inputs), logits(base, tiny_inputs), atol=1e-6, rtol=0)


def test_same_logits_and_gradients_as_peft_tiny_llama(tiny_inputs, tmp_path):
    ours, theirs = dora_pair(make_tiny_llama(), tmp_path)
    labels = tiny_inputs["input_ids"].masked_fill(tiny_inputs["attention_mask"] == 0, -100)
    out_ours, out_theirs = ours(**tiny_inputs, labels=labels), theirs(**tiny_inputs, labels=labels)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, atol=1e-5, rtol=0)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    grads_ours, grads_theirs = adapter_grads(ours), adapter_grads(theirs)
    assert set(grads_ours) == set(grads_theirs)
    assert {n.split(".")[-3] for n in grads_ours} == {"lora_A", "lora_B", "lora_magnitude_vector"}
    for name, grad in grads_ours.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, grads_theirs[name], atol=1e-6, rtol=1e-5)


def test_same_outputs_with_dropout_in_training_mode(tiny_inputs, tmp_path):
    """With LoRA dropout active, x W^T is recomputed from the dropped-out input (the other branch)."""
    ours, theirs = dora_pair(make_tiny_llama(), tmp_path, lora_dropout=0.3)
    ours.train(), theirs.train()
    torch.manual_seed(7)
    train_ours = ours(**tiny_inputs).logits
    torch.manual_seed(7)  # same dropout masks: both draw them in the same order
    train_theirs = theirs(**tiny_inputs).logits
    torch.testing.assert_close(train_ours, train_theirs, atol=1e-5, rtol=0)
    ours.eval()
    assert max_diff(train_ours, logits(ours, tiny_inputs)) > 1e-3  # dropout did something


def test_bias_is_not_rescaled_bloom(tiny_inputs, tmp_path):
    """BLOOM's linear layers have biases: DoRA rescales x W^T only, as peft does."""
    base = make_tiny_bloom()
    with torch.no_grad():  # random init leaves biases at 0, which would hide a wrong bias handling
        for name, param in base.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    ours, theirs = dora_pair(base, tmp_path, targets=["query_key_value", "dense_4h_to_h"])
    ours.eval(), theirs.eval()
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=1e-5, rtol=0)
    # the docstring's equation, on one layer: y = g * (x W^T + s x A^T B^T) + b,  g = m / ||W + s B A||_c
    layer = ours.base_model.transformer.h[0].self_attention.query_key_value
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    m, s = layer.lora_magnitude_vector["default"].weight, layer.scaling["default"]
    x = torch.randn(5, 32)
    gain = m / (W + s * B @ A).norm(dim=1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), gain * (x @ W.T + s * x @ A.T @ B.T) + b, atol=1e-5, rtol=0)


def test_same_logits_and_gradients_as_peft_smollm2(smollm2, tmp_path):
    base, tokenizer = smollm2()
    ours, theirs = dora_pair(base, tmp_path, targets=["q_proj", "v_proj"])
    batch = tokenizer(["Human: 2 + 2?\n\nAssistant: 4"], return_tensors="pt")
    out_ours = ours(**batch, labels=batch["input_ids"])
    out_theirs = theirs(**batch, labels=batch["input_ids"])
    diff = max_diff(out_ours.logits, out_theirs.logits)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    grads_theirs = adapter_grads(theirs)
    grad_diff = max(max_diff(g, grads_theirs[n]) for n, g in adapter_grads(ours).items())
    print(f"SmolLM2 DoRA max |logits - peft| = {diff:.2e}, max |grad - peft| = {grad_diff:.2e}")
    assert diff <= 1e-5 and grad_diff <= 1e-5
    assert max_diff(out_ours.logits, logits(base, batch)) > 1e-2


def test_peft_dora_adapter_loads_into_peftedu(tiny_inputs, tmp_path):
    base = make_tiny_llama(seed=4)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["k_proj", "o_proj"], use_dora=True, init_lora_weights=False)).eval()
    with torch.no_grad():  # a trained magnitude is no longer ||W + sBA||
        for name, param in theirs.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1.3)
    theirs.save_pretrained(tmp_path)
    ours = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=1e-5, rtol=0)


def test_bf16_base_matches_peft_exactly(tiny_inputs, tmp_path):
    """fp32 A, B and m on a bf16 base (as peft); the norm and the update in fp32, rounded once."""
    ours, theirs = dora_pair(make_tiny_llama().to(torch.bfloat16), tmp_path)
    ours.eval(), theirs.eval()
    assert {p.dtype for n, p in ours.named_parameters() if "lora_" in n} == {torch.float32}
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=0, rtol=0)
    ours.merge_adapter()
    theirs.merge_adapter()
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=0, rtol=0)


def test_mixed_batch_with_two_dora_adapters(tiny_inputs):
    """peft refuses adapter_names= with DoRA; here each row's DoRA update is computed from that row alone."""
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=TARGETS, use_dora=True), "one")
    model.add_adapter("two", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    randomize_adapters(model, std=0.05)
    model.eval()
    mixed = logits(model, tiny_inputs, adapter_names=["two", "one"])
    for row, name in enumerate(["two", "one"]):
        model.set_adapter(name)
        torch.testing.assert_close(mixed[row], logits(model, tiny_inputs)[row], atol=1e-6, rtol=0)


def test_merge_unmerge(tiny_inputs, tmp_path):
    ours, _ = dora_pair(make_tiny_llama(), tmp_path)
    ours.eval()
    before = {n: p.detach().clone() for n, p in ours.named_parameters() if "base_layer" in n}
    expected = logits(ours, tiny_inputs)
    ours.merge_adapter()
    torch.testing.assert_close(logits(ours, tiny_inputs), expected, atol=5e-4, rtol=0)
    # merged W = g * (W + sBA): each row's norm is now the magnitude m
    layer = ours.base_model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(layer.base_layer.weight.norm(dim=1), layer.lora_magnitude_vector["default"].weight,
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="merged already"):
        ours.merge_adapter()
    ours.unmerge_adapter()
    for name, param in ours.named_parameters():
        if name in before:
            torch.testing.assert_close(param, before[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(ours, tiny_inputs), expected, atol=1e-6, rtol=0)
    plain = ours.merge_and_unload()
    assert not any(isinstance(m, LoraLinear) for m in plain.modules())
    torch.testing.assert_close(logits(plain, tiny_inputs), expected, atol=5e-4, rtol=0)


@pytest.mark.parametrize("name, targets", [
    ("tinyllama-1.1b", ["q_proj", "v_proj"]),
    ("tinyllama-1.1b", "all-linear"),
    ("bloom-1b4-zh", ["query_key_value", "dense_4h_to_h"]),
])
def test_counts_meta_models(name, targets):
    """On the meta device nothing is computed (no norm), only shapes: counts equal peft's."""
    config = dict(r=8, target_modules=targets, use_dora=True)
    ours = get_peft_model(build_from_config(name), LoraConfig(**config))
    theirs = peft.get_peft_model(build_from_config(name), peft.LoraConfig(**config))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    lora_only = get_peft_model(build_from_config(name), LoraConfig(r=8, target_modules=targets))
    outputs = sum(m.out_features for m in ours.modules() if isinstance(m, LoraLinear))
    assert ours.get_nb_trainable_parameters()[0] == lora_only.get_nb_trainable_parameters()[0] + outputs


def test_counts_smollm2(smollm2):
    base, _ = smollm2()
    config = dict(r=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    ours = get_peft_model(copy.deepcopy(base), LoraConfig(**config)).get_nb_trainable_parameters()
    theirs = peft.get_peft_model(base, peft.LoraConfig(**config)).get_nb_trainable_parameters()
    assert ours == theirs
    assert ours[0] == 30 * (8 * (1152 + 768) + 576 + 192)  # LoRA + one magnitude per output row
