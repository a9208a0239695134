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


def iter_jsonl(path: str | os.PathLike, what: str = "JSONL file") -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, record) for every non-blank line; a line that is not a JSON object is one error
    naming file:line."""
    p = require_file(path, what)
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file; every record must be an object holding the `required` keys."""
    required = tuple(required)
    rows = []
    for where, row in iter_jsonl(path):
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def read_csv(
    path: str | os.PathLike, required: Iterable[str] = (), delimiter: str = ","
) -> Iterator[tuple[int, dict[str, str]]]:
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
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """Write to a temp file beside `path` and rename it into place only on success.

    `newline` as for open(): pass "" when writing with the csv module."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise OSError(f"refusing to replace {p}: not a regular file")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    # mkstemp creates 0600; outputs should get the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        text = "b" not in mode
        with os.fdopen(fd, mode, encoding=encoding if text else None, newline=newline if text else None) as f:
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


class ResumableJsonl:
    """Per-item results that survive an interruption.

    Finished items are appended (and fsynced) to `<name>.partial.jsonl` as each batch completes;
    `finalize` writes the complete file atomically and removes the partial one. With resume=True,
    items already in either file are returned by `done` and need not be computed again; without
    it, old files are ignored, so a changed model never reuses stale outputs.
    """

    def __init__(self, path: str | os.PathLike, key: str, resume: bool):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.stem + ".partial.jsonl")
        self.key = key
        self.done: dict[str, dict] = {}
        if resume:
            for p in (self.path, self.partial):
                if p.is_file():
                    text = p.read_text(encoding="utf-8")
                    for line in text.splitlines():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:  # a line cut by the kill: recompute that item
                            continue
                        self.done[str(row[key])] = row
                    if p == self.partial and text and not text.endswith("\n"):
                        with p.open("a", encoding="utf-8") as f:  # the next rows start on a line of their own
                            f.write("\n")
        else:
            self.partial.unlink(missing_ok=True)

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        with self.partial.open("a", encoding="utf-8") as f:
            for r in rows:
                self.done[str(r[self.key])] = r
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finalize(self, keys: Iterable[str]) -> list[dict]:
        rows = [self.done[str(k)] for k in keys]
        write_jsonl(self.path, rows)
        self.partial.unlink(missing_ok=True)
        return rows
