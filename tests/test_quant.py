"""peftedu.quant: NF4 / double quantization / Linear4bit, checked against bitsandbytes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peftedu import quant as Q
from peftedu.course import nf4_explorer as E
from peftedu.course.explorers import LIVE_NOTE

SHAPES = [((256, 320), torch.float32), ((7, 9), torch.float32), ((3, 50), torch.bfloat16),
          ((300, 577), torch.float16)]


def weight(shape, dtype=torch.float32, seed=0, std=0.02):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * std).to(dtype)


def bnb_functional():
    return pytest.importorskip("bitsandbytes.functional")


# --------------------------------------------------------------------------- codes
def test_nf4_code_properties():
    code = Q.nf4_code()
    assert code.shape == (16,) and code.dtype == torch.float32
    assert torch.all(code[1:] > code[:-1]), "sorted, no repeats"
    assert code[0] == -1 and code[-1] == 1 and (code == 0).sum() == 1
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7
    # the offset is the rounded form of 1 - (1/30 + 1/32) / 2
    assert Q.NF4_OFFSET == pytest.approx(1 - 0.5 * (1 / 30 + 1 / 32), abs=1e-7)
    # positive levels are N(0,1) quantiles, scaled by the largest
    probs = torch.linspace(Q.NF4_OFFSET, 0.5, 9)[:-1].double()
    expected = torch.special.ndtri(probs) / torch.special.ndtri(probs[:1])
    torch.testing.assert_close(code[8:].double().flip(0), expected, atol=1e-7, rtol=0)


def test_codes_equal_bitsandbytes_tables():
    bf = bnb_functional()
    nf4_ref = bf.get_4bit_type("nf4", device="cpu")
    assert (Q.nf4_code() - nf4_ref).abs().max() <= 1e-7
    assert torch.equal(Q.fp4_code(), bf.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(Q.dynamic_map_8bit(), bf.create_dynamic_map())
    # bnb 0.50.2's get_4bit_type("int4") fails (integer tensor); compare with its literal table
    int4_ref = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0, -0, -1, -2, -3, -4, -5, -6, -7], dtype=torch.float32) / 7
    assert torch.equal(Q.int4_code(), int4_ref)


def test_get_code_rejects_unknown_type():
    with pytest.raises(ValueError, match="quant_type must be one of"):
        Q.get_code("int8")


# --------------------------------------------------------------------------- parity with bnb
@pytest.mark.parametrize("shape,dtype", SHAPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_packed_codes_and_dequant_identical_to_bitsandbytes(shape, dtype, quant_type):
    bf = bnb_functional()
    w = weight(shape, dtype)
    packed_ref, state_ref = bf.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    state = Q.quantize_4bit(w, quant_type, blocksize=64)
    assert torch.equal(state.packed, packed_ref.flatten())
    assert torch.equal(state.absmax, state_ref.absmax)
    ours, ref = Q.dequantize_blockwise(state), bf.dequantize_4bit(packed_ref, state_ref)
    assert ours.dtype == ref.dtype == dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape,dtype", SHAPES)
def test_double_quant_within_one_8bit_code_of_bitsandbytes(shape, dtype):
    bf = bnb_functional()
    w = weight(shape, dtype, seed=1)
    packed_ref, state_ref = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    state = Q.quantize_nf4(w, blocksize=64, double_quant=True)
    assert torch.equal(state.packed, packed_ref.flatten())
    assert torch.equal(state.nested_offset, state_ref.offset)
    assert torch.equal(state.nested_absmax, state_ref.state2.absmax)
    # absmax as rebuilt from 8 bits: ours vs bnb's differ by at most one step of the 8-bit code
    code = Q.dynamic_map_8bit()
    scale = Q._expand_blocks(torch.ones(state.absmax.numel()), state.nested_absmax, 256)
    ours = Q._expand_blocks(code[state.absmax.long()], state.nested_absmax, 256)
    ref = Q._expand_blocks(code[state_ref.absmax.long()], state.nested_absmax, 256)
    max_step = (code[1:] - code[:-1]).max()
    assert torch.all((ours - ref).abs() <= max_step * scale * (1 + 1e-6))
    # ours is the exact nearest 8-bit level (bnb's CPU kernel uses a 65,536-bin lookup table)
    absmax_fp32 = Q._normalize_blocks(w.reshape(-1).float(), 64)[1]
    normalized, _ = Q._normalize_blocks(absmax_fp32 - state.nested_offset, 256)
    distance = (normalized.unsqueeze(1) - code).abs()
    chosen = distance.gather(1, state.absmax.long().unsqueeze(1)).squeeze(1)
    assert torch.all(chosen <= distance.min(1).values)
    # so every dequantized weight is within one 8-bit absmax step of bnb's
    diff = (Q.dequantize_blockwise(state).float() - bf.dequantize_4bit(packed_ref, state_ref).float()).abs()
    per_weight_bound = (max_step * scale).repeat_interleave(64)[: w.numel()]
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2 * w.abs().max().item()
    assert torch.all(diff.reshape(-1) <= per_weight_bound + tolerance)


def test_roundtrip_error_is_at_most_half_the_widest_gap():
    w = weight((64, 128), seed=2)
    for quant_type in Q.QUANT_TYPES:
        state = Q.quantize_4bit(w, quant_type)
        levels = state.code.sort().values
        half_gap = ((levels[1:] - levels[:-1]).max() / 2).item()
        error = (Q.dequantize_blockwise(state) - w).abs().reshape(-1, 64)
        assert torch.all(error <= half_gap * state.absmax.unsqueeze(1) + 1e-7)
        # block maxima are stored exactly (code has +-1)
        row_max = w.reshape(-1, 64).abs().argmax(1)
        exact = Q.dequantize_blockwise(state).reshape(-1, 64).gather(1, row_max[:, None])
        torch.testing.assert_close(exact.abs().squeeze(1), state.absmax, atol=0, rtol=0)


def test_zero_block_and_odd_length():
    w = torch.zeros(3, 5)
    w[2, 4] = 0.5
    state = Q.quantize_nf4(w, blocksize=8)
    assert state.packed.numel() == 8  # ceil(15 / 2)
    assert torch.equal(Q.dequantize_nf4(state), w)


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="floating-point"):
        Q.quantize_nf4(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        Q.quantize_nf4(torch.ones(0, 4))
    with pytest.raises(ValueError, match="inf or nan"):
        Q.quantize_nf4(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="blocksize"):
        Q.quantize_nf4(torch.ones(4, 4), blocksize=0)
    with pytest.raises(ValueError, match="16 levels"):
        Q.quantize_blockwise(torch.ones(4, 4), torch.linspace(-1, 1, 8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        Q.quantize_blockwise(torch.ones(4, 4), torch.linspace(-2, 2, 16))


# --------------------------------------------------------------------------- storage
def test_bits_per_parameter_measured_from_storage():
    w = weight((256, 1024), seed=3)  # 4096 blocks of 64 = 16 nested blocks of 256
    plain = Q.quantize_nf4(w)
    assert Q.bits_per_parameter(plain) == 4.5
    nested = Q.quantize_nf4(w, double_quant=True)
    assert nested.absmax.dtype == torch.uint8 and nested.nested_absmax.shape == (16,)
    assert Q.bits_per_parameter(nested) == 4 + 8 / 64 + 32 / (64 * 256) + 32 / w.numel()
    assert Q.bits_per_parameter(nested) == pytest.approx(4.127, abs=1e-3)
    assert Q.storage_bytes(nested, include_code_tables=True) == Q.storage_bytes(nested) + 4 * (16 + 256)


# --------------------------------------------------------------------------- Linear4bit
def make_linear(in_features=96, out_features=40, bias=True, seed=4):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("double_quant", [False, True])
def test_linear4bit_forward_equals_f_linear_with_dequantized_weight(double_quant):
    linear = make_linear()
    layer = Q.Linear4bit.from_linear(linear, double_quant=double_quant)
    assert (layer.in_features, layer.out_features, layer.double_quant) == (96, 40, double_quant)
    x = torch.randn(2, 5, 96)
    expected = F.linear(x, layer.dequantize(), linear.bias)
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)
    # and it stays close to the full-precision layer
    relative = (layer(x) - linear(x)).norm() / linear(x).norm()
    assert relative < 0.15


def test_linear4bit_gradient_flows_to_input_and_weights_are_frozen():
    layer = Q.Linear4bit.from_linear(make_linear())
    assert all(not p.requires_grad for p in layer.parameters())
    assert {name for name, _ in layer.named_parameters()} == {"bias"}
    assert {"weight_packed", "absmax", "nested_absmax", "nested_offset"} <= set(layer.state_dict())
    assert layer.numel_logical == 96 * 40
    before = {name: b.clone() for name, b in layer.named_buffers()}
    x = torch.randn(3, 96, requires_grad=True)
    layer(x).pow(2).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    F.linear(x_ref, layer.dequantize(), layer.bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert all(torch.equal(before[name], b) for name, b in layer.named_buffers())
    assert layer.bias.grad is None


def test_linear4bit_keeps_no_full_precision_weight_for_backward():
    """The 4-bit saving must hold during training: nothing the size of W is saved between forward and backward."""
    layer = Q.Linear4bit.from_linear(make_linear())
    saved = []
    x = torch.randn(3, 96, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = layer(x)
    assert sum(saved) < 96 * 40 / 4, saved  # plain F.linear would save the (40, 96) weight
    layer.bias.requires_grad_(True)  # a trainable bias still gets its gradient
    out = layer(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(layer.bias.grad, grad.sum(0), atol=0, rtol=0)
    torch.testing.assert_close(x.grad, grad @ layer.dequantize(), atol=0, rtol=0)


def test_linear4bit_compute_dtype_and_to_dtype_keep_statistics_fp32():
    layer = Q.Linear4bit.from_linear(make_linear(), compute_dtype=torch.bfloat16)
    x = torch.randn(4, 96)
    out = layer(x)
    assert out.dtype == torch.float32
    expected = F.linear(x.bfloat16(), layer.dequantize().bfloat16(), layer.bias.bfloat16()).float()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    reference = layer.dequantize()
    layer.to(torch.bfloat16)
    assert layer.nested_absmax.dtype == torch.float32 and layer.code.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16
    torch.testing.assert_close(layer.dequantize(), reference, atol=0, rtol=0)


def test_linear4bit_requantize_from_weight_state_dict_and_to_linear():
    linear = make_linear(bias=False)
    layer = Q.Linear4bit.from_linear(linear)
    new_weight = linear.weight.detach() + 0.05
    layer.requantize(new_weight)
    torch.testing.assert_close(layer.dequantize(), Q.Linear4bit.from_weight(new_weight).dequantize(),
                               atol=0, rtol=0)
    assert (layer.dequantize() - new_weight).abs().max() < 0.14 * new_weight.abs().max()  # NF4 half-gap
    with pytest.raises(ValueError, match="shape"):
        layer.requantize(torch.zeros(3, 3))
    fresh = Q.Linear4bit.from_weight(torch.zeros(40, 96))
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh.dequantize(), layer.dequantize(), atol=0, rtol=0)
    dense = layer.to_linear(torch.bfloat16)
    assert isinstance(dense, nn.Linear) and dense.weight.dtype == torch.bfloat16 and dense.bias is None
    with pytest.raises(ValueError, match="nn.Linear"):
        Q.Linear4bit.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="2-D"):
        Q.Linear4bit.from_weight(torch.ones(4))
    with pytest.raises(ValueError, match="compute_dtype"):
        Q.Linear4bit.from_weight(torch.ones(4, 4), compute_dtype=torch.int8)
    # a layer built on a custom code re-quantizes with that code
    custom = Q.Linear4bit(Q.quantize_blockwise(torch.randn(8, 16), torch.linspace(-1, 1, 16)))
    custom.requantize(torch.randn(8, 16))
    assert custom.quant_type == "custom" and torch.equal(custom.code, torch.linspace(-1, 1, 16))


# --------------------------------------------------------------------------- quantize_model
class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.embed = nn.Embedding(50, 64)
        self.blocks = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(64, 128), "down": nn.Linear(128, 64)})
                                    for _ in range(2))
        self.lm_head = nn.Linear(64, 50, bias=False)

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = h + block["down"](torch.relu(block["up"](h)))
        return self.lm_head(h)


def test_quantize_model_swaps_linears_except_lm_head():
    model, ids = TinyLM(), torch.randint(0, 50, (2, 7))
    reference, n_params = model(ids), Q.count_logical_parameters(model)
    fp32_bytes = Q.model_nbytes(model)
    assert Q.quantize_model(model) is model
    assert isinstance(model.lm_head, nn.Linear)
    assert all(isinstance(block[k], Q.Linear4bit) for block in model.blocks for k in ("up", "down"))
    assert Q.count_logical_parameters(model) == n_params
    assert Q.model_nbytes(model) < fp32_bytes
    out = model(ids)
    assert (out - reference).norm() / reference.norm() < 0.1


def test_quantize_model_target_and_clear_errors():
    model = Q.quantize_model(TinyLM(), target=lambda name, module: name.endswith("up"), double_quant=False)
    assert isinstance(model.blocks[0]["up"], Q.Linear4bit) and isinstance(model.blocks[0]["down"], nn.Linear)
    assert not model.blocks[0]["up"].double_quant
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        Q.quantize_model(TinyLM(), target=lambda name, module: False)
    with pytest.raises(ValueError, match="match no module"):
        Q.quantize_model(TinyLM(), skip_modules=["output"])
    with pytest.raises(ValueError, match="quant_type"):
        Q.quantize_model(TinyLM(), quant_type="int8")
    model = Q.quantize_model(TinyLM(), skip_modules="down")
    assert isinstance(model.lm_head, Q.Linear4bit) and isinstance(model.blocks[1]["down"], nn.Linear)


# --------------------------------------------------------------------------- paged optimizer, explorer
def test_paged_adamw_is_none_without_cuda():
    params = [nn.Parameter(torch.zeros(3))]
    optimizer = Q.paged_adamw_or_none(params, lr=1e-3)
    if torch.cuda.is_available():
        bnb = pytest.importorskip("bitsandbytes")
        assert isinstance(optimizer, bnb.optim.PagedAdamW)
    else:
        assert optimizer is None
    with pytest.raises(ValueError, match="lr"):
        Q.paged_adamw_or_none(params, lr=0)


def test_histogram_explorer_nf4_uses_levels_most_evenly_on_gaussian_weights():
    data = E.nf4_histogram_explorer(weight((128, 512), seed=6))
    assert data["counts"].sum() == 128 * 512 and data["bin_edges"].shape == (102,)

    def entropy(p):
        p = p[p > 0]
        return -(p * p.log2()).sum().item()

    for name in Q.QUANT_TYPES:
        assert data["level_usage"][name].sum() == pytest.approx(1.0)
        assert torch.all(data["levels"][name][1:] >= data["levels"][name][:-1])
    usage = data["level_usage"]
    assert entropy(usage["nf4"]) > entropy(usage["int4"]) and entropy(usage["nf4"]) > entropy(usage["fp4"])
    assert data["mse"]["nf4"] < data["mse"]["int4"] and data["mse"]["nf4"] < data["mse"]["fp4"]
    with pytest.raises(ValueError, match="bins"):
        E.nf4_histogram_explorer(torch.ones(4), bins=1)


def test_histogram_widget_builds_headless():
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    box = E.nf4_histogram_widget({"a": weight((16, 64)), "b": weight((16, 64), seed=1)})
    slider = box.children[0]
    assert (slider.min, slider.max) == (0, 1)
    slider.value = 1  # redraws without a front-end
    with pytest.raises(ValueError, match="at least one"):
        E.nf4_histogram_widget({})


def test_histogram_widget_static_view_shows_default_state_and_note():
    pytest.importorskip("ipywidgets")
    import base64

    import matplotlib

    matplotlib.use("Agg")
    bundle = E.nf4_histogram_widget({"a": weight((16, 64))})._repr_mimebundle_()
    assert bundle["text/plain"] == LIVE_NOTE  # not the raw "VBox(children=..."
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    assert "application/vnd.jupyter.widget-view+json" in bundle  # a live front-end still renders the widget


# --------------------------------------------------------------------------- the real model
def test_smollm2_first_block_quantized():
    """Real SmolLM2-135M weights, first decoder block only (the full model: scripts/measure_quant.py)."""
    models = pytest.importorskip("peftedu.course.models")
    try:
        model, tok = models.load_base()
    except (FileNotFoundError, OSError) as error:
        pytest.skip(f"base model not available offline: {error}")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(ids).logits[0, -1]
    n_params, fp32_bytes = Q.count_logical_parameters(model), Q.model_nbytes(model)
    Q.quantize_model(model, target=lambda name, module: name.startswith("model.layers.0."))
    layers = [m for m in model.modules() if isinstance(m, Q.Linear4bit)]
    assert len(layers) == 7 and isinstance(model.lm_head, nn.Linear)
    assert Q.count_logical_parameters(model) == n_params == 134_515_008
    quantized = sum(m.numel_logical for m in layers)
    storage = sum(Q.storage_bytes(m.state) for m in layers)
    assert 4.125 < 8 * storage / quantized < 4.135
    shared_codes = 4 * (16 + 256)  # one NF4 table and one 8-bit table, shared by all layers
    assert Q.model_nbytes(model) == fp32_bytes - 4 * quantized + storage + shared_codes
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert logits.argmax() == reference.argmax()  # " Paris" survives 4-bit layer 0
    top = reference.argmax()
    log_p, log_p_ref = torch.log_softmax(logits, -1)[top], torch.log_softmax(reference, -1)[top]
    assert abs(log_p - log_p_ref) < 0.5
    assert (logits - reference).norm() / reference.norm() < 0.35  # each NF4 weight is ~10% off
