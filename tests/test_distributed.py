"""Multi-process training: two CPU processes (gloo, DDP, launched by `accelerate launch`) give the
same per-step losses, learning rates, token counts and final adapter + heads as one process with
the same global batch (2 processes × batch 2 vs 1 process × batch 2 × grad_accum 2), and the same
number of steps per epoch. Only two of eight examples carry an emotion label, so some processes
see batches the heads do not touch (DDP must still reduce their gradients)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = r"""
import json, sys
from pathlib import Path
from transformers import set_seed
from tunesmith.config import LossConfig, TrainingConfig
from tunesmith.data.chat import encode
from tunesmith.data.schema import Example
from tunesmith.modeling.heads import Heads
from tunesmith.modeling.loading import add_lora, load_model, load_tokenizer
from tunesmith.training.trainer import Trainer

model_dir, run_dir, bs, ga, epochs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
tok = load_tokenizer(model_dir)
set_seed(0)
model = add_lora(load_model(model_dir, "fp32"), 4, 8, 0.0, "auto")
heads = Heads(model.config.hidden_size, emotion=True, strategy=False, dropout=0.0)
Q = ["What is 2 + 2?", "Tom has 3 apples and buys 5 more. How many?", "A box holds 6 eggs. Eggs in 7 boxes?",
     "Half of 30?", "What is 10 - 4?", "Double 9?", "A week has how many days?", "What is 3 * 3?"]
A = ["2 + 2 = 4.", "3 + 5 = 8 apples.", "6 * 7 = 42 eggs.", "30 / 2 = 15, and 15 + 15 = 30.", "10 - 4 = 6.",
     "9 * 2 = 18.", "There are 7 days.", "3 * 3 = 9."]
feats = [encode(tok, Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                             emotion=(7 if i in (1, 6) else None)), 96) for i, (q, a) in enumerate(zip(Q, A))]
cfg = TrainingConfig(learning_rate=1e-2, batch_size=bs, grad_accum=ga, epochs=epochs, seed=0, save_total_limit=1,
                     warmup_ratio=0.0, scheduler="linear")
loss = LossConfig(lambda_emotion=0.5, lambda_strategy=0.0, lambda_kl=0.0)
trainer = Trainer(model, tok, cfg, lambda e: feats, run_dir, heads=heads, loss=loss, log=lambda m: None)
state = trainer.train()
acc = trainer.accelerator
if acc.is_main_process:
    (run_dir / "result.json").write_text(json.dumps({"history": state.history, "processes": acc.num_processes,
                                                     "backend": str(acc.state.backend),
                                                     "type": str(acc.distributed_type)}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env_extra: dict, timeout: int = 120) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env_extra}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "worker.py"
    path.write_text(WORKER)
    return path


@pytest.fixture(scope="module")
def single(worker, tiny_model_dir):
    """One process, batch 2 × grad_accum 2: the reference run."""
    out = worker.parent / "one"
    _run([sys.executable, str(worker), str(tiny_model_dir), str(out), "2", "2", "2"], {})
    return out


def _launch(worker, tiny_model_dir, out: Path, *launch_args: str) -> None:
    # what `accelerate launch --config_file configs/accelerate/<x>.yaml` does on GPUs, here on CPU:
    # torchrun underneath; ACCELERATE_USE_CPU selects the gloo backend
    _run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            *launch_args,
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            str(worker),
            str(tiny_model_dir),
            str(out),
            "2",
            "1",
            "2",
        ],
        {"ACCELERATE_USE_CPU": "true"},
    )


def _same_run(one: Path, two: Path) -> dict:
    from safetensors.torch import load_file

    r1 = json.loads((one / "result.json").read_text())
    r2 = json.loads((two / "result.json").read_text())
    assert (r1["processes"], r2["processes"]) == (1, 2) and "gloo" in r2["backend"]
    h1, h2 = r1["history"], r2["history"]
    assert len(h1) == len(h2) == 4  # 8 examples / global batch 4 × 2 epochs, whatever the process count
    for a, b in zip(h1, h2, strict=True):
        assert (a["step"], a["epoch"], a["tokens"]) == (b["step"], b["epoch"], b["tokens"])
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
        for k in ("loss", "lm", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a, b)
        assert (a["emotion"] is None) == (b["emotion"] is None)
        if a["emotion"] is not None:
            assert a["emotion"] == pytest.approx(b["emotion"], rel=1e-4)
    assert any(h["emotion"] is not None for h in h1)
    for name in ("adapter_model.safetensors", "heads.safetensors"):
        w1, w2 = load_file(one / "adapter" / name), load_file(two / "adapter" / name)
        assert w1.keys() == w2.keys()
        for k in w1:
            assert w1[k].shape == w2[k].shape and torch.allclose(w1[k], w2[k], atol=1e-5), (name, k)
    assert (
        max(
            float(v.abs().max())
            for k, v in load_file(one / "adapter" / "adapter_model.safetensors").items()
            if "lora_B" in k
        )
        > 1e-3
    )  # training moved the adapter
    return r2


def test_ddp_two_gloo_processes_match_one_process(worker, single, tiny_model_dir):
    two = worker.parent / "ddp"
    _launch(worker, tiny_model_dir, two, "--multi_gpu")
    assert "MULTI_CPU" in _same_run(single, two)["type"]


def test_gathered_state_saves_like_the_module(tmp_path, tiny_model_dir, tokenizer):
    """Under FSDP/DeepSpeed the trainer saves from the gathered state dict (accelerate's
    get_state_dict, keys of the TrainModule); those files equal a plain save. (FSDP and DeepSpeed
    themselves need GPUs: accelerate has no FSDP on CPU.)"""
    from safetensors.torch import load_file

    from tunesmith.config import TrainingConfig
    from tunesmith.data.chat import encode
    from tunesmith.data.schema import Example
    from tunesmith.modeling.heads import Heads
    from tunesmith.modeling.loading import add_lora, load_model
    from tunesmith.training.trainer import Trainer

    torch.manual_seed(0)
    model = add_lora(load_model(str(tiny_model_dir), "fp32"), 4, 8, 0.0, "auto")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    feats = [
        encode(
            tokenizer,
            Example(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
            32,
        )
    ]
    trainer = Trainer(
        model,
        tokenizer,
        TrainingConfig(max_steps=1),
        lambda e: feats,
        tmp_path / "run",
        heads=Heads(model.config.hidden_size, dropout=0.0),
        log=lambda m: None,
    )
    trainer._save_weights(tmp_path / "plain")
    trainer._save_weights(tmp_path / "gathered", trainer.unwrapped().state_dict())
    for name in ("adapter_model.safetensors", "heads.safetensors"):
        a, b = load_file(tmp_path / "plain" / name), load_file(tmp_path / "gathered" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((tmp_path / "gathered" / "adapter_config.json").read_text())["r"] == 4


def test_accelerate_configs_parse():
    import yaml

    kinds = {}
    for f in sorted(CONFIGS.glob("*.yaml")):
        c = yaml.safe_load(f.read_text())
        kinds[f.stem] = c["distributed_type"]
        assert c["num_processes"] >= 2 and c["num_machines"] == 1
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    z3 = yaml.safe_load((CONFIGS / "deepspeed_zero3.yaml").read_text())["deepspeed_config"]
    assert z3["zero_stage"] == 3 and z3["zero3_save_16bit_model"] is True  # the trainer gathers weights to save
