"""Every config field says what it does where it is declared, as HF peft's configs do
(``dataclasses.field(default=..., metadata={"help": "..."})``): the help text is the reference for each option."""

import dataclasses

import pytest

import peftedu  # noqa: F401  (importing the package registers every method's config)
from peftedu.config import CONFIG_CLASSES, PeftConfig
from peftedu.config import PromptLearningConfig

CLASSES = {**{cls.__name__: cls for cls in CONFIG_CLASSES.values()},
           "PeftConfig": PeftConfig, "PromptLearningConfig": PromptLearningConfig}
MIN_HELP = 20  # characters: a sentence, not a placeholder


def test_every_method_is_covered():
    assert len(CONFIG_CLASSES) >= 9 and "LoraConfig" in CLASSES and "AdaLoraConfig" in CLASSES


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_field_has_help(name):
    cls = CLASSES[name]
    missing = [f.name for f in dataclasses.fields(cls)
               if not isinstance(f.metadata.get("help"), str) or len(f.metadata["help"].strip()) < MIN_HELP]
    assert not missing, f"{name}: fields without a help text of >= {MIN_HELP} characters: {missing}"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_help_texts_are_clean_sentences(name):
    for f in dataclasses.fields(CLASSES[name]):
        text = f.metadata["help"]
        assert text == text.strip() and "  " not in text, (name, f.name, text)  # joined string pieces
        assert text.endswith((".", ")")), (name, f.name, text)


def test_help_names_the_papers_symbols():
    def help_of(cls, field):
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == field)

    lora, adalora = CLASSES["LoraConfig"], CLASSES["AdaLoraConfig"]
    assert "Hu et al. 2021" in help_of(lora, "r") and "α/r" in help_of(lora, "lora_alpha")
    assert "α/√r" in help_of(lora, "use_rslora") and "Kalajdzievski 2023" in help_of(lora, "use_rslora")
    assert "Liu et al. 2024" in help_of(lora, "use_dora")
    for field in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight"):
        assert "Zhang et al. 2023" in help_of(adalora, field), field
    assert "l_ff" in help_of(CLASSES["IA3Config"], "feedforward_modules")
    assert "Li & Liang 2021" in help_of(CLASSES["PrefixTuningConfig"], "num_virtual_tokens")
    assert "Lester et al. 2021" in help_of(PromptLearningConfig, "num_virtual_tokens")
    assert "Liu et al. 2021" in help_of(CLASSES["PromptEncoderConfig"], "encoder_reparameterization_type")


def test_help_metadata_stays_out_of_the_config_file():
    config = CLASSES["PromptTuningConfig"](num_virtual_tokens=4)
    data = config.to_dict()
    assert "position_convention" not in data and "tokenizer" not in data  # other metadata keys still honoured
    assert set(data) == {"peft_type"} | {f.name for f in dataclasses.fields(config)} - {"position_convention",
                                                                                         "tokenizer"}
