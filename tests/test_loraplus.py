"""LoRA+ (peftedu/loraplus.py): the same parameter groups and learning rates as peft's optimizer."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer

from peftedu.lora import LoraConfig
from peftedu.loraplus import create_loraplus_optimizer
from peftedu.peft_model import get_peft_model

from conftest import make_tiny_bloom, make_tiny_llama


def describe(optimizer, model) -> list[tuple[float, float, set[str]]]:
    """Each group as (lr, weight_decay, names of its parameters without the wrapper prefix)."""
    prefix = "base_model.model." if isinstance(model, peft.PeftModel) else "base_model."
    names = {id(p): n.removeprefix(prefix) for n, p in model.named_parameters()}
    return [(group["lr"], group["weight_decay"], {names[id(p)] for p in group["params"]})
            for group in optimizer.param_groups]


CASES = {
    "lora+lm_head": (make_tiny_llama, dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])),
    "dora": (make_tiny_llama, dict(target_modules="all-linear", use_dora=True)),
    "bloom+layernorm": (make_tiny_bloom, dict(target_modules=["query_key_value"],
                                              modules_to_save=["word_embeddings_layernorm"])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_groups_and_learning_rates_as_peft(case):
    make_base, config = CASES[case]
    base = make_base()
    ours = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, **config))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, **config))
    opt_ours = create_loraplus_optimizer(ours, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16,
                                         weight_decay=0.01, betas=(0.9, 0.99))
    opt_theirs = peft_create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16,
                                                loraplus_weight_decay=0.01, betas=(0.9, 0.99))
    groups = describe(opt_ours, ours)
    assert groups == describe(opt_theirs, theirs)
    assert [lr for lr, _, _ in groups] == pytest.approx([2e-4, 1e-6, 2e-4 * 16, 2e-4 * 16])
    assert opt_ours.defaults["betas"] == (0.9, 0.99)
    same_with_peft_name = create_loraplus_optimizer(ours, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16,
                                                    loraplus_weight_decay=0.01, betas=(0.9, 0.99))
    assert describe(same_with_peft_name, ours) == groups
    everything = set().union(*(names for _, _, names in groups))
    assert everything == {n.removeprefix("base_model.") for n, p in ours.named_parameters() if p.requires_grad}
    assert all("lora_B" not in n for n in groups[0][2]) and all("lora_A" not in n for n in groups[2][2])


def test_which_tensor_goes_where():
    """lora_B and 1-D tensors (DoRA's m, LayerNorm weights) get eta_A * ratio; LayerNorm/bias: no decay."""
    model = get_peft_model(make_tiny_bloom(), LoraConfig(r=4, target_modules=["query_key_value"], use_dora=True,
                                                         modules_to_save=["word_embeddings_layernorm"]))
    group_a, embedding, group_b, group_b_no_decay = describe(
        create_loraplus_optimizer(model, torch.optim.SGD, lr=0.1, loraplus_lr_ratio=4, weight_decay=0.5), model)
    assert {n.split(".")[-3] for n in group_a[2]} == {"lora_A"}
    assert not embedding[2]
    assert {n.split(".")[-3] for n in group_b[2]} == {"lora_B", "lora_magnitude_vector"}
    assert group_b_no_decay[2] == {"transformer.word_embeddings_layernorm.modules_to_save.default.weight",
                                   "transformer.word_embeddings_layernorm.modules_to_save.default.bias"}
    assert (group_b[1], group_b_no_decay[1]) == (0.5, 0.0)


def test_one_step_moves_b_by_ratio_times_more():
    """With SGD, B's step is exactly ratio x what a single learning rate would give."""
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    inputs = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    layer = model.base_model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)
    before = {k: getattr(layer, k)["default"].weight.detach().clone() for k in ("lora_A", "lora_B")}
    optimizer = create_loraplus_optimizer(model, torch.optim.SGD, lr=0.01, loraplus_lr_ratio=8)
    model(input_ids=inputs, labels=inputs).loss.backward()
    grads = {k: getattr(layer, k)["default"].weight.grad.clone() for k in before}
    optimizer.step()
    for key, lr in (("lora_A", 0.01), ("lora_B", 0.08)):
        torch.testing.assert_close(getattr(layer, key)["default"].weight, before[key] - lr * grads[key])


@pytest.mark.parametrize("kwargs, match", [
    (dict(loraplus_lr_ratio=0), "loraplus_lr_ratio must be a positive number"),
    (dict(lr=-1.0), "lr must be a positive number"),
    (dict(weight_decay=-0.1), "weight_decay must be a number >= 0"),
    (dict(weight_decay=0.1, loraplus_weight_decay=0.1), "not both"),
])
def test_bad_values(kwargs, match):
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    settings = dict(lr=1e-3, loraplus_lr_ratio=16)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=match):
        create_loraplus_optimizer(model, torch.optim.AdamW, **settings)


def test_needs_lora_adapters():
    model = make_tiny_llama()
    with pytest.raises(ValueError, match="LoRA\\+ needs trainable LoRA adapters"):
        create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
    for param in model.parameters():
        param.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to optimize"):
        create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
