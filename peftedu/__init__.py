"""peftedu: parameter-efficient fine-tuning built from scratch, proven equal to HF peft."""

from .models import (
    DEFAULT_MODEL,
    MODEL_ALIASES,
    build_from_config,
    default_dtype,
    load_base,
    load_model_config,
    pick_device,
)

__version__ = "0.1.0"
from .config import PeftConfig
from .peft_model import PeftModel, get_peft_model
from .lora import LoraConfig
