"""results/summary.csv: one row per run, appended under a file lock so two runs finishing at
once cannot interleave or lose rows."""

from __future__ import annotations

import csv
import fcntl
import io
import os
from pathlib import Path

COLUMNS = [
    "run", "recipe", "model", "data", "method", "lora_r", "lora_alpha", "learning_rate", "batch_size", "grad_accum",
    "epochs", "k_shot", "train_examples", "strict_accuracy", "flexible_accuracy", "base_strict_accuracy",
    "base_flexible_accuracy", "safety_rate", "eqbench_score", "eqbench_parse_rate", "emotion_accuracy",
    "strategy_accuracy", "checkpoint", "passed", "finished_at", "git_commit",
]


def append_row(path: str | os.PathLike, row: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore").writerow(
        {k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
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


def read_rows(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))
