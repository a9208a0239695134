"""reporting.report.write_report and `tunesmith report` on synthetic empathy and gsm8k run dirs."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tunesmith.errors import DataError, TunesmithError
from tunesmith.evaluation.head_metrics import head_metrics
from tunesmith.reporting.report import md_escape, write_report

PNG = b"\x89PNG\r\n\x1a\n"
# untrusted model output that tries to run script, inject HTML and break Markdown tables
EVIL = "<script>document.body.dataset.pwned='1'</script><img src=x onerror=\"document.body.dataset.pwned='1'\"> | **bold** [x](javascript:alert(1))"
# stands in for an AILuminate prompt: it sits in the run dir's per-prompt file and must never reach the report
HAZARD_MARKER = "QQ-HAZARDOUS-PROMPT-TEXT-QQ"
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _history(steps: int = 30, heads: bool = True) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        lm = 2.0 / (1 + s / 10)
        rows.append(
            {
                "step": s,
                "epoch": 0,
                "loss": lm * 1.3 if heads else lm,
                "lm": lm,
                "emotion": (None if s % 4 == 0 else 3.0 / (1 + s / 20)) if heads else None,
                "strategy": 2.0 / (1 + s / 25) if heads else None,
                "kl": (0.05 if s % 2 else None) if heads else None,
                "lr": 3e-4,
                "grad_norm": 1.0,
                "tokens": 1500 * s,
                "step_seconds": 2.0,
            }
        )
    return rows


def _config(recipe: str, run: str) -> dict:
    return {
        "recipe": recipe,
        "run_name": run,
        "model": {"name": "builtin:smollm2-135m-instruct", "revision": None, "load_in_4bit": False},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {
            "enabled": True,
            "learning_rate": 2e-4,
            "batch_size": 4,
            "grad_accum": 2,
            "epochs": 1.0,
            "max_steps": None,
            "seed": 42,
        },
        "loss": {"lambda_lm": 1.0, "lambda_emotion": 0.2, "lambda_strategy": 0.2, "lambda_kl": 0.1},
        "provenance": {
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "versions": {"tunesmith": "0.1.0", "torch": "2.13.0+cpu"},
            "started_at": "2026-11-25T10:00:00",
        },
    }


def _safety(rates: dict[str, tuple[int, int]], unparsed: int = 0) -> dict:
    by = {h: {"total": t, "safe": s, "safety_rate": s / t} for h, (s, t) in rates.items()}
    total, safe = sum(t for _, t in rates.values()), sum(s for s, _ in rates.values())
    return {"total": total, "safe": safe, "unparsed_verdicts": unparsed, "safety_rate": safe / total, "by_hazard": by}


def _write(run: Path, metrics: dict | None, history: list | None, config: dict | None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    for name, obj in (("metrics.json", metrics), ("training_history.json", history), ("config_resolved.json", config)):
        if obj is not None:
            (run / name).write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return run


def make_empathy_run(root: Path, name: str = "emp") -> Path:
    """A finished empathy run: every optional key present, confusion PNGs drawn by head_metrics."""
    from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES

    run = root / name
    heads = {}
    for head, labels, n in (("emotion", EMOTIONS, 120), ("strategy", STRATEGIES, 40)):
        y_true = [i % len(labels) for i in range(n)]
        y_pred = [y if i % 3 else (y + 1) % len(labels) for i, y in enumerate(y_true)]
        heads[head] = head_metrics(
            y_true, y_pred, labels, png_path=run / "plots" / f"confusion_{head}.png", title=f"{head} head"
        )
        heads[head]["data"] = f"{head} held-out"
    metrics = {
        "run": name,
        "recipe": "empathy",
        "train_sizes": {"esconv": 900, "goemotions": 4000, "kl_prompts": 60},
        "heldout_sizes": {"esconv": 100, "goemotions": 120},
        "validation_loss": {"lm": 1.5432, "emotion": 2.1, "strategy": 1.7, "total": 2.3},
        "mixing": {
            "alpha": 0.5,
            "counts_per_epoch": {"esconv": 417, "goemotions": 883, "kl_prompts": 100},
            "sizes": {"esconv": 900, "goemotions": 4000, "kl_prompts": 60},
        },
        "heads": heads,
        "eqbench": {
            "base": {
                "score": 31.07,
                "parse_rate": 0.8713,
                "valid": True,
                "n_parsed": 149,
                "n_total": 171,
                "mode": "revise",
                "comparable": True,
            },
            "tuned": {
                "score": 41.23,
                "parse_rate": 0.9532,
                "valid": True,
                "n_parsed": 163,
                "n_total": 171,
                "mode": "revise",
                "comparable": True,
            },
        },
        "safety": {
            "base": _safety({"cse": (2, 4), "ssh": (1, 4), "vcr": (3, 4)}, unparsed=1),
            "tuned": _safety({"cse": (4, 4), "ssh": (3, 4), "vcr": (3, 4)}),
            "guard": "builtin:smollm2-135m-instruct prompted as guard",
        },
        "samples": [
            {
                "scenario": "grief",
                "prompt": "My grandad died on Sunday.",
                "base": "Sorry to hear that.",
                "tuned": "I'm so sorry. Losing him must leave a huge gap.\nDo you want to tell me about him?",
                "emotion_pred": "grief (0.81)",
                "strategy_pred": "Reflection of feelings (0.40)",
            },
            {
                "scenario": "anger",
                "prompt": "I'm furious <b>right now</b>.",
                "base": EVIL,
                "tuned": "That sounds maddening.",
            },
        ],
        "ablations": [
            {
                "variant": "full",
                "lambda_lm": 1.0,
                "lambda_emotion": 0.25,
                "val_loss": 1.81,
                "emotion_accuracy": 0.42,
                "emotion_f1": 0.38,
                "strategy_accuracy": 0.31,
                "strategy_f1": 0.27,
                "eqbench_score": 41.23,
                "safety_rate": 0.833,
            },
            {
                "variant": "no-heads",
                "lambda_lm": 1.0,
                "lambda_emotion": 0.0,
                "val_loss": 1.9,
                "emotion_accuracy": None,
                "emotion_f1": None,
                "strategy_accuracy": None,
                "strategy_f1": None,
                "eqbench_score": 38.5,
                "safety_rate": 0.75,
            },
        ],
    }
    _write(run, metrics, _history(), _config("empathy", name))
    # per-prompt safety records hold hazardous AILuminate text: the report must not read them
    (run / f"ailuminate_safety_{name}.jsonl").write_text(
        json.dumps({"id": "p1", "hazard": "cse", "prompt": HAZARD_MARKER, "response": HAZARD_MARKER, "safe": True})
        + "\n",
        encoding="utf-8",
    )
    return run


def make_gsm8k_run(root: Path, name: str = "g8") -> Path:
    """Shaped like runs/demo (the gsm8k recipe), plus thresholds and a checkpoint sweep."""
    metrics = {
        "run": name,
        "train_examples": 160,
        "test_examples": 24,
        "base": {"n": 24, "strict_accuracy": 0.0, "flexible_accuracy": 1 / 24},
        "tuned": {"n": 24, "strict_accuracy": 3 / 24, "flexible_accuracy": 5 / 24},
        "safety": _safety({"cse": (1, 2), "dfm": (2, 2)}, unparsed=1),
        "checkpoint": "checkpoint-20",
        "thresholds": [
            {"metric": "strict accuracy", "value": 0.125, "threshold": 0.1, "passed": True},
            {"metric": "flexible accuracy", "value": 5 / 24, "threshold": 0.3, "passed": False},
        ],
        "passed": False,
        "sweep": [
            {"checkpoint": "checkpoint-10", "strict_accuracy": 2 / 24, "flexible_accuracy": 4 / 24, "safety_rate": 0.5},
            {
                "checkpoint": "checkpoint-20",
                "strict_accuracy": 3 / 24,
                "flexible_accuracy": 5 / 24,
                "safety_rate": 0.75,
            },
        ],
    }
    return _write(root / name, metrics, _history(20, heads=False), _config("gsm8k", name))


def images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in DATA_URI.findall(html)]


# --------------------------------------------------------------------------- empathy run
@pytest.fixture(scope="module")
def empathy_report(tmp_path_factory):
    # built once: the tests below only read it (drawing a 28-class confusion matrix takes ~0.5 s)
    run = make_empathy_run(tmp_path_factory.mktemp("empathy"))
    md_path, html_path = write_report(run)
    return run, md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")


def test_empathy_report_files_and_plots(empathy_report):
    run, md, html = empathy_report
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    for name in ("training_curves", "safety_by_hazard", "ablations", "confusion_emotion", "confusion_strategy"):
        assert (run / "plots" / f"{name}.png").read_bytes()[:8] == PNG
        assert f"](plots/{name}.png)" in md  # Markdown links the files...
    imgs = images(html)  # ...HTML embeds them
    assert len(imgs) == 5 and all(b[:8] == PNG and len(b) > 2000 for b in imgs)
    assert html.count("<img") == 5  # no image is referenced any other way
    assert not list(run.glob(".*.tmp")) and not list((run / "plots").glob(".*.tmp"))


def test_empathy_report_tables_hold_the_numbers(empathy_report):
    _, md, html = empathy_report
    # loss weights of the ablation variants are settings: plain numbers, not percentages
    assert "| full | 1 | 0.25 | 1.8100 | 42.0% |" in md
    for doc in (md, html):
        # EQ-Bench base vs tuned with parse rate and validity
        assert "EQ-Bench v2" in doc and "31.07" in doc and "41.23" in doc
        assert "87.1%" in doc and "95.3%" in doc and "149/171" in doc and "163/171" in doc
        # heads: accuracy 2/3, majority baseline, n
        assert "66.7%" in doc and "majority" in doc and "120" in doc and "40" in doc
        # safety overall and per hazard, base vs tuned
        assert "50.0% (6/12)" not in doc  # overall is shown as rate + safe/total columns
        assert "6/12" in doc and "10/12" in doc and "83.3%" in doc
        assert "25.0% (1/4)" in doc and "100.0% (4/4)" in doc
        # mixing, validation loss, ablations
        assert "883" in doc and "417" in doc and "α = 0.5" in doc
        assert "1.5432" in doc
        assert "no-heads" in doc and "38.50" in doc and "1.8100" in doc
        assert "lambda" in doc and "emotion_accuracy" in doc.replace("\\_", "_")
        # provenance
        assert "0123456789abcdef0123456789abcdef01234567" in doc and "builtin:smollm2-135m-instruct" in doc
        # samples side by side, with head predictions
        assert "grief (0.81)" in doc and "That sounds maddening." in doc


def test_empathy_report_escapes_untrusted_text(empathy_report):
    _, md, html = empathy_report
    assert "<script" not in html.lower()
    assert "&lt;script&gt;document.body.dataset.pwned=&#x27;1&#x27;&lt;/script&gt;" in html
    assert "onerror=" not in html.replace("onerror=&quot;", "")  # only as escaped text
    assert "&lt;b&gt;right now&lt;/b&gt;" in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # Markdown: raw HTML neutralised, table pipes and emphasis escaped
    assert "<script" not in md.lower() and "&lt;script&gt;" in md
    assert "\\| \\*\\*bold\\*\\* \\[x\\]" in md
    sample_rows = [ln for ln in md.splitlines() if ln.startswith("| anger")]
    assert len(sample_rows) == 1  # the pipe inside the sample did not split the row


def test_report_never_contains_ailuminate_prompt_text(empathy_report):
    _, md, html = empathy_report
    assert HAZARD_MARKER not in md and HAZARD_MARKER not in html
    assert "cse" in html and "ssh" in html  # hazard codes only


def test_multiline_samples_keep_their_line_breaks(empathy_report):
    _, md, html = empathy_report
    assert "huge gap.<br>Do you want" in md
    assert "huge gap.\nDo you want" in html  # pre-wrap cell


# --------------------------------------------------------------------------- gsm8k run
def test_gsm8k_report(tmp_path):
    run = make_gsm8k_run(tmp_path)
    md_path, html_path = write_report(run)
    md, html = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    for doc in (md, html):
        assert "GSM8K" in doc
        assert "0.0% (0/24)" in doc and "12.5% (3/24)" in doc and "4.2% (1/24)" in doc and "20.8% (5/24)" in doc
        assert "+12.5 pp" in doc and "+16.7 pp" in doc
        assert "PASS" in doc and "FAIL" in doc and "30.0%" in doc  # thresholds
        assert "checkpoint-10" in doc and "checkpoint-20" in doc  # sweep
        assert "50.0% (1/2)" in doc and "100.0% (2/2)" in doc  # per hazard
        for absent in ("EQ-Bench", "Classification heads", "Data mixing", "Ablations", "Side-by-side samples"):
            assert absent not in doc
    assert len(images(html)) == 2  # training curves + safety; no empathy charts
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["safety_by_hazard.png", "training_curves.png"]


def test_demo_run_shape(tmp_path):
    demo = Path(__file__).resolve().parents[1] / "runs" / "demo"
    if not (demo / "metrics.json").is_file():
        pytest.skip("runs/demo is not present (make demo creates it)")
    run = tmp_path / "demo"
    run.mkdir()
    for name in ("metrics.json", "training_history.json", "config_resolved.json"):
        (run / name).write_bytes((demo / name).read_bytes())
    _, html_path = write_report(run)
    assert "4.2% (1/24)" in html_path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- robustness
def test_partial_runs_render_what_exists(tmp_path):
    only_config = _write(tmp_path / "a", None, None, _config("empathy", "a"))
    _, html_path = write_report(only_config)
    html = html_path.read_text(encoding="utf-8")
    assert "builtin:smollm2-135m-instruct" in html and len(images(html)) == 0

    only_history = _write(tmp_path / "b", None, _history(5), None)
    _, html_path = write_report(only_history)
    assert len(images(html_path.read_text(encoding="utf-8"))) == 1

    # empathy metrics with nulls where evaluation was switched off or failed
    odd = {
        "run": "c",
        "recipe": "empathy",
        "eqbench": {
            "base": None,
            "tuned": {
                "score": 12.0,
                "parse_rate": 0.5,
                "valid": False,
                "n_parsed": 5,
                "n_total": 10,
                "comparable": False,
            },
        },
        "heads": {},
        "safety": None,
        "samples": [{"scenario": "grief", "prompt": "p", "base": None, "tuned": "t"}],
        "mixing": {"esconv": 10, "goemotions": 30},
        "new_metric": 0.25,
    }
    _, html_path = write_report(_write(tmp_path / "c", odd, [], None))
    html = html_path.read_text(encoding="utf-8")
    assert "not valid" in html and "subset of the questions" in html
    assert "75.0%" in html  # goemotions' share of a bare {dataset: count} mixing
    assert "new_metric" in html  # unknown top-level numbers still shown


def test_ablations_read_from_csv_when_metrics_lack_them(tmp_path):
    run = _write(tmp_path / "r", {"run": "r", "recipe": "empathy"}, None, None)
    (run / "ablations.csv").write_text(
        "variant,val_loss,eqbench_score,safety_rate\nfull,1.8,41.2,0.9\nlm-only,2.0,,0.95\n", encoding="utf-8"
    )
    _, html_path = write_report(run)
    html = html_path.read_text(encoding="utf-8")
    assert "lm-only" in html and "95.0%" in html and "41.20" in html
    assert len(images(html)) == 1


def test_confusion_png_paths_are_resolved_inside_the_run_dir_only(tmp_path):
    run = tmp_path / "r"
    heads = {
        h: head_metrics([0, 1, 1], [0, 1, 0], ["x", "y"], png_path=run / "plots" / f"confusion_{h}.png")
        for h in ("emotion", "strategy")
    }
    # a moved run dir: the stored absolute path is gone, plots/<name> is found instead
    heads["emotion"]["confusion_png"] = "/nonexistent/old/place/plots/confusion_emotion.png"
    # a path outside the run dir is never embedded, even when it is a real PNG
    outside = tmp_path / "outside.png"
    (run / "plots" / "confusion_strategy.png").rename(outside)
    heads["strategy"]["confusion_png"] = str(outside)
    _write(run, {"run": "r", "recipe": "empathy", "heads": heads}, None, None)
    _, html_path = write_report(run)
    html = html_path.read_text(encoding="utf-8")
    assert "emotion head: row-normalised confusion matrix" in html
    assert "strategy head: row-normalised confusion matrix" not in html
    assert len(images(html)) == 1


def test_plots_redrawn_only_when_stale(tmp_path):
    run = make_gsm8k_run(tmp_path)
    write_report(run)
    curves = run / "plots" / "training_curves.png"
    os.utime(curves, (1_000_000_000, 1_000_000_000))  # older than training_history.json
    write_report(run)
    fresh = curves.stat().st_mtime
    assert fresh > 1_000_000_000
    write_report(run)
    assert curves.stat().st_mtime == fresh  # up to date: left alone


@pytest.mark.parametrize(
    "setup, error, match",
    [
        (lambda d: None, TunesmithError, "run directory not found"),
        (lambda d: d.mkdir(), TunesmithError, "not a run directory"),
        (
            lambda d: _write(d, None, None, None) and (d / "metrics.json").write_text("{oops", encoding="utf-8"),
            DataError,
            r"metrics\.json:1: malformed JSON",
        ),
        (
            lambda d: _write(d, None, None, None) and (d / "training_history.json").write_text("{}", encoding="utf-8"),
            DataError,
            "expected a JSON array",
        ),
    ],
)
def test_bad_run_dirs(tmp_path, setup, error, match):
    d = tmp_path / "run"
    setup(d)
    with pytest.raises(error, match=match):
        write_report(d)


def test_md_escape():
    assert md_escape("a|b") == "a\\|b"
    assert md_escape("<i>x</i>") == "&lt;i&gt;x&lt;/i&gt;"
    assert md_escape("*x* _y_ `z` [l](u) ~s~") == "\\*x\\* \\_y\\_ \\`z\\` \\[l\\](u) \\~s\\~"
    assert md_escape("a\r\nb\nc") == "a<br>b<br>c"


# --------------------------------------------------------------------------- CLI
def test_cli_report_prints_both_paths(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    run = make_gsm8k_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(run / "report.md"), str(run / "report.html")]


def test_cli_report_bad_dir_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from tunesmith import cli

    monkeypatch.setattr(sys, "argv", ["tunesmith", "report", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: run directory not found: {tmp_path / 'missing'}\n"


# --------------------------------------------------------------------------- shipped scenarios
def test_shipped_scenarios_cover_the_fixed_set():
    """resources/scenarios.jsonl: the prompts behind the report's side-by-side samples.
    (Disjointness from the shipped safety prompts is checked in test_empathy_data.py.)"""
    from collections import Counter
    from importlib import resources

    text = resources.files("tunesmith").joinpath("resources", "scenarios.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(set(r) == {"id", "scenario", "prompt"} for r in rows)
    per = Counter(r["scenario"] for r in rows)
    assert set(per) == {"grief", "anxiety", "anger", "positive news", "isolation", "pet loss", "self-harm statement"}
    assert all(1 <= n <= 2 for n in per.values())
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert all(20 <= len(r["prompt"]) <= 300 and r["prompt"].strip() == r["prompt"] for r in rows)
