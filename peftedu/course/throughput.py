"""Training throughput at a realistic length: LoRA against full fine-tuning, and peftedu against HF peft.

The showdown trains on short instruction rows (about 75 tokens): on a GPU such a step is bound by
kernel launches, and its MFU says little about a real run. Here every step is ``batch_size`` packed
sequences of ``seq_len`` random token ids (packing: documents laid end to end, no padding), in bf16,
with the same model, data and step count for every method, one after another in one process.

Model FLOPs utilisation (MFU, 模型算力利用率) = achieved model FLOP/s ÷ the GPU's peak dense bf16 FLOP/s,
with the model FLOPs per token counted as in Chowdhery et al. 2022 (PaLM, appendix B):

* full fine-tuning: ``6·N + 12·L·d·s`` (forward 2N; backward 4N: gradients of the activations *and* of
  the weights);
* LoRA (frozen base): ``4·N + 6·N_a + 12·L·d·s`` (the frozen N gets no weight gradient: forward 2N,
  activation gradients 2N; the adapters' N_a parameters cost 6 each);

where N counts the weights of every matrix product (all ``nn.Linear`` layers, ``lm_head`` included; the
embedding lookup is not a product), L the layers, d the hidden size and s the sequence length (the
attention scores and their weighted sum, which have no weights; PaLM counts them for the full square).
Recomputation is not counted: no gradient checkpointing is used here.

    python -m peftedu showdown --throughput --model tinyllama-1.1b          # on a GPU, random weights
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from ..lora import LoraConfig
from ..peft_model import get_peft_model
from .models import build_from_config, pick_device
from .showdown_setup import peak_flops

#: LoRA on every linear layer of a Llama-style block (the setting of QLoRA, Dettmers et al. 2023).
LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def matmul_params(model: torch.nn.Module) -> int:
    """Weights that take part in a matrix product: every ``nn.Linear`` (``lm_head`` too, tied or not)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(config, n: int, seq_len: int, *, trainable_matmul: int, adapter: int) -> float:
    """PaLM's count (module docstring): ``6`` per trained weight, ``4`` per frozen one, plus attention.
    ``n``: the base model's matrix weights (:func:`matmul_params`, counted before adapters are attached)."""
    frozen = n - trainable_matmul
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return 6 * trainable_matmul + 4 * frozen + 6 * adapter + attention


def _build(model_name: str, device, seed: int):
    torch.manual_seed(seed)
    return build_from_config(model_name, device=device, dtype=torch.bfloat16).train()


def _attach(model, method: str, rank: int):
    """Returns (model, trainable matrix weights of the base, adapter parameters)."""
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, matmul_params(model), 0
    targets = [name for name in LLAMA_LINEAR if any(n.endswith(name) for n, _ in model.named_modules())]
    if method == "lora":
        wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                   lora_dropout=0.0))
    elif method == "lora (peft)":
        import peft  # here, not at the top: HF peft is an optional (dev) dependency

        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    else:
        raise ValueError(f"Unknown method {method!r}; choose from full, lora, 'lora (peft)'.")
    adapter = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    return wrapped, 0, adapter


def measure(model_name: str = "tinyllama-1.1b", *, methods=("full", "lora", "lora (peft)"), seq_len: int = 2048,
            batch_size: int = 8, steps: int = 10, warmup: int = 3, rank: int = 16, device=None, seed: int = 0) -> dict:
    """Time ``steps`` optimizer steps of each method (after ``warmup``) on the same random packed batch."""
    device = pick_device(device)
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("steps", steps), ("rank", rank)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    rows = []
    for method in methods:
        model = _build(model_name, device, seed)
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator).to(device)
        n = matmul_params(model)
        wrapped, trainable_matmul, adapter = _attach(model, method, rank)
        params = [p for p in wrapped.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
        per_token = flops_per_token(model.config, n, seq_len, trainable_matmul=trainable_matmul, adapter=adapter)

        def step():
            loss = wrapped(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_s = (time.perf_counter() - start) / steps
        tokens_per_s = batch_size * seq_len / step_s
        peak = peak_flops(device)
        rows.append({
            "method": method, "trainable": sum(p.numel() for p in params), "flops_per_token": per_token,
            "step_s": step_s, "tokens_per_s": tokens_per_s, "tflops": per_token * tokens_per_s / 1e12,
            "mfu": None if peak is None else per_token * tokens_per_s / peak,
            "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "loss_finite": bool(torch.isfinite(loss).item()),
        })
        del wrapped, model, optimizer, params, ids, loss
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"model": model_name, "seq_len": seq_len, "batch_size": batch_size, "steps": steps, "warmup": warmup,
            "rank": rank, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "peak_tflops": None if peak_flops(device) is None else peak_flops(device) / 1e12,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [f"# Throughput: {result['model']} (random weights, bf16), {result['device']}", "",
             f"Every method: {result['steps']} timed optimizer steps after {result['warmup']} warm-up steps, each of "
             f"{result['batch_size']} packed sequences × {result['seq_len']} tokens "
             f"({result['batch_size'] * result['seq_len']:,} tokens), AdamW; LoRA r={result['rank']}, "
             f"α={2 * result['rank']} on every linear layer of each block. torch {result['torch']}, "
             f"{result['date']}. MFU against {result['peak_tflops'] or '–'} TFLOP/s dense bf16 "
             "(FLOPs per token: 6N full, 4N + 6N_adapter LoRA, + 12·L·d·s attention; peftedu/course/throughput.py).", "",
             "| method | trainable | s/step | tokens/s | model TFLOP/s | MFU | peak MB | time ÷ full |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    full = next((r for r in result["rows"] if r["method"] == "full"), None)
    for r in result["rows"]:
        mfu = "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"
        ratio = "–" if full is None else f"{r['step_s'] / full['step_s']:.2f}"
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tflops']:.0f} | {mfu} | {peak} | {ratio} |")
    ours = next((r for r in result["rows"] if r["method"] == "lora"), None)
    theirs = next((r for r in result["rows"] if r["method"] == "lora (peft)"), None)
    if ours and theirs:
        lines += ["", f"peftedu's LoRA step takes {ours['step_s'] / theirs['step_s']:.2f}× HF peft's."]
    return "\n".join(lines) + "\n"


def main(args) -> None:
    result = measure(args.model or "tinyllama-1.1b", seq_len=args.seq_len, batch_size=args.batch_size,
                     steps=args.steps, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "throughput_" + result["device"].replace(" ", "_").lower()
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(to_markdown(result))
    print(to_markdown(result))
