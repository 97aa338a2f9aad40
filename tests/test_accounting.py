"""Parameter counts equal HF peft's; memory estimates reproduce (and correct) the source tutorials."""


import pytest
import torch
from torch import nn

from peftedu.counting import count_parameters, format_trainable_parameters, print_trainable_parameters
from peftedu.course.memory import GB, GIB, bits_of, estimate_training_memory, nf4_bits_per_param
from peftedu.course.recipes import memory_table, method_memory
from peftedu.course.peak_memory import measure_peak_memory
from peftedu.course.shapes import LLAMA_SHAPES, DecoderShape, activation_memory_gb
from peftedu.course.models import build_from_config, load_model_config

peft = pytest.importorskip("peft")

BLOOM_PARAMS = 1_303_111_680  # source 002 prints this count; our meta build must agree


# ------------------------------------------------------------------------------------------------
# counting
# ------------------------------------------------------------------------------------------------


def test_tied_embeddings_count_once_on_meta():
    model = build_from_config("smollm2-135m")
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert with_duplicates > unique  # lm_head.weight is embed_tokens.weight
    assert count_parameters(model) == (unique, unique) == (134_515_008, 134_515_008)


@pytest.mark.parametrize(
    "config",
    [
        lambda: peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
        lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10),
    ],
    ids=["lora", "prompt-tuning"],
)
def test_counts_and_printed_line_equal_peft(config, capsys):
    peft_model = peft.get_peft_model(build_from_config("smollm2-135m"), config())
    assert count_parameters(peft_model) == peft_model.get_nb_trainable_parameters()
    peft_model.print_trainable_parameters()
    theirs = capsys.readouterr().out
    print_trainable_parameters(peft_model)
    assert capsys.readouterr().out == theirs
    assert theirs.startswith("trainable params: ")


def test_format_by_hand():
    layer = nn.Linear(3, 2)
    layer.weight.requires_grad_(False)
    assert format_trainable_parameters(layer) == "trainable params: 2 || all params: 8 || trainable%: 25.0000"
    with pytest.raises(ValueError, match="no parameters"):
        format_trainable_parameters(nn.ReLU())


def test_bitfit_on_bloom_and_the_source_percentage():
    """Source 002: BitFit trains 544,768 of 1,303,111,680 params and calls it 0.418%: it is 0.0418%."""
    model = build_from_config("bloom-1b4-zh")
    for name, param in model.named_parameters():
        param.requires_grad_("bias" in name)
    trainable, total = count_parameters(model)
    assert (trainable, total) == (544_768, BLOOM_PARAMS)
    assert format_trainable_parameters(model).endswith("trainable%: 0.0418")


def test_bitsandbytes_4bit_counts_like_peft():
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(64, 32, bias=True, quant_type="nf4", compress_statistics=True)
    model = nn.Sequential(layer, nn.Linear(32, 8))
    # Not yet quantized: the full fp32 matrix is stored; peft would count it twice, we count it once.
    assert count_parameters(model)[1] == 64 * 32 + 32 + 32 * 8 + 8
    model.to("cpu")  # bitsandbytes quantizes on the move: 2048 weights -> 1024 uint8 bytes
    assert layer.weight.dtype == torch.uint8 and layer.weight.numel() == 64 * 32 // 2
    assert count_parameters(model) == peft.PeftModel.get_nb_trainable_parameters(model)
    assert count_parameters(model)[1] == 64 * 32 + 32 + 32 * 8 + 8


class PackedLinear(nn.Module):
    """A stand-in for a 4-bit layer: the weight kept as packed uint8 buffers, declared by numel_logical."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.numel_logical = in_features * out_features
        self.register_buffer("weight_packed", torch.zeros(self.numel_logical // 2, dtype=torch.uint8))
        self.register_buffer("rope_cache", torch.zeros(100))  # an ordinary buffer: never counted
        self.bias = nn.Parameter(torch.zeros(out_features))


def test_numel_logical_hook():
    model = nn.Sequential(PackedLinear(16, 8), nn.Linear(8, 4))
    assert count_parameters(model) == (8 + 36, 16 * 8 + 8 + 36)
    model[0].numel_logical = 1.5
    with pytest.raises(ValueError, match="numel_logical must be a non-negative int"):
        count_parameters(model)


def test_our_linear4bit_counts_as_the_layer_it_replaced():
    quant = pytest.importorskip("peftedu.quant")
    torch.manual_seed(0)
    linear = nn.Linear(256, 64 * 4)  # 65,536 weights = 64 * 256 * 4: whole double-quant blocks
    layer = quant.Linear4bit.from_linear(linear, double_quant=True)
    assert count_parameters(layer) == (0, count_parameters(linear)[1])
    measured = quant.bits_per_parameter(layer.state)
    assert measured == pytest.approx(nf4_bits_per_param(), abs=1e-3)  # 4.127 (+ one fp32 offset)


# ------------------------------------------------------------------------------------------------
# memory estimates
# ------------------------------------------------------------------------------------------------


def test_source_002_bloom_full_finetuning_fp32():
    """1.3B x (4 weights + 4 gradients + 2 x 4 AdamW) bytes = 5.2 + 5.2 + 10.4 = 20.8 GB."""
    est = estimate_training_memory(1.3e9, weight_bits=32, optimizer="adamw")
    parts = est.breakdown()
    assert parts["weights"] == pytest.approx(5.2)
    assert parts["gradients"] == pytest.approx(5.2)
    assert parts["optimizer states"] == pytest.approx(10.4)
    assert est.total_gb == pytest.approx(20.8) and est.bytes_per_param == pytest.approx(16)
    exact = estimate_training_memory(BLOOM_PARAMS)
    assert exact.total_gb == pytest.approx(20.85, abs=0.01)
    assert exact.breakdown("GiB")["total"] == pytest.approx(BLOOM_PARAMS * 16 / GIB)
    text = est.explain()
    for assumption in ("4 bytes (32-bit)", "2 state(s) x 4 bytes", "activations not included", "1e9 bytes"):
        assert assumption in text


@pytest.mark.parametrize("n, weights, adam, total", [(7e9, 14, 28, 56), (13e9, 26, 52, 104), (70e9, 140, 280, 560)])
def test_source_003_table(n, weights, adam, total):
    """The table holds only if weights, gradients AND both AdamW moments are 16-bit (8 bytes/param)."""
    est = method_memory("full-16bit", n)
    assert est.weights_gb == pytest.approx(weights)
    assert est.optimizer_gb == pytest.approx(adam)
    assert est.total_gb == pytest.approx(total)
    # its columns do not add up: the gradients (as large as the weights) are missing from them
    assert weights + adam != total and est.gradients_gb == pytest.approx(total - weights - adam)
    # standard mixed precision (fp32 master + fp32 AdamW) needs twice the table
    assert method_memory("full-mixed", n).total_gb == pytest.approx(2 * total)


def test_qlora_paper_baseline_780gb():
    """QLoRA paper: 65B 16-bit full fine-tuning needs >780 GB = 16-bit weights + grads, fp32 AdamW."""
    assert estimate_training_memory(65e9, weight_bits=16).total_gb == pytest.approx(780)


def test_nf4_bits():
    assert nf4_bits_per_param(double_quant=False) == 4.5
    assert nf4_bits_per_param() == pytest.approx(4.127, abs=5e-4)
    assert bits_of("nf4-dq") == nf4_bits_per_param() and bits_of(torch.bfloat16) == 16 and bits_of("fp32") == 32
    with pytest.raises(ValueError, match="Unknown precision"):
        bits_of("int3")


def test_qlora_65b_fits_one_48gb_gpu_and_lora_does_not():
    shape = LLAMA_SHAPES["65B"]
    n, lora = shape.n_params(), shape.lora_params(64)  # the paper: r = 64 on all linear layers
    activations = activation_memory_gb(shape, batch_size=1, seq_len=512, checkpointing=True)
    assert 0.5 < activations < 2
    qlora = method_memory("qlora", n, adapter_params=lora, quantized_params=shape.linear_params(), activations_gb=activations)
    assert shape.linear_params() * nf4_bits_per_param() / 8 / GB == pytest.approx(33.4, abs=0.1)
    assert qlora.fits_in(48) and qlora.total_gb > 40
    assert not method_memory("lora", n, adapter_params=lora, activations_gb=activations).fits_in(48)
    assert "paged" in qlora.explain()


def test_7b_on_24gb():
    shape = LLAMA_SHAPES["7B"]
    act = activation_memory_gb(shape, batch_size=1, seq_len=512)
    kw = dict(adapter_params=shape.lora_params(64), activations_gb=act)
    assert method_memory("qlora", shape.n_params(), quantized_params=shape.linear_params(), **kw).fits_in(24)
    assert not method_memory("full-mixed", shape.n_params(), activations_gb=act).fits_in(24)


@pytest.mark.parametrize("name", ["tinyllama-1.1b", "smollm2-135m", "smollm2-1.7b"])
def test_decoder_shape_counts_match_real_modules(name):
    shape = DecoderShape.from_config(load_model_config(name), name)
    model = build_from_config(name)
    assert shape.n_params() == count_parameters(model)[1]
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    assert shape.linear_params() == linear
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear"))
    assert shape.lora_params(4) == peft_model.get_nb_trainable_parameters()[0]


def test_llama_7b_shape_is_6_74b_params():
    """"7B" is 6.74B parameters (source 002 says 13 billion): count the real architecture on meta."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = LLAMA_SHAPES["7B"]
    config = LlamaConfig(hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.n_layers,
                         num_attention_heads=s.n_heads, vocab_size=s.vocab, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert count_parameters(model)[1] == s.n_params() == 6_738_415_616


def test_memory_table_rows():
    rows = memory_table()
    assert {r["model"] for r in rows} == {"7B", "13B", "70B"}
    row = next(r for r in rows if r["model"] == "7B" and r["method"] == "full-fp32")
    assert row["total_gb"] == pytest.approx(LLAMA_SHAPES["7B"].n_params() * 16 / GB)
    for r in rows:
        parts = r["weights_gb"] + r["gradients_gb"] + r["master_weights_gb"] + r["optimizer_gb"]
        assert r["total_gb"] == pytest.approx(parts)
    bare = memory_table({"1B": 1e9}, ["lora"], lora_fraction=0.01)
    assert bare[0]["trainable_params"] == 10_000_000
    with pytest.raises(ValueError, match="lora_fraction"):
        memory_table({"1B": 1e9}, ["qlora"])
    with pytest.raises(ValueError, match="Unknown method"):
        memory_table(methods=["full-fp8"])


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="Unknown optimizer"):
        estimate_training_memory(1e9, optimizer="lion")
    with pytest.raises(ValueError, match="trainable_bits"):
        estimate_training_memory(1e9, trainable_params=1e6, weight_bits="nf4-dq")
    with pytest.raises(ValueError, match="nothing to copy"):
        estimate_training_memory(1e9, master_weights=True)
    with pytest.raises(ValueError, match="between 0 and n_params"):
        estimate_training_memory(1e9, trainable_params=2e9)
    with pytest.raises(ValueError, match="unit"):
        estimate_training_memory(1e9).breakdown("MB")
    with pytest.raises(ValueError, match="adapter_params"):
        method_memory("lora", 1e9)


def test_optimizer_and_precision_variants():
    n = 1e9
    assert estimate_training_memory(n, optimizer="sgd").optimizer_gb == 0
    assert estimate_training_memory(n, optimizer="adamw-8bit").optimizer_gb == pytest.approx(2)
    mixed = estimate_training_memory(n, weight_bits="bf16", master_weights=True)
    assert mixed.bytes_per_param == pytest.approx(16) and mixed.master_weights_gb == pytest.approx(4)
    inference = estimate_training_memory(n, trainable_params=0, weight_bits=16)
    assert inference.total_gb == pytest.approx(2) and "nothing trains" in str(inference)


# ------------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------------


def test_measure_peak_memory_sees_a_200mb_tensor_on_cpu():
    def allocate():
        x = torch.ones(50_000_000)  # 200 MB of fp32
        return float(x.sum())

    run = measure_peak_memory(allocate, device="cpu")
    assert run.result == 50_000_000
    assert run.peak_bytes >= 190e6, str(run)
    assert run.device == "cpu" and "RSS" in run.method
    with pytest.raises(ValueError, match="meta"):
        measure_peak_memory(allocate, device="meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_peak_memory_cuda():
    run = measure_peak_memory(lambda: torch.ones(50_000_000, device="cuda").sum().item(), device="cuda")
    assert 200e6 <= run.peak_bytes < 260e6
