"""peftedu: parameter-efficient fine-tuning built from scratch, proven equal to HF peft.

The API follows HF peft so what you learn here transfers as it is::

    from peftedu import load_base, get_peft_model, LoraConfig
    model, tokenizer = load_base()                    # SmolLM2-135M-Instruct, offline, CPU
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    model.print_trainable_parameters()

Importing the package registers every method (one module each). The top of the package is the PEFT library
(configs, the tuner protocol, PeftModel, one module per method, quantization, merging, counting);
``peftedu.course`` holds the course tools (tasks, training, evaluation, memory, explorers, interview, showdown),
which import the library and never the other way round. This module re-exports the names the notebooks use.
"""

from .course.models import (
    DEFAULT_MODEL,
    MODEL_ALIASES,
    build_from_config,
    default_dtype,
    load_base,
    load_model_config,
    pick_device,
)
from .config import PeftConfig
from .peft_model import PeftModel, get_peft_model
from .course.compare import cmp, measured, rounding_tolerance

# one module per method; importing registers its config and tuner
from .bitfit import BitFitConfig
from .prompt_tuning import PromptTuningConfig
from .p_tuning import PromptEncoderConfig
from .prefix_tuning import PrefixTuningConfig
from .adapters import AdapterConfig
from .llama_adapter import AdaptionPromptConfig
from .lora import LoraConfig
from .adalora import AdaLoraConfig
from .ia3 import IA3Config
from .loraplus import create_loraplus_optimizer
from .merging import add_weighted_adapter

from .counting import count_parameters, print_trainable_parameters
from .course.memory import estimate_training_memory
from .course.recipes import memory_table
from .course.peak_memory import measure_peak_memory
from .course.data import load_task, write_tasks
from .course.tokenization import build_prompt
from .course.evaluation import evaluate
from .course.training import get_profile, plot_history, set_seed, train

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL", "MODEL_ALIASES", "build_from_config", "default_dtype", "load_base", "load_model_config",
    "pick_device", "PeftConfig", "PeftModel", "get_peft_model", "cmp", "measured", "rounding_tolerance",
    "BitFitConfig", "PromptTuningConfig", "PromptEncoderConfig", "PrefixTuningConfig", "AdapterConfig",
    "AdaptionPromptConfig", "LoraConfig", "AdaLoraConfig", "IA3Config", "create_loraplus_optimizer",
    "add_weighted_adapter", "count_parameters", "estimate_training_memory", "measure_peak_memory", "memory_table",
    "print_trainable_parameters", "build_prompt", "load_task", "write_tasks", "evaluate", "get_profile",
    "plot_history", "set_seed", "train",
]
