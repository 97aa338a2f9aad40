"""AdaLoRA (peftedu/adalora.py) against HF peft: logits, loss with the orthogonal term, the rank allocator
step by step, rank_pattern files both ways, counts, merging and errors."""

from __future__ import annotations

import copy
import dataclasses
import json

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import peftedu.adalora  # noqa: F401  (registers the ADALORA method)
import peftedu.lora  # noqa: F401
from peftedu.adalora import AdaLoraConfig, SVDLinear, adalora_step_hook, orthogonal_regularization
from peftedu.config import PeftConfig
from peftedu.lora import LoraConfig
from peftedu.course.models import build_from_config
from peftedu.peft_model import PeftModel, get_peft_model

from conftest import make_tiny_llama

TINY = dict(target_modules=["q_proj", "v_proj", "down_proj"], init_r=6, target_r=2, lora_alpha=16,
            total_step=20, tinit=3, tfinal=3, deltaT=2)


# ----------------------------------------------------------------------------- helpers
def randomize(model: PeftModel, seed: int = 0, std: float = 0.3) -> None:
    """Non-trivial P, Λ, Q (Λ = 0 at init would make every comparison pass trivially)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.tuner.named_adapter_tensors(model, model.active_adapter).items():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * (1.0 if key.endswith("lora_E") else std))


def peft_tensors(model: peft.PeftModel) -> dict[str, torch.Tensor]:
    """peft's live adapter parameters under the names both libraries save them as."""
    return {name.replace(".default", ""): p for name, p in model.named_parameters() if p.requires_grad}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- config
def test_config_fields_and_defaults_match_peft(tmp_path):
    ours = AdaLoraConfig(target_modules=["q_proj"], total_step=10)
    theirs = peft.AdaLoraConfig(target_modules=["q_proj"], total_step=10)
    shared = {f.name for f in dataclasses.fields(PeftConfig)} | {"target_modules"}  # peft: a set
    for field in dataclasses.fields(ours):
        if field.name not in shared:
            assert getattr(ours, field.name) == getattr(theirs, field.name), field.name
    theirs.save_pretrained(tmp_path)  # peft's file (dozens of LoRA fields at their defaults) reads here
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, AdaLoraConfig) and loaded.total_step == 10 and loaded.target_modules == ["q_proj"]


# ----------------------------------------------------------------------------- layer, init, logits
def test_init_matches_peft_conventions(tiny_inputs):
    base = make_tiny_llama()
    model = get_peft_model(copy.deepcopy(base), AdaLoraConfig(**TINY))
    layer = model.base_model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, SVDLinear)
    assert layer.lora_A["default"].shape == (6, 32) and layer.lora_E["default"].shape == (6, 1)
    assert layer.lora_B["default"].shape == (32, 6)
    assert torch.count_nonzero(layer.lora_E["default"]) == 0  # Λ = 0: the model starts as the base model
    assert 0.01 < layer.lora_B["default"].std().item() < 0.03  # P, Q ~ normal(0, 0.02)
    assert layer.ranknum["default"].item() == 6.0 and not layer.ranknum["default"].requires_grad
    assert not any("ranknum" in key for key in model.state_dict_to_save())  # peft never saves ranknum
    torch.testing.assert_close(logits(model, tiny_inputs), logits(base, tiny_inputs), atol=0, rtol=0)


def test_logits_and_loss_match_peft_both_ways(tiny_inputs, tmp_path):
    base = make_tiny_llama()
    labels = tiny_inputs["input_ids"].masked_fill(tiny_inputs["attention_mask"] == 0, -100)
    # ours -> peft
    ours = get_peft_model(copy.deepcopy(base), AdaLoraConfig(**TINY)).eval()
    randomize(ours)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours", is_trainable=True).eval()
    diff = max_diff(logits(ours, tiny_inputs), logits(base, tiny_inputs))
    assert diff > 1e-2, diff  # the adapter really changes the output
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=1e-5, rtol=0)
    ours_out, theirs_out = ours(**tiny_inputs, labels=labels), theirs(**tiny_inputs, labels=labels)
    torch.testing.assert_close(ours_out.loss, theirs_out.loss, atol=1e-6, rtol=0)  # orthogonal term included
    plain = base(**tiny_inputs, labels=labels).loss
    assert ours_out.loss.item() - plain.item() > 0.1  # the regulariser is a visible part of the loss
    # peft -> ours
    # (task_type matters in peft: without it peft's plain PeftModel skips AdaLoraModel.forward and its R term)
    config = peft.AdaLoraConfig(**TINY, task_type="CAUSAL_LM", init_lora_weights=False)  # P, Λ, Q all random
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    theirs.save_pretrained(tmp_path / "theirs")
    ours = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs").eval()
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours(**tiny_inputs, labels=labels).loss, theirs(**tiny_inputs, labels=labels).loss,
                               atol=1e-5, rtol=0)
    assert ours.get_nb_trainable_parameters()[1] == theirs.get_nb_trainable_parameters()[1]


def test_orthogonal_regularization_is_the_mean_frobenius_norm():
    model = get_peft_model(make_tiny_llama(), AdaLoraConfig(**TINY))
    randomize(model)
    norms = []
    for layer in (m for m in model.modules() if isinstance(m, SVDLinear)):
        P, Q = layer.lora_B["default"], layer.lora_A["default"]
        norms += [((P.T @ P - torch.eye(6)) ** 2).sum().sqrt(), ((Q @ Q.T - torch.eye(6)) ** 2).sum().sqrt()]
    assert len(norms) == 2 * 3 * 2  # 2 layers x 3 targets x (P, Q)
    torch.testing.assert_close(orthogonal_regularization(model, "default"), torch.stack(norms).mean())


def test_logits_and_counts_match_peft_on_smollm2(smollm2, tmp_path):
    base, tokenizer = smollm2()
    tokenizer.padding_side = "left"
    inputs = dict(tokenizer(["Human: name a colour.\n\nAssistant: ", "Hi"], return_tensors="pt", padding=True))
    config = dict(target_modules=["q_proj", "v_proj"], init_r=12, target_r=4, lora_alpha=32, total_step=100)
    ours = get_peft_model(copy.deepcopy(base), AdaLoraConfig(**config)).eval()
    # 30 layers x 12 x (576 + 1 + 576 for q_proj, 576 + 1 + 192 for v_proj); ranknum: 60 frozen scalars
    expected_counts = (30 * 12 * (1153 + 769), 134_515_008 + 30 * 12 * (1153 + 769) + 60)
    assert ours.get_nb_trainable_parameters() == expected_counts
    randomize(ours, std=0.05)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(base, tmp_path, is_trainable=True).eval()
    assert theirs.get_nb_trainable_parameters() == expected_counts
    ours_logits, theirs_logits = logits(ours, inputs), logits(theirs, inputs)
    with theirs.disable_adapter():
        assert max_diff(ours_logits, logits(theirs, inputs)) > 0.1  # non-trivial adapter
    print(f"SmolLM2 AdaLoRA max |logits diff| vs peft: {max_diff(ours_logits, theirs_logits):.2e}")
    torch.testing.assert_close(ours_logits, theirs_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, targets", [
    ("smollm2-135m", ["q_proj", "v_proj"]),
    ("tinyllama-1.1b", ["q_proj", "v_proj"]),
    ("tinyllama-1.1b", "all-linear"),
    ("bloom-1b4-zh", ["query_key_value", "dense_h_to_4h", "dense_4h_to_h"]),
])
def test_counts_match_peft_on_meta_models(name, targets):
    """Same totals. peft quirk: moving ``ranknum`` to a base on another device (meta, cuda) re-wraps it as a
    new Parameter with requires_grad=True, so on meta peft counts one extra "trainable" scalar per layer."""
    config = dict(target_modules=targets, total_step=1000)
    ours = get_peft_model(build_from_config(name), AdaLoraConfig(**config))
    theirs = peft.get_peft_model(build_from_config(name), peft.AdaLoraConfig(**config))
    n_layers = sum(isinstance(m, SVDLinear) for m in ours.modules())
    (ours_trainable, ours_total), (theirs_trainable, theirs_total) = \
        ours.get_nb_trainable_parameters(), theirs.get_nb_trainable_parameters()
    assert ours_total == theirs_total
    assert ours_trainable + n_layers == theirs_trainable
    assert sum(p.numel() for n, p in theirs.named_parameters() if p.requires_grad and "ranknum" in n) == n_layers


# ----------------------------------------------------------------------------- the rank allocator
@pytest.mark.filterwarnings("ignore:Adapter 'default'.*invalid shape")  # peft: layers pruned to rank 0
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys")  # peft's LoRA check, not AdaLoRA's
def test_rank_allocator_agrees_with_peft_step_by_step(tmp_path):
    """Same weights, same gradients, 20 steps: same budget, same zeroed Λ entries, same rank_pattern, same files."""
    base = make_tiny_llama()
    config = dict(TINY, target_modules="all-linear")  # 14 layers: budget 84 -> 28
    ours = get_peft_model(copy.deepcopy(base), AdaLoraConfig(**config))
    randomize(ours, std=0.2)
    ours.save_pretrained(tmp_path / "start")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "start", is_trainable=True)
    ours_t, theirs_t = ours.tuner.named_adapter_tensors(ours, "default"), peft_tensors(theirs)
    assert ours_t.keys() == theirs_t.keys()
    opt_ours = torch.optim.SGD(ours_t.values(), lr=0.5)
    opt_theirs = torch.optim.SGD(theirs_t.values(), lr=0.5)
    hook = adalora_step_hook(ours)
    generator = torch.Generator().manual_seed(0)
    budgets, kept = [], []
    for step in range(1, 21):
        batch = torch.randint(3, 128, (4, 12), generator=generator)
        ours(input_ids=batch, labels=batch).loss.backward()
        for key, tensor in ours_t.items():  # peft gets exactly our gradients
            theirs_t[key].grad = tensor.grad.clone()
        opt_ours.step()
        opt_theirs.step()
        budgets.append(hook(step) if step % 2 else ours.update_and_allocate(step))  # both entry points
        theirs.base_model.update_and_allocate(step)
        peft_budget, _ = theirs.base_model.rankallocator.budget_schedule(step)
        assert budgets[-1] == peft_budget, step
        for key, tensor in ours_t.items():
            if key.endswith("lora_E"):
                assert torch.equal(tensor == 0, theirs_t[key] == 0), (step, key)
            torch.testing.assert_close(tensor, theirs_t[key], atol=0, rtol=0)
        kept.append(sum(int(torch.count_nonzero(t)) for k, t in ours_t.items() if k.endswith("lora_E")))
        opt_ours.zero_grad()
        opt_theirs.zero_grad()
    # cubic schedule: 84 until tinit = 3, falls to 28 at total_step - tfinal = 17, stays there; pruning
    # (every deltaT = 2 steps, then every step) keeps exactly the budget; in between, SGD revives Λ entries
    for step, budget, n_kept in zip(range(1, 21), budgets, kept):
        assert budget == (84 if step <= 3 else 28 if step >= 17 else int(56 * (1 - (step - 3) / 14) ** 3 + 28))
        if step >= 17 or (step > 3 and step % 2 == 0):
            assert n_kept == budget, step
    assert budgets[3] == 72 and kept[4] == 84
    ours_pattern = ours.peft_config["default"].rank_pattern
    theirs_pattern = {k.replace(".default", ""): v for k, v in theirs.peft_config["default"].rank_pattern.items()}
    assert ours_pattern == theirs_pattern and sum(map(sum, ours_pattern.values())) == 28
    assert len(set(map(sum, ours_pattern.values()))) > 1  # ranks differ between layers: that is the point

    # saving: both write only the kept triplets -- identical files; and each loads the other's
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    ours_file, theirs_file = load_file(tmp_path / "ours/adapter_model.safetensors"), \
        load_file(tmp_path / "theirs/adapter_model.safetensors")
    assert ours_file.keys() == theirs_file.keys()
    for key in ours_file:
        torch.testing.assert_close(ours_file[key], theirs_file[key], atol=0, rtol=0)
    assert json.loads((tmp_path / "ours/adapter_config.json").read_text())["rank_pattern"] == ours_pattern
    inputs = {"input_ids": torch.randint(3, 128, (2, 9), generator=generator)}
    ours_loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "theirs")
    theirs_loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    reference = logits(theirs, inputs)
    for model in (ours, ours_loaded, theirs_loaded):
        torch.testing.assert_close(logits(model, inputs), reference, atol=1e-5, rtol=0)
    assert ours_loaded.get_nb_trainable_parameters() == theirs_loaded.get_nb_trainable_parameters()
    assert sum(m.lora_A["default"].shape[0] for m in ours_loaded.modules() if isinstance(m, SVDLinear)) == 28


# ----------------------------------------------------------------------------- merging
def test_merge_unmerge_and_unload_match_peft(tiny_inputs, tmp_path):
    base = make_tiny_llama()
    ours = get_peft_model(copy.deepcopy(base), AdaLoraConfig(**TINY)).eval()
    randomize(ours)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    layer = ours.base_model.model.layers[1].mlp.down_proj
    peft_layer = theirs.base_model.model.model.layers[1].mlp.down_proj
    torch.testing.assert_close(layer.delta_weight("default"), peft_layer.get_delta_weight("default"),
                               atol=1e-7, rtol=0)
    expected, weight = logits(ours, tiny_inputs), layer.base_layer.weight.detach().clone()
    ours.merge_adapter()
    torch.testing.assert_close(layer.base_layer.weight, weight + layer.delta_weight("default"))
    torch.testing.assert_close(logits(ours, tiny_inputs), expected, atol=1e-5, rtol=0)
    ours.unmerge_adapter()
    torch.testing.assert_close(layer.base_layer.weight, weight, atol=1e-6, rtol=0)
    unloaded = ours.merge_and_unload()
    assert not any(isinstance(m, SVDLinear) for m in unloaded.modules())
    torch.testing.assert_close(logits(unloaded, tiny_inputs), logits(theirs, tiny_inputs), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("overrides, message", [
    (dict(total_step=None), "total_step"),
    (dict(total_step=0), "total_step"),
    (dict(target_r=8, init_r=4), "target_r=8 > init_r=4"),
    (dict(tinit=10, tfinal=10, total_step=20), "no budgeting phase"),
    (dict(beta1=1.0), "beta1"),
    (dict(orth_reg_weight=-0.1), "orth_reg_weight"),
    (dict(r=16), "init_r"),
    (dict(target_modules=None), "target_modules"),
    (dict(deltaT=0), "deltaT"),
])
def test_bad_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        AdaLoraConfig(**{**TINY, **overrides})


def test_bad_training_calls_raise(tmp_path):
    model = get_peft_model(make_tiny_llama(), AdaLoraConfig(**TINY))
    with pytest.raises(ValueError, match="no gradient"):
        model.update_and_allocate(1)  # before backward / after zero_grad
    with pytest.raises(ValueError, match="no rank_pattern"):
        model.update_and_allocate(19)  # final phase without any allocation before
    with pytest.raises(ValueError, match="mixed batches"):  # peft's AdaLoRA has none either
        model(input_ids=torch.tensor([[5, 6]]), adapter_names=["default"])
    model.peft_config["default"].rank_pattern = {"model.layers.0.self_attn.k_proj.lora_E": [True] * 6}
    with pytest.raises(ValueError, match="names no AdaLoRA layer"):
        model.save_pretrained(tmp_path / "bad")
    model.peft_config["default"].rank_pattern = None
    model.save_pretrained(tmp_path)
    frozen = PeftModel.from_pretrained(make_tiny_llama(), tmp_path)
    with pytest.raises(ValueError, match="is_trainable=True"):
        frozen.update_and_allocate(1)
    lora = get_peft_model(make_tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    assert not hasattr(lora, "update_and_allocate")  # a loop may test hasattr(model, "update_and_allocate")
    with pytest.raises(ValueError, match="needs an AdaLoRA model"):
        adalora_step_hook(lora)
    with pytest.raises(ValueError, match="matched no module"):
        get_peft_model(make_tiny_llama(), AdaLoraConfig(**{**TINY, "target_modules": ["qkv"]}))
    assert isinstance(model.base_model.model.embed_tokens, nn.Embedding)


@pytest.mark.parametrize("model_type, targets", [("qwen2", ["q_proj", "v_proj"]), ("bloom", ["query_key_value"])])
def test_logits_and_loss_match_peft_on_qwen2_and_bloom(model_type, targets, tiny_inputs, tmp_path):
    """Notebook 09 wraps peft's default targets of any architecture: biases on q/k/v (Qwen2), a fused
    query_key_value with a bias (BLOOM). The SVD-form layer adds its update to x W^T + b, as peft does."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = {"qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=1, tie_word_embeddings=False),
            "bloom": dict(hidden_size=32, n_layer=2, n_head=4)}[model_type]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, vocab_size=128, **spec)).eval()
    labels = tiny_inputs["input_ids"].masked_fill(tiny_inputs["attention_mask"] == 0, -100)
    config = dict(TINY, target_modules=targets)
    ours = get_peft_model(copy.deepcopy(base), AdaLoraConfig(**config)).eval()
    randomize(ours)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours", is_trainable=True).eval()
    assert max_diff(logits(ours, tiny_inputs), logits(base, tiny_inputs)) > 1e-2  # the adapter changes the output
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours(**tiny_inputs, labels=labels).loss, theirs(**tiny_inputs, labels=labels).loss,
                               atol=1e-5, rtol=0)
    theirs_model = peft.get_peft_model(copy.deepcopy(base), peft.AdaLoraConfig(**config, task_type="CAUSAL_LM"))
    assert ours.get_nb_trainable_parameters()[0] == theirs_model.get_nb_trainable_parameters()[0]
