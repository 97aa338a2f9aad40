"""The training/evaluation loop (peftedu.course.training). Offline, CPU; one slow test trains for real."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from peftedu.course.data import load_task  # noqa: E402
from peftedu.course.evaluation import evaluate, generate_answers  # noqa: E402
from peftedu.course.tokenization import collate_for_training, tokenize_example  # noqa: E402
from peftedu.course.training import (  # noqa: E402
    PROFILES,
    TrainHistory,
    accumulate_gradients,
    get_profile,
    lr_multiplier,
    plot_history,
    set_seed,
    train,
)


@pytest.fixture(scope="module")
def base():
    from peftedu.course.models import load_base

    return load_base()


@pytest.fixture(scope="module")
def tokenizer(base):
    return base[1]


def tiny_model(tokenizer, seed=0):
    """A 2-layer Llama with the real vocabulary: same code path, a thousandth of the cost."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def lora(model, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))


# --- profiles, seeds, schedule -----------------------------------------------------------------
def test_max_steps_cap(monkeypatch):
    monkeypatch.setenv("PEFTEDU_MAX_STEPS", "3")
    profile = get_profile("full")
    assert (profile.max_steps, profile.warmup_steps, profile.eval_rows) == (3, 2, 16)
    monkeypatch.setenv("PEFTEDU_MAX_STEPS", "0")
    with pytest.raises(ValueError, match="PEFTEDU_MAX_STEPS='0'"):
        get_profile()


def test_fp16_trains_with_fp32_adapters_and_loss_scaling(tokenizer):
    """A T4 has no bf16: the base model is fp16, train() keeps the trainable weights in fp32, runs fp16
    autocast and scales the loss. Checked on the CPU (autocast and GradScaler exist for it too)."""
    import peftedu

    model = peftedu.get_peft_model(tiny_model(tokenizer), peftedu.LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])).to(torch.float16)  # adapters fp16 too, at first
    rows = load_task("topic", "train").select(range(16))
    history = train(model, tokenizer, rows, max_steps=4, batch_size=4, grad_accum=1, lr=1e-2, progress=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable) and all(p.dtype == torch.float16 for p in frozen)
    assert all(math.isfinite(loss) for loss in history.loss)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B left zero: it stepped
    with pytest.raises(ValueError, match="fp16 trainable parameters"):
        model2 = peftedu.get_peft_model(tiny_model(tokenizer), peftedu.LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj"])).to(torch.float16)
        opt = torch.optim.AdamW([p for p in model2.parameters() if p.requires_grad])
        train(model2, tokenizer, rows, max_steps=1, optimizer=opt, progress=False)


def test_profiles(monkeypatch):
    monkeypatch.delenv("PEFTEDU_PROFILE", raising=False)
    assert get_profile().name == "quick" and get_profile("full") is PROFILES["full"]
    monkeypatch.setenv("PEFTEDU_PROFILE", "full")
    assert get_profile().name == "full" and get_profile().eval_rows is None
    assert get_profile(PROFILES["quick"]).name == "quick"
    monkeypatch.setenv("PEFTEDU_PROFILE", "huge")
    with pytest.raises(ValueError, match="Unknown profile 'huge'"):
        get_profile()


def test_set_seed_repeats_random_draws():
    set_seed(3)
    first = torch.rand(4)
    set_seed(3)
    assert torch.equal(first, torch.rand(4))


def test_schedule_shape():
    total, warmup = 20, 4
    linear = [lr_multiplier(s, total, warmup, "linear") for s in range(total)]
    assert linear[:warmup] == [0.25, 0.5, 0.75, 1.0]  # warm-up reaches the peak at step W - 1
    assert linear[warmup] == 1.0 and all(a > b for a, b in zip(linear[warmup:], linear[warmup + 1:]))
    assert linear[-1] == pytest.approx(1 / (total - warmup)) and min(linear) > 0  # no step at lr = 0
    cosine = [lr_multiplier(s, total, warmup, "cosine") for s in range(total)]
    assert cosine[warmup] == 1.0 and all(a > b for a, b in zip(cosine[warmup:], cosine[warmup + 1:]))
    assert cosine[warmup + (total - warmup) // 2] == pytest.approx(0.5)
    assert [lr_multiplier(s, total, 0, "constant") for s in range(total)] == [1.0] * total
    with pytest.raises(ValueError, match="Unknown schedule"):
        lr_multiplier(0, 10, 1, "step")
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_multiplier(0, 10, 10)


# --- the loop on a tiny model ------------------------------------------------------------------
def test_accumulation_equals_the_big_batch(tokenizer):
    """grad_accum=2 x batch 2 gives the gradient of batch 4, though the answers differ in length."""
    records = list(load_task("extract", "train").select(range(2))) + list(load_task("topic", "train").select(range(2)))
    features = [tokenize_example(tokenizer, r) for r in records]
    labelled = [sum(label != -100 for label in f["labels"]) for f in features]
    assert labelled[0] != labelled[2]  # unequal label counts: a plain mean of micro-losses would be wrong

    def grads(micro_batches, naive=False):
        model = tiny_model(tokenizer)
        model.zero_grad()
        if naive:
            for batch in micro_batches:
                (model(**batch).loss / len(micro_batches)).backward()
        else:
            accumulate_gradients(model, micro_batches)
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    big = grads([collate_for_training(tokenizer, features)])
    micro = [collate_for_training(tokenizer, features[:2]), collate_for_training(tokenizer, features[2:])]
    torch.testing.assert_close(grads(micro), big, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(grads(micro, naive=True), big, rtol=1e-3, atol=1e-6)


def test_train_with_accumulation_takes_the_same_step(tokenizer):
    data = load_task("topic", "train").select(range(16))
    params = []
    for batch_size, grad_accum in ((4, 1), (2, 2)):
        model = tiny_model(tokenizer)
        sgd = torch.optim.SGD(model.parameters(), lr=0.5)
        train(model, tokenizer, data, max_steps=2, batch_size=batch_size, grad_accum=grad_accum, optimizer=sgd,
              warmup_steps=0, max_grad_norm=0, progress=False)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(params[0], torch.cat([p.flatten() for p in tiny_model(tokenizer).parameters()]))


def test_history_fields(tokenizer):
    model = tiny_model(tokenizer)
    data = load_task("topic", "train").select(range(12))
    history = train(model, tokenizer, data, max_steps=5, batch_size=3, grad_accum=1, lr=1e-2, warmup_steps=2,
                    schedule="linear", progress=False)
    assert isinstance(history, TrainHistory) and history.steps == len(history.lr) == 5
    expected_lr = [1e-2 * lr_multiplier(s, 5, 2, "linear") for s in range(5)]
    assert history.lr == pytest.approx(expected_lr)
    assert all(math.isfinite(loss) for loss in history.loss)
    tokens_per_epoch = sum(len(tokenize_example(tokenizer, r)["input_ids"]) for r in data)
    assert history.tokens > tokens_per_epoch  # 15 examples: all 12, then 3 of the next epoch
    assert history.wall_time_s > 0 and history.tokens_per_s == pytest.approx(history.tokens / history.wall_time_s)
    assert history.peak_memory_bytes is not None and history.peak_memory_bytes >= 0 and history.peak_memory_method
    assert history.trainable_params == sum(p.numel() for p in model.parameters())
    assert not model.training  # left in eval mode
    assert "5 steps" in history.summary() and history.to_dict()["loss"] == history.loss
    ax = plot_history(history)
    assert [line.get_label() for line in ax.get_lines()] == ["loss"] and len(ax.figure.axes) == 2


def test_tokens_count_non_pad_tokens_exactly(tokenizer):
    data = load_task("topic", "train").select(range(4))
    history = train(tiny_model(tokenizer), tokenizer, data, max_steps=1, batch_size=4, grad_accum=1, progress=False)
    assert history.tokens == sum(len(tokenize_example(tokenizer, r, get_profile().max_length)["input_ids"]) for r in data)


def test_train_rejects_bad_arguments(tokenizer):
    model = tiny_model(tokenizer)
    data = load_task("topic", "train").select(range(4))
    with pytest.raises(ValueError, match="not both"):
        train(model, tokenizer, data, max_steps=1, lr=1e-3, optimizer=torch.optim.SGD(model.parameters(), lr=1))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        train(model, tokenizer, data, max_steps=1, batch_size=0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, tokenizer, data, max_steps=1)


# --- the real model ----------------------------------------------------------------------------
def test_batched_left_padded_generation_equals_one_by_one(base):
    model, tok = base
    records = [load_task("retention", "test")[0], load_task("topic", "test")[0], load_task("extract", "test")[0],
               {"instruction": "Say hi.", "input": ""}]
    batched = generate_answers(model, tok, records, batch_size=4, max_new_tokens=10)
    single = [generate_answers(model, tok, [r], batch_size=1, max_new_tokens=10)[0] for r in records]
    assert batched == single
    assert len(set(batched)) == 4 and all(batched)


def test_evaluate_reports_score_and_examples(base):
    model, tok = base
    result = evaluate(model, tok, "retention", rows=3)
    assert result["n"] == 3 and len(result["examples"]) == 3 and result["task"] == "retention"
    assert result["score"] == sum(e["correct"] for e in result["examples"]) / 3
    assert set(result["examples"][0]) == {"instruction", "input", "reference", "prediction", "correct", "credit"}
    assert all(e["credit"] == float(e["correct"]) for e in result["examples"])  # all-or-nothing on retention
    assert result["score"] == sum(e["credit"] for e in result["examples"]) / 3
    with pytest.raises(ValueError, match="scored task"):
        evaluate(model, tok, "shibing624/alpaca-zh")
    with pytest.raises(ValueError, match="rows must be"):
        evaluate(model, tok, "topic", rows=0)


def test_short_lora_run_lowers_the_loss(base):
    model, tok = base
    peft_model = lora(model)
    try:
        # Four steps on the same four examples: the loss on them must fall fast (about 1.9 -> 0.4).
        history = train(peft_model, tok, load_task("topic", "train").select(range(4)), max_steps=4, batch_size=4,
                        grad_accum=1, lr=3e-3, warmup_steps=0, progress=False)
        assert history.trainable_params == 30 * 2 * 8 * (576 + 576) - 30 * 8 * (576 - 192)  # q: 576->576, v: 576->192
        assert all(a > b for a, b in zip(history.loss, history.loss[1:])), history.loss
        assert history.loss[-1] < 0.5 * history.loss[0], history.loss
    finally:
        peft_model.unload()  # give the shared base model back without LoRA layers


@pytest.mark.slow
def test_quick_lora_beats_zero_shot_on_topic(base):
    model, tok = base
    zero_shot = evaluate(model, tok, "topic", profile="quick")["score"]
    peft_model = lora(model)
    try:
        train(peft_model, tok, load_task("topic", "train"), profile="quick", progress=False)
        tuned = evaluate(peft_model, tok, "topic", profile="quick")["score"]
    finally:
        peft_model.unload()
    assert tuned >= 0.8 and tuned >= zero_shot + 0.5, (zero_shot, tuned)
