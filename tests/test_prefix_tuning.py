"""Prefix tuning equals HF peft (counts, logits, files), keeps its position convention in forward and
generate, works on BLOOM, and refuses bad input. Also the shape walkthrough and its explorer."""

import copy

import pytest
import torch
from conftest import make_tiny_bloom, make_tiny_llama

import peftedu.prefix_tuning as pt
from peftedu.course.models import build_from_config, load_model_config
from peftedu.peft_model import PeftModel, get_peft_model
from peftedu.course.prefix_shapes import format_walkthrough, prefix_shape_explorer, prefix_shape_walkthrough

peft = pytest.importorskip("peft")
P = 3  # virtual tokens in the tiny-model tests


def ours_and_peft(base, projection=False, p=P):
    config = pt.PrefixTuningConfig(num_virtual_tokens=p, prefix_projection=projection)
    ours = get_peft_model(copy.deepcopy(base), config)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=p, prefix_projection=projection))
    return ours, theirs


def peft_kwargs(model, attention_mask, p):
    """peft adds p to explicit position ids; passing ours - p gives real tokens our positions 0..T-1."""
    if model.config.model_type == "bloom":  # ALiBi: no position ids
        return {}
    return {"position_ids": pt.positions_from_mask(attention_mask) - p}


def assert_close_on_tokens(a, b, attention_mask):
    keep = attention_mask.bool()  # logits at pad positions are meaningless
    torch.testing.assert_close(a[keep], b[keep], atol=1e-5, rtol=0)
    return (a[keep] - b[keep]).abs().max().item()


# ----------------------------------------------------------------------------- counts
@pytest.mark.parametrize("name", ["bloom-1b4-zh", "tinyllama-1.1b", "smollm2-135m"])
@pytest.mark.parametrize("projection", [False, True])
def test_counts_equal_peft_on_meta(name, projection):
    ours, theirs = ours_and_peft(build_from_config(name), projection, p=10)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    mine, ref = ours.peft_config["default"], theirs.peft_config["default"]
    for field in ("num_layers", "token_dim", "num_attention_heads", "encoder_hidden_size"):
        assert getattr(mine, field) == getattr(ref, field), field


def test_source_tutorial_counts_bloom_1b4_zh():
    """Source 002: 983,040 trainable (10 tokens); with projection 205,641,728 of 1,508,753,408."""
    plain = get_peft_model(build_from_config("bloom-1b4-zh"), pt.PrefixTuningConfig(num_virtual_tokens=10))
    assert plain.get_nb_trainable_parameters() == (983_040, 1_304_094_720)
    projected = get_peft_model(build_from_config("bloom-1b4-zh"),
                               pt.PrefixTuningConfig(num_virtual_tokens=10, prefix_projection=True))
    assert projected.get_nb_trainable_parameters() == (205_641_728, 1_508_753_408)


def test_gqa_prefix_has_kv_heads(smollm2):
    model, _ = smollm2()
    ours = get_peft_model(model, pt.PrefixTuningConfig(num_virtual_tokens=4))
    config = ours.peft_config["default"]
    assert (config.num_layers, config.num_attention_heads, config.token_dim) == (30, 3, 192)
    cache = ours.tuner.prefix_cache(ours, batch=2)
    assert tuple(cache.layers[29].keys.shape) == (2, 3, 4, 64)  # (batch, kv heads, p, head_dim)


# ----------------------------------------------------------------------------- parity and files
@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_bloom])
@pytest.mark.parametrize("projection", [False, True])
def test_logits_equal_peft_same_weights(make, projection, tiny_inputs):
    base = make()
    ours, theirs = ours_and_peft(base, projection)
    state = {k.removeprefix("default."): v for k, v in theirs.prompt_encoder.state_dict().items()}
    ours.prompt_encoder["default"].load_state_dict(state)  # same module layout as peft's PrefixEncoder
    a = ours(**tiny_inputs).logits
    b = theirs(**tiny_inputs, **peft_kwargs(base, tiny_inputs["attention_mask"], P)).logits
    print("max abs diff", assert_close_on_tokens(a, b, tiny_inputs["attention_mask"]))
    assert (a - base(**tiny_inputs).logits).abs().max() > 1e-2  # the prefix does change the output


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_bloom])
@pytest.mark.parametrize("projection", [False, True])
def test_files_load_both_ways(make, projection, tiny_inputs, tmp_path):
    base = make()
    ours, theirs = ours_and_peft(base, projection)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "peft")
    reference = ours(**tiny_inputs).logits
    loaded_by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours")
    b = loaded_by_peft(**tiny_inputs, **peft_kwargs(base, tiny_inputs["attention_mask"], P)).logits
    assert_close_on_tokens(reference, b, tiny_inputs["attention_mask"])
    # a file written by peft brings peft's positions along: the very logits of peft's own forward
    loaded_by_us = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft")
    assert loaded_by_us.peft_config["default"].position_convention == "peft"
    assert_close_on_tokens(loaded_by_us(**tiny_inputs).logits, theirs(**tiny_inputs).logits,
                           tiny_inputs["attention_mask"])
    assert not any(t.requires_grad for t in loaded_by_us.parameters())  # loaded for inference
    # ... or, asked for, peftedu's positions: peft's forward agrees once its positions are shifted back by p
    ours_convention = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft", position_convention="peftedu")
    c = theirs(**tiny_inputs, **peft_kwargs(base, tiny_inputs["attention_mask"], P)).logits
    assert_close_on_tokens(ours_convention(**tiny_inputs).logits, c, tiny_inputs["attention_mask"])
    # a file written by peftedu keeps peftedu's positions, and peft reads its config without a warning
    assert PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").peft_config["default"] \
        .position_convention == "peftedu"
    assert "position_convention" not in (tmp_path / "ours" / "adapter_config.json").read_text()


def test_smollm2_logits_equal_peft(smollm2, tmp_path):
    model, tokenizer = smollm2()
    ours = get_peft_model(model, pt.PrefixTuningConfig(num_virtual_tokens=5))
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(smollm2()[0], tmp_path)
    batch = tokenizer(["The capital of France is", "Hi"], return_tensors="pt", padding=True, padding_side="left")
    assert batch["attention_mask"][1, 0] == 0  # left-padded (the shared tokenizer is not changed)
    a = ours(**batch).logits
    b = theirs(**batch, **peft_kwargs(ours.base_model, batch["attention_mask"], 5)).logits
    print("SmolLM2 max abs diff", assert_close_on_tokens(a, b, batch["attention_mask"]))


def test_projected_file_loads_for_inference_only(tmp_path):
    ours = get_peft_model(make_tiny_llama(), pt.PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=True))
    ours.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="projected prefix"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path, is_trainable=True)
    plain = PeftModel.from_pretrained(make_tiny_llama(), tmp_path)
    assert plain.prompt_encoder["default"].transform is None


# ----------------------------------------------------------------------------- positions and generate
@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_bloom])
def test_generate_agrees_with_forward_and_padding(make, tiny_inputs):
    ours = get_peft_model(make(), pt.PrefixTuningConfig(num_virtual_tokens=P))
    logits = ours(**tiny_inputs).logits[:, -1]
    out = ours.generate(**tiny_inputs, max_new_tokens=4, do_sample=False, output_scores=True,
                        return_dict_in_generate=True)
    torch.testing.assert_close(out.scores[0], logits, atol=1e-5, rtol=0)
    assert torch.equal(out.sequences[:, 7], logits.argmax(-1))
    for row in range(2):  # left-padded batch == one prompt at a time, unpadded
        keep = tiny_inputs["attention_mask"][row].bool()
        alone = ours.generate(input_ids=tiny_inputs["input_ids"][row:row + 1, keep], max_new_tokens=4, do_sample=False)
        assert torch.equal(alone[0, -4:], out.sequences[row, -4:])


def test_generate_with_beams_and_several_sequences(tiny_inputs):
    ours = get_peft_model(make_tiny_llama(), pt.PrefixTuningConfig(num_virtual_tokens=P))
    out = ours.generate(**tiny_inputs, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    assert out.shape == (4, 10)
    torch.manual_seed(0)
    sampled = ours.generate(**tiny_inputs, max_new_tokens=3, num_return_sequences=3, do_sample=True)
    assert sampled.shape == (6, 10)


def test_positions_are_counted_from_the_mask(tiny_inputs):
    ours = get_peft_model(make_tiny_llama(), pt.PrefixTuningConfig(num_virtual_tokens=P))
    default = ours(**tiny_inputs).logits
    explicit = ours(**tiny_inputs, position_ids=pt.positions_from_mask(tiny_inputs["attention_mask"])).logits
    torch.testing.assert_close(default, explicit, atol=0, rtol=0)
    shifted = ours(**tiny_inputs, position_ids=pt.positions_from_mask(tiny_inputs["attention_mask"]) + P).logits
    assert (shifted - default).abs().max() > 1e-3  # positions matter: queries meet unrotated prefix keys


def test_what_peft_0_21_2_does_with_transformers_5_24(tiny_inputs):
    """Documents the reference: forward puts real tokens at p..p+T-1; generate drops the prefix on Llama
    (its past_key_values lose to generate's own cache) and crashes on BLOOM with a padded batch."""
    base = make_tiny_llama()
    ours, theirs = ours_and_peft(base)
    theirs.prompt_encoder["default"].load_state_dict(
        {k.removeprefix("default."): v for k, v in ours.prompt_encoder.state_dict().items()})
    input_ids = torch.randint(3, 128, (2, 6))
    shifted = torch.arange(6).unsqueeze(0) + P
    torch.testing.assert_close(theirs(input_ids=input_ids).logits,
                               ours(input_ids=input_ids, position_ids=shifted).logits, atol=1e-5, rtol=0)
    out = theirs.generate(input_ids=input_ids, max_new_tokens=1, do_sample=False, output_scores=True,
                          return_dict_in_generate=True)
    torch.testing.assert_close(out.scores[0], base(input_ids=input_ids).logits[:, -1], atol=1e-5, rtol=0)
    assert (out.scores[0] - theirs(input_ids=input_ids).logits[:, -1]).abs().max() > 1e-2
    _, bloom = ours_and_peft(make_tiny_bloom())
    with pytest.raises(RuntimeError):
        bloom.generate(**tiny_inputs, max_new_tokens=1, do_sample=False)


# ----------------------------------------------------------------------------- training and adapters
def test_only_the_prefix_trains(tiny_inputs):
    ours = get_peft_model(make_tiny_bloom(), pt.PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=True))
    labels = tiny_inputs["input_ids"].masked_fill(tiny_inputs["attention_mask"] == 0, -100)
    ours(**tiny_inputs, labels=labels).loss.backward()
    trained = {n for n, t in ours.named_parameters() if t.grad is not None and t.grad.abs().sum() > 0}
    assert trained == {n for n, _ in ours.prompt_encoder.named_parameters(prefix="prompt_encoder")}


def test_zero_init_and_disable_and_second_adapter(tiny_inputs):
    base = make_tiny_llama()
    ours = get_peft_model(copy.deepcopy(base), pt.PrefixTuningConfig(num_virtual_tokens=P, init_weights="zero"))
    assert ours.prompt_encoder["default"].embedding.weight.abs().sum() == 0
    first = ours(**tiny_inputs).logits
    ours.add_adapter("other", pt.PrefixTuningConfig(num_virtual_tokens=2))
    assert (ours(**tiny_inputs).logits - first).abs().max() > 1e-3
    assert [n for n, t in ours.named_parameters() if t.requires_grad] == ["prompt_encoder.other.embedding.weight"]
    ours.set_adapter("default")
    torch.testing.assert_close(ours(**tiny_inputs).logits, first)
    with ours.disable_adapter():
        torch.testing.assert_close(ours(**tiny_inputs).logits, base(**tiny_inputs).logits)


# ----------------------------------------------------------------------------- errors
def test_bad_input_is_refused(tiny_inputs):
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        pt.PrefixTuningConfig(num_virtual_tokens=0)
    with pytest.raises(ValueError, match="init_weights"):
        pt.PrefixTuningConfig(num_virtual_tokens=2, init_weights="gaussian")
    with pytest.raises(ValueError, match="token_dim=8 in the config, but this model has 16"):
        get_peft_model(make_tiny_llama(), pt.PrefixTuningConfig(num_virtual_tokens=2, token_dim=8))
    ours = get_peft_model(make_tiny_llama(), pt.PrefixTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="fills the key/value cache itself"):
        ours(**tiny_inputs, past_key_values=ours.tuner.prefix_cache(ours, 2))
    with pytest.raises(ValueError, match="use_cache=True"):
        ours.generate(**tiny_inputs, max_new_tokens=2, use_cache=False)


class NoCacheLM(torch.nn.Module):
    """A causal LM whose forward takes no key/value cache."""

    def __init__(self):
        super().__init__()
        self.config = make_tiny_llama().config
        self.embed = torch.nn.Embedding(128, 32)

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.embed(input_ids)


def test_model_without_cache_is_refused():
    with pytest.raises(ValueError, match="takes no key/value cache"):
        get_peft_model(NoCacheLM(), pt.PrefixTuningConfig(num_virtual_tokens=2))


# ----------------------------------------------------------------------------- the shape walkthrough
def test_walkthrough_on_smollm2_gqa(smollm2):
    model, _ = smollm2()
    steps = {s.name: s.shape for s in prefix_shape_walkthrough(model, batch=2, seq_len=5, num_virtual_tokens=4)}
    assert steps["Q"] == (2, 9, 5, 64) and steps["K"] == (2, 3, 5, 64)
    assert steps["prefix parameter"] == (4, 30 * 2 * 192)
    assert steps["P_K (layer 0)"] == (2, 3, 4, 64) and steps["K' = [P_K; K]"] == (2, 3, 9, 64)
    assert steps["K' per query head"] == (2, 9, 9, 64)
    assert steps["scores"] == steps["A"] == (2, 9, 5, 9)
    assert steps["O = A V'"] == (2, 9, 5, 64) and steps["output"] == (2, 5, 576)


def test_walkthrough_on_bloom_meta_and_explorer():
    steps = prefix_shape_walkthrough("bloom-1b4-zh", batch=3, seq_len=7, num_virtual_tokens=10)
    names = [s.name for s in steps]
    assert names[0] == "x" and names[-1] == "output" and "K' per query head" not in names  # no GQA
    shapes = dict((s.name, s.shape) for s in steps)
    assert shapes["prefix parameter"] == (10, 98_304) and "983,040 parameters" in steps[4].explanation
    assert shapes["scores"] == (3, 16, 7, 17) and shapes["output"] == (3, 7, 2048)
    assert "scores" in format_walkthrough(steps)
    from_config = {s.name: s.shape for s in prefix_shape_walkthrough(load_model_config("tinyllama-1.1b"))}
    assert from_config["K"] == (2, 4, 5, 64) and from_config["K' per query head"] == (2, 32, 9, 64)
    with pytest.raises(ValueError, match="seq_len"):
        prefix_shape_walkthrough("bloom-1b4-zh", seq_len=0)
    widget = prefix_shape_explorer(["bloom-1b4-zh", "smollm2-135m"])
    table = widget.children[1]
    assert "bloom-1b4-zh: N=2, T=5, p=4" in table.value and "white-space: pre" in table.value  # no wrapping
    static = widget._repr_mimebundle_()  # what a notebook stores: the widget, and text for static viewers
    assert "application/vnd.jupyter.widget-view+json" in static
    assert static["text/plain"].startswith("bloom-1b4-zh: N=2, T=5, p=4") and "VBox" not in static["text/plain"]
    assert static["text/plain"].endswith("the controls need a running kernel.") and "<pre" in static["text/html"]
    arch, p, _, _ = widget.children[0].children
    p.value = 6
    arch.value = "smollm2-135m"
    assert "(2, 9, 5, 11)" in table.value  # scores (N, h, T, p + T)
    assert "bloom-1b4-zh: N=2, T=5, p=4" in widget._repr_mimebundle_()["text/plain"]  # static: the default


def test_prefix_from_text_is_the_cache_of_reading_the_text_first(smollm2):
    """A prefix made from text gives what the model computes when it reads that text before the input."""
    from peftedu.prefix_tuning import prefix_from_text

    model, tokenizer = smollm2()
    text, p = "Classify the topic of the sentence as sports, cooking, travel or technology.", 6
    flat = prefix_from_text(model, tokenizer, text, p)
    prefixed = get_peft_model(model, pt.PrefixTuningConfig(num_virtual_tokens=p))
    with torch.no_grad():
        prefixed.prompt_encoder["default"].embedding.weight.copy_(flat)
        x = tokenizer("The match ended in a draw.", return_tensors="pt")["input_ids"]
        text_ids = torch.tensor([tokenizer(text)["input_ids"][:p]])
        with prefixed.disable_adapter():
            read_first = prefixed(input_ids=torch.cat([text_ids, x], dim=1)).logits[:, p:]
        with_prefix = prefixed(input_ids=x, attention_mask=torch.ones_like(x)).logits
    torch.testing.assert_close(with_prefix, read_first, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"has \d tokens; num_virtual_tokens=6"):
        prefix_from_text(model, tokenizer, "sports cooking travel", 6)


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_bloom])
def test_peft_positions_hold_in_generate_too(make):
    """Under position_convention="peft" the first generated token's scores are the forward's last logits, as
    peft's own generate would give if it kept the prefix (scripts/peft_generation_bug.py: it drops it)."""
    ours = get_peft_model(make(), pt.PrefixTuningConfig(num_virtual_tokens=P, position_convention="peft")).eval()
    input_ids = torch.randint(3, 128, (2, 6))
    with torch.no_grad():
        out = ours.generate(input_ids=input_ids, max_new_tokens=1, do_sample=False, output_scores=True,
                            return_dict_in_generate=True)
        torch.testing.assert_close(out.scores[0], ours(input_ids=input_ids).logits[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_bloom])
def test_attention_layers_and_projections(make):
    """One attention module per layer; q/k/v give each layer's own Q, K, V (BLOOM: its fused projection split per
    head as [q | k | v], exactly what BloomAttention._reshape does)."""
    from peftedu.course.prefix_shapes import attention_layers, attention_projections

    model = make()
    layers = attention_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    q, k, v, out = attention_projections(layers[-1])
    x = torch.randn(2, 5, model.config.hidden_size)
    if model.config.model_type == "bloom":
        expected = layers[-1]._reshape(layers[-1].query_key_value(x))  # 3 x (N, h, T, d_h)
        got = [f(x).view(2, 5, layers[-1].num_heads, -1).transpose(1, 2) for f in (q, k, v)]
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
        assert out is layers[-1].dense
    else:
        assert (q, k, v, out) == (layers[-1].q_proj, layers[-1].k_proj, layers[-1].v_proj, layers[-1].o_proj)
    with pytest.raises(ValueError, match="not an attention module"):
        attention_projections(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="No attention layer"):
        attention_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
