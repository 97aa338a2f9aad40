"""Minimal reproduction: HF peft 0.21.2 + transformers 5.x, prompt learning methods generate wrongly with the cache on.

For a bug report to huggingface/peft; standalone (torch, transformers, peft; a tiny random Llama, no download, CPU,
a few seconds). Run it as ``python scripts/peft_generation_bug.py``; it exits 1 while the bug is present.

**What happens.** ``PeftModelForCausalLM.prepare_inputs_for_generation`` still looks for the key/value cache under
the old keyword ``past_key_values``, but transformers 5 passes it to ``prepare_inputs_for_generation`` as
``cache``. peft therefore believes every decoding step is the first one:

1. prompt tuning / P-tuning: the virtual tokens are prepended again at every cached step, so after the prompt the
   model receives ``num_virtual_tokens + 1`` new positions per step instead of 1, and the cache grows by the prompt
   each step. Greedy tokens differ from the same model run without the cache (``use_cache=False``).
2. prefix tuning: peft's prefix (handed over as ``past_key_values``) loses to generate's own empty cache, so the
   first generated token's scores are those of the base model without any prefix.

**Expected.** With and without the cache, greedy generation gives the same tokens, and the first step's scores are
the peft model's own forward logits at the last position.
"""

from __future__ import annotations

import logging
import sys
import warnings

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports bitsandbytes: its CPU notice is unrelated
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def positions_fed_per_step(model, base, input_ids, **generate_kwargs):
    """Greedy generation of 4 tokens; returns (tokens, the number of positions the base model got at each call)."""
    fed = []
    hook = base.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append((kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None
                                                 else kwargs["input_ids"]).shape[1]), with_kwargs=True)
    try:
        with torch.no_grad():
            tokens = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=4,
                                    do_sample=False, pad_token_id=0, **generate_kwargs)
    finally:
        hook.remove()
    return tokens, fed


def prompt_tuning_case() -> bool:
    base = tiny_llama()
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8))
    input_ids = torch.tensor([[1, 5, 9, 17, 33, 65]])
    cached, fed_cached = positions_fed_per_step(model, base, input_ids)
    uncached, fed_uncached = positions_fed_per_step(model, base, input_ids, use_cache=False)
    print("prompt tuning (8 virtual tokens), one row of 6 tokens, 4 new tokens")
    print(f"  use_cache=True : tokens {cached[0, 6:].tolist()}  positions fed per step {fed_cached}")
    print(f"  use_cache=False: tokens {uncached[0, 6:].tolist()}  positions fed per step {fed_uncached}")
    ok = fed_cached[1:] == [1] * (len(fed_cached) - 1) and torch.equal(cached, uncached)
    print(f"  expected: after the first step 1 position per step, the same tokens -> {'OK' if ok else 'BUG'}")
    return ok


def prefix_tuning_case() -> bool:
    base = tiny_llama()
    model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8))
    with torch.no_grad():  # a prefix that matters (peft's default init is small and random already; make it plain)
        for param in model.prompt_encoder.parameters():
            param.normal_(0, 1)
    input_ids = torch.tensor([[1, 5, 9, 17, 33, 65]])
    with torch.no_grad():
        own = model(input_ids=input_ids).logits[:, -1]
        without_prefix = base(input_ids=input_ids).logits[:, -1]
        first = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=1,
                               do_sample=False, pad_token_id=0, output_scores=True,
                               return_dict_in_generate=True).scores[0]
    to_own, to_base = (first - own).abs().max().item(), (first - without_prefix).abs().max().item()
    print("prefix tuning (8 virtual tokens): first generated token's scores")
    print(f"  max |scores - the peft model's forward logits| = {to_own:.2e}")
    print(f"  max |scores - the base model's logits (no prefix)| = {to_base:.2e}")
    ok = to_own < 1e-4
    print(f"  expected: the peft model's own logits -> {'OK' if ok else 'BUG (the prefix was dropped)'}")
    return ok


def main() -> int:
    warnings.filterwarnings("ignore")
    print(f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}\n")
    results = [prompt_tuning_case(), prefix_tuning_case()]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
