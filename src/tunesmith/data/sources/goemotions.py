"""GoEmotions ("simplified" splits): emotion-only examples for the emotion head.

Local format: the original TSV files (`train.tsv`, `dev.tsv`, `test.tsv`), no header, three
tab-separated columns: text, comma-separated label ids (indices into `emotions.txt`), comment id.
Each physical line is one record; some texts use CSV quoting (`"... ""quoted"" ..."`), which is
removed with a CSV reader, as the Hugging Face builder does, so both loaders give the same text.

Single-label rule (the head is a 28-way softmax; 16% of training rows carry 2–5 labels):
1. drop `neutral` when any other label is present: "neutral" next to an emotion means some raters
   saw none, the emotion is the informative part;
2. of what remains, keep the label that is *rarest in the training split* (`TRAIN_LABEL_COUNTS`),
   ties to the lower id. Co-labels are usually a broad label plus a specific one (approval +
   gratitude, sadness + grief); the rarer one is the more specific reading and the one the
   skewed distribution would otherwise drown.
The full label list stays in `meta["labels"]`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tunesmith.data.schema import Example
from tunesmith.data.taxonomy import EMOTIONS, NEUTRAL
from tunesmith.errors import DataError
from tunesmith.io import require_file

SOURCE = "goemotions"
HUB_ID = "google-research-datasets/go_emotions"  # formerly the canonical name "go_emotions"

# Label occurrences in the official train.tsv (43,410 rows), in `EMOTIONS` order. Fixed numbers so
# that dev/test/hub rows get the same single label whichever split is loaded.
TRAIN_LABEL_COUNTS: tuple[int, ...] = (
    4130, 2328, 1567, 2470, 2939, 1087, 1368, 2191, 641, 1269, 2022, 793, 303, 853,
    596, 2662, 77, 1452, 2086, 164, 1581, 111, 1110, 153, 545, 1326, 1060, 14219,
)  # fmt: skip

_SPLIT_FILES = {"train": "train.tsv", "dev": "dev.tsv", "validation": "dev.tsv", "valid": "dev.tsv", "test": "test.tsv"}


def single_label(labels: Sequence[int], counts: Sequence[int] = TRAIN_LABEL_COUNTS) -> int:
    """One emotion id for a multi-label row (see the module docstring for the rule)."""
    if not labels:
        raise ValueError("no labels")
    candidates = [i for i in set(labels) if i != NEUTRAL] or [NEUTRAL]
    return min(candidates, key=lambda i: (counts[i], i))


def split_file(path: str | os.PathLike, split: str = "train") -> Path:
    """`path` itself when it is a file, else `path/<split>.tsv` (validation/valid → dev.tsv)."""
    p = Path(path).expanduser()
    if p.is_dir():
        if split not in _SPLIT_FILES:
            raise DataError(f"unknown GoEmotions split {split!r} (expected train, dev/validation or test)")
        check_emotions_file(p / "emotions.txt")
        p = p / _SPLIT_FILES[split]
    return require_file(p, "GoEmotions TSV file")


def check_emotions_file(path: Path) -> None:
    """A shipped `emotions.txt` must list our labels in our order, else every id would be wrong."""
    if not path.is_file():
        return
    names = tuple(path.read_text(encoding="utf-8").split())
    if names != EMOTIONS:
        raise DataError(f"{path}: label list differs from the 28 GoEmotions labels tunesmith uses")


def parse_labels(field: str, where: str) -> list[int]:
    try:
        ids = [int(x) for x in field.split(",")]
    except ValueError:
        raise DataError(f"{where}: label ids must be comma-separated integers, got {field!r}") from None
    bad = [i for i in ids if not 0 <= i < len(EMOTIONS)]
    if bad:
        raise DataError(f"{where}: label id {bad[0]} out of range 0..{len(EMOTIONS) - 1}")
    return ids


def to_example(text: str, labels: Sequence[int], comment_id: str) -> Example:
    return Example(
        text=text,
        emotion=single_label(labels),
        source=SOURCE,
        meta={"id": comment_id, "labels": sorted(set(labels))},
    )


def load_goemotions(path: str | os.PathLike, split: str = "train", limit: int | None = None) -> list[Example]:
    """Examples from a GoEmotions TSV file, or from `<dir>/<split>.tsv` when `path` is a folder."""
    p = split_file(path, split)
    out: list[Example] = []
    with p.open(encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                fields = next(csv.reader([line], delimiter="\t"))
            except csv.Error as e:
                raise DataError(f"{where}: malformed TSV ({e})") from None
            if len(fields) != 3:
                raise DataError(f"{where}: expected 3 tab-separated fields (text, labels, id), got {len(fields)}")
            text, label_field, comment_id = fields
            out.append(to_example(text, parse_labels(label_field, where), comment_id))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DataError(f"{p}: no GoEmotions records")
    return out


def examples_from_rows(rows: Iterable[dict], origin: str) -> list[Example]:
    """Examples from hub-style rows {"text", "labels": [int], "id"}; `origin` names them in errors."""
    out = []
    for n, r in enumerate(rows):
        labels = list(r["labels"])
        parse_labels(",".join(map(str, labels)), f"{origin} row {n}")
        out.append(to_example(r["text"], labels, str(r.get("id", n))))
    return out


def load_goemotions_hub(split: str = "train", name: str = HUB_ID, limit: int | None = None) -> list[Example]:
    """Examples from the hub release (config "simplified"; splits train, validation, test)."""
    from tunesmith.data.hub import load_hub_dataset

    ds = load_hub_dataset("GoEmotions", name, "simplified", split=split)
    rows = ds if limit is None else (ds[i] for i in range(min(limit, len(ds))))
    return examples_from_rows(rows, f"{name}[{split}]")
