"""File helpers: JSONL reading with file:line errors, atomic writes."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what} not found: {p}")
    return p


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file; every record must be an object holding the `required` keys."""
    p = require_file(path, "JSONL file")
    required = tuple(required)
    rows = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{p}:{lineno}: missing field(s) {', '.join(missing)}")
            rows.append(row)
    return rows


def read_csv(path: str | os.PathLike, required: Iterable[str] = (), delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a CSV/TSV with a header; checks the header once."""
    p = require_file(path, "CSV file")
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        missing = [k for k in required if k not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{p}:1: header lacks column(s) {', '.join(missing)} (has {reader.fieldnames})")
        try:
            for row in reader:
                if None in row:  # more fields than the header
                    raise DataError(f"{p}:{reader.line_num}: more fields than the header has")
                yield reader.line_num, row
        except csv.Error as e:
            raise DataError(f"{p}:{reader.line_num}: malformed CSV ({e})") from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Write to a temp file beside `path` and rename it into place only on success."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
