"""Measure 4-bit quantization on SmolLM2-135M's real weights -> results/quant.json, results/quant.md.

    python scripts/measure_quant.py            (about 2-5 minutes on a 2-core CPU)

What it measures (everything except the timings is deterministic):
1. error of NF4 vs INT4 vs FP4 (blocksize 64) over all linear weights except lm_head, plus an
   i.i.d. Gaussian control tensor;
2. storage: bits per parameter and bytes of the model in fp32, bf16 and with 4-bit linears;
3. agreement with bitsandbytes (if installed): identical packed bytes, max dequantization diff;
4. what merging a LoRA delta into the 4-bit base costs, for the three options.

Caveat printed into the results: the course's offline SmolLM2 weights come from a Q4_1 GGUF
file (16 evenly spaced levels per block of 32), so they are already on a 4-bit uniform grid.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from peftedu import quant as Q
from peftedu.course.models import load_base
from peftedu.course.nf4_explorer import linear_weights

RESULTS = Path(__file__).resolve().parent.parent / "results"
BLOCKSIZE = 64
LORA_RANK = 8
DELTA_RELATIVE_NORMS = (1e-3, 1e-2, 1e-1)  # 1e-1: order of |dW|/|W| in the LoRA paper, section 7.3


class ErrorSum:
    """Accumulates squared and absolute errors over many tensors (float64)."""

    def __init__(self):
        self.sq = self.abs = self.ref_sq = 0.0
        self.n = 0

    def add(self, approx: torch.Tensor, exact: torch.Tensor) -> float:
        diff = (approx.double() - exact.double())
        sq = diff.pow(2).sum().item()
        self.sq += sq
        self.abs += diff.abs().sum().item()
        self.ref_sq += exact.double().pow(2).sum().item()
        self.n += exact.numel()
        return sq / exact.numel()

    def summary(self) -> dict:
        return {"mse": self.sq / self.n, "mae": self.abs / self.n, "relative_frobenius": (self.sq / self.ref_sq) ** 0.5}


def quantization_errors(weights: dict[str, torch.Tensor]) -> dict:
    kinds = {"nf4": ("nf4", False), "int4": ("int4", False), "fp4": ("fp4", False), "nf4+dq": ("nf4", True)}
    sums = {kind: ErrorSum() for kind in kinds}
    lowest = {kind: 0 for kind in ("nf4", "int4", "fp4")}
    for w in weights.values():
        per_layer = {}
        for kind, (quant_type, dq) in kinds.items():
            state = Q.quantize_4bit(w, quant_type, BLOCKSIZE, double_quant=dq)
            per_layer[kind] = sums[kind].add(Q.dequantize_blockwise(state), w)
        lowest[min(lowest, key=per_layer.__getitem__)] += 1
    table = {kind: s.summary() for kind, s in sums.items()}
    table["layers_where_lowest_mse"] = lowest
    return table


def storage(model, weights) -> dict:
    n_params = Q.count_logical_parameters(model)
    bits, sizes = {}, {"fp32": Q.model_nbytes(model), "bf16": 2 * n_params}
    for dq in (False, True):
        key = "nf4+dq" if dq else "nf4"
        quantized = Q.quantize_model(load_base()[0], double_quant=dq)
        layers = [m for m in quantized.modules() if isinstance(m, Q.Linear4bit)]
        bits[key] = sum(8 * Q.storage_bytes(m.state) for m in layers) / sum(m.numel_logical for m in layers)
        sizes[f"{key} linears, rest fp32"] = Q.model_nbytes(quantized)
        if dq:
            sizes[f"{key} linears, rest bf16"] = Q.model_nbytes(quantized.to(torch.bfloat16))
    return {"bits_per_parameter": bits, "model_bytes": sizes, "parameters": n_params,
            "quantized_parameters": sum(w.numel() for w in weights.values()),
            "embedding_parameters (tied with lm_head, kept)": model.get_input_embeddings().weight.numel()}


def bitsandbytes_agreement(weights) -> dict | None:
    try:
        import bitsandbytes
        import bitsandbytes.functional as bf
    except ImportError:
        return None
    code = Q.dynamic_map_8bit()
    result = {"bitsandbytes": bitsandbytes.__version__, "layers": len(weights), "packed_bytes_identical_layers": 0,
              "max_abs_dequant_diff": 0.0, "max_abs_dequant_diff_double_quant": 0.0,
              "max_abs_absmax_diff_over_block_absmax_double_quant": 0.0, "absmax_codes_differing_double_quant": 0,
              "absmax_codes_total": 0, "max_absmax_code_index_diff": 0, "ours_not_nearest_8bit_level": 0}
    for w in weights.values():
        packed, ref_state = bf.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4")
        state = Q.quantize_nf4(w, BLOCKSIZE)
        result["packed_bytes_identical_layers"] += int(torch.equal(packed.flatten(), state.packed))
        diff = (bf.dequantize_4bit(packed, ref_state) - Q.dequantize_nf4(state)).abs().max().item()
        result["max_abs_dequant_diff"] = max(result["max_abs_dequant_diff"], diff)
        absmax = state.absmax
        packed, ref_state = bf.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4", compress_statistics=True)
        state = Q.quantize_nf4(w, BLOCKSIZE, double_quant=True)
        diff = (bf.dequantize_4bit(packed, ref_state) - Q.dequantize_nf4(state)).abs().max().item()
        result["max_abs_dequant_diff_double_quant"] = max(result["max_abs_dequant_diff_double_quant"], diff)
        ours = Q._expand_blocks(code[state.absmax.long()], state.nested_absmax, 256)
        theirs = Q._expand_blocks(code[ref_state.absmax.long()], state.nested_absmax, 256)
        relative = ((ours - theirs).abs() / absmax).max().item()
        key = "max_abs_absmax_diff_over_block_absmax_double_quant"
        result[key] = max(result[key], relative)
        for name, rebuilt in (("ours", ours + state.nested_offset), ("bitsandbytes", theirs + state.nested_offset)):
            key = f"max_relative_absmax_error_double_quant_{name}"  # vs the exact fp32 block absmax
            result[key] = max(result.get(key, 0.0), ((rebuilt - absmax).abs() / absmax).max().item())
        index_diff = (ref_state.absmax.int() - state.absmax.int()).abs()
        result["absmax_codes_differing_double_quant"] += int((index_diff > 0).sum())
        result["absmax_codes_total"] += index_diff.numel()
        result["max_absmax_code_index_diff"] = max(result["max_absmax_code_index_diff"], int(index_diff.max()))
        normalized, _ = Q._normalize_blocks(absmax - state.nested_offset, 256)
        distance = (normalized.unsqueeze(1) - code).abs()
        chosen = distance.gather(1, state.absmax.long().unsqueeze(1)).squeeze(1)
        result["ours_not_nearest_8bit_level"] += int((chosen > distance.min(1).values).sum())
    return result


def merge_costs(weights) -> dict:
    """dequant(W) + BA (what the unmerged QLoRA layer computes) vs the three ways to merge."""
    generator = torch.Generator().manual_seed(0)
    keys = ("requantize", "requantize_no_delta", "bf16_copy", "base_error", "delta", "kept_requantize",
            "kept_bf16", "changed_bytes", "bytes")
    sums = {rel: dict.fromkeys(keys, 0.0) for rel in DELTA_RELATIVE_NORMS}
    for w in weights.values():
        base = Q.Linear4bit.from_weight(w, blocksize=BLOCKSIZE, double_quant=True)
        w_hat = base.dequantize()
        w_same = Q.Linear4bit.from_weight(w_hat, blocksize=BLOCKSIZE, double_quant=True).dequantize()
        for rel in DELTA_RELATIVE_NORMS:
            b = torch.randn(w.shape[0], LORA_RANK, generator=generator)
            a = torch.randn(LORA_RANK, w.shape[1], generator=generator)
            delta = b @ a
            delta *= rel * w.norm() / delta.norm()
            target = w_hat + delta
            requantized = Q.Linear4bit.from_weight(target, blocksize=BLOCKSIZE, double_quant=True)
            w_re, w_bf16 = requantized.dequantize(), target.bfloat16().float()
            s = sums[rel]
            s["requantize"] += (w_re - target).double().pow(2).sum().item()
            s["requantize_no_delta"] += (w_same - w_hat).double().pow(2).sum().item()
            s["bf16_copy"] += (w_bf16 - target).double().pow(2).sum().item()
            s["base_error"] += (w_hat - w).double().pow(2).sum().item()
            s["delta"] += delta.double().pow(2).sum().item()
            s["kept_requantize"] += ((w_re - w_hat).double() * delta.double()).sum().item()
            s["kept_bf16"] += ((w_bf16 - w_hat).double() * delta.double()).sum().item()
            s["changed_bytes"] += int((requantized.weight_packed != base.weight_packed).sum())
            s["bytes"] += base.weight_packed.numel()
    out = {}
    for rel, s in sums.items():
        delta_norm = s["delta"] ** 0.5
        out[f"delta_norm={rel:g}*|W|"] = {
            "lora_rank": LORA_RANK,
            "keep_unmerged_error/|delta|": 0.0,
            "merge_into_bf16_copy_error/|delta|": s["bf16_copy"] ** 0.5 / delta_norm,
            "requantize_error/|delta|": s["requantize"] ** 0.5 / delta_norm,
            "requantize_without_delta_error/|delta|": s["requantize_no_delta"] ** 0.5 / delta_norm,
            "base_quantization_error/|delta|": s["base_error"] ** 0.5 / delta_norm,
            "fraction_of_delta_kept_bf16_copy": s["kept_bf16"] / s["delta"],
            "fraction_of_delta_kept_requantize": s["kept_requantize"] / s["delta"],
            "packed_bytes_changed_by_requantize": s["changed_bytes"] / s["bytes"],
        }
    return out


def markdown(results: dict) -> str:
    e = results["errors_smollm2"]
    g = results["errors_gaussian_control"]
    lines = ["# 4-bit quantization of SmolLM2-135M (measured by scripts/measure_quant.py)", "",
             f"Blocksize {BLOCKSIZE}, {results['n_linear_layers']} linear layers (all but lm_head in a full run) "
             f"({results['storage']['quantized_parameters']:,} weights). {results['caveat']}", "",
             "## Quantization error (lower is better)", "",
             "| code | MSE (SmolLM2) | mean abs (SmolLM2) | rel. Frobenius (SmolLM2) | MSE (Gaussian) | rel. Frobenius (Gaussian) |",
             "|---|---|---|---|---|---|"]
    for kind in ("nf4", "int4", "fp4", "nf4+dq"):
        lines.append(f"| {kind} | {e[kind]['mse']:.4e} | {e[kind]['mae']:.4e} | {e[kind]['relative_frobenius']:.4f} "
                     f"| {g[kind]['mse']:.4e} | {g[kind]['relative_frobenius']:.4f} |")
    lines += ["", f"Layers where each code has the lowest MSE: {e['layers_where_lowest_mse']}.",
              f"NF4 lowest overall on SmolLM2: {results['nf4_wins_smollm2']}; "
              f"on the Gaussian control: {results['nf4_wins_gaussian']}.", "", "## Storage", ""]
    s = results["storage"]
    lines += [f"Bits per parameter (measured from the stored tensors): NF4 {s['bits_per_parameter']['nf4']:.4f}, "
              f"NF4 + double quant {s['bits_per_parameter']['nf4+dq']:.4f}.", "", "| model | bytes | MB |", "|---|---|---|"]
    for name, nbytes in s["model_bytes"].items():
        lines.append(f"| {name} | {nbytes:,} | {nbytes / 1e6:.1f} |")
    lines += ["", f"The tied embedding ({s['embedding_parameters (tied with lm_head, kept)']:,} parameters) "
              "stays unquantized, as in QLoRA; in a 135M model it is a large share of the bytes.", ""]
    if results["bitsandbytes_agreement"]:
        b = results["bitsandbytes_agreement"]
        lines += ["## Agreement with bitsandbytes " + b["bitsandbytes"], "",
                  f"Packed bytes identical in {b['packed_bytes_identical_layers']}/{b['layers']} layers; "
                  f"max |dequant diff| {b['max_abs_dequant_diff']:.3e} (no double quant), "
                  f"{b['max_abs_dequant_diff_double_quant']:.3e} with double quant, where "
                  f"{b['absmax_codes_differing_double_quant']}/{b['absmax_codes_total']} 8-bit absmax codes differ by at most "
                  f"{b['max_absmax_code_index_diff']} indices (largest effect on a block absmax: "
                  f"{b['max_abs_absmax_diff_over_block_absmax_double_quant']:.2%} of it; against the exact fp32 "
                  f"absmax the worst block is {b['max_relative_absmax_error_double_quant_ours']:.2%} off for ours and "
                  f"{b['max_relative_absmax_error_double_quant_bitsandbytes']:.2%} for bitsandbytes: small blocks in a "
                  "group of 256 share one 8-bit scale). bitsandbytes' CPU kernel "
                  "rounds through a 65,536-bin lookup table, coarser than the dynamic map's levels near 0; ours is "
                  f"the exact nearest level (not nearest in {b['ours_not_nearest_8bit_level']} cases).", ""]
    lines += ["## Merging a LoRA delta into the 4-bit base", "",
              "Random rank-8 B·A (Gaussian factors) scaled to a fraction of |W| per layer; errors are Frobenius norms over all "
              "layers relative to |delta|, against dequant(W) + BA (what the unmerged model computes).", "",
              "| delta size | keep unmerged | bf16 copy of dequant(W)+BA | re-quantize to NF4 | re-quantize with zero delta "
              "| delta kept: bf16 copy | delta kept: re-quantized | packed bytes changed |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in results["merge"].items():
        lines.append(f"| {name} | {m['keep_unmerged_error/|delta|']:.0f} | {m['merge_into_bf16_copy_error/|delta|']:.3f} "
                     f"| {m['requantize_error/|delta|']:.2f} | {m['requantize_without_delta_error/|delta|']:.2f} "
                     f"| {m['fraction_of_delta_kept_bf16_copy']:.3f} | {m['fraction_of_delta_kept_requantize']:.3f} "
                     f"| {m['packed_bytes_changed_by_requantize']:.2e} |")
    lines += ["", "'delta kept' = <merged - dequant(W), BA> / |BA|^2: 1 keeps the adapter, 0 erases it. "
              "'re-quantize with zero delta': re-quantizing dequant(W) alone already moves it (the 8-bit absmax "
              "codes are recomputed), shown in units of |delta|.", "",
              "Options: (1) keep the adapter unmerged: exact, costs r*(in+out) extra multiply-adds per token; "
              "(2) merge into a bf16 copy of the dequantized base: error only from bf16 rounding, but the merged "
              "model is 16 bits per weight; (3) re-quantize the merged weight to NF4: keeps 4 bits, but the "
              "re-quantization error is compared above with the size of the delta it is meant to keep.", "",
              f"Total time {results['seconds']:.0f} s (the only non-deterministic number)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=None, help="only the first N linear layers (a quick check)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for quant.json and quant.md")
    args = parser.parse_args(argv)
    start = time.time()
    torch.manual_seed(0)
    model, _ = load_base()
    weights = linear_weights(model)
    if args.layers is not None:
        if args.layers < 1:
            parser.error(f"--layers must be >= 1, got {args.layers}")
        weights = dict(list(weights.items())[: args.layers])
    gaussian = {"gaussian": torch.randn(1024, 4096, generator=torch.Generator().manual_seed(0))}
    errors, control = quantization_errors(weights), quantization_errors(gaussian)
    results = {
        "model": "SmolLM2-135M-Instruct (peftedu.course.models.load_base)",
        "caveat": "These offline weights were de-quantized from a Q4_1 GGUF file (16 evenly spaced levels per "
                  "block of 32), so they already sit on a uniform 4-bit grid; the Gaussian control is i.i.d. N(0,1).",
        "blocksize": BLOCKSIZE,
        "n_linear_layers": len(weights),
        "errors_smollm2": errors,
        "errors_gaussian_control": control,
        "nf4_wins_smollm2": min(("nf4", "int4", "fp4"), key=lambda k: errors[k]["mse"]) == "nf4",
        "nf4_wins_gaussian": min(("nf4", "int4", "fp4"), key=lambda k: control[k]["mse"]) == "nf4",
        "storage": storage(model, weights),
        "bitsandbytes_agreement": bitsandbytes_agreement(weights),
        "merge": merge_costs(weights),
    }
    results["seconds"] = time.time() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quant.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "quant.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
