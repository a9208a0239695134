"""EmpatheticDialogues: a speaker tells a listener about a situation grounded in one of 32 emotions.

Local format: the original `train.csv`/`valid.csv`/`test.csv` with the header
`conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags`. Fields are not
CSV-quoted; commas inside text are written as `_comma_`. A few rows carry extra comma-separated
fields after the utterance, so the file is read the way the official loader
(facebookresearch/EmpatheticDialogues, `empchat/datasets/empchat.py`) reads it: split each line on
',' and take the first six fields by position; anything after the utterance is ignored. A real CSV
parser would instead choke on, or shift, those rows (stray quote characters included).

Examples: conversations are grouped by `conv_id` and ordered by `utterance_idx`. The speaker of
utterance 1 (who describes the situation) is the user; the other worker, the listener, is the
assistant. One example per listener turn: the last `history_turns` messages before it (starting at
a user message) plus the turn as the final assistant message; `emotion` = the conversation's
`context` label mapped with `ED_TO_GOEMOTIONS`; no strategy label (ED has none). The situation
`prompt` is the speaker's private writing prompt, so, as for ESConv, it goes to `meta`, not into a
system message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.schema import Example
from tunesmith.data.sources.dialogue import dialogue_examples
from tunesmith.data.taxonomy import ed_emotion_id
from tunesmith.errors import DataError
from tunesmith.io import require_file

log = logging.getLogger(__name__)

SOURCE = "empathetic_dialogues"
HUB_ID = "facebook/empathetic_dialogues"
# The hub repository is a loading script, which datasets>=4 no longer runs; the Hub's automatic
# Parquet conversion of the same data lives on this revision.
HUB_REVISION = "refs/convert/parquet"
DEFAULT_HISTORY_TURNS = 6
COLUMNS = ("conv_id", "utterance_idx", "context", "prompt", "speaker_idx", "utterance")
SPLIT_FILES = {
    "train": "train.csv", "validation": "valid.csv", "valid": "valid.csv", "dev": "valid.csv", "test": "test.csv",
}  # fmt: skip


@dataclass
class Utterance:
    conv_id: str
    idx: int
    context: str
    prompt: str
    speaker: str
    text: str
    where: str


def unescape(text: str) -> str:
    return text.replace("_comma_", ",").strip()


def _split_file(path: Path, split: str) -> Path:
    if path.is_dir():
        if split not in SPLIT_FILES:
            raise DataError(f"unknown EmpatheticDialogues split {split!r} (expected train, validation or test)")
        path = path / SPLIT_FILES[split]
    return require_file(path, "EmpatheticDialogues CSV file")


def read_csv(path: str | os.PathLike) -> list[Utterance]:
    """Rows of an original EmpatheticDialogues CSV (see the module docstring for ragged rows)."""
    p = require_file(path, "EmpatheticDialogues CSV file")
    rows: list[Utterance] = []
    with p.open(encoding="utf-8-sig", newline="") as f:  # -sig: tolerate a BOM from re-saved copies
        header = f.readline().rstrip("\r\n").split(",")
        if tuple(h.strip() for h in header[: len(COLUMNS)]) != COLUMNS:
            raise DataError(f"{p}:1: header must start with {','.join(COLUMNS)}, got {','.join(header)}")
        for lineno, line in enumerate(f, 2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            parts = line.split(",")
            if len(parts) < len(COLUMNS):
                raise DataError(f"{where}: expected at least {len(COLUMNS)} comma-separated fields, got {len(parts)}")
            try:
                idx = int(parts[1])
            except ValueError:
                raise DataError(f"{where}: utterance_idx must be an integer, got {parts[1]!r}") from None
            rows.append(
                Utterance(
                    parts[0].strip(),
                    idx,
                    parts[2].strip(),
                    unescape(parts[3]),
                    parts[4].strip(),
                    unescape(parts[5]),
                    where,
                )
            )
    return rows


def _conversation_examples(rows: list[Utterance], history_turns: int) -> list[Example]:
    rows = sorted(rows, key=lambda r: r.idx)
    for a, b in zip(rows, rows[1:]):
        if a.idx == b.idx:
            raise DataError(f"{b.where}: utterance_idx {b.idx} repeats in conversation {b.conv_id}")
    first = rows[0]
    emotion = ed_emotion_id(first.context, first.where)

    def example(r: Utterance, messages: list[dict]) -> Example:
        return Example(
            messages=messages,
            emotion=emotion,
            source=SOURCE,
            meta={"conv_id": r.conv_id, "utterance_idx": r.idx, "context": first.context, "prompt": first.prompt},
        )

    # the conversation's first speaker is the one sharing the situation: the user
    turns = (("user" if r.speaker == first.speaker else "assistant", r.text, r) for r in rows)
    return dialogue_examples(turns, history_turns, example)


def to_examples(rows: Iterable[Utterance], history_turns: int = DEFAULT_HISTORY_TURNS) -> list[Example]:
    if history_turns < 1:
        raise ValueError("history_turns must be at least 1")
    convs: dict[str, list[Utterance]] = {}  # first-appearance order keeps the output deterministic
    for r in rows:
        convs.setdefault(r.conv_id, []).append(r)
    return [ex for conv in convs.values() for ex in _conversation_examples(conv, history_turns)]


def load_empathetic_dialogues(
    path: str | os.PathLike,
    split: str = "train",
    history_turns: int = DEFAULT_HISTORY_TURNS,
    limit: int | None = None,
) -> list[Example]:
    """Examples from an original ED CSV file, or from `<dir>/<split>.csv` when `path` is a folder."""
    p = _split_file(Path(path).expanduser(), split)
    rows = read_csv(p)
    out = to_examples(rows, history_turns)
    log.info("EmpatheticDialogues %s: %d rows -> %d listener-turn examples", p, len(rows), len(out))
    if not out:
        raise DataError(f"{p}: no EmpatheticDialogues examples")
    return out[:limit] if limit is not None else out


def load_empathetic_dialogues_hub(
    split: str = "train",
    name: str = HUB_ID,
    revision: str | None = HUB_REVISION,
    history_turns: int = DEFAULT_HISTORY_TURNS,
) -> list[Example]:
    """Examples from the hub release (the same columns as the CSV, `_comma_` escapes kept)."""
    from tunesmith.data.hub import load_hub_dataset

    ds = load_hub_dataset("EmpatheticDialogues", name, split=split, revision=revision)
    rows = []
    for n, r in enumerate(ds):
        where = f"{name}[{split}] row {n}"
        try:
            idx = int(r["utterance_idx"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: missing or non-integer utterance_idx") from None
        rows.append(
            Utterance(
                str(r["conv_id"]),
                idx,
                str(r["context"]),
                unescape(str(r["prompt"])),
                str(r["speaker_idx"]),
                unescape(str(r["utterance"])),
                where,
            )
        )
    return to_examples(rows, history_turns)
