"""P-tuning (peftedu/p_tuning.py) against HF peft: same encoder, logits, tokens, files and counts."""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file

import peftedu.p_tuning  # noqa: F401  (registers P_TUNING)
from peftedu.course.models import build_from_config
from peftedu.p_tuning import PromptEncoderConfig
from peftedu.peft_model import PeftModel, get_peft_model
from peftedu.prompt_tuning import PromptTuningConfig

from conftest import make_tiny_llama
from test_prompt_tuning import assert_same_as_peft, logits, randomize_prompt

ENCODERS = {
    "MLP": dict(encoder_reparameterization_type="MLP", encoder_hidden_size=16),
    "LSTM": dict(encoder_reparameterization_type="LSTM", encoder_hidden_size=8, encoder_num_layers=2,
                 encoder_dropout=0.0),
}


def both(make_base, p: int = 4, seed: int = 0, **encoder):
    """peft's and our P-tuning model on two copies of one base, built after the same seed."""
    torch.manual_seed(seed)
    theirs = peft.get_peft_model(make_base(), peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=p,
                                                                       **encoder)).eval()
    torch.manual_seed(seed)
    ours = get_peft_model(make_base(), PromptEncoderConfig(num_virtual_tokens=p, **encoder)).eval()
    return ours, theirs


@pytest.fixture
def unpadded():
    torch.manual_seed(3)
    return {"input_ids": torch.randint(3, 128, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(num_virtual_tokens=0, encoder_hidden_size=8), "num_virtual_tokens must be a positive"),
    (dict(num_virtual_tokens=4, encoder_hidden_size=8, encoder_reparameterization_type="GRU"), "'MLP'"),
    (dict(num_virtual_tokens=4), "encoder_hidden_size is required"),
    (dict(num_virtual_tokens=4, encoder_hidden_size=0), "encoder_hidden_size must be a positive"),
    (dict(num_virtual_tokens=4, encoder_hidden_size=8, encoder_num_layers=3), "LSTM only"),
    (dict(num_virtual_tokens=4, encoder_hidden_size=8, encoder_dropout=0.1), "LSTM only"),
    (dict(num_virtual_tokens=4, encoder_hidden_size=8, encoder_reparameterization_type="LSTM",
          encoder_dropout=1.5), r"\[0, 1\)"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PromptEncoderConfig(**kwargs)


def test_mixed_batch_is_a_clear_error(unpadded):
    model = get_peft_model(make_tiny_llama(), PromptEncoderConfig(num_virtual_tokens=2, encoder_hidden_size=8))
    with pytest.raises(ValueError, match="layer method"):
        model(**unpadded, adapter_names=["default", "__base__"])


# ----------------------------------------------------------------------------- the encoder is peft's
@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_encoder_is_peft_encoder_module_for_module(kind):
    ours, theirs = both(make_tiny_llama, **ENCODERS[kind])
    mine, peft_state = ours.prompt_encoder["default"].state_dict(), theirs.prompt_encoder["default"].state_dict()
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in peft_state.items()}
    for key in mine:  # built in the same order from the same seed: the same initial weights
        assert torch.equal(mine[key], peft_state[key]), key
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


# ----------------------------------------------------------------------------- parity and files
@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_same_logits_as_peft_tiny_llama(kind, unpadded, tiny_inputs):
    ours, theirs = both(make_tiny_llama, **ENCODERS[kind])
    randomize_prompt(ours)
    theirs.prompt_encoder["default"].load_state_dict(ours.prompt_encoder["default"].state_dict())
    assert_same_as_peft(ours, theirs, unpadded)
    # left padding: our padded row equals peft's row alone (the convention of peftedu.prompt_tuning)
    alone = logits(theirs, {"input_ids": tiny_inputs["input_ids"][:1, 2:]})
    torch.testing.assert_close(logits(ours, tiny_inputs)[0, 4 + 2:], alone[0, 4:], atol=1e-5, rtol=0)
    # gradients reach every encoder weight (the reparameterisation trains, not just the embedding)
    ours.train()
    ours(**unpadded, labels=unpadded["input_ids"]).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.prompt_encoder.parameters())


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_same_logits_and_files_as_peft_smollm2(kind, smollm2, tmp_path):
    model, tokenizer = smollm2()
    base = model  # prompt methods leave the base untouched: every wrapper below shares it
    ours, theirs = both(lambda: base, p=5, **ENCODERS[kind])
    randomize_prompt(ours)
    theirs.prompt_encoder["default"].load_state_dict(ours.prompt_encoder["default"].state_dict())
    inputs = dict(tokenizer(["Human: name a colour.\n\nAssistant:"], return_tensors="pt"))
    diffs = [assert_same_as_peft(ours, theirs, inputs)]
    # ours (trainable) -> file -> peft; peft -> file -> ours: both hold the encoder OUTPUT, loaded for inference
    ours.save_pretrained(tmp_path / "ours")
    saved = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert set(saved) == {"prompt_embeddings"} and saved["prompt_embeddings"].shape == (5, 576)
    loaded_by_peft = peft.PeftModel.from_pretrained(base, tmp_path / "ours").eval()
    assert not hasattr(loaded_by_peft.prompt_encoder["default"], "mlp_head")  # the encoder is gone
    diffs.append(assert_same_as_peft(ours, loaded_by_peft, inputs))
    # peft's file, read by us and by peft. (Compared with the file, not with peft's live LSTM: PyTorch's LSTM
    # takes another kernel with autograd on, and peft saves with it on: P differs by ~3e-8, which SmolLM2's
    # first-position activations blow up to ~2e-4 in the logits -- peft vs its own reload.)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded_by_us = PeftModel.from_pretrained(base, tmp_path / "theirs").eval()
    reloaded_by_peft = peft.PeftModel.from_pretrained(base, tmp_path / "theirs").eval()
    diffs.append(assert_same_as_peft(loaded_by_us, reloaded_by_peft, inputs))
    assert loaded_by_us.get_nb_trainable_parameters()[0] == 0
    print(f"P-tuning {kind}, SmolLM2: max |logit diff| vs peft = {max(diffs):.2e}")


def test_reloaded_p_tuning_is_inference_only_or_prompt_tuning(unpadded, tmp_path):
    ours = get_peft_model(make_tiny_llama(), PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=8)).eval()
    ours.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is_trainable=False"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path, is_trainable=True)
    # the saved output is a valid soft prompt: keep training it as prompt tuning
    as_prompt = get_peft_model(make_tiny_llama(), PromptTuningConfig(num_virtual_tokens=3)).eval()
    as_prompt.load_adapter_state_dict(load_file(str(tmp_path / "adapter_model.safetensors")), "default")
    torch.testing.assert_close(logits(as_prompt, unpadded), logits(ours, unpadded), atol=1e-5, rtol=0)
    assert as_prompt.get_nb_trainable_parameters()[0] == 3 * 32


def test_generation_equals_peft_and_batched_equals_one_by_one(tiny_inputs):
    ours, theirs = both(make_tiny_llama, **ENCODERS["MLP"])
    randomize_prompt(ours)
    theirs.prompt_encoder["default"].load_state_dict(ours.prompt_encoder["default"].state_dict())
    batched = ours.generate(**tiny_inputs, max_new_tokens=5, do_sample=False)
    for row, pads in ((0, 2), (1, 0)):
        single = {"input_ids": tiny_inputs["input_ids"][row:row + 1, pads:]}
        alone = ours.generate(**single, max_new_tokens=5, do_sample=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = theirs.generate(**single, max_new_tokens=5, do_sample=False, use_cache=False)
        assert torch.equal(alone, reference) and torch.equal(batched[row, pads:], alone[0])


def test_two_p_tuning_adapters(unpadded):
    model = get_peft_model(make_tiny_llama(), PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=8)).eval()
    model.add_adapter("lstm", PromptEncoderConfig(num_virtual_tokens=2, encoder_hidden_size=4,
                                                  encoder_reparameterization_type="LSTM"))
    assert logits(model, unpadded).shape[1] == 2 + 6
    assert all(n.startswith("prompt_encoder.lstm.") for n, p in model.named_parameters() if p.requires_grad)
    model.set_adapter("default")
    assert logits(model, unpadded).shape[1] == 3 + 6


# ----------------------------------------------------------------------------- counts
@pytest.mark.parametrize("name", ["smollm2-135m", "tinyllama-1.1b", "bloom-1b4-zh"])
@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_counts_equal_peft(name, kind):
    encoder = dict(ENCODERS[kind], encoder_hidden_size=128)
    ours, theirs = both(lambda: build_from_config(name), p=10, **encoder)
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def test_tutorial_count_bloom():
    """The source tutorial's P-tuning count: 10 tokens, MLP, encoder_hidden_size=1024 on bloom-1b4-zh."""
    ours = get_peft_model(build_from_config("bloom-1b4-zh"),
                          PromptEncoderConfig(num_virtual_tokens=10, encoder_hidden_size=1024))
    d, h = 2048, 1024
    assert ours.get_nb_trainable_parameters()[0] == 10 * d + (d * h + h) + (h * h + h) + (h * d + d) == 5_267_456
