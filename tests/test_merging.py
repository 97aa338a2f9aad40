"""Combining LoRA adapters (peftedu/merging.py) against peft's add_weighted_adapter, and how exact each way is."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch

import peftedu.merging  # noqa: F401
from peftedu.lora import LoraConfig, LoraLinear
from peftedu.peft_model import get_peft_model

from conftest import make_tiny_llama
from test_lora import logits, randomize_adapters

WEIGHTS = {"a": 0.7, "b": -1.3}


def two_adapters(tmp_path, rank_b=4, use_rslora=False, targets_b=("q_proj", "o_proj")):
    """Ours with adapters a (q, v) and b (q, o: q_proj holds both) with random factors, and peft's copy."""
    base = make_tiny_llama()
    ours = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          use_rslora=use_rslora), "a")
    ours.add_adapter("b", LoraConfig(r=rank_b, lora_alpha=16, target_modules=list(targets_b), use_rslora=use_rslora))
    randomize_adapters(ours)
    ours.save_pretrained(tmp_path, selected_adapters=["a", "b"])
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a", adapter_name="a")
    theirs.load_adapter(tmp_path / "b", adapter_name="b")
    return ours.eval(), theirs.eval()


def layer_pairs(ours, theirs, adapter_name):
    """(name, our layer, peft's layer) for every layer holding ``adapter_name``."""
    mine = {n: m for n, m in ours.base_model.named_modules() if isinstance(m, LoraLinear) and adapter_name in m.lora_A}
    peft_layers = {n: m for n, m in theirs.base_model.model.named_modules()
                   if hasattr(m, "lora_A") and adapter_name in m.lora_A}
    assert set(mine) == set(peft_layers)
    return [(n, mine[n], peft_layers[n]) for n in sorted(mine)]


def exact_delta(layer, weights=WEIGHTS):
    """sum_i w_i s_i B_i A_i over the adapters present on this layer."""
    return sum(w * layer.delta_weight(name) for name, w in weights.items() if name in layer.lora_A)


@pytest.mark.parametrize("combination_type, svd_rank", [("cat", None), ("linear", None), ("svd", None),
                                                        ("svd", 8), ("svd", 2)])
def test_same_delta_weights_as_peft(combination_type, svd_rank, tmp_path):
    ours, theirs = two_adapters(tmp_path)
    kwargs = {} if svd_rank is None else {"svd_rank": svd_rank}
    ours.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "mix", combination_type, **kwargs)
    theirs.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "mix", combination_type, **kwargs)
    assert ours.active_adapter == "b"  # the last added adapter stays active, as in peft
    expected_rank = {"cat": 8, "linear": 4, "svd": svd_rank or 4}[combination_type]
    assert ours.peft_config["mix"].r == expected_rank
    worst = 0.0
    for name, mine, reference in layer_pairs(ours, theirs, "mix"):
        assert mine.scaling["mix"] == reference.scaling["mix"] == 1.0
        # B' A' (for svd the factors' signs are arbitrary, their product is not)
        diff = (mine.delta_weight("mix") - reference.get_delta_weight("mix")).abs().max().item()
        worst = max(worst, diff)
        assert diff <= 1e-5, name
        if combination_type != "svd":  # cat and linear: the very same factors
            torch.testing.assert_close(mine.lora_A["mix"].weight, reference.lora_A["mix"].weight, atol=1e-6, rtol=0)
            torch.testing.assert_close(mine.lora_B["mix"].weight, reference.lora_B["mix"].weight, atol=1e-6, rtol=0)
    print(f"{combination_type} svd_rank={svd_rank}: max |delta W - peft| = {worst:.2e}")
    ours.set_adapter("mix")
    theirs.set_adapter("mix")
    inputs = {"input_ids": torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))}
    torch.testing.assert_close(logits(ours, inputs), logits(theirs, inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("combination_type, svd_rank", [("cat", None), ("svd", 8)])
def test_cat_and_full_rank_svd_are_exact(combination_type, svd_rank, tmp_path):
    ours, _ = two_adapters(tmp_path, rank_b=2)  # cat gives rank 4 + 2 = 6; svd_rank 8 >= 6
    ours.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "mix", combination_type, svd_rank=svd_rank)
    for name, layer in ours.base_model.named_modules():
        if isinstance(layer, LoraLinear):
            torch.testing.assert_close(layer.delta_weight("mix"), exact_delta(layer), atol=1e-6, rtol=0)


def test_truncated_svd_is_the_best_low_rank_approximation(tmp_path):
    """svd_rank < sum of ranks: the Frobenius error equals the dropped singular values (Eckart-Young)."""
    ours, _ = two_adapters(tmp_path)
    ours.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "mix", "svd", svd_rank=3)
    layer = ours.base_model.model.layers[0].self_attn.q_proj  # holds a and b: delta W has rank 8
    target = exact_delta(layer)
    singular_values = torch.linalg.svdvals(target)
    error = torch.linalg.norm(layer.delta_weight("mix") - target)
    torch.testing.assert_close(error, singular_values[3:].norm(), atol=1e-5, rtol=1e-4)
    assert error > 1e-2  # a rank-3 adapter cannot hold a rank-8 update


def test_linear_has_cross_terms_unless_one_adapter(tmp_path):
    ours, _ = two_adapters(tmp_path)
    ours.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "mix", "linear")
    both = ours.base_model.model.layers[0].self_attn.q_proj  # a and b: B' A' has cross terms
    assert (both.delta_weight("mix") - exact_delta(both)).abs().max() > 1e-2
    only_a = ours.base_model.model.layers[0].self_attn.v_proj  # a alone: exact
    torch.testing.assert_close(only_a.delta_weight("mix"), exact_delta(only_a), atol=1e-6, rtol=0)
    # one adapter: every combination type is "linear" and exact (peft does the same)
    ours.add_weighted_adapter(["b"], [-2.0], "minus_two_b", "cat")
    assert ours.peft_config["minus_two_b"].r == 4
    layer = ours.base_model.model.layers[1].self_attn.o_proj
    torch.testing.assert_close(layer.delta_weight("minus_two_b"), -2.0 * layer.delta_weight("b"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("combination_type", ["cat", "linear", "svd"])
def test_rslora_adapters_get_their_own_scale(combination_type, tmp_path):
    """rsLoRA scales by alpha / sqrt(r): the new adapter needs lora_alpha = sqrt(r'), not r', to get scaling 1.

    peft copies use_rslora but sets lora_alpha = r', so its combined update is sqrt(r') too large
    (huggingface/peft#3761); its factors are ours, only the scale differs."""
    ours, theirs = two_adapters(tmp_path, use_rslora=True)
    ours.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "mix", combination_type)
    theirs.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "mix", combination_type)
    config = ours.peft_config["mix"]
    assert config.use_rslora and config.lora_alpha == pytest.approx(math.sqrt(config.r))
    for name, mine, reference in layer_pairs(ours, theirs, "mix"):
        assert mine.scaling["mix"] == pytest.approx(1.0)
        product = mine.lora_B["mix"].weight @ mine.lora_A["mix"].weight
        peft_product = reference.lora_B["mix"].weight @ reference.lora_A["mix"].weight
        torch.testing.assert_close(product, peft_product, atol=1e-5, rtol=0)  # same factors
        if reference.scaling["mix"] != 1.0:  # the peft version installed here: sqrt(r') times too large
            assert reference.scaling["mix"] == pytest.approx(math.sqrt(config.r))
        if combination_type == "cat":
            torch.testing.assert_close(mine.delta_weight("mix"), exact_delta(mine), atol=1e-6, rtol=0)
    # saved and loaded by peft, the adapter keeps scaling 1
    ours.save_pretrained(tmp_path / "saved", selected_adapters=["mix"])
    reloaded = peft.PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "saved" / "mix")
    scalings = [m.scaling["default"] for m in reloaded.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert scalings and scalings == pytest.approx([1.0] * len(scalings))


@pytest.mark.parametrize("args, match", [
    (dict(adapters=["a", "zzz"]), r"Unknown adapter 'zzz'; this model has \['a', 'b'\]"),
    (dict(weights=[1.0]), "equal length"),
    (dict(adapter_name="a"), "exists already"),
    (dict(combination_type="ties"), "combination_type='ties' is not supported"),
    (dict(combination_type="linear"), r"equal rank, got r = \[4, 2\]"),
    (dict(combination_type="cat", svd_rank=4), "svd_rank is used by combination_type='svd'"),
    (dict(svd_rank=0), "svd_rank must be a positive integer"),
    (dict(svd_rank=40), r"svd_rank=40 exceeds min\(out, in\) = 32"),
])
def test_bad_input(args, match, tmp_path):
    ours, _ = two_adapters(tmp_path, rank_b=2)
    settings = dict(adapters=["a", "b"], weights=[1.0, 1.0], adapter_name="mix", combination_type="svd")
    settings.update(args)
    with pytest.raises(ValueError, match=match):
        ours.add_weighted_adapter(**settings)
    assert "mix" not in ours.peft_config and "mix" not in str(list(ours.state_dict()))  # nothing left behind


def test_dora_and_modules_to_save_are_refused():
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True), "a")
    model.add_adapter("b", LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="DoRA adapters cannot be combined"):
        model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "mix")
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    with pytest.raises(ValueError, match="modules_to_save cannot be combined"):
        model.add_weighted_adapter(["default"], [1.0], "mix")
