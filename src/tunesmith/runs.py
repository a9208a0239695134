"""A run on disk: its directory, provenance (config_resolved.json) and its row in results/summary.csv."""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import importlib.metadata as md
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tunesmith.io import write_json

RESOLVED_CONFIG = "config_resolved.json"

COLUMNS = [
    "run",
    "recipe",
    "model",
    "data",
    "method",
    "lora_r",
    "lora_alpha",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "epochs",
    "k_shot",
    "train_examples",
    "strict_accuracy",
    "flexible_accuracy",
    "base_strict_accuracy",
    "base_flexible_accuracy",
    "safety_rate",
    "eqbench_score",
    "eqbench_parse_rate",
    "emotion_accuracy",
    "strategy_accuracy",
    "checkpoint",
    "passed",
    "finished_at",
    "git_commit",
]


def summary_row(cfg, **fields) -> dict:
    """A summary.csv row: the run's training settings, when it finished and at which commit, then the
    recipe's own `fields` (which win)."""
    t = cfg.training
    return {
        "run": cfg.run_name,
        "recipe": cfg.recipe,
        "model": cfg.model.name,
        "method": ("qlora" if cfg.model.load_in_4bit else "lora") if t.enabled else "none",
        "lora_r": cfg.lora.r,
        "lora_alpha": cfg.lora.alpha,
        "learning_rate": t.learning_rate,
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "epochs": t.epochs,
        "finished_at": dt.datetime.now().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        **fields,
    }


def append_summary_row(path: str | os.PathLike, row: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore").writerow(
        {k: ("" if row.get(k) is None else row[k]) for k in COLUMNS}
    )
    with open(p, "a+", encoding="utf-8", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                f.write(",".join(COLUMNS) + "\r\n")
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_main_process() -> bool:
    """False in the non-zero ranks of an `accelerate launch` (RANK is set by every launcher it uses)."""
    return int(os.environ.get("RANK", "0")) == 0


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    versions = {}
    for pkg in ("tunesmith", "torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "git_commit": git_commit(),
        "versions": versions,
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
    }


def start_run(cfg, chat_template: dict | None = None) -> Path:
    """The run directory with the resolved config, the chat template it renders with and provenance written first."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        run_dir / RESOLVED_CONFIG,
        {**cfg.model_dump(mode="json"), "chat_template": chat_template, "provenance": provenance()},
    )
    return run_dir


def read_run_config(adapter_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The resolved config of the run an adapter folder belongs to ({} when it has none)."""
    if adapter_dir is None:
        return {}
    p = Path(adapter_dir).parent / RESOLVED_CONFIG
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def run_system_prompt(adapter_dir: str | os.PathLike | None) -> str | None:
    """The system prompt an adapter was trained with (its run's config), or None."""
    return (read_run_config(adapter_dir).get("data") or {}).get("system_prompt")
