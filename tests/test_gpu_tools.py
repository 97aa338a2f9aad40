"""The GPU-facing course tools, checked on the CPU: the throughput benchmark's FLOP count and a tiny run,
and the memory table's estimate."""

from __future__ import annotations

import json

import pytest
import torch

from peftedu.course import gpu_memory, throughput
from peftedu.course.shapes import DecoderShape
from peftedu.course.models import build_from_config, load_model_config


def test_flop_count_follows_palm():
    config = load_model_config("tinyllama-1.1b")
    model = build_from_config("tinyllama-1.1b")  # meta: shapes only
    n = throughput.matmul_params(model)
    # every linear of 22 blocks + lm_head: the parameters minus embeddings and norms
    norms = config.num_hidden_layers * 2 * config.hidden_size + config.hidden_size
    assert n == sum(p.numel() for p in model.parameters()) - config.vocab_size * config.hidden_size - norms
    attention = 12 * 22 * 2048 * 1024
    assert throughput.flops_per_token(config, n, 1024, trainable_matmul=n, adapter=0) == 6 * n + attention
    assert throughput.flops_per_token(config, n, 1024, trainable_matmul=0, adapter=1000) == 4 * n + 6000 + attention


@pytest.mark.slow
def test_throughput_runs_every_method_on_the_cpu():
    result = throughput.measure("smollm2-135m", seq_len=16, batch_size=1, steps=1, warmup=1, device="cpu")
    assert [r["method"] for r in result["rows"]] == ["full", "lora", "lora (peft)"]
    assert all(r["loss_finite"] and r["step_s"] > 0 and r["mfu"] is None for r in result["rows"])
    lora, peft_lora = result["rows"][1], result["rows"][2]
    assert lora["trainable"] == peft_lora["trainable"] and lora["flops_per_token"] == peft_lora["flops_per_token"]
    assert "| lora (peft) |" in throughput.to_markdown(result)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        throughput.measure("smollm2-135m", seq_len=0)


def test_memory_estimate_orders_the_methods(tmp_path):
    config = load_model_config("tinyllama-1.1b")
    shape = DecoderShape.from_config(config, "tinyllama", ignore_biases=True)
    assert shape.n_params() == 1_100_048_384 and isinstance(shape, DecoderShape)
    total = shape.n_params()
    rows = [{"method": "full", "impl": "peftedu", "trainable": total, "total": total, "peak_memory_mb": 17_800, "resident_mb": 2_200},
            {"method": "lora", "impl": "peftedu", "trainable": 6_000_000, "total": total + 6_000_000,
             "peak_memory_mb": 5_000, "resident_mb": None},
            {"method": "qlora", "impl": "peftedu", "trainable": 6_000_000, "total": total + 6_000_000,
             "peak_memory_mb": None, "resident_mb": None}]
    full, lora, qlora = (gpu_memory.estimate(r, shape, batch_size=16, seq_len=128) for r in rows)
    assert full > lora > qlora > 0
    assert full - lora > 0.9 * total * 6 / 1e9  # bf16 grads + 2 bf16 AdamW states of every weight
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"rows": rows}))
    text = gpu_memory.table({"TinyLlama": path}, {"TinyLlama": config}, batch_size=16, seq_len=128)
    assert "| full |" in text and "| 20.0 |" in text and "| qlora |" in text and "| – |" in text


def test_estimate_within_20_percent_of_the_h200_measurement():
    """The committed throughput run (results/throughput_nvidia_h200.json: TinyLlama-1.1B, 8 x 2,048 tokens, bf16)
    measured the peak of full fine-tuning and of LoRA r=16 on every linear layer; the estimate must be near both."""
    from pathlib import Path

    result = json.loads((Path(__file__).parent.parent / "results" / "throughput_nvidia_h200.json").read_text())
    shape = DecoderShape.from_config(load_model_config(result["model"]), result["model"], ignore_biases=True)
    n, adapters = shape.n_params(), shape.lora_params(result["rank"])
    inputs = sum(i for i, _ in shape.linear_shapes().values())  # every linear wrapped: q,k,v,o,gate,up from d; down from i
    size = dict(batch_size=result["batch_size"], seq_len=result["seq_len"])
    measured = {r["method"]: r["peak_mb"] * 2**20 / 1e9 for r in result["rows"]}
    full = gpu_memory.estimate({"method": "full", "trainable": n, "total": n}, shape, **size)
    lora = gpu_memory.estimate({"method": "lora", "trainable": adapters, "total": n + adapters}, shape, **size,
                               fp32_inputs=inputs)
    assert abs(full / measured["full"] - 1) < 0.2 and abs(lora / measured["lora"] - 1) < 0.2
    # without the fp32 copies of the adapters' inputs the LoRA estimate misses by over 40%
    bare = gpu_memory.estimate({"method": "lora", "trainable": adapters, "total": n + adapters}, shape, **size)
    assert bare / measured["lora"] < 0.6


def test_fit_rows_count_what_the_methods_build():
    """fit_rows works on a meta copy; its counts must equal those of the same method on real (tiny) weights."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    import peftedu
    from peftedu.course.showdown import METHODS

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    rows = {r["method"]: r for r in gpu_memory.fit_rows(config, ["full", "lora", "houlsby", "prompt_tuning", "ia3"])}
    torch.manual_seed(0)
    real = peftedu.get_peft_model(AutoModelForCausalLM.from_config(config),
                                  peftedu.LoraConfig(**METHODS["lora"].kwargs(None, None, None)))
    assert rows["lora"]["trainable"] == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert rows["lora"]["total"] == sum(p.numel() for p in real.parameters())
    assert rows["full"]["trainable"] == rows["full"]["total"] == sum(
        p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    assert rows["lora"]["fp32_inputs"] == 4 * 64  # q, k, v, o: each casts its 64-wide input to fp32
    assert rows["houlsby"]["fp32_inputs"] == 2 * 64  # two adapters per layer, on the hidden state
    assert rows["prompt_tuning"]["extra_tokens"] == 16 and rows["ia3"]["fp32_inputs"] == 0
    with pytest.raises(ValueError, match="Unknown method.*known: full"):
        gpu_memory.fit_rows(config, ["lorra"])


def test_fit_table_verdicts_and_measured_column(tmp_path):
    assert [gpu_memory.verdict(gb, 16) for gb in (12.7, 12.9, 15.9, 16.1)] == ["yes", "tight", "tight", "no"]
    config = load_model_config("tinyllama-1.1b")
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"rows": [{"method": "lora", "impl": "peftedu", "peak_memory_mb": 13_000,
                                          "resident_mb": 2_300}]}))
    text, est = gpu_memory.fit_table({"TinyLlama": config}, batch_size=16, seq_len=112, measured={"TinyLlama": path},
                                     methods=["full", "lora", "qlora"])
    assert est["TinyLlama"]["full"] > est["TinyLlama"]["lora"] > est["TinyLlama"]["qlora"]
    lora_line = next(line for line in text.splitlines() if line.startswith("| lora |"))
    assert "| 15.3 | tight | yes |" in lora_line  # the measured 15.3 GB decides when it exceeds the estimate
    assert "| – |" in next(line for line in text.splitlines() if line.startswith("| qlora |"))


def test_readme_fit_table_is_what_the_code_computes():
    """The README's "Will it fit?" table is fit_table's output at the full profile and the tasks' padded length."""
    from pathlib import Path

    from peftedu import load_base
    from peftedu.course.data import generate_task
    from peftedu.course.training import get_profile

    _, tokenizer = load_base()
    full = get_profile("full")
    rows = generate_task("topic")["train"] + generate_task("extract")["train"]
    seq_len = gpu_memory.padded_length(tokenizer, rows, full.batch_size, full.max_length)
    configs = {"TinyLlama-1.1B": load_model_config("tinyllama-1.1b"), "Qwen2.5-1.5B": load_model_config("qwen2.5-1.5b")}
    text, _ = gpu_memory.fit_table(configs, batch_size=full.batch_size, seq_len=seq_len)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert text in readme and f"{seq_len} tokens" in readme
