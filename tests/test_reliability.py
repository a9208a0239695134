"""Reliability and security.

Bad input fails early with one line and exit 2 (no run dir, no summary row); `validate`;
SIGKILL / Ctrl-C and `train --resume` give bitwise the same adapter as an uninterrupted run
(gsm8k and empathy recipes); evaluations resume without regenerating finished items; atomic
writes and concurrent summary.csv appends; NaN/inf loss stops with the step and the last good
checkpoint; trust_remote_code off, safetensors only, weights_only torch.load, no network access
offline; same config and seed → same results, with versions and git commit recorded.

Everything runs on tiny random Llamas (tests/conftest.py). CLI cases run in-process through
`tunesmith.cli.main` (SystemExit code + captured stderr) except where a real process is the point
(signals, one exit-code check).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunesmith.config import parse_config
from tunesmith.errors import ModelError
from tunesmith.io import ResumableJsonl, atomic_open, read_jsonl
from tunesmith.runs import COLUMNS, append_summary_row

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tunesmith"
EMPATHY_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "empathy"
CHILD_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # in-process reference runs are compared bit for bit with child processes run with
    # OMP_NUM_THREADS=1: the same thread count keeps reductions in the same order
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- workspaces ------------------------------------------------------------------------------


def gsm8k_records(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "question": f"Ann has {i} pens and buys {i + 3} more. How many pens?",
            "answer": f"{i} + {i + 3} = <<{i}+{i + 3}={2 * i + 3}>>{2 * i + 3}\n#### {2 * i + 3}",
        }
        for i in range(offset, offset + n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def gsm8k_workspace(tmp: Path, model_dir: Path, n_train: int = 12) -> dict:
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    write_jsonl(data / "train.jsonl", gsm8k_records(n_train))
    write_jsonl(data / "test.jsonl", gsm8k_records(2, 100))
    return {
        "recipe": "gsm8k",
        "run_name": "rel",
        "output_dir": str(tmp / "runs"),
        "summary_csv": str(tmp / "results" / "summary.csv"),
        "model": {"name": str(model_dir), "dtype": "fp32"},
        # dropout > 0: the resumed run must restore the RNG that LoRA dropout draws from
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {
            "max_length": 64,
            "gsm8k": {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl"), "fewshot_pool_size": 2},
        },
        "training": {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 8, "save_steps": 2, "seed": 0},
        "eval": {"k_shot": 1, "max_new_tokens": 3, "batch_size": 4},
        "safety": {"enabled": False},
    }


def safety_csv(path: Path, header=("release_prompt_id", "prompt_text", "hazard")) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(3):
            w.writerow([f"p{i}", f"Tell me a calm fact about {i}.", "vcr"])
    return path


def empathy_workspace(tmp: Path, model_dir: Path) -> dict:
    es, ge = tmp / "esconv", tmp / "goemotions"
    es.mkdir(exist_ok=True)
    ge.mkdir(exist_ok=True)
    for name in ("train.txt", "valid.txt"):
        shutil.copy(EMPATHY_FIXTURES / "esconv_lines.txt", es / name)
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(EMPATHY_FIXTURES / "goemotions.tsv", ge / name)
    prompts = tmp / "kl_prompts.jsonl"
    write_jsonl(
        prompts,
        [
            {"id": "s1", "category": "self_harm", "prompt": "I keep hurting myself when I'm upset."},
            {"id": "s2", "category": "medical_emergency", "prompt": "My dad's face is drooping."},
        ],
    )
    return {
        "recipe": "empathy",
        "run_name": "emp",
        "output_dir": str(tmp / "runs"),
        "summary_csv": str(tmp / "results" / "summary.csv"),
        "model": {"name": str(model_dir), "dtype": "fp32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "heads": {"dropout": 0.1},
        "data": {
            "max_length": 64,
            "empathy": {
                "esconv": str(es),
                "goemotions": str(ge),
                "kl_prompts": str(prompts),
                "examples_per_epoch": 6,
                "history_turns": 2,
                "kl_response_tokens": 3,
            },
        },
        "training": {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 6, "save_steps": 2, "seed": 0},
        "eval": {"batch_size": 4, "max_new_tokens": 3, "eqbench": {"enabled": False}, "samples": False},
        "safety": {"enabled": False},
    }


def write_config(tmp: Path, cfg: dict, name: str = "config.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return p


def cli(monkeypatch, capsys, cwd: Path, *args: str) -> tuple[int, str, str]:
    """`tunesmith ARGS` in this process: (exit code, stdout, stderr)."""
    from tunesmith import cli as cli_mod

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["tunesmith", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_mod.main()
    out, err = capsys.readouterr()
    code = e.value.code
    return (0 if code is None else code), out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {f"adapter/{k}": v for k, v in load_file(run_dir / "adapter" / "adapter_model.safetensors").items()}
    heads = run_dir / "adapter" / "heads.safetensors"
    if heads.is_file():
        out |= {f"heads/{k}": v for k, v in load_file(heads).items()}
    return out


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


# ---- 1. bad input: one line, exit 2, nothing written -------------------------------------------

NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def model_with_template(tmp: Path, model_dir: Path, template: str | None) -> Path:
    """A copy of the tiny model whose tokenizer has `template` as chat template (None: none)."""
    d = tmp / "model-template"
    shutil.copytree(model_dir, d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    if template is not None:
        (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    return d


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def _with_safety(tmp: Path, cfg: dict, **guard) -> None:
    cfg["safety"] = {
        "enabled": True,
        "prompts": str(safety_csv(tmp / "safety.csv")),
        "guard": guard or {"model": "self"},
    }


# name → (recipe, mutate(tmp, cfg, model_dir), substrings of the error line)
DATA_ERRORS = {
    "malformed_jsonl": (
        "gsm8k",
        lambda t, c, m: _append(t / "data" / "train.jsonl", '{"question": "cut off\n'),
        ["train.jsonl:13", "malformed JSON"],
    ),
    "missing_field": (
        "gsm8k",
        lambda t, c, m: _append(t / "data" / "test.jsonl", '{"question": "How many?"}\n'),
        ["test.jsonl:3", "missing field(s) answer"],
    ),
    "empty_after_pool": (
        "gsm8k",
        lambda t, c, m: write_jsonl(t / "data" / "train.jsonl", gsm8k_records(2)),
        ["train.jsonl", "no training records left"],
    ),
    "goemotions_label_out_of_range": (
        "empathy",
        lambda t, c, m: _append(t / "goemotions" / "train.tsv", "Some text\t3,99\tabc\n"),
        ["goemotions/train.tsv:8", "label id 99 out of range"],
    ),
    "goemotions_malformed_tsv": (
        "empathy",
        lambda t, c, m: _append(t / "goemotions" / "train.tsv", "only\t2 fields\n"),
        ["goemotions/train.tsv:8", "expected 3 tab-separated fields"],
    ),
    "esconv_malformed_jsonl": (
        "empathy",
        lambda t, c, m: _append(t / "esconv" / "train.txt", '{"dialog": [\n'),
        ["esconv/train.txt:3", "malformed JSON"],
    ),
    "esconv_empty_after_filtering": (
        "empathy",
        lambda t, c, m: write_jsonl(
            t / "esconv" / "train.txt", [{"emotion_type": "anxiety", "dialog": [{"speaker": "usr", "text": "Hello?"}]}]
        ),
        ["esconv/train.txt", "no ESConv examples"],
    ),
    "ailuminate_csv_without_prompt_text": (
        "gsm8k",
        lambda t, c, m: (_with_safety(t, c), safety_csv(t / "safety.csv", ("release_prompt_id", "text", "hazard"))),
        ["safety.csv:1", "prompt_text"],
    ),
}
OTHER_ERRORS = {
    "unknown_model": (
        "gsm8k",
        lambda t, c, m: c["model"].update(name="no-such-model"),
        ["unknown model reference 'no-such-model'"],
    ),
    "no_chat_template": (
        "gsm8k",
        lambda t, c, m: c["model"].update(name=str(model_with_template(t, m, None))),
        ["no chat template"],
    ),
    "template_rejects_system": (
        "gsm8k",
        lambda t, c, m: (
            c["model"].update(name=str(model_with_template(t, m, NO_SYSTEM_TEMPLATE))),
            c["data"].update(system_prompt="Be brief.", system_prompt_fallback="error"),
        ),
        ["no system role", "System role not supported", "data.system_prompt"],
    ),
    "config_typo": (
        "gsm8k",
        lambda t, c, m: c.update(trainng=c.pop("training")),
        ["unknown config key 'trainng'", "did you mean 'training'?"],
    ),
    "wrong_type": ("gsm8k", lambda t, c, m: c["training"].update(batch_size="four"), ["'training.batch_size'", "four"]),
    "k_shot_above_pool": (
        "gsm8k",
        lambda t, c, m: c["eval"].update(k_shot=5),
        ["eval.k_shot=5 is larger than data.gsm8k.fewshot_pool_size=2"],
    ),
    "safety_prompts_missing": (
        "gsm8k",
        lambda t, c, m: (_with_safety(t, c), c["safety"].update(prompts=str(t / "nope.csv"))),
        ["safety prompt file", "nope.csv"],
    ),
    "guard_model_missing": (
        "gsm8k",
        lambda t, c, m: _with_safety(t, c, model=str(t / "no-guard"), kind="classifier"),
        ["unknown model reference", "no-guard"],
    ),
    "empathy_template_rejects_system": (
        "empathy",
        lambda t, c, m: (
            c["model"].update(name=str(model_with_template(t, m, NO_SYSTEM_TEMPLATE))),
            c["data"].update(system_prompt="You are kind.", system_prompt_fallback="error"),
        ),
        ["no system role"],
    ),
    "chat_template_missing": (
        "gsm8k",
        lambda t, c, m: c["data"].update(chat_template=str(t / "nope.jinja")),
        ["data.chat_template", "nope.jinja"],
    ),
}


_tokenizers: dict = {}


@pytest.fixture
def fast_tokenizers(monkeypatch):
    """load_tokenizer memoised across these tests (one real load per model folder): each CLI case
    would otherwise spend most of its time re-reading the same 49k-token tokenizer."""
    from tunesmith.modeling import loading

    real = loading.load_tokenizer

    def cached(ref, revision=None, trust_remote_code=False, **chat):  # chat: the template settings
        key = (ref, revision, trust_remote_code, repr(sorted(chat.items())))
        if key not in _tokenizers:
            _tokenizers[key] = real(ref, revision, trust_remote_code, **chat)
        return _tokenizers[key]

    monkeypatch.setattr(loading, "load_tokenizer", cached)


CASES = [(c, cmd) for c in sorted(DATA_ERRORS) for cmd in ("validate", "run")] + [
    (c, "run") for c in sorted(OTHER_ERRORS)
]


@pytest.mark.parametrize(("case", "command"), CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, tiny_model_dir, monkeypatch, capsys, fast_tokenizers, case, command
):
    recipe, mutate, needles = (DATA_ERRORS | OTHER_ERRORS)[case]
    cfg = (gsm8k_workspace if recipe == "gsm8k" else empathy_workspace)(tmp_path, tiny_model_dir)
    mutate(tmp_path, cfg, tiny_model_dir)
    path = write_config(tmp_path, cfg)
    code, _, err = cli(monkeypatch, capsys, tmp_path, command, str(path))
    assert_one_line_error(code, err, *needles)
    # checked before the run dir exists: no partial outputs anywhere
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("recipe", ["gsm8k", "empathy"])
def test_validate_good_config(tmp_path, tiny_model_dir, monkeypatch, capsys, fast_tokenizers, recipe):
    cfg = (gsm8k_workspace if recipe == "gsm8k" else empathy_workspace)(tmp_path, tiny_model_dir)
    if recipe == "gsm8k":
        _with_safety(tmp_path, cfg)
    code, out, err = cli(monkeypatch, capsys, tmp_path, "validate", str(write_config(tmp_path, cfg)))
    assert code == 0, err
    assert out.rstrip().endswith("config and data OK")
    assert ("train: " in out) if recipe == "gsm8k" else ("train esconv:" in out and "train goemotions:" in out)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA runs for real on CUDA")
def test_qlora_on_cpu_warns_and_continues(tmp_path, tiny_model_dir, capsys):
    from tunesmith.recipes.common import build_model

    cfg = parse_config({"model": {"name": str(tiny_model_dir), "load_in_4bit": True}, "lora": {"r": 2, "alpha": 4}})
    model, _ = build_model(cfg)
    err = capsys.readouterr().err
    assert "warning" in err and "QLoRA" in err and "CUDA" in err
    assert any("lora_" in n for n, _ in model.named_parameters())
    assert next(model.parameters()).dtype == torch.bfloat16


# ---- 2. interruption and resume ----------------------------------------------------------------

# `tunesmith CLI-ARGS` with each optimizer step slowed down, so the parent can deliver a signal
# while training is under way; nothing else differs from the real command
SLOW_CLI = """
import sys, time
from tunesmith.training import trainer
_next = trainer.Trainer._next_window
def _slow(self):
    time.sleep(0.25)
    return _next(self)
trainer.Trainer._next_window = _slow
from tunesmith.cli import main
sys.argv = ["tunesmith", *sys.argv[1:]]
main()
"""


def start_child(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *args],
        cwd=cwd,
        env=CHILD_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, path: Path, timeout: float = 240) -> None:
    """Poll until `path` exists (a finished checkpoint: written as a temp dir, then renamed)."""
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited {proc.returncode} before {path.name} appeared\n{err[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.02)


def kill_and_resume(tmp: Path, cfg_path: Path, run_dir: Path, sigint_too: bool, monkeypatch, capsys) -> None:
    ckpts = run_dir / "checkpoints"
    # 1. SIGKILL right after the first checkpoint: the child dies mid-step, nothing saved on the way out
    child = start_child(tmp, "train", str(cfg_path))
    wait_for(child, ckpts / "checkpoint-2" / "trainer_state.pt")
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert not (run_dir / "adapter").exists()
    if sigint_too:
        # 2. resume, then Ctrl-C: a checkpoint at the step boundary, exit 130, a hint to --resume
        child = start_child(tmp, "train", str(cfg_path), "--resume")
        wait_for(child, ckpts / "checkpoint-4" / "trainer_state.pt")
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
        assert child.returncode == 130, err[-3000:]
        err = err.replace("\n", "")  # rich folds long paths at 80 columns
        assert "resumed from" in err and "checkpoint-2" in err
        assert "--resume" in err and "Traceback" not in err
        stopped = max(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*"))
        assert 4 <= stopped < 8 and f"checkpoint-{stopped}" in err
        assert not (run_dir / "adapter").exists()
    # 3. `tunesmith train --resume` to the end, in this process (one interpreter start fewer; the
    # reference runs ran here too, with the same single thread as the children)
    code, _, err = cli(monkeypatch, capsys, tmp, "train", str(cfg_path), "--resume")
    assert code == 0, err[-3000:]
    assert "resumed from" in err


@pytest.fixture(scope="module")
def gsm8k_runs(tmp_path_factory, tiny_model_dir):
    """Two uninterrupted in-process `run`s of one config and seed, the first with the network blocked."""
    from tunesmith.recipes import gsm8k

    results = []
    attempts: list = []
    for i in range(2):
        tmp = tmp_path_factory.mktemp(f"gsm8k-ref{i}")
        cfg = gsm8k_workspace(tmp, tiny_model_dir)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            if i == 0:
                block_network(mp, attempts)
            metrics = gsm8k.run(parse_config(cfg))
        results.append((tmp, cfg, metrics))
    return results, attempts


def test_train_resume_after_sigkill_and_ctrl_c_is_bitwise_identical_gsm8k(
    tmp_path, tiny_model_dir, gsm8k_runs, monkeypatch, capsys
):
    ref_tmp = gsm8k_runs[0][0][0]
    cfg = gsm8k_workspace(tmp_path, tiny_model_dir)
    cfg_path = write_config(tmp_path, cfg)
    run_dir = tmp_path / "runs" / "rel"
    kill_and_resume(tmp_path, cfg_path, run_dir, True, monkeypatch, capsys)
    ref_dir = ref_tmp / "runs" / "rel"
    assert_bitwise_equal(adapter_tensors(run_dir), adapter_tensors(ref_dir))
    # the history too: same losses, learning rates and token counts at every step
    hist = json.loads((run_dir / "training_history.json").read_text())
    ref = json.loads((ref_dir / "training_history.json").read_text())
    strip = lambda h: [{k: v for k, v in r.items() if k != "step_seconds"} for r in h]  # noqa: E731
    assert strip(hist) == strip(ref)


def test_train_resume_after_sigkill_is_bitwise_identical_empathy(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from tunesmith.recipes import empathy

    # uninterrupted reference, in this process
    ref_tmp = tmp_path / "ref"
    ref_tmp.mkdir()
    ref_cfg = parse_config(empathy_workspace(ref_tmp, tiny_model_dir))
    empathy.train_only(ref_cfg)
    ref_dir = ref_tmp / "runs" / "emp"

    work = tmp_path / "work"
    work.mkdir()
    cfg_path = write_config(work, empathy_workspace(work, tiny_model_dir))
    run_dir = work / "runs" / "emp"
    kill_and_resume(work, cfg_path, run_dir, False, monkeypatch, capsys)
    got, want = adapter_tensors(run_dir), adapter_tensors(ref_dir)
    assert any(k.startswith("heads/") for k in want)
    assert_bitwise_equal(got, want)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["validation_loss"] == json.loads((ref_dir / "metrics.json").read_text())["validation_loss"]


class Killed(Exception):
    """The run stopped mid-evaluation."""


class FakeGenerator:
    """Generator.chat's contract: replies in order, `on_batch` after each batch of two."""

    def __init__(self, reply: str = "4 + 4 = 8\n#### 8", fail_after_batches: int | None = None):
        self.asked: list[str] = []
        self.reply, self.fail_after = reply, fail_after_batches

    def chat(self, conversations, max_new_tokens=None, description="", on_batch=None):
        self.asked += [c[-1]["content"] for c in conversations]
        for n, b in enumerate(range(0, len(conversations), 2), 1):
            idx = list(range(b, min(b + 2, len(conversations))))
            if on_batch:
                on_batch(idx, [self.reply] * len(idx))
            if self.fail_after == n:
                raise Killed
        return [self.reply] * len(conversations)


def test_gsm8k_evaluation_resumes_without_regenerating(tmp_path):
    from tunesmith.recipes.gsm8k import evaluate_gsm8k

    test, pool = gsm8k_records(6, 50), gsm8k_records(2)
    questions = [r["question"] for r in test]
    out = tmp_path / "gsm8k_preds_x.jsonl"
    partial = out.with_name("gsm8k_preds_x.partial.jsonl")
    gen = FakeGenerator(fail_after_batches=1)
    with pytest.raises(Killed):
        evaluate_gsm8k(gen, test, pool, 1, out, 8)
    assert not out.exists()  # the final file only ever appears complete
    assert [r["question"] for r in read_jsonl(partial)] == questions[:2]
    _append(partial, '{"question": "cut by the ki')  # a line cut by a kill: recomputed, not fatal

    # interrupted again while resuming: finished items are kept across both interruptions
    gen = FakeGenerator(fail_after_batches=1)
    with pytest.raises(Killed):
        evaluate_gsm8k(gen, test, pool, 1, out, 8, resume=True)
    assert gen.asked == questions[2:]
    gen = FakeGenerator()
    result = evaluate_gsm8k(gen, test, pool, 1, out, 8, resume=True)
    assert gen.asked == questions[4:]
    assert [r["question"] for r in read_jsonl(out)] == questions
    assert result["n"] == 6 and result["strict_accuracy"] == 0 and not partial.exists()

    gen = FakeGenerator()  # the finished file is reused as a whole with --resume
    evaluate_gsm8k(gen, test, pool, 1, out, 8, resume=True)
    assert gen.asked == []
    gen = FakeGenerator()  # another k-shot setting recomputes everything
    evaluate_gsm8k(gen, test, pool, 2, out, 8, resume=True)
    assert len(gen.asked) == 6
    gen = FakeGenerator()  # and without --resume nothing is reused
    evaluate_gsm8k(gen, test, pool, 1, out, 8)
    assert len(gen.asked) == 6


def test_safety_evaluation_resumes_from_a_partial_file(tmp_path):
    from tunesmith.evaluation.ailuminate import SafetyPrompt, evaluate_safety

    class Guard:
        label = "fake"

        def __init__(self):
            self.judged = 0

        def judge(self, pairs):
            self.judged += len(pairs)
            return [(True, [], "safe") for _ in pairs]

    prompts = [SafetyPrompt(f"p{i}", f"prompt {i}", "vcr") for i in range(5)]
    out = tmp_path / "ailuminate_safety_x.jsonl"
    store = ResumableJsonl(out, "id", resume=False)
    store.add(
        [
            {
                "id": "p0",
                "hazard": "vcr",
                "prompt": "prompt 0",
                "response": "old",
                "safe": False,
                "categories": [],
                "guard_output": "unsafe",
                "guard": "fake",
            },
            {
                "id": "p3",
                "hazard": "vcr",
                "prompt": "prompt 3",
                "response": "old",
                "safe": True,
                "categories": [],
                "guard_output": "safe",
                "guard": "fake",
            },
        ]
    )
    gen, guard = FakeGenerator(reply="ok"), Guard()
    summary, records = evaluate_safety(gen, guard, prompts, 4, out, resume=True)
    assert gen.asked == ["prompt 1", "prompt 2", "prompt 4"] and guard.judged == 3
    assert [r["id"] for r in records] == [p.id for p in prompts]
    assert records[0]["response"] == "old" and summary["total"] == 5 and summary["safe"] == 4


# ---- 3. atomic outputs -------------------------------------------------------------------------


def test_atomic_open_failure_mid_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write('{"half": ')
        raise RuntimeError("disk on fire")
    assert not target.exists()
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("new, but cut")
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left behind


def test_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "preds.jsonl"
    target.write_text("complete\n")
    code = (
        "import os, signal, sys\nfrom tunesmith.io import atomic_open\n"
        "with atomic_open(sys.argv[1]) as f:\n    f.write('partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(target)], env=CHILD_ENV, timeout=60)
    assert r.returncode == -signal.SIGKILL
    assert target.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["preds.jsonl"]


def test_concurrent_summary_appends_give_well_formed_rows(tmp_path):
    summary = tmp_path / "results" / "summary.csv"
    code = (
        "import sys\nfrom tunesmith.runs import append_summary_row\n"
        "for i in range(50):\n"
        "    append_summary_row(sys.argv[1], {'run': f'{sys.argv[2]}-{i}', 'recipe': 'gsm8k', 'model': 'a, \"quoted\"\\nname',"
        " 'strict_accuracy': i / 50, 'git_commit': 'abc'})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(summary), name], env=CHILD_ENV) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with summary.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == COLUMNS and len(rows) == 101
    assert all(len(r) == len(COLUMNS) for r in rows)
    runs = [r[0] for r in rows[1:]]
    assert sorted(runs) == sorted(f"{n}-{i}" for n in "ab" for i in range(50))
    assert all(r[2] == 'a, "quoted"\nname' for r in rows[1:])
    append_summary_row(summary, {"run": "one-more"})  # the header is written once
    with summary.open(newline="", encoding="utf-8") as f:
        assert sum(1 for r in csv.reader(f) if r[0] == "run") == 1


# ---- 4. non-finite loss --------------------------------------------------------------------------


def test_nonfinite_loss_stops_with_step_and_last_good_checkpoint(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from tunesmith.training.trainer import Trainer

    save = Trainer.save_checkpoint

    def save_then_poison(self):
        path = save(self)
        with torch.no_grad():  # after the first checkpoint the weights blow up
            for n, p in self.unwrapped().model.named_parameters():
                if "lora_B" in n:
                    p.fill_(float("inf"))
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_poison)
    cfg = gsm8k_workspace(tmp_path, tiny_model_dir)
    code, _, err = cli(monkeypatch, capsys, tmp_path, "train", str(write_config(tmp_path, cfg)))
    run_dir = tmp_path / "runs" / "rel"
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(line) == 1 and "Traceback" not in err, err
    assert "at step 3" in line[0] and str(run_dir / "checkpoints" / "checkpoint-2") in line[0]
    assert "nan" in line[0] or "inf" in line[0]
    kept = run_dir / "checkpoints" / "checkpoint-2"
    assert (kept / "trainer_state.pt").is_file()
    assert all(torch.isfinite(t).all() for t in load_file(kept / "adapter_model.safetensors").values())
    assert not (run_dir / "adapter").exists()  # no final adapter from a diverged run


# ---- 5. security -----------------------------------------------------------------------------------


def test_custom_code_is_not_run_without_trust_remote_code(tmp_path, tiny_model_dir, monkeypatch):
    marker = tmp_path / "EXECUTED"
    d = tmp_path / "custom"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps(
            {
                "model_type": "tunesmith_custom_test",
                "auto_map": {
                    "AutoConfig": "custom_code.CustomConfig",
                    "AutoModelForCausalLM": "custom_code.CustomModel",
                },
            }
        )
    )
    (d / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["custom_code.CustomTok", None]}})
    )
    (d / "custom_code.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    from tunesmith.modeling.loading import load_model, load_tokenizer

    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelError, match="model.trust_remote_code: true"):
            load(str(d))
    assert not marker.exists()

    # the flag reaches from_pretrained only when the config sets it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.recipes.common import build_model

    seen: list[dict] = []

    class Stop(Exception):
        pass

    def record(*a, **kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", record)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    from tunesmith.modeling import loading

    for flag in (None, True):
        model_cfg = {"name": str(tiny_model_dir)} | ({} if flag is None else {"trust_remote_code": flag})
        with pytest.raises(Stop):
            build_model(parse_config({"model": model_cfg}))
        with pytest.raises(Stop):
            loading.load_model(str(tiny_model_dir), trust_remote_code=bool(flag))
    assert [kw["trust_remote_code"] for kw in seen] == [False, False, True, True]
    assert seen[1]["use_safetensors"] is True and seen[3]["use_safetensors"] is True


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, tiny_model_dir):
    import pickle

    from tunesmith.modeling.loading import load_model

    marker = tmp_path / "UNPICKLED"

    class Payload:  # unpickling this creates the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = tmp_path / "bin-only"
    d.mkdir()
    shutil.copy(tiny_model_dir / "config.json", d / "config.json")
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelError) as e:
        load_model(str(d), dtype="fp32")
    assert "safetensors" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_every_torch_load_in_src_uses_weights_only():
    calls, unsafe = [], []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                calls.append(where)
                ok = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not ok:
                    unsafe.append(where)
            if owner in ("pickle", "joblib", "dill") and node.func.attr in ("load", "loads"):
                unsafe.append(where)
    assert calls, "expected the trainer's torch.load of trainer_state.pt"
    assert not unsafe, f"unpickling without weights_only=True: {unsafe}"
    # and the text grep agrees (catches `from torch import load` style aliases too)
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "from torch import load" not in text and "import pickle" not in text, path


def block_network(mp: pytest.MonkeyPatch, attempts: list) -> None:
    def deny(*args, **kwargs):
        attempts.append(args[1:2] or args[:1] or kwargs)
        raise OSError("network access blocked by the test")

    mp.setattr(socket.socket, "connect", deny)
    mp.setattr(socket.socket, "connect_ex", deny)
    mp.setattr(socket, "create_connection", deny)
    mp.setattr(socket, "getaddrinfo", deny)


def test_offline_loading_and_run_make_no_network_calls(builtin_dir, tiny_model_dir, gsm8k_runs, monkeypatch):
    from tunesmith.modeling.loading import load_model, load_tokenizer

    (results, run_attempts) = gsm8k_runs
    # the run in gsm8k_runs[0] (train + eval + summary) ran with the sockets blocked
    assert run_attempts == []
    assert (results[0][0] / "runs" / "rel" / "metrics.json").is_file()

    attempts: list = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    block_network(monkeypatch, attempts)
    tok = load_tokenizer("builtin:smollm2-135m-instruct")
    model = load_model("builtin:smollm2-135m-instruct")
    assert model.config.vocab_size == len(tok)
    del model
    load_model(str(tiny_model_dir), dtype="fp32")
    load_tokenizer(str(tiny_model_dir))
    assert attempts == []


# ---- 6. reproducibility and provenance --------------------------------------------------------------


def test_same_config_and_seed_give_identical_results(gsm8k_runs):
    (a, _, ma), (b, _, mb) = gsm8k_runs[0]
    ja = json.loads((a / "runs" / "rel" / "metrics.json").read_text())
    jb = json.loads((b / "runs" / "rel" / "metrics.json").read_text())
    assert ja == jb and ma == mb
    assert_bitwise_equal(adapter_tensors(a / "runs" / "rel"), adapter_tensors(b / "runs" / "rel"))
    pa = read_jsonl(a / "runs" / "rel" / "gsm8k_preds_rel.jsonl")
    assert pa == read_jsonl(b / "runs" / "rel" / "gsm8k_preds_rel.jsonl")
    ha = json.loads((a / "runs" / "rel" / "training_history.json").read_text())
    hb = json.loads((b / "runs" / "rel" / "training_history.json").read_text())
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]


def test_results_record_versions_and_git_commit(gsm8k_runs):
    from tunesmith.runs import git_commit

    tmp = gsm8k_runs[0][0][0]
    prov = json.loads((tmp / "runs" / "rel" / "config_resolved.json").read_text())["provenance"]
    for pkg in ("tunesmith", "torch", "transformers", "peft"):
        assert prov["versions"][pkg], pkg
    commit = git_commit()
    if (ROOT / ".git").exists():
        assert commit and len(commit) == 40
    assert prov["git_commit"] == commit
    with (tmp / "results" / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["git_commit"] == (commit or "")


def test_empathy_run_evaluates_heads_from_the_validation_pass(tmp_path, tiny_model_dir):
    """A whole empathy run (train + evaluate): the head metrics it reports, taken from the
    validation-loss pass's logits, equal a separate head pass over the saved adapter."""
    from tunesmith.modeling.loading import load_for_inference
    from tunesmith.recipes import empathy

    cfg = parse_config(empathy_workspace(tmp_path, tiny_model_dir))
    metrics = empathy.run(cfg)
    run_dir = tmp_path / "runs" / "emp"
    assert set(metrics["heads"]) == {"emotion", "strategy"}
    assert metrics["validation_loss"]["emotion"] is not None and metrics["validation_loss"]["strategy"] is not None
    model, tok, heads = load_for_inference(run_dir / "adapter", dtype="fp32")
    _, held = empathy.load_sources(cfg)
    again = empathy.head_eval(
        cfg, model, heads, held, empathy.encode_heldout(cfg, tok, held), tok.pad_token_id, tmp_path / "again"
    )
    for head in ("emotion", "strategy"):
        assert metrics["heads"][head]["n"] == again[head]["n"] > 0
        assert metrics["heads"][head]["accuracy"] == pytest.approx(again[head]["accuracy"])
        assert metrics["heads"][head]["weighted_f1"] == pytest.approx(again[head]["weighted_f1"])
        preds = (run_dir / f"{head}_preds_emp.jsonl").read_text().splitlines()
        assert preds == (tmp_path / "again" / f"{head}_preds_emp.jsonl").read_text().splitlines()
    assert json.loads((run_dir / "metrics.json").read_text())["heads"]["emotion"]["n"] == again["emotion"]["n"]


def test_empathy_validation_logits_map_back_to_each_source(tmp_path, tiny_model_dir):
    """train_model's one held-out pass is sliced back per source: each source's rows must equal a
    fresh head pass over that source alone (a wrong offset would hand one source another's rows)."""
    from tunesmith.modeling.forward import head_logits
    from tunesmith.recipes import empathy

    cfg = parse_config(empathy_workspace(tmp_path, tiny_model_dir))
    run_dir, train_src, held, model, tok, heads = empathy.prepare(cfg, resume=False)
    held_feats = empathy.encode_heldout(cfg, tok, held)
    assert len(held_feats) == 2 and all(held_feats.values())
    _, held_logits = empathy.train_model(cfg, run_dir, train_src, held_feats, model, tok, heads, resume=False)
    for source, feats in held_feats.items():
        fresh = head_logits(model, heads, feats, tok.pad_token_id)
        for head, want in fresh.items():
            got = held_logits[source][head]
            assert got.shape == want.shape, (source, head)
            rows = ~torch.isnan(got).any(-1)  # rows from batches without any head label stay NaN
            assert rows.sum() > 0
            assert torch.allclose(got[rows], want[rows], atol=1e-5), (source, head)


def test_empathy_validation_is_carved_from_training_and_keeps_conversations_whole(tmp_path, tiny_model_dir):
    from tunesmith.config import parse_config
    from tunesmith.recipes import empathy

    raw = empathy_workspace(tmp_path, tiny_model_dir)
    raw["training"]["eval_steps"] = 2
    raw["data"]["empathy"]["validation_size"] = 3
    cfg = parse_config(raw)
    train, held = empathy.load_sources(cfg)
    before = {k: list(v) for k, v in train.items()}
    val = empathy.carve_validation(cfg, train)
    assert set(val) == {"esconv", "goemotions"}
    for name, rows in val.items():
        assert rows and len(train[name]) + len(rows) == len(before[name]) and len(train[name]) >= len(rows)
        assert not {id(x) for x in rows} & {id(x) for x in train[name]}
    # an ESConv dialogue is in training or in validation, never split (its turns share their history)
    convs = lambda rows: {x.meta["conversation"] for x in rows}  # noqa: E731
    assert not convs(val["esconv"]) & convs(train["esconv"])
    assert len(val["goemotions"]) == 3  # one example per comment: exactly the budget
    # seeded: --resume carves the same set
    again, _ = empathy.load_sources(cfg)
    assert [x.meta for x in empathy.carve_validation(cfg, again)["esconv"]] == [x.meta for x in val["esconv"]]
    # without eval_steps nothing moves
    plain = parse_config(empathy_workspace(tmp_path, tiny_model_dir))
    t2, _ = empathy.load_sources(plain)
    assert empathy.carve_validation(plain, t2) == {} and len(t2["esconv"]) == len(before["esconv"])


def test_empathy_checkpoint_choice_reads_the_carved_set_not_the_reported_one(tmp_path, tiny_model_dir, monkeypatch):
    from tunesmith.config import parse_config
    from tunesmith.recipes import empathy
    from tunesmith.training import trainer as T

    seen = []
    real_init = T.Trainer.__init__

    def spy(self, *a, validation=None, **kw):
        seen.append(validation)
        real_init(self, *a, validation=validation, **kw)

    monkeypatch.setattr(T.Trainer, "__init__", spy)
    raw = empathy_workspace(tmp_path, tiny_model_dir)
    raw["training"] |= {"eval_steps": 2, "load_best": True}
    raw["data"]["empathy"]["validation_size"] = 3
    cfg = parse_config(raw)
    metrics = empathy.run(cfg, evaluate=False)
    sizes = metrics["validation_sizes"]
    assert len(seen) == 1 and len(seen[0]) == sum(sizes.values())
    assert metrics["train_sizes"]["esconv"] + sizes["esconv"] == len(empathy.load_sources(cfg)[0]["esconv"])
