"""Trainer features for SFT: packed rows give the unpacked loss, validation on a schedule, the best
checkpoint as adapter/, early stopping that survives --resume, TensorBoard event files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import TrainingConfig
from tunesmith.data.batching import collate, collate_packed, pack_rows
from tunesmith.data.chat import encode
from tunesmith.data.sources import gsm8k
from tunesmith.modeling.loading import add_lora, load_model
from tunesmith.training.trainer import Trainer, TrainModule

RECORDS = [
    {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
    {
        "question": "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "answer": "He has 3 + 5 = <<3+5=8>>8 apples.\nSo the answer is eight apples in total.\n#### 8",
    },
    {"question": "A box holds 6 eggs. How many eggs are in 7 boxes?", "answer": "6 * 7 = 42\n#### 42"},
    {"question": "Half of 30?", "answer": "Half of 30 is 30 / 2 = 15. Check: 15 + 15 = 30.\n#### 15"},
    {"question": "Sam reads 12 pages a day. How many pages in 5 days?", "answer": "12 * 5 = 60 pages.\n#### 60"},
    {"question": "What is 100 minus 37?", "answer": "100 - 37 = 63\n#### 63"},
]


def feats(tokenizer, records=RECORDS):
    return [encode(tokenizer, gsm8k.to_example(r), max_length=128) for r in records]


def silent(_msg: str) -> None:
    pass


def packed_vs_unpacked(model, fs, pad_id):
    """(summed LM loss, grads) of the same examples as padded rows and as two packed rows."""
    module = TrainModule(model)
    module.eval()  # no dropout: the two passes must see the same function
    results = []
    for batch in (collate(fs, pad_id), collate_packed([fs[:3], fs[3:]], pad_id)):
        model.zero_grad(set_to_none=True)
        out = module(**batch)["lm"]
        out.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        n = int((batch["labels"][:, 1:] != -100).sum())
        results.append((float(out), n, grads))
    return results


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_unpacked_tiny(tiny_model_dir, tokenizer, attn):
    model = add_lora(load_model(str(tiny_model_dir), dtype="fp32", attn_implementation=attn), 8, 16, 0.0, "auto")
    # LoRA B starts at zero: make the adapter act so its gradients depend on the attention pattern
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    fs = feats(tokenizer)
    (u_loss, u_n, u_g), (p_loss, p_n, p_g) = packed_vs_unpacked(model, fs, tokenizer.pad_token_id)
    assert u_n == p_n == sum(f.n_labels for f in fs)
    assert p_loss == pytest.approx(u_loss, rel=1e-5)
    for k in u_g:
        torch.testing.assert_close(p_g[k], u_g[k], rtol=1e-4, atol=1e-6)


def test_cross_attention_between_packed_examples_would_change_the_loss(tiny_model_dir, tokenizer):
    # the equality above is not vacuous: the same packed row with one continuous position range
    # (no restart, i.e. plain causal attention over the whole row) gives a different loss
    model = load_model(str(tiny_model_dir), dtype="fp32")
    module = TrainModule(model).eval()
    fs = feats(tokenizer)
    b = collate_packed([fs[:3]], tokenizer.pad_token_id)
    with torch.no_grad():
        packed = float(module(**b)["lm"])
        b["position_ids"] = torch.arange(b["input_ids"].shape[1])[None]
        leaky = float(module(**b)["lm"])
    assert abs(packed - leaky) > 1e-3


@pytest.mark.slow
def test_packed_loss_equals_unpacked_on_the_embedded_model(builtin_dir, tokenizer):
    model = add_lora(load_model(str(builtin_dir), dtype="fp32"), 8, 16, 0.0, "attention")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    fs = feats(tokenizer)
    (u_loss, u_n, u_g), (p_loss, p_n, p_g) = packed_vs_unpacked(model, fs, tokenizer.pad_token_id)
    assert u_n == p_n
    assert p_loss == pytest.approx(u_loss, rel=1e-5)
    worst = max(float((p_g[k] - u_g[k]).abs().max() / (u_g[k].abs().max() + 1e-12)) for k in u_g)
    assert worst < 1e-3


def test_pack_rows_fills_rows_within_capacity_and_keeps_every_example():
    lengths = [50, 10, 40, 70, 30, 20, 60, 90]
    rows = pack_rows(lengths, 100, seed=1, epoch=0)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 100 for r in rows)
    assert len(rows) == 4  # 370 tokens: 4 rows is the minimum
    assert rows == pack_rows(lengths, 100, seed=1, epoch=0)
    assert rows != pack_rows(lengths, 100, seed=1, epoch=1)


def test_packed_training_sees_every_example_each_epoch(tmp_path, tiny_model_dir, tokenizer):
    model = add_lora(load_model(str(tiny_model_dir), dtype="fp32"), 8, 16, 0.0, "auto")
    fs = feats(tokenizer)
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=1, epochs=2, packing=True, report_to="none")
    tr = Trainer(model, tokenizer, cfg, lambda e: fs, tmp_path / "run", log=silent, pack_length=128)
    rows = pack_rows([len(f.input_ids) for f in fs], 128, cfg.seed, 0)
    assert tr.total_steps == 2 * len(rows) and len(rows) < len(fs)
    state = tr.train()
    per_epoch = sum(len(f.input_ids) for f in fs)
    assert state.history[-1]["tokens"] == 2 * per_epoch


def lora(tiny_model_dir):
    return add_lora(load_model(str(tiny_model_dir), dtype="fp32"), 8, 16, 0.0, "auto")


def test_validation_schedule_best_adapter_and_tensorboard(tmp_path, tiny_model_dir, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fs = feats(tokenizer)
    train, val = fs[:4], fs[4:]
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=2, max_steps=9, eval_steps=3, seed=0, report_to=["tensorboard"])
    run = tmp_path / "run"
    msgs: list[str] = []
    tr = Trainer(
        lora(tiny_model_dir),
        tokenizer,
        cfg,
        lambda e: train,
        run,
        log=msgs.append,
        validation=val,
        run_name="tb-test",
        tracker_config={"model": {"name": "tiny"}, "training": cfg.model_dump()},
    )
    state = tr.train()
    assert [e["step"] for e in state.evals] == [3, 6, 9]
    best = min(state.evals, key=lambda e: e["loss"])
    assert state.best_step == best["step"] and state.best_loss == best["loss"]
    assert any("validation loss" in m for m in msgs)
    hist = json.loads((run / "validation_history.json").read_text())
    assert hist["best_step"] == best["step"] and len(hist["evaluations"]) == 3
    # adapter/ holds the best evaluation's weights: its validation loss is the best one
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    best_saved = load_file(run / "checkpoints" / "best" / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], best_saved[k]) for k in saved)
    from tunesmith.training.trainer import evaluate_loss

    assert evaluate_loss(tr.unwrapped(), val, tokenizer.pad_token_id)["lm"] == pytest.approx(best["lm"], rel=1e-5)

    logdir = run / "tensorboard" / "tb-test"
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lm",
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_s",
        "eval/loss",
        "eval/lm",
    } <= tags
    assert [e.step for e in acc.Scalars("eval/loss")] == [3, 6, 9]
    assert [e.value for e in acc.Scalars("eval/loss")] == pytest.approx([e["loss"] for e in state.evals], rel=1e-5)
    assert len(acc.Scalars("train/loss")) == 9
    assert acc.Scalars("train/loss")[0].value == pytest.approx(state.history[0]["loss"], rel=1e-5)
    # the config went in as hyperparameters (flattened)
    hp = list(logdir.glob("*/hparams.yml"))
    assert hp and "model.name: tiny" in hp[0].read_text()


def test_early_stopping_and_resume_is_a_no_op(tmp_path, tiny_model_dir, tokenizer):
    fs = feats(tokenizer)
    # a learning rate this large makes the validation loss climb after the first steps
    cfg = TrainingConfig(
        learning_rate=3.0,
        batch_size=2,
        max_steps=40,
        eval_steps=1,
        early_stopping_patience=2,
        max_grad_norm=None,
        seed=0,
        report_to="none",
    )
    run = tmp_path / "run"
    state = Trainer(lora(tiny_model_dir), tokenizer, cfg, lambda e: fs[:4], run, log=silent, validation=fs[4:]).train()
    assert state.stopped_early and state.step < 40
    assert state.bad_evals == 2 and state.step == state.best_step + 2
    losses = [e["loss"] for e in state.evals]
    assert min(losses[-2:]) >= state.best_loss
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert (run / "checkpoints" / f"checkpoint-{state.step}").is_dir()

    msgs: list[str] = []
    tr2 = Trainer(lora(tiny_model_dir), tokenizer, cfg, lambda e: fs[:4], run, log=msgs.append, validation=fs[4:])
    st2 = tr2.train(resume=True)
    assert st2.step == state.step and st2.stopped_early
    assert any("stopped early" in m and "nothing left to train" in m for m in msgs)
    after = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(adapter[k], after[k]) for k in adapter)
    assert not (run / "checkpoints" / f"checkpoint-{state.step + 1}").exists()


def test_early_stopping_state_survives_an_interrupted_run(tmp_path, tiny_model_dir, tokenizer):
    fs = feats(tokenizer)
    cfg = TrainingConfig(
        learning_rate=1e-2,
        batch_size=2,
        max_steps=4,
        eval_steps=2,
        early_stopping_patience=5,
        save_steps=2,
        seed=0,
        report_to="none",
    )
    run = tmp_path / "run"
    first = Trainer(lora(tiny_model_dir), tokenizer, cfg, lambda e: fs[:4], run, log=silent, validation=fs[4:]).train()
    # resume from step 2's checkpoint: the evaluations made until then come back with it
    import shutil

    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    tr = Trainer(
        lora(tiny_model_dir),
        tokenizer,
        cfg.model_copy(update={"max_steps": 6}),
        lambda e: fs[:4],
        run,
        log=silent,
        validation=fs[4:],
    )
    tr.load_checkpoint()
    assert [e["step"] for e in tr.state.evals] == [2]
    assert tr.state.evals[0]["loss"] == pytest.approx(first.evals[0]["loss"])
    st = tr.train()
    assert [e["step"] for e in st.evals] == [2, 4, 6]


def test_unknown_tracker_package_is_a_clear_error(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    import importlib.util

    from tunesmith.errors import TunesmithError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(TunesmithError, match="wandb is not installed"):
        Trainer(
            lora(tiny_model_dir),
            tokenizer,
            TrainingConfig(report_to=["wandb"]),
            lambda e: feats(tokenizer),
            tmp_path / "r",
            log=silent,
        )


def test_best_weights_ahead_of_the_resumed_checkpoint_are_not_handed_out(tmp_path, tiny_model_dir, tokenizer):
    # a crash after the step-4 evaluation saved checkpoints/best but before checkpoint-4 was kept:
    # resuming from checkpoint-2 must not label step-4 weights as the best of steps <= 2
    import json
    import shutil

    fs = feats(tokenizer)
    cfg = TrainingConfig(
        learning_rate=1e-2, batch_size=2, max_steps=4, eval_steps=2, save_steps=2, load_best=True, seed=0,
        report_to="none",
    )  # fmt: skip
    run = tmp_path / "run"
    first = Trainer(lora(tiny_model_dir), tokenizer, cfg, lambda e: fs[:4], run, log=silent, validation=fs[4:]).train()
    best = json.loads((run / "checkpoints" / "best" / "best.json").read_text())
    assert first.best_step in (2, 4) and best["step"] == first.best_step
    # make best/ come from a step the resumed run has not reached
    (run / "checkpoints" / "best" / "best.json").write_text(json.dumps({**best, "step": 4}))
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    msgs: list[str] = []
    tr = Trainer(lora(tiny_model_dir), tokenizer, cfg, lambda e: fs[:4], run, log=msgs.append, validation=fs[4:])
    tr.load_checkpoint()
    assert not (run / "checkpoints" / "best").exists() and tr.state.best_step is None
    assert any("does not match the resumed state" in m for m in msgs)
    st = tr.train()
    assert st.best_step == 4 and json.loads((run / "checkpoints" / "best" / "best.json").read_text())["step"] == 4
