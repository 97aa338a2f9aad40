"""Explorer logic equals HF peft's counts; the widgets build headless and react to their controls."""

import matplotlib

matplotlib.use("Agg")

import pytest

from peftedu.counting import count_parameters
from peftedu.course.memory import GB
from peftedu.course.recipes import memory_table
from peftedu.course.shapes import LLAMA_SHAPES
from peftedu.course.explorers import (
    LIVE_NOTE,
    describe_lora,
    linear_suffixes,
    lora_memory,
    lora_parameter_count,
    lora_rank_explorer,
    memory_estimates,
    memory_explorer,
    plot_memory_breakdown,
    quantizable_params,
)
from peftedu.course.models import build_from_config

peft = pytest.importorskip("peft")


@pytest.mark.parametrize(
    "name, targets",
    [
        ("tinyllama-1.1b", ["q_proj", "v_proj"]),
        ("smollm2-135m", "all-linear"),
        ("bloom-1b4-zh", ["query_key_value", "dense_4h_to_h"]),
        ("qwen2.5-1.5b", r".*\.(q_proj|down_proj)"),
    ],
)
def test_lora_count_equals_peft_on_meta(name, targets):
    ours = lora_parameter_count(name, 8, targets)
    peft_model = peft.get_peft_model(build_from_config(name), peft.LoraConfig(r=8, target_modules=targets))
    assert (ours.lora_params, ours.total_params) == peft_model.get_nb_trainable_parameters()
    wrapped = sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in peft_model.modules())
    assert ours.n_modules == wrapped


def test_count_by_hand_tinyllama():
    # 22 layers; q_proj 2048 -> 2048, v_proj 2048 -> 256 (4 kv heads of 64): r * (in + out) each
    count = lora_parameter_count("tinyllama-1.1b", 8, ["q_proj", "v_proj"])
    assert count.by_target == {"q_proj": 22 * 8 * (2048 + 2048), "v_proj": 22 * 8 * (2048 + 256)}
    assert count.lora_params == 1_126_400 and count.n_modules == 44
    assert str(count) == "trainable params: 1,126,400 || all params: 1,101,174,784 || trainable%: 0.1023"
    assert lora_parameter_count("tinyllama-1.1b", 16, ["q_proj", "v_proj"]).lora_params == 2 * count.lora_params


def test_targets_are_checked():
    with pytest.raises(ValueError, match=r"\['qkv'\] match no module"):
        lora_parameter_count("tinyllama-1.1b", 8, ["q_proj", "qkv"])
    with pytest.raises(ValueError, match="LlamaMLP"):
        lora_parameter_count("tinyllama-1.1b", 8, ["mlp"])
    with pytest.raises(ValueError, match="whole name"):
        lora_parameter_count("tinyllama-1.1b", 8, "q_proj")  # a string is a regex; needs '.*\.q_proj'
    with pytest.raises(ValueError, match="positive int"):
        lora_parameter_count("tinyllama-1.1b", 0, ["q_proj"])
    with pytest.raises(ValueError, match="shipped"):
        lora_parameter_count(42, 8, ["q_proj"])
    assert linear_suffixes("bloom-1b4-zh") == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def test_lora_memory_is_the_counts_times_bytes():
    count = lora_parameter_count("smollm2-135m", 16, "all-linear")
    lora = lora_memory("smollm2-135m", 16, "all-linear", "lora")
    # bf16 base (2 bytes) + fp32 adapters: weights 4 + grads 4 + AdamW 8 bytes
    assert lora.total_gb == pytest.approx((count.base_params * 2 + count.lora_params * 16) / GB)
    qlora = lora_memory("smollm2-135m", 16, "all-linear", "qlora")
    quantized = quantizable_params("smollm2-135m")
    assert 0 < quantized < count.base_params  # the tied embedding stays bf16
    assert qlora.total_gb < lora.total_gb
    with pytest.raises(ValueError, match="adapter method"):
        lora_memory("smollm2-135m", 16, "all-linear", "full-fp32")


def test_memory_estimates_agree_with_table():
    estimates = memory_estimates("13B", lora_rank=64)
    rows = {r["method"]: r for r in memory_table({"13B": LLAMA_SHAPES["13B"]})}
    assert set(estimates) == set(rows)
    for method, est in estimates.items():
        assert est.total_gb == pytest.approx(rows[method]["total_gb"])
    shipped = memory_estimates("tinyllama-1.1b", ["full-fp32"])
    assert shipped["full-fp32"].total_gb == pytest.approx(count_parameters(build_from_config("tinyllama-1.1b"))[1] * 16 / GB)
    with pytest.raises(ValueError, match="at least one"):
        memory_estimates("7B", [])


def test_plot_stacks_the_breakdown():
    estimates = memory_estimates("7B", ["full-mixed", "qlora"], activations_gb=1.0)
    ax = plot_memory_breakdown(estimates, gpu_gb=24)
    for i, est in enumerate(estimates.values()):
        tops = [p.get_y() + p.get_height() for p in ax.patches if abs(p.get_x() + p.get_width() / 2 - i) < 1e-6]
        assert max(tops) == pytest.approx(est.total_gb)
    matplotlib.pyplot.close("all")


def test_plot_legend_sits_outside_the_bars():
    estimates = memory_estimates("7B", ["full-fp32", "full-mixed", "lora", "qlora"])
    fig, ax = matplotlib.pyplot.subplots(figsize=(7, 3.5))
    plot_memory_breakdown(estimates, ax=ax, gpu_gb=24)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 > ax.get_window_extent().x1  # right of the axes
    assert not any(legend.overlaps(bar.get_window_extent()) for bar in ax.patches)
    matplotlib.pyplot.close("all")


def test_widgets_build_headless_and_react(capsys):
    widget = lora_rank_explorer(plot=False, static=False)
    first = capsys.readouterr().out
    assert "smollm2-135m: LoRA r=8" in first and "trainable params:" in first and LIVE_NOTE not in first
    arch, rank = widget.children[0].children
    targets = widget.children[1]
    rank.value = 32
    assert "r=32" in capsys.readouterr().out
    arch.value = "bloom-1b4-zh"
    assert targets.options == tuple(linear_suffixes("bloom-1b4-zh")) and targets.value == ("query_key_value",)
    assert describe_lora("bloom-1b4-zh", 32, ["query_key_value"]) in capsys.readouterr().out

    explorer = memory_explorer(plot=True)
    out = capsys.readouterr().out
    assert "qlora" in out and "full-mixed" in out
    matplotlib.pyplot.close("all")


def test_explorers_show_their_default_state_for_views_without_a_kernel(capsys):
    # what a saved notebook shows on GitHub: the default state as text (and a figure), one line on the controls,
    # and a widget whose text form names it instead of "VBox(children=(HBox(..."
    widget = lora_rank_explorer(plot=False)
    static = capsys.readouterr().out.split("\n")
    default = describe_lora("smollm2-135m", 8, ["q_proj", "v_proj"]).split("\n")
    assert static[:len(default)] == default and LIVE_NOTE in static
    assert repr(widget) == "LoRA rank explorer (interactive: the controls need a running kernel)"
    bundle = widget._repr_mimebundle_()
    assert bundle["text/plain"] == repr(widget) and "application/vnd.jupyter.widget-view+json" in bundle

    explorer = memory_explorer(plot=False)
    lines = capsys.readouterr().out.split("\n")
    # the printed state is arithmetic on counts: the same text on every machine (nbval-safe)
    assert lines[0] == "7B, every method, LoRA r=64 on all linear layers, activations not included (the explorer's default state):"
    assert lines[1].startswith(" full-fp32:    107.8 GB") and lines[5].startswith("     qlora:      5.8 GB")
    assert lines[6] == LIVE_NOTE
    assert repr(explorer).startswith("memory explorer (interactive") and len(repr(explorer)) <= 110
    assert not repr(explorer).startswith("VBox")
    memory_explorer(plot=False)
    assert capsys.readouterr().out.split("\n")[:7] == lines[:7]  # built twice: the same text
    with_figure = memory_explorer(plot=True)
    assert LIVE_NOTE in capsys.readouterr().out and len(with_figure.children) == 3
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize("name, expected", [
    ("smollm2-135m", dict(n_layers=30, hidden=576, mlp_hidden=1536, n_heads=9, n_kv_heads=3, kv_dim=192)),
    ("bloom-1b4-zh", dict(n_layers=24, hidden=2048, mlp_hidden=8192, n_heads=16, n_kv_heads=16, kv_dim=2048)),
    ("qwen2.5-1.5b", dict(n_layers=28, hidden=1536, mlp_hidden=8960, n_heads=12, n_kv_heads=2, kv_dim=256)),
])
def test_architecture_reads_every_model_type_under_one_set_of_names(name, expected):
    from peftedu.course.shapes import architecture, decoder_layers

    model = build_from_config(name)
    arch = architecture(model)
    assert {key: getattr(arch, key) for key in expected} == expected
    assert architecture(model.config) == arch
    layers = decoder_layers(model)
    assert len(layers) == arch.n_layers and layers is (model.transformer.h if name.startswith("bloom") else model.model.layers)


def test_architecture_names_what_is_missing():
    from transformers import PretrainedConfig

    from peftedu.course.shapes import architecture

    with pytest.raises(ValueError, match="hidden size"):
        architecture(PretrainedConfig())
