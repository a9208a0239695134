"""LoRA trainer on a tiny random Llama: loss goes down, only LoRA weights learn, checkpoints and
rotation, token-weighted loss normalisation over the accumulation window, training history."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config import TrainingConfig
from tunesmith.data.batching import collate
from tunesmith.data.chat import encode
from tunesmith.data.sources import gsm8k
from tunesmith.modeling.loading import add_lora, load_model
from tunesmith.training.trainer import Trainer, TrainModule

RECORDS = [
    {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
    {
        "question": "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "answer": "He has 3 + 5 = <<3+5=8>>8 apples.\nSo the answer is eight apples in total, which we write as\n#### 8",
    },
    {"question": "A box holds 6 eggs. How many eggs are in 7 boxes?", "answer": "6 * 7 = 42\n#### 42"},
    {
        "question": "Half of 30?",
        "answer": "Half of 30 is 30 / 2 = 15. We can check: 15 + 15 = 30, and 15 * 2 = 30, so it is right.\n#### 15",
    },
]


def features(tokenizer):
    return [encode(tokenizer, gsm8k.to_example(r), max_length=96) for r in RECORDS]


def lora_model(tiny_model_dir):
    model = load_model(str(tiny_model_dir), dtype="fp32")
    return add_lora(model, r=8, alpha=16, dropout=0.0, targets="auto")


def silent(_msg: str) -> None:
    pass


def full_set_loss(model, feats, pad_id) -> float:
    """Token-weighted LM loss over all examples, in eval mode."""
    module = TrainModule(model)
    was = model.training
    module.eval()
    with torch.no_grad():
        batch = collate(feats, pad_id)
        n = (batch["labels"][:, 1:] != -100).sum()
        loss = float(module(**batch)["lm"] / n)
    model.train(was)
    return loss


def test_loss_decreases_on_repeated_examples(tmp_path, tiny_model_dir, tokenizer):
    # A tiny random Llama with tied embeddings of std 0.02 caps its logits near ±1.3, so its loss
    # cannot fall far below ln(vocab) ≈ 10.8 whatever LoRA learns: the margins are sized for that.
    model = lora_model(tiny_model_dir)
    feats = features(tokenizer)
    before = full_set_loss(model, feats, tokenizer.pad_token_id)
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=2, grad_accum=1, max_steps=30, seed=0, save_total_limit=1)
    state = Trainer(model, tokenizer, cfg, lambda epoch: feats, tmp_path / "run", log=silent).train()
    losses = [r["loss"] for r in state.history]
    assert len(losses) == 30
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < first - 0.2, (first, last)
    assert max(losses[-10:]) < first
    after = full_set_loss(model, feats, tokenizer.pad_token_id)
    assert after < before - 0.3, (before, after)
    assert before == pytest.approx(losses[0], abs=0.2)
    assert state.epoch >= 14  # 2 batches per epoch: the 4 examples were seen many times


def test_gradients_reach_lora_parameters_only(tmp_path, tiny_model_dir, tokenizer):
    model = lora_model(tiny_model_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # one forward/backward through the training module
    module = TrainModule(model)
    batch = collate(features(tokenizer), tokenizer.pad_token_id)
    out = module(**batch)
    out["lm"].backward()
    for n, p in model.named_parameters():
        if "lora_B" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        elif "lora_A" in n:
            assert p.grad is not None, n  # zero at init (B = 0) but part of the graph
        else:
            assert p.grad is None, n
    model.zero_grad(set_to_none=True)

    # and through the trainer: base weights stay bit-identical, LoRA B moves away from zero
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    cfg = TrainingConfig(learning_rate=1e-2, batch_size=2, max_steps=3, seed=0)
    Trainer(model, tokenizer, cfg, lambda epoch: features(tokenizer), tmp_path / "run", log=silent).train()
    for n, p in model.named_parameters():
        if "lora_" in n:
            continue
        assert torch.equal(p.detach(), before[n]), n
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_checkpoints_and_rotation(tmp_path, tiny_model_dir, tokenizer):
    model = lora_model(tiny_model_dir)
    run = tmp_path / "run"
    cfg = TrainingConfig(learning_rate=1e-3, batch_size=2, max_steps=8, save_steps=3, save_total_limit=2, seed=0)
    trainer = Trainer(model, tokenizer, cfg, lambda epoch: features(tokenizer), run, log=silent)
    trainer.train()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    # saved at 3, 6 and the final step 8; the oldest rotated away; no temp dirs left
    assert ckpts == ["checkpoint-6", "checkpoint-8"]
    assert [p.name for p in trainer.checkpoints()] == ["checkpoint-6", "checkpoint-8"]
    for name in ckpts:
        d = run / "checkpoints" / name
        assert (d / "adapter_model.safetensors").is_file()
        assert (d / "adapter_config.json").is_file()
        assert (d / "trainer_state.pt").is_file()
        assert not list(d.glob("*.bin"))
        st = torch.load(d / "trainer_state.pt", weights_only=True)
        assert st["step"] == int(name.split("-")[1])
        assert {"optimizer", "scheduler", "torch_rng"} <= set(st)
    # the final adapter equals the last checkpoint's and holds LoRA weights only
    final = load_file(run / "adapter" / "adapter_model.safetensors")
    last = load_file(run / "checkpoints" / "checkpoint-8" / "adapter_model.safetensors")
    assert final.keys() == last.keys() and all("lora_" in k for k in final)
    assert all(torch.equal(final[k], last[k]) for k in final)
    prev = load_file(run / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors")
    assert any(not torch.equal(prev[k], last[k]) for k in prev)

    # training_history.json: one record per optimizer step
    hist = json.loads((run / "training_history.json").read_text())
    assert [r["step"] for r in hist] == list(range(1, 9))
    for r in hist:
        assert {"loss", "lm", "lr", "grad_norm", "tokens", "epoch"} <= set(r)
        assert r["loss"] == pytest.approx(r["lm"])  # no other loss term in SFT
    assert hist[-1]["tokens"] > hist[0]["tokens"]
    ck_hist = json.loads((run / "checkpoints" / "checkpoint-6" / "training_history.json").read_text())
    assert ck_hist == hist[:6]


def test_resume_continues_from_the_latest_checkpoint(tmp_path, tiny_model_dir, tokenizer):
    run = tmp_path / "run"
    cfg = TrainingConfig(learning_rate=1e-3, batch_size=2, max_steps=4, save_steps=2, seed=0)
    first = Trainer(lora_model(tiny_model_dir), tokenizer, cfg, lambda e: features(tokenizer), run, log=silent).train()
    cfg2 = TrainingConfig(learning_rate=1e-3, batch_size=2, max_steps=6, save_steps=2, seed=0)
    msgs: list[str] = []
    state = Trainer(
        lora_model(tiny_model_dir), tokenizer, cfg2, lambda e: features(tokenizer), run, log=msgs.append
    ).train(resume=True)
    assert any("resumed" in m and "step 4" in m for m in msgs)
    assert [r["step"] for r in state.history] == list(range(1, 7))
    assert state.history[:4] == first.history


def test_loss_is_token_weighted_over_the_accumulation_window(tmp_path, tiny_model_dir, tokenizer):
    feats = features(tokenizer)
    n_tokens = [sum(1 for x in f.labels[1:] if x != -100) for f in feats]
    assert len(set(n_tokens)) == len(n_tokens)  # different lengths: weighting matters

    model = lora_model(tiny_model_dir)
    model.eval()
    per_example = []
    with torch.no_grad():
        for f in feats:
            out = model(input_ids=torch.tensor([f.input_ids]), labels=torch.tensor([f.labels]))
            per_example.append(float(out.loss))  # HF: mean NLL over the example's labelled tokens
    expected = sum(loss * n for loss, n in zip(per_example, n_tokens)) / sum(n_tokens)
    unweighted = sum(per_example) / len(per_example)
    assert abs(expected - unweighted) > 1e-3  # the check below can tell the two apart

    # one optimizer step = 2 micro-batches of 2 = all 4 examples
    cfg = TrainingConfig(learning_rate=1e-3, batch_size=2, grad_accum=2, max_steps=1, seed=0, max_grad_norm=None)
    trainer = Trainer(model, tokenizer, cfg, lambda epoch: feats, tmp_path / "run", log=silent)
    assert trainer.total_steps == 1
    state = trainer.train()
    assert len(state.history) == 1
    assert state.history[0]["lm"] == pytest.approx(expected, rel=1e-5)
    assert state.history[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_short_last_window_and_epoch_count(tmp_path, tiny_model_dir, tokenizer):
    # 4 examples, batch 1, grad_accum 3: an epoch is 2 optimizer steps (3 + 1 micro-batches)
    cfg = TrainingConfig(learning_rate=1e-3, batch_size=1, grad_accum=3, epochs=2, seed=0)
    trainer = Trainer(
        lora_model(tiny_model_dir), tokenizer, cfg, lambda e: features(tokenizer), tmp_path / "r", log=silent
    )
    assert trainer.steps_per_epoch == 2 and trainer.total_steps == 4
    state = trainer.train()
    assert len(state.history) == 4
    assert [r["epoch"] for r in state.history] == [0, 0, 1, 1]


def test_heads_get_their_own_learning_rate(tmp_path, tiny_model_dir, tokenizer):
    from tunesmith.modeling.heads import Heads

    model = lora_model(tiny_model_dir)
    heads = Heads(model.config.hidden_size, dropout=0.0)
    cfg = TrainingConfig(batch_size=2, epochs=1, learning_rate=1e-4, head_learning_rate=3e-3, scheduler="constant")
    trainer = Trainer(model, tokenizer, cfg, lambda e: features(tokenizer), tmp_path / "r", heads=heads, log=silent)
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in trainer.optimizer.param_groups}
    assert set(by_lr) == {1e-4, 3e-3}
    assert by_lr[3e-3] == {id(p) for p in heads.parameters()}
    lora = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert lora and lora <= by_lr[1e-4]


def test_validation_pass_returns_the_head_logits_of_a_separate_pass(tiny_model_dir, tokenizer):
    """The empathy runner reads head metrics from the validation-loss pass: its logits must be the
    ones `head_logits` computes, row for row, whatever the length-sorted batch order."""
    from tunesmith.data.schema import Example
    from tunesmith.modeling.forward import head_logits
    from tunesmith.modeling.heads import Heads
    from tunesmith.training.trainer import evaluate_loss

    torch.manual_seed(0)
    model = lora_model(tiny_model_dir)
    heads = Heads(model.config.hidden_size, dropout=0.1)
    texts = [
        "I lost my job today.",
        "Thanks so much, that is wonderful news!!",
        "ok",
        "My dog died last week and I can't stop crying about it, everything reminds me of him.",
        "Why would anyone do that?",
    ]
    exs = [
        Example(
            messages=[{"role": "user", "content": t}, {"role": "assistant", "content": "I hear you."}],
            emotion=i % 28 if i != 2 else None,
            strategy=i % 8 if i != 4 else None,
        )
        for i, t in enumerate(texts)
    ]
    feats = [encode(tokenizer, x, max_length=96) for x in exs]
    got: dict[str, torch.Tensor] = {}
    losses = evaluate_loss(TrainModule(model, heads), feats, tokenizer.pad_token_id, batch_size=2, head_logits=got)
    want = head_logits(model, heads, feats, tokenizer.pad_token_id, batch_size=5)
    assert set(got) == {"emotion", "strategy"}
    for k in got:
        assert got[k].shape == want[k].shape
        assert torch.allclose(got[k], want[k], atol=1e-5), k
    # and the loss components are the per-label means of the same logits
    labelled = [i for i, x in enumerate(exs) if x.emotion is not None]
    ce = torch.nn.functional.cross_entropy(want["emotion"][labelled], torch.tensor([exs[i].emotion for i in labelled]))
    assert losses["emotion"] == pytest.approx(float(ce), abs=1e-4)
    assert heads.training  # evaluation left the modules in the mode it found them


def test_a_fresh_run_does_not_inherit_an_earlier_runs_checkpoints(tmp_path, tiny_model_dir, tokenizer):
    stale = tmp_path / "checkpoints" / "checkpoint-99"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"old")
    feats = features(tokenizer)
    cfg = TrainingConfig(learning_rate=1e-3, batch_size=2, max_steps=2, save_steps=1, report_to="none")
    t = Trainer(lora_model(tiny_model_dir), tokenizer, cfg, lambda e: feats, tmp_path, log=lambda m: None)
    t.train()
    assert [p.name for p in t.checkpoints()] == ["checkpoint-1", "checkpoint-2"]
