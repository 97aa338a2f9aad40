"""P-tuning (Liu et al. 2021, "GPT Understands, Too", arXiv:2103.10385): a soft prompt made by a small network.

Prompt tuning (:mod:`peftedu.prompt_tuning`) learns the p prompt vectors directly. P-tuning learns them
through a *prompt encoder* (提示编码器) -- a reparameterisation that ties the vectors together and, the paper
found, trains faster and more stably::

    E = embedding(0..p-1)                                   (p, d)   d = token_dim
    MLP:   P = W3 ReLU(W2 ReLU(W1 E + b1) + b2) + b3        W1: H x d, W2: H x H, W3: d x H
    LSTM:  h = BiLSTM(E)  (p, 2H);   P = W5 ReLU(W4 h + b4) + b5    W4: 2H x 2H, W5: d x 2H

and the model reads ``[P; E[x]]`` exactly as in prompt tuning (same mask, labels, positions, generation).
H = ``encoder_hidden_size``. This is peft's ``PromptEncoder``, module for module (``embedding``,
``lstm_head``, ``mlp_head``) and built in the same order, so a seed gives peft's initial weights and peft's
``state_dict`` loads here. Initialisation: nn.Embedding N(0, 1), default nn.Linear / nn.LSTM init.
Trainable parameters (MLP): p*d + (d*H + H) + (H*H + H) + (H*d + d); bloom-1b4-zh, p = 10, d = 2048,
H = 1024: 20,480 + 2,098,176 + 1,049,600 + 2,099,200 = 5,267,456 (the source tutorial's count).
(The paper also puts prompt tokens *between* input parts and adds anchor tokens; peft, and we, prepend.)

**What is saved.** peft saves only the encoder's *output* P, ``prompt_embeddings`` (p, d): the encoder
(E, the MLP/LSTM) is not in the file. Loaded for inference (``is_trainable=False``) the encoder is built
without its heads and P is used as is -- the same logits. A reloaded P-tuning adapter therefore cannot be
trained further as P-tuning: the weights that made P are gone (had we loaded P into a fresh encoder, it
would land in the encoder's *input* embedding and come out through a random MLP: other prompts).
``is_trainable=True`` is a ValueError that says so. (HF peft refuses ``is_trainable=True`` for every prompt
method; peftedu allows it for prompt tuning, whose file holds its whole trainable state, P.) To keep
training from a saved P, load the file as prompt tuning (``PromptTuningConfig(num_virtual_tokens=p)`` +
``load_adapter_state_dict``): P is a valid soft prompt. We chose this over saving the encoder too: peft's
file layout has no place for it, and the encoder is most of the size (5.2M of bloom's 5.27M numbers).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .config import PromptLearningConfig, check_number, register_config
from .prompt_tuning import PromptTuningTuner
from .tuners import module_device, register_tuner

ENCODER_TYPES = ("MLP", "LSTM")


@register_config
@dataclasses.dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """peft's ``PromptEncoderConfig``."""

    peft_type = "P_TUNING"
    encoder_reparameterization_type: str = dataclasses.field(default="MLP", metadata={"help": (
        "The prompt encoder (Liu et al. 2021, P-tuning) that makes the soft prompt from an embedding: 'MLP' "
        "(default; three linear layers with ReLU) or 'LSTM' (the paper's bidirectional LSTM with a two-layer MLP "
        "head).")})
    encoder_hidden_size: int | None = dataclasses.field(default=None, metadata={"help": (
        "The prompt encoder's hidden width H (MLP: d -> H -> H -> d; LSTM: H per direction). Required: a positive "
        "integer (peft has no default).")})
    encoder_num_layers: int = dataclasses.field(default=2, metadata={"help": (
        "The number of stacked LSTM layers (LSTM encoder only; the MLP always has three linear layers, so leave it "
        "at 2 there). A positive integer; default 2.")})
    encoder_dropout: float = dataclasses.field(default=0.0, metadata={"help": (
        "Dropout between the LSTM layers (LSTM encoder only; must stay 0 with the MLP). In [0, 1); default 0.0.")})

    def __post_init__(self):
        super().__post_init__()
        self.encoder_reparameterization_type = str(getattr(self.encoder_reparameterization_type, "value",
                                                           self.encoder_reparameterization_type))
        if self.encoder_reparameterization_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_reparameterization_type must be 'MLP' (recommended) or 'LSTM', "
                             f"got {self.encoder_reparameterization_type!r}.")
        if self.encoder_hidden_size is None:
            raise ValueError("encoder_hidden_size is required (peft has no default), e.g. encoder_hidden_size=128.")
        check_number("encoder_hidden_size", self.encoder_hidden_size, integer=True)
        check_number("encoder_num_layers", self.encoder_num_layers, integer=True)
        check_number("encoder_dropout", self.encoder_dropout, at_least=0, below=1)
        if self.encoder_reparameterization_type == "MLP" and (self.encoder_num_layers != 2 or self.encoder_dropout):
            raise ValueError("The MLP encoder always has 3 linear layers and no dropout (as in peft): "
                             "encoder_num_layers and encoder_dropout apply to the LSTM only; leave them at 2 and 0.")


class PromptEncoder(nn.Module):
    """peft's ``PromptEncoder``: ``embedding`` (p, d), then ``lstm_head`` + ``mlp_head`` or ``mlp_head``.
    Built for inference (``inference_mode``) it has only ``embedding``, which then holds P itself."""

    def __init__(self, config: PromptEncoderConfig, device=None):
        super().__init__()
        d, hidden = config.token_dim, config.encoder_hidden_size
        self.encoder_type = config.encoder_reparameterization_type
        self.embedding = nn.Embedding(config.num_virtual_tokens, d, device=device)
        if config.inference_mode:
            return
        if self.encoder_type == "LSTM":
            self.lstm_head = nn.LSTM(input_size=d, hidden_size=hidden, num_layers=config.encoder_num_layers,
                                     dropout=config.encoder_dropout, bidirectional=True, batch_first=True,
                                     device=device)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden, device=device), nn.ReLU(),
                                          nn.Linear(2 * hidden, d, device=device))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(d, hidden, device=device), nn.ReLU(),
                                          nn.Linear(hidden, hidden, device=device), nn.ReLU(),
                                          nn.Linear(hidden, d, device=device))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """(batch, p) virtual-token ids -> their prompt vectors, (batch, p, d)."""
        embeds = self.embedding(indices)
        if self.encoder_type == "LSTM":
            embeds = self.lstm_head(embeds)[0]  # (batch, p, 2H): both directions
        return self.mlp_head(embeds)


@register_tuner
class PTuningTuner(PromptTuningTuner):
    peft_type = "P_TUNING"

    def make_encoder(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return PromptEncoder(config, device=module_device(word_embeddings))

    def named_adapter_tensors(self, peft_model, adapter_name: str) -> dict[str, torch.Tensor]:
        """peft's file: ``prompt_embeddings`` = the encoder's output P (live only when loaded for inference)."""
        if peft_model.peft_config[adapter_name].inference_mode:
            return super().named_adapter_tensors(peft_model, adapter_name)
        with torch.no_grad():
            return {"prompt_embeddings": self.prompt(peft_model, adapter_name)}

    def translate_loaded_state(self, peft_model, state: dict, adapter_name: str) -> dict:
        if not peft_model.peft_config[adapter_name].inference_mode:
            raise ValueError(
                "A P-tuning file holds only the encoder's output (prompt_embeddings), not the prompt encoder "
                "that produced it, so it cannot be loaded for further P-tuning training. Load it with "
                "is_trainable=False for inference, or keep training it as prompt tuning "
                "(PromptTuningConfig(num_virtual_tokens=...) and load_adapter_state_dict).")
        return state
