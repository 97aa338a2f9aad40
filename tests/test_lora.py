"""LoRA and rsLoRA (peftedu/lora.py) against HF peft: same logits, same counts, same files, same API."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
from torch import nn

import peftedu.lora  # noqa: F401  (registers the LORA method)
from peftedu.lora import LoraConfig, LoraLinear
from peftedu.course.models import build_from_config
from peftedu.peft_model import PeftModel, get_peft_model
from peftedu.tuners import AdapterLayer

from conftest import make_tiny_bloom, make_tiny_llama


# ----------------------------------------------------------------------------- helpers
def randomize_adapters(model: nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Give every adapter tensor (lora_A, lora_B, modules_to_save copies ...) non-trivial values.

    B = 0 at initialisation would make every comparison pass trivially."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=generator) * std)


def peft_copy(ours: PeftModel, base: nn.Module, directory, adapter_name: str = "default") -> peft.PeftModel:
    """HF peft's model for the same base and the same adapter (saved by us, loaded by peft)."""
    ours.save_pretrained(directory)
    return peft.PeftModel.from_pretrained(copy.deepcopy(base), directory, adapter_name=adapter_name).eval()


def wrapped_names(model: nn.Module) -> set[str]:
    """Names of the LoRA-wrapped layers, the same for peftedu and peft (peft adds one ``model.`` level)."""
    prefix = "base_model.model." if isinstance(model, peft.PeftModel) else "base_model."
    return {name.removeprefix(prefix) for name, module in model.named_modules() if hasattr(module, "lora_A")}


def logits(model, inputs, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture
def smol_inputs(smollm2):
    _, tokenizer = smollm2()
    tokenizer.padding_side = "left"
    return dict(tokenizer(["Human: name a colour.\n\nAssistant: ", "Hi"], return_tensors="pt", padding=True))


# ----------------------------------------------------------------------------- parity with peft
TINY_CONFIGS = {
    "list": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True),
    "regex": dict(r=2, lora_alpha=16, target_modules=r".*\.1\.self_attn\.(k|o)_proj"),
    "all-linear": dict(r=3, lora_alpha=6, target_modules="all-linear"),
    "modules_to_save": dict(r=4, lora_alpha=4, target_modules=["gate_proj"], modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_same_logits_as_peft_tiny_llama(kind, tiny_inputs, tmp_path):
    base = make_tiny_llama()
    ours = get_peft_model(copy.deepcopy(base), LoraConfig(**TINY_CONFIGS[kind])).eval()
    randomize_adapters(ours)
    theirs = peft_copy(ours, base, tmp_path)
    assert wrapped_names(ours) == wrapped_names(theirs)  # peft reads our config and targets the same layers
    reference = logits(theirs, tiny_inputs)
    torch.testing.assert_close(logits(ours, tiny_inputs), reference, atol=1e-5, rtol=0)
    assert max_diff(reference, logits(base, tiny_inputs)) > 1e-2  # the adapter does change the output


@pytest.mark.parametrize("use_rslora", [False, True])
def test_same_logits_as_peft_smollm2(use_rslora, smollm2, smol_inputs, tmp_path):
    base, _ = smollm2()
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], use_rslora=use_rslora)
    ours = get_peft_model(copy.deepcopy(base), config).eval()
    randomize_adapters(ours, std=0.02)
    theirs = peft_copy(ours, base, tmp_path)
    reference = logits(theirs, smol_inputs)
    diff = max_diff(logits(ours, smol_inputs), reference)
    print(f"SmolLM2 LoRA (rslora={use_rslora}) max |logits - peft| = {diff:.2e}")
    assert diff <= 1e-5
    assert max_diff(reference, logits(base, smol_inputs)) > 1e-2


def test_peft_adapter_loads_into_peftedu(tiny_inputs, tmp_path):
    """The other direction: an adapter trained and saved by HF peft runs here with the same logits."""
    base = make_tiny_llama(seed=2)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "up_proj"], use_rslora=True,
                             modules_to_save=["lm_head"], init_lora_weights=False)  # B random: non-trivial
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    theirs.save_pretrained(tmp_path)
    ours = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert ours.peft_config["default"].use_rslora and ours.peft_config["default"].modules_to_save == ["lm_head"]
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in ours.parameters())  # loaded for inference, like peft
    trainable = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def test_bf16_base_gets_fp32_adapters_and_peft_logits(tiny_inputs, tmp_path):
    """As peft (autocast_adapter_dtype=True): fp32 A and B on a bf16 base, the update added in fp32 and
    rounded once -- bit-identical logits and merged weights."""
    base = make_tiny_llama().to(torch.bfloat16)
    ours = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    assert {p.dtype for n, p in ours.named_parameters() if "lora_" in n} == {torch.float32}
    randomize_adapters(ours)
    theirs = peft_copy(ours, base, tmp_path)
    out = logits(ours, tiny_inputs)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, logits(theirs, tiny_inputs), atol=0, rtol=0)
    ours.merge_adapter()
    theirs.merge_adapter()
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=0, rtol=0)


# ----------------------------------------------------------------------------- parameter counts
def _counts(model_or_name, **config):
    def build():
        return build_from_config(model_or_name) if isinstance(model_or_name, str) else copy.deepcopy(model_or_name)

    ours = get_peft_model(build(), LoraConfig(**config)).get_nb_trainable_parameters()
    theirs = peft.get_peft_model(build(), peft.LoraConfig(**config)).get_nb_trainable_parameters()
    return ours, theirs


def test_counts_bloom_source_tutorial():
    """The source tutorial's LoRA on bloom-1b4-zh (layers 1, 10-19 and the word embeddings): 95,225,856."""
    ours, theirs = _counts("bloom-1b4-zh", target_modules=r".*\.1.*query_key_value",
                           modules_to_save=["word_embeddings"])
    assert ours == theirs
    assert ours[0] == 95_225_856


@pytest.mark.parametrize("name, config", [
    ("tinyllama-1.1b", dict(r=8, target_modules=["q_proj", "v_proj"])),
    ("tinyllama-1.1b", dict(r=16, target_modules="all-linear")),
    ("bloom-1b4-zh", dict(r=8, target_modules=["query_key_value", "dense_h_to_4h", "dense_4h_to_h"])),
])
def test_counts_meta_models(name, config):
    ours, theirs = _counts(name, **config)
    assert ours == theirs


def test_counts_smollm2(smollm2):
    base, _ = smollm2()
    ours, theirs = _counts(base, r=8, target_modules=["q_proj", "v_proj"])
    assert ours == theirs
    # 30 layers x 8 x ((576 + 576) + (576 + 192)): q_proj is 576 -> 576, v_proj 576 -> 192 (3 kv heads)
    assert ours == (30 * 8 * (1152 + 768), 134_515_008 + 30 * 8 * (1152 + 768))


# ----------------------------------------------------------------------------- conventions
def test_b_is_zero_at_init_so_logits_are_unchanged(tiny_inputs):
    base = make_tiny_llama()
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules="all-linear")).eval()
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert all(torch.all(layer.lora_B["default"].weight == 0) for layer in layers)
    assert all(layer.lora_A["default"].weight.abs().sum() > 0 for layer in layers)  # A is random
    torch.testing.assert_close(logits(model, tiny_inputs), logits(base, tiny_inputs), atol=0, rtol=0)


@pytest.mark.parametrize("use_rslora, expected", [(False, 16 / 4), (True, 16 / math.sqrt(4))])
def test_scaling_alpha_over_r_or_sqrt_r(use_rslora, expected):
    """LoRA scales B A x by alpha / r; rsLoRA by alpha / sqrt(r) -- checked on what the layer outputs."""
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj"], use_rslora=use_rslora)
    assert config.scaling == pytest.approx(expected)
    model = get_peft_model(make_tiny_llama(), config)
    randomize_adapters(model)
    layer = model.base_model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 32)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        update = layer(x) - layer.base_layer(x)
    torch.testing.assert_close(update, expected * x @ A.T @ B.T, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- merging
def test_merge_unmerge_and_merge_twice_refused(smollm2, smol_inputs):
    base, _ = smollm2()
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "o_proj"])).eval()
    randomize_adapters(model, std=0.02)
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    unmerged = logits(model, smol_inputs)
    model.merge_adapter()
    merged = logits(model, smol_inputs)
    print(f"SmolLM2 LoRA merged vs unmerged max diff = {max_diff(merged, unmerged):.2e}")
    torch.testing.assert_close(merged, unmerged, atol=5e-4, rtol=0)
    changed = [n for n, p in model.named_parameters() if n in weights_before and not torch.equal(p, weights_before[n])]
    assert len(changed) == 2 * 30  # q_proj and o_proj in every layer hold W + s B A now
    with pytest.raises(ValueError, match="merged already"):
        model.merge_adapter()
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in weights_before:
            torch.testing.assert_close(param, weights_before[name], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="Nothing is merged"):
        model.unmerge_adapter()


def test_merge_and_unload_gives_a_plain_model_that_saves_and_reloads(tiny_inputs, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules="all-linear")).eval()
    randomize_adapters(model)
    expected = logits(model, tiny_inputs)
    plain = model.merge_and_unload()
    assert type(plain) is LlamaForCausalLM
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
    assert not any("lora" in n or "base_layer" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(logits(plain, tiny_inputs), expected, atol=1e-5, rtol=0)
    plain.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, tiny_inputs), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- several adapters
def _two_adapters(dtype: torch.dtype = torch.float32):
    model = get_peft_model(make_tiny_llama().to(dtype), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), "first")
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=4, target_modules=["up_proj"]))
    randomize_adapters(model)
    return model.eval()


def test_add_set_delete_and_disable_adapter(tiny_inputs):
    base = make_tiny_llama()
    model = _two_adapters()
    assert model.active_adapter == "second"  # add_adapter activates the new one
    second = logits(model, tiny_inputs)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".second." in n for n in trainable)
    model.set_adapter("first")
    first = logits(model, tiny_inputs)
    assert all(".first." in n for n, p in model.named_parameters() if p.requires_grad)
    assert max_diff(first, second) > 1e-2
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, tiny_inputs), logits(base, tiny_inputs), atol=0, rtol=0)
    torch.testing.assert_close(logits(model, tiny_inputs), first, atol=0, rtol=0)  # back on after the block
    with pytest.raises(ValueError, match=r"Unknown adapter 'third'.*\['first', 'second'\]"):
        model.set_adapter("third")
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter("first", LoraConfig(r=2, target_modules=["q_proj"]))
    model.delete_adapter("second")
    assert list(model.peft_config) == ["first"]
    assert not any("second" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model, tiny_inputs), first, atol=0, rtol=0)
    with pytest.raises(ValueError, match="only adapter"):
        model.delete_adapter("first")
    model.add_adapter("third", LoraConfig(r=2, target_modules=["q_proj"]))
    model.merge_adapter()
    with pytest.raises(ValueError, match="'third' is merged into the base weights"):
        model.delete_adapter("third")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_batch_equals_single_adapter_rows(tiny_inputs, dtype):
    model = _two_adapters(dtype)  # bf16: a bf16 base with fp32 adapters; each row's update rounded once
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    inputs = {k: torch.cat([v, v.flip(0)])[:3] for k, v in tiny_inputs.items()}  # 3 rows
    names = ["first", "__base__", "second"]
    mixed = logits(model, inputs, adapter_names=names)
    for row, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                expected = logits(model, inputs)
        else:
            model.set_adapter(name)
            expected = logits(model, inputs)
        torch.testing.assert_close(mixed[row], expected[row], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"unknown adapters \['nope'\]"):
        model(**inputs, adapter_names=["first", "nope", "second"])


def test_generate_with_adapter_names():
    model = _two_adapters()
    input_ids = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    mixed = model.generate(input_ids=input_ids, adapter_names=["second", "first"], **settings)
    for row, name in enumerate(["second", "first"]):
        model.set_adapter(name)
        single = model.generate(input_ids=input_ids[row:row + 1], **settings)
        assert torch.equal(mixed[row], single[0])


# ----------------------------------------------------------------------------- saving and loading
def test_save_and_load_roundtrip_two_adapters(tiny_inputs, tmp_path):
    model = _two_adapters()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "second" / "adapter_model.safetensors").exists()  # peft's layout: non-default in a sub-folder
    expected = logits(model, tiny_inputs)
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "second", adapter_name="second").eval()
    torch.testing.assert_close(logits(loaded, tiny_inputs), expected, atol=0, rtol=0)


def test_loading_onto_a_base_of_another_shape_names_the_tensor(tmp_path):
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    other = make_tiny_llama(hidden_size=64, intermediate_size=96)
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.q_proj\.lora_A\.weight has shape \(4, 32\)"):
        PeftModel.from_pretrained(other, tmp_path)


def test_bloom_fused_qkv_parity(tiny_inputs, tmp_path):
    base = make_tiny_bloom()
    ours = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"],
                                                          modules_to_save=["word_embeddings"])).eval()
    randomize_adapters(ours)
    theirs = peft_copy(ours, base, tmp_path)
    torch.testing.assert_close(logits(ours, tiny_inputs), logits(theirs, tiny_inputs), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- bad input
def test_target_modules_matching_nothing_lists_names():
    with pytest.raises(ValueError, match=r"matched no module.*q_proj"):
        get_peft_model(make_tiny_llama(), LoraConfig(target_modules=["query_key_value"]))
    with pytest.raises(ValueError, match=r"matched no module.*query_key_value"):
        get_peft_model(make_tiny_bloom(), LoraConfig(target_modules=r".*q_proj"))


@pytest.mark.parametrize("bad, match", [
    (dict(r=0), "r must be a positive integer"),
    (dict(r=-2), "r must be a positive integer"),
    (dict(lora_alpha=0), "lora_alpha must be a positive number"),
    (dict(lora_dropout=1.0), r"lora_dropout must be in \[0, 1\)"),
    (dict(target_modules=None), "target_modules is required"),
    (dict(bias="all"), "bias='all' is not supported"),
])
def test_bad_config_values(bad, match):
    settings = dict(r=4, target_modules=["q_proj"])
    settings.update(bad)
    with pytest.raises(ValueError, match=match):
        LoraConfig(**settings)


def test_a_plain_module_is_called_with_its_own_positional_input():
    """As in peft: LoRA on an nn.Sequential, called as model(x), equals the same layers called directly."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    wrapped = get_peft_model(copy.deepcopy(net), LoraConfig(r=2, target_modules=["0"]))
    assert torch.equal(wrapped(x), net(x))  # B = 0: unchanged at the start
    theirs = peft.get_peft_model(copy.deepcopy(net), peft.LoraConfig(r=2, target_modules=["0"]))
    assert wrapped(x).shape == theirs(x).shape


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-1.5b", "bloom-1b4-zh"])
def test_default_lora_targets_follow_the_architecture(name):
    """The query/value choice is HF peft's default table; every name matches linear layers of that architecture."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    from peftedu.lora import default_lora_targets
    from peftedu.peft_model import get_peft_model

    model = build_from_config(name)
    qv, attention = default_lora_targets(model, "qv"), default_lora_targets(model, "attention")
    assert qv == PEFT_TARGETS[model.config.model_type] and set(qv) < set(attention)
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=attention))
    n_layers = model.config.num_hidden_layers
    assert sum(isinstance(m, LoraLinear) for m in wrapped.modules()) == len(attention) * n_layers
    with pytest.raises(ValueError, match="No default LoRA target_modules for model_type 'gpt9'"):
        default_lora_targets("gpt9")
    with pytest.raises(ValueError, match="which must be"):
        default_lora_targets(model, "mlp")
