"""A learner's mistakes get fast, clear answers (issue 16): each message says what was wrong and what would be right."""

from __future__ import annotations

import json
import time

import pytest

from peftedu import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from peftedu.__main__ import build_parser, main
from peftedu.course.models import MODEL_ALIASES, check_model_name, load_base
from peftedu.course.training import get_profile

from conftest import make_tiny_llama


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_an_unknown_model_name_fails_at_once_listing_the_aliases(capsys, monkeypatch):
    start = time.perf_counter()
    message = _usage_error(["tour", "--model", "does-not-exist"], capsys)
    monkeypatch.setenv("PEFTEDU_MODEL", "does-not-exist")
    assert "Unknown model 'does-not-exist'" in _usage_error(["tour"], capsys)
    assert time.perf_counter() - start < 5  # no hub retries
    assert all(alias in message for alias in MODEL_ALIASES) and "org/name" in message


def test_a_hub_id_that_cannot_be_fetched_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_model_name("some-org/some-model") == "some-org/some-model"
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1 is set") as err:
        load_base("some-org/some-model", device="cpu")
    assert "PEFTEDU_MODEL=<folder>" in str(err.value) and "hf download some-org/some-model" in str(err.value)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        check_model_name(str(tmp_path))


def test_a_local_model_folder_loads(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    make_tiny_llama().save_pretrained(tmp_path)
    vocab = {f"t{i}": i for i in range(128)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                            eos_token="t2").save_pretrained(tmp_path)
    model, tokenizer = load_base(str(tmp_path), device="cpu")
    assert model.config.num_hidden_layers == 2 and tokenizer.pad_token == "t2"


def test_profiles_take_any_case_and_refuse_the_rest(capsys, monkeypatch):
    assert get_profile("QUICK").name == "quick" and get_profile(" Full ").name == "full"
    assert "unknown profile 'fast'" in _usage_error(["tour", "--profile", "fast"], capsys)
    monkeypatch.setenv("PEFTEDU_PROFILE", "fast")
    assert "Unknown profile 'fast'" in _usage_error(["tour"], capsys)
    with pytest.raises(ValueError, match="choose one of"):
        get_profile()


def test_help_is_plain_text_and_every_option_is_explained():
    parser = build_parser()
    text = parser.format_help()
    assert "``" not in text and ":mod:" not in text and "PEFTEDU_PROFILE" in text
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == {"prepare", "data", "tour", "showdown"}
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help" and action.help != "==SUPPRESS==":
                assert action.help, f"{name} {action.option_strings} has no help"
                if action.default not in (None, False) and action.default != "==SUPPRESS==":
                    assert "default" in action.help, f"{name} {action.option_strings} hides its default"
    assert "2 minutes" in subparsers["showdown"].format_help() and "seconds" not in subparsers["showdown"].format_help()


@pytest.mark.parametrize("value", [2.5, 8.0, "8", 0, -1, True])
def test_ranks_must_be_positive_integers(value):
    with pytest.raises(ValueError, match="r must be a positive integer"):
        LoraConfig(r=value)


def test_token_counts_must_be_integers():
    with pytest.raises(ValueError, match="whole number"):
        PromptTuningConfig(num_virtual_tokens=4.5)
    assert LoraConfig(r=4, lora_alpha=2.5, target_modules=["q_proj"]).lora_alpha == 2.5  # alpha: any positive number


@pytest.fixture
def saved_adapter(tmp_path):
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_a_truncated_weights_file_names_itself(saved_adapter):
    weights = saved_adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ValueError, match="adapter_model.safetensors cannot be read as safetensors") as err:
        PeftModel.from_pretrained(make_tiny_llama(), saved_adapter)
    assert "Save the adapter again" in str(err.value)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="No adapter_model.safetensors in"):
        PeftModel.from_pretrained(make_tiny_llama(), saved_adapter)


def test_a_damaged_config_file_names_itself(saved_adapter):
    config = saved_adapter / "adapter_config.json"
    config.write_text(config.read_text()[:40])
    with pytest.raises(ValueError, match="adapter_config.json is not valid JSON") as err:
        PeftModel.from_pretrained(make_tiny_llama(), saved_adapter)
    assert "truncated" in str(err.value)
    config.write_text(json.dumps(["not", "a", "config"]))
    with pytest.raises(ValueError, match="not an object of config fields"):
        PeftModel.from_pretrained(make_tiny_llama(), saved_adapter)
