"""Prompt tuning (peftedu/prompt_tuning.py) against HF peft: same init, logits, tokens, files and counts."""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file

import peftedu.prompt_tuning  # noqa: F401  (registers PROMPT_TUNING)
from peftedu.course.models import build_from_config
from peftedu.peft_model import PeftModel, get_peft_model
from peftedu.prompt_tuning import PromptTuningConfig

from conftest import make_tiny_bloom, make_tiny_llama

INIT_TEXT = "Answer in French, briefly:"


# ----------------------------------------------------------------------------- helpers
def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def randomize_prompt(model, seed: int = 0) -> None:
    """Move every prompt encoder tensor away from its init (so a swapped or lost tensor would show)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.prompt_encoder.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def assert_same_as_peft(ours, theirs, inputs) -> float:
    """Same logits on ``inputs`` (atol 1e-5); returns the max |difference|."""
    mine, reference = logits(ours, inputs), logits(theirs, inputs)
    torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
    return max_diff(mine, reference)


def interop_both_ways(ours, make_base, inputs, tmp_path) -> list[float]:
    """ours -> file -> peft, and peft -> file -> ours: the same logits every way."""
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(make_base(), tmp_path / "ours").eval()
    diffs = [assert_same_as_peft(ours, theirs, inputs)]
    theirs.save_pretrained(tmp_path / "theirs")
    reloaded = PeftModel.from_pretrained(make_base(), tmp_path / "theirs").eval()
    diffs.append(assert_same_as_peft(reloaded, theirs, inputs))
    assert reloaded.get_nb_trainable_parameters()[0] == 0  # loaded for inference, as in peft
    return diffs


@pytest.fixture
def unpadded():
    torch.manual_seed(3)
    return {"input_ids": torch.randint(3, 128, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(num_virtual_tokens=0), "num_virtual_tokens must be a positive"),
    (dict(num_virtual_tokens=-3), "num_virtual_tokens must be a positive"),
    (dict(), "num_virtual_tokens must be a positive"),
    (dict(num_virtual_tokens=4, prompt_tuning_init="TEXT", tokenizer_name_or_path="x"), "prompt_tuning_init_text"),
    (dict(num_virtual_tokens=4, prompt_tuning_init="TEXT", prompt_tuning_init_text="hi"), "tokenizer"),
    (dict(num_virtual_tokens=4, prompt_tuning_init="WORDS"), "one of"),
    (dict(num_virtual_tokens=4, tokenizer_kwargs={"use_fast": True}), "only used with"),
    (dict(num_virtual_tokens=4, num_transformer_submodules=2), "decoder-only"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PromptTuningConfig(**kwargs)


def test_token_dim_of_another_model_is_an_error():
    with pytest.raises(ValueError, match="width 32"):
        get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=2, token_dim=576))


def test_mixed_batch_is_a_clear_error(tiny_inputs):
    model = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=3))
    model.add_adapter("other", PromptTuningConfig(num_virtual_tokens=3))
    with pytest.raises(ValueError, match="layer method"):
        model(**tiny_inputs, adapter_names=["default", "other"])


# ----------------------------------------------------------------------------- the forward convention
def test_forward_prepends_prompt_mask_labels_and_positions(tiny_inputs):
    p = 3
    model = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=p))
    seen = {}
    model.base_model.register_forward_pre_hook(lambda module, args, kw: seen.update(kw), with_kwargs=True)
    labels = tiny_inputs["input_ids"].clone()
    model(**tiny_inputs, labels=labels)
    embeds, mask = seen["inputs_embeds"], seen["attention_mask"]
    assert embeds.shape == (2, p + 7, 32)
    torch.testing.assert_close(embeds[:, :p], model.prompt_encoder["default"].embedding.weight.expand(2, -1, -1))
    torch.testing.assert_close(embeds[:, p:], model.base_model.get_input_embeddings()(tiny_inputs["input_ids"]))
    assert mask[:, :p].eq(1).all() and torch.equal(mask[:, p:], tiny_inputs["attention_mask"])
    assert seen["labels"][:, :p].eq(-100).all() and torch.equal(seen["labels"][:, p:], labels)
    # positions: the prompt 0..p-1, then the real tokens p.. whatever the left padding (row 0 has 2 pads)
    assert seen["position_ids"][1].tolist() == list(range(p + 7))
    assert seen["position_ids"][0, :p].tolist() == [0, 1, 2]
    assert seen["position_ids"][0, p + 2:].tolist() == list(range(p, p + 5))


def test_left_padded_rows_get_the_logits_they_get_alone(tiny_inputs):
    model = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=4)).eval()
    batched = logits(model, tiny_inputs)
    alone = logits(model, {"input_ids": tiny_inputs["input_ids"][:1, 2:]})
    torch.testing.assert_close(batched[0, 4 + 2:], alone[0, 4:], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[0, :4], alone[0, :4], atol=1e-5, rtol=0)  # the prompt itself too


def test_given_position_ids_number_real_tokens_from_zero(unpadded):
    model = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=3)).eval()
    positions = torch.arange(6).expand(2, 6)
    torch.testing.assert_close(logits(model, dict(unpadded, position_ids=positions)), logits(model, unpadded))


def test_step_by_step_decoding_with_a_cache_reads_the_prompt_once(unpadded):
    model = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=3)).eval()
    ids, mask = unpadded["input_ids"], unpadded["attention_mask"]
    with torch.no_grad():
        first = model(input_ids=ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
        second = model(input_ids=ids[:, 4:], attention_mask=mask, cache=first.cache)
    torch.testing.assert_close(second.logits, logits(model, unpadded)[:, -2:], atol=1e-5, rtol=0)


def test_only_the_prompt_trains_and_gets_gradients(unpadded):
    model = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=5))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_encoder.default.embedding.weight"]
    model(**unpadded, labels=unpadded["input_ids"]).loss.backward()
    assert model.prompt_encoder["default"].embedding.weight.grad.abs().sum() > 0


def test_disable_adapter_gives_the_base_model(unpadded):
    base = make_tiny_llama()
    model = get_peft_model(copy.deepcopy(base), PromptTuningConfig(num_virtual_tokens=3)).eval()
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, unpadded), logits(base, unpadded))
    assert logits(model, unpadded).shape[1] == 3 + 6


# ----------------------------------------------------------------------------- initialisation
def test_random_init_is_peft_init_for_the_same_seed():
    torch.manual_seed(7)
    theirs = peft.get_peft_model(make_tiny_llama(),
                                 peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6))
    torch.manual_seed(7)
    ours = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=6))
    weight = ours.prompt_encoder["default"].embedding.weight
    assert torch.equal(weight, theirs.prompt_encoder["default"].embedding.weight)
    assert 0.5 < weight.std().item() < 1.5  # nn.Embedding's N(0, 1), not the size of real token rows


@pytest.mark.parametrize("p", [3, 20])  # fewer tokens than the text: cut; more: repeated
def test_text_init_repeats_or_cuts_the_text_tokens(smollm2, p):
    model, tokenizer = smollm2()
    config = PromptTuningConfig(num_virtual_tokens=p, prompt_tuning_init="TEXT", prompt_tuning_init_text=INIT_TEXT,
                                tokenizer=tokenizer)
    ours = get_peft_model(model, config)
    ids = tokenizer(INIT_TEXT)["input_ids"]
    expected_ids = (ids * 5)[:p]
    expected = model.get_input_embeddings().weight[expected_ids]
    assert torch.equal(ours.prompt_encoder["default"].embedding.weight, expected)
    assert config.to_dict()["tokenizer_name_or_path"] == tokenizer.name_or_path and "tokenizer" not in config.to_dict()


def test_sample_vocab_init_takes_rows_of_the_embedding_table():
    config = PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="SAMPLE_VOCAB")
    model = get_peft_model(make_tiny_llama(), config)
    table = model.base_model.get_input_embeddings().weight
    for row in model.prompt_encoder["default"].embedding.weight:
        assert (table == row).all(dim=1).any()


# ----------------------------------------------------------------------------- parity and files
def test_same_logits_and_files_as_peft_tiny_llama(unpadded, tiny_inputs, tmp_path):
    ours = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=4)).eval()
    randomize_prompt(ours)
    diffs = interop_both_ways(ours, make_tiny_llama, unpadded, tmp_path)
    assert max(diffs) <= 1e-5
    # left padding: peft's forward lets the pads shift the real tokens' positions; our padded row
    # equals peft's row alone (= ours alone), the peftedu convention
    theirs = peft.PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "ours").eval()
    alone = logits(theirs, {"input_ids": tiny_inputs["input_ids"][:1, 2:]})
    torch.testing.assert_close(logits(ours, tiny_inputs)[0, 4 + 2:], alone[0, 4:], atol=1e-5, rtol=0)
    assert set(load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))) == {"prompt_embeddings"}


@pytest.mark.parametrize("kind", ["prompt_tuning", "p_tuning"])
def test_a_peft_trained_prompt_gives_peft_outputs_on_left_padded_rows(kind, tiny_inputs, tmp_path):
    """peft's forward counts positions over every slot, pads included; a file peft wrote carries that convention
    into peftedu (position_convention="peft"), a file peftedu wrote keeps peftedu's; either can be asked for."""
    torch.manual_seed(0)
    config = (peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4) if kind == "prompt_tuning" else
              peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16))
    theirs = peft.get_peft_model(make_tiny_llama(), config).eval()
    randomize_prompt(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    reference = logits(peft.PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "peft").eval(), tiny_inputs)
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "peft").eval()
    assert loaded.peft_config["default"].position_convention == "peft"
    torch.testing.assert_close(logits(loaded, tiny_inputs), reference, atol=1e-5, rtol=0)  # pads included
    ours = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "peft", position_convention="peftedu").eval()
    assert max_diff(logits(ours, tiny_inputs)[0, 4 + 2:], reference[0, 4 + 2:]) > 1e-4  # pads shift peft's row (~7e-4)
    alone = logits(ours, {"input_ids": tiny_inputs["input_ids"][:1, 2:]})
    torch.testing.assert_close(logits(ours, tiny_inputs)[0, 4 + 2:], alone[0, 4:], atol=1e-5, rtol=0)
    ours.save_pretrained(tmp_path / "ours")  # peftedu's file records peftedu's convention, out of peft's config
    again = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "ours").eval()
    assert again.peft_config["default"].position_convention == "peftedu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unexpected keyword arguments" warning from peft
        peft.PeftConfig.from_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="position_convention must be one of"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "ours", position_convention="hf")


def test_same_logits_as_peft_tiny_bloom_and_left_padding(unpadded, tiny_inputs, tmp_path):
    """BLOOM has no position ids (ALiBi, counted from the mask): the same conventions hold."""
    ours = get_peft_model(make_tiny_bloom(), PromptTuningConfig(num_virtual_tokens=3)).eval()
    randomize_prompt(ours)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(make_tiny_bloom(), tmp_path).eval()
    assert_same_as_peft(ours, theirs, unpadded)
    alone = logits(theirs, {"input_ids": tiny_inputs["input_ids"][:1, 2:]})
    torch.testing.assert_close(logits(ours, tiny_inputs)[0, 3 + 2:], alone[0, 3:], atol=1e-5, rtol=0)
    batched = ours.generate(**tiny_inputs, max_new_tokens=4, do_sample=False)
    single = ours.generate(input_ids=tiny_inputs["input_ids"][:1, 2:], max_new_tokens=4, do_sample=False)
    assert torch.equal(batched[0, 2:], single[0])


def test_text_init_same_init_logits_and_files_as_peft_smollm2(smollm2, tmp_path):
    model, tokenizer = smollm2()
    base = model  # prompt methods leave the base untouched: every wrapper below shares it
    kwargs = dict(num_virtual_tokens=12, prompt_tuning_init="TEXT", prompt_tuning_init_text=INIT_TEXT,
                  tokenizer_name_or_path=tokenizer.name_or_path)  # a local folder: works offline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(base, peft.PromptTuningConfig(task_type="CAUSAL_LM", **kwargs))
    ours = get_peft_model(model, PromptTuningConfig(**kwargs)).eval()
    assert torch.equal(ours.prompt_encoder["default"].embedding.weight,
                       theirs.prompt_encoder["default"].embedding.weight)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters() == (12 * 576, 134_515_008 + 6912)
    inputs = dict(tokenizer(["Human: name a colour.\n\nAssistant:"], return_tensors="pt"))
    diffs = interop_both_ways(ours, lambda: base, inputs, tmp_path)
    print(f"prompt tuning TEXT init, SmolLM2: max |logit diff| vs peft = {max(diffs):.2e}")


def test_reloaded_prompt_tuning_can_train_on(unpadded, tmp_path):
    ours = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=3)).eval()
    randomize_prompt(ours)
    ours.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trainable"):  # peft refuses ...
        peft.PeftModel.from_pretrained(make_tiny_llama(), tmp_path, is_trainable=True)
    again = PeftModel.from_pretrained(make_tiny_llama(), tmp_path, is_trainable=True).eval()  # ... we need not
    assert again.get_nb_trainable_parameters()[0] == 3 * 32
    torch.testing.assert_close(logits(again, unpadded), logits(ours, unpadded), atol=0, rtol=0)


# ----------------------------------------------------------------------------- generation
def test_batched_left_padded_generation_equals_one_by_one_and_peft_smollm2(smollm2):
    model, tokenizer = smollm2()
    base = model  # prompt methods leave the base untouched: every wrapper below shares it
    ours = get_peft_model(model, PromptTuningConfig(num_virtual_tokens=6, prompt_tuning_init="TEXT",
                                                    prompt_tuning_init_text=INIT_TEXT, tokenizer=tokenizer)).eval()
    texts = ["The capital of Italy is", "Good morning! My name", "1, 2, 3,"]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    pads = batch["attention_mask"].eq(0).sum(dim=1)
    assert pads.max() > 0  # the batch really is left-padded
    padded = int(pads.argmax())
    new = 5
    batched = ours.generate(**batch, max_new_tokens=new, do_sample=False)
    assert torch.equal(batched[:, :-new], batch["input_ids"])  # peft's output: input_ids + new tokens
    singles = [dict(tokenizer([text], return_tensors="pt")) for text in texts]
    alone = [ours.generate(**single, max_new_tokens=new, do_sample=False) for single in singles]
    for row, text in enumerate(texts):
        assert torch.equal(batched[row, -alone[row].shape[1]:], alone[row][0]), text
    # peft's generate for the same weights, on the most padded row alone (peft 0.21.2's cached path is
    # broken with transformers 5.24, see the module docstring: use_cache=False; slow, hence one row)
    theirs = peft.get_peft_model(base, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6))
    theirs.prompt_encoder["default"].load_state_dict(ours.prompt_encoder["default"].state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = theirs.generate(**singles[padded], max_new_tokens=new, do_sample=False, use_cache=False)
    assert torch.equal(alone[padded], reference)
    plain = base.generate(**singles[padded], max_new_tokens=new, do_sample=False)
    assert not torch.equal(alone[padded], plain)  # the prompt changes what is generated
    # max_length counts the real tokens only (peft's meaning)
    assert ours.generate(**singles[0], max_length=singles[0]["input_ids"].shape[1] + 2, do_sample=False).shape[1] \
        == singles[0]["input_ids"].shape[1] + 2


# ----------------------------------------------------------------------------- several adapters
def test_two_prompt_adapters_switch_save_and_delete(unpadded, tmp_path):
    base = make_tiny_llama()
    model = get_peft_model(copy.deepcopy(base), PromptTuningConfig(num_virtual_tokens=3)).eval()
    model.add_adapter("longer", PromptTuningConfig(num_virtual_tokens=5))
    assert model.active_adapter == "longer" and logits(model, unpadded).shape[1] == 5 + 6
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_encoder.longer.embedding.weight"]
    model.set_adapter("default")
    assert logits(model, unpadded).shape[1] == 3 + 6
    model.save_pretrained(tmp_path)  # peft's layout: default at the top, others in sub-folders
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "longer").eval()
    model.set_adapter("longer")
    assert_same_as_peft(model, theirs, unpadded)
    model.delete_adapter("longer")
    assert list(model.prompt_encoder) == ["default"] and model.active_adapter == "default"


# ----------------------------------------------------------------------------- counts
@pytest.mark.parametrize("name, p", [("smollm2-135m", 20), ("tinyllama-1.1b", 8), ("bloom-1b4-zh", 8),
                                     ("bloom-1b4-zh", 10)])
def test_counts_equal_peft_and_the_tutorial(name, p):
    ours = get_peft_model(build_from_config(name), PromptTuningConfig(num_virtual_tokens=p))
    theirs = peft.get_peft_model(build_from_config(name), peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                                  num_virtual_tokens=p))
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    expected = {"smollm2-135m": 11_520, "tinyllama-1.1b": 16_384, "bloom-1b4-zh": 2048 * p}[name]
    assert ours.get_nb_trainable_parameters()[0] == expected  # bloom: 16,384 (8 tokens), 20,480 (10)
    assert ours.peft_config["default"].token_dim == theirs.peft_config["default"].token_dim
    assert ours.peft_config["default"].num_layers == theirs.peft_config["default"].num_layers


def test_the_peft_generation_bug_reproduction_still_reproduces(capsys):
    """scripts/peft_generation_bug.py is the bug report for peft's maintainers; while peft 0.21.2 is locked it must
    show both faults. If this fails after an upgrade, peft fixed it: update the notebooks' notes and the README."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "peft_generation_bug.py"
    spec = importlib.util.spec_from_file_location("peft_generation_bug", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == 1
    printed = capsys.readouterr().out
    assert "positions fed per step [14, 9, 9, 9]" in printed  # 8 virtual tokens + 1 new token, again every step
    assert "BUG (the prefix was dropped)" in printed
