"""ESConv: emotional-support conversations with a support strategy on every supporter turn.

Formats read (auto-detected from the first character of the file):
- the original `ESConv.json`: one JSON array of conversations; turns are
  `{"speaker": "seeker"|"supporter", "content", "annotation": {"strategy"?, "feedback"?}}`
  (`FailedESConv.json` uses the same layout with speakers "speaker"/"listener"; accepted too);
- the split release (`train.txt`/`valid.txt`/`test.txt`, the Hugging Face `thu-coai/esconv`
  files): JSON Lines, one conversation per line, turns `{"speaker": "usr"|"sys", "text", "strategy"?}`.
Both are normalised to the same whitespace (`' '.join(text.split())`, as the split release did),
so one conversation yields identical examples from either file.

Examples: one per supporter turn, `messages` = the bounded history + that turn as the final
assistant message, `strategy` = its strategy, `emotion` = the seeker's `emotion_type` mapped to
GoEmotions (one label for the whole conversation: it is the seeker's state that the supporter
responds to). Decisions:
- No system prompt with the seeker's `situation`: it is the seeker's private pre-chat survey
  answer — supporters had to find out the problem (the "Exploration" stage, and the many
  Question turns, exist because of that), and a deployed model never receives such a summary.
  The situation stays in `meta`.
- Consecutive turns of one speaker are merged into one message (joined by a newline) in the
  history, so roles alternate. A supporter turn that continues a run of supporter turns stays
  its own example: its prompt then ends with the run so far as an assistant message, which is
  what the supporter had said when choosing this turn's strategy.
- Supporter turns before the seeker's first message (openers such as "Hi, how are you?") give no
  example: there is nothing to respond to, and a chat prompt without a user turn is not a
  situation the model meets. Their strategies are still validated.
- History: the last `history_turns` (merged) messages, dropping a leading assistant message so
  that the prompt starts with the user (keeping at least the latest user message).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.schema import Example
from tunesmith.data.sources.dialogue import dialogue_examples
from tunesmith.data.taxonomy import esconv_emotion_id, strategy_id
from tunesmith.errors import DataError
from tunesmith.io import iter_jsonl, require_file

log = logging.getLogger(__name__)

SOURCE = "esconv"
HUB_ID = "thu-coai/esconv"
DEFAULT_HISTORY_TURNS = 6

SEEKER_SPEAKERS = frozenset({"usr", "seeker", "speaker"})
SUPPORTER_SPEAKERS = frozenset({"sys", "supporter", "listener"})

SPLIT_FILES = {
    "train": "train.txt", "validation": "valid.txt", "valid": "valid.txt", "dev": "valid.txt", "test": "test.txt",
}  # fmt: skip
ORIGINAL_FILE = "ESConv.json"
# How thu-coai's process.py split ESConv.json into the released files: random.seed(13), one
# shuffle of the conversation list, then the first 15% valid, the next 15% test, the rest train.
RELEASE_SPLIT_SEED = 13


@dataclass
class Turn:
    role: str  # "user" (seeker) | "assistant" (supporter)
    text: str
    strategy: int | None
    where: str


@dataclass
class Conversation:
    where: str  # file:line where the conversation starts
    emotion: int
    emotion_type: str
    problem_type: str
    situation: str
    turns: list[Turn] = field(default_factory=list)


def _norm(text: Any) -> str:
    return " ".join(str(text or "").split())


def _line_index(doc: str) -> list[int]:
    return [m.start() for m in re.finditer("\n", doc)]


_WS = re.compile(r"\s*")
_DIALOG_KEY = re.compile(r'"dialog"\s*:\s*\[')


def _array_items(doc: str, pos: int) -> Iterator[tuple[int, int, Any]]:
    """(start, end, value) of each item of the JSON array whose '[' is at doc[pos].

    The document has already been parsed by json.loads; this second pass only recovers where each
    item starts, so errors about an item can name its line.
    """
    decoder = json.JSONDecoder()
    pos = _WS.match(doc, pos + 1).end()
    if doc.startswith("]", pos):
        return
    while True:
        value, end = decoder.raw_decode(doc, pos)
        yield pos, end, value
        pos = _WS.match(doc, end).end()
        if not doc.startswith(",", pos):
            return
        pos = _WS.match(doc, pos + 1).end()


def _conversation(raw: Any, where: str, turn_wheres: list[str]) -> Conversation:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a conversation object, got {type(raw).__name__}")
    missing = [k for k in ("emotion_type", "dialog") if k not in raw]
    if missing:
        raise DataError(f"{where}: conversation lacks field(s) {', '.join(missing)}")
    if not isinstance(raw["dialog"], list):
        raise DataError(f"{where}: 'dialog' must be a list of turns")
    conv = Conversation(
        where=where,
        emotion=esconv_emotion_id(raw["emotion_type"], where),
        emotion_type=str(raw["emotion_type"]),
        problem_type=str(raw.get("problem_type", "")),
        situation=_norm(raw.get("situation")),
    )
    for j, t in enumerate(raw["dialog"]):
        tw = turn_wheres[j] if j < len(turn_wheres) else f"{where}: dialog[{j}]"
        if not isinstance(t, dict):
            raise DataError(f"{tw}: expected a turn object, got {type(t).__name__}")
        speaker = str(t.get("speaker", "")).lower()
        annotation = t.get("annotation") if isinstance(t.get("annotation"), dict) else {}
        text = _norm(t.get("text", t.get("content")))
        if speaker in SEEKER_SPEAKERS:
            conv.turns.append(Turn("user", text, None, tw))
        elif speaker in SUPPORTER_SPEAKERS:
            name = t.get("strategy", annotation.get("strategy"))
            if name is None:
                raise DataError(f"{tw}: supporter turn has no strategy")
            conv.turns.append(Turn("assistant", text, strategy_id(name, tw), tw))
        else:
            raise DataError(f"{tw}: unknown speaker {t.get('speaker')!r} (expected seeker/supporter or usr/sys)")
    return conv


def read_original(path: str | os.PathLike) -> list[Conversation]:
    """Conversations from the original `ESConv.json` layout (one JSON array)."""
    p = require_file(path, "ESConv file")
    doc = p.read_text(encoding="utf-8")
    try:
        data = json.loads(doc)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{p}:1: expected a JSON array of conversations, got {type(data).__name__}")
    newlines = _line_index(doc)

    def line(offset: int) -> int:
        return bisect.bisect_left(newlines, offset) + 1

    convs = []
    for start, end, raw in _array_items(doc, _WS.match(doc).end()):
        turn_wheres: list[str] = []
        # A '"dialog": [' outside strings can only be the key itself (quotes inside JSON
        # strings are escaped), so this finds the turns' array without a position-aware parser.
        m = _DIALOG_KEY.search(doc, start, end) if isinstance(raw, dict) else None
        if m:
            turn_wheres = [f"{p}:{line(o)}" for o, _, _ in _array_items(doc, m.end() - 1)]
        convs.append(_conversation(raw, f"{p}:{line(start)}", turn_wheres))
    return convs


def read_lines(path: str | os.PathLike) -> list[Conversation]:
    """Conversations from the split release (JSON Lines, one conversation per line)."""
    convs = []
    for where, raw in iter_jsonl(path, "ESConv file"):
        n = len(raw["dialog"]) if isinstance(raw.get("dialog"), list) else 0
        convs.append(_conversation(raw, where, [f"{where}: dialog[{j}]" for j in range(n)]))
    return convs


def is_original(path: str | os.PathLike) -> bool:
    """True for the original layout (a JSON array), False for JSON Lines."""
    p = require_file(path, "ESConv file")
    with p.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        return True
    if head.startswith("{"):
        return False
    raise DataError(f"{p}:1: not an ESConv file (expected a JSON array or JSON Lines)")


def read_conversations(path: str | os.PathLike) -> list[Conversation]:
    """Conversations from either format, told apart by the first non-blank character."""
    return read_original(path) if is_original(path) else read_lines(path)


def release_split(convs: list[Conversation]) -> dict[str, list[Conversation]]:
    """Split the original ESConv.json the way the released train/valid/test files were made."""
    shuffled = list(convs)
    random.Random(RELEASE_SPLIT_SEED).shuffle(shuffled)
    n_dev = n_test = int(0.15 * len(shuffled))
    return {
        "validation": shuffled[:n_dev],
        "test": shuffled[n_dev : n_dev + n_test],
        "train": shuffled[n_dev + n_test :],
    }


def conversation_examples(conv: Conversation, history_turns: int = DEFAULT_HISTORY_TURNS) -> list[Example]:
    """One example per supporter turn that answers something the seeker said."""
    if history_turns < 1:
        raise ValueError("history_turns must be at least 1")

    def example(j: int, messages: list[dict]) -> Example:
        meta = {
            "conversation": conv.where,
            "turn": j,
            "emotion_type": conv.emotion_type,
            "problem_type": conv.problem_type,
            "situation": conv.situation,
        }
        return Example(
            messages=messages, emotion=conv.emotion, strategy=conv.turns[j].strategy, source=SOURCE, meta=meta
        )

    return dialogue_examples(((t.role, t.text, j) for j, t in enumerate(conv.turns)), history_turns, example)


def to_examples(convs: Iterable[Conversation], history_turns: int = DEFAULT_HISTORY_TURNS) -> list[Example]:
    return [ex for c in convs for ex in conversation_examples(c, history_turns)]


def _split_path(path: Path, split: str) -> tuple[Path, bool]:
    """(file to read, whether it is the unsplit original that needs `release_split`)."""
    if (path / SPLIT_FILES[split]).is_file():
        return path / SPLIT_FILES[split], False
    if (path / ORIGINAL_FILE).is_file():
        return path / ORIGINAL_FILE, True
    raise DataError(f"ESConv folder {path} has neither {SPLIT_FILES[split]} nor {ORIGINAL_FILE}")


def load_esconv(
    path: str | os.PathLike,
    split: str | None = None,
    history_turns: int = DEFAULT_HISTORY_TURNS,
    limit: int | None = None,
) -> list[Example]:
    """Examples from an ESConv file (either format) or folder.

    A folder is read as `<split>.txt` (split: train | validation | test, default train), or, when
    only `ESConv.json` is there, as that file split like the release (`release_split`). A file
    with a `split` given must be the original ESConv.json; without one, all of it is used.
    """
    p = Path(path).expanduser()
    needs_split = split is not None
    if split is not None and split not in SPLIT_FILES:
        raise DataError(f"unknown ESConv split {split!r} (expected train, validation or test)")
    if p.is_dir():
        p, needs_split = _split_path(p, split or "train")
    if needs_split and not is_original(p):
        raise DataError(f"{p}: a split can only be taken from the original {ORIGINAL_FILE}; pass the split file")
    convs = read_conversations(p)
    if needs_split:
        key = {"valid": "validation", "dev": "validation"}.get(split or "train", split or "train")
        convs = release_split(convs)[key]
    out = to_examples(convs, history_turns)
    log.info("ESConv %s: %d conversations -> %d supporter-turn examples", p, len(convs), len(out))
    if not out:
        raise DataError(f"{p}: no ESConv examples (no supporter turn follows a seeker turn)")
    return out[:limit] if limit is not None else out


def examples_from_rows(rows: Iterable[Any], origin: str, history_turns: int = DEFAULT_HISTORY_TURNS) -> list[Example]:
    """Examples from hub rows: {"text": <one conversation as a JSON string>} or conversation dicts."""
    convs = []
    for n, row in enumerate(rows):
        where = f"{origin} row {n}"
        raw = row.get("text") if isinstance(row, dict) and "dialog" not in row else row
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg})") from None
        n_turns = len(raw["dialog"]) if isinstance(raw, dict) and isinstance(raw.get("dialog"), list) else 0
        convs.append(_conversation(raw, where, [f"{where}: dialog[{j}]" for j in range(n_turns)]))
    return to_examples(convs, history_turns)


def load_esconv_hub(
    split: str = "train", name: str = HUB_ID, history_turns: int = DEFAULT_HISTORY_TURNS
) -> list[Example]:
    """Examples from the hub release (one `text` column holding each conversation as JSON)."""
    from tunesmith.data.hub import load_hub_dataset

    ds = load_hub_dataset("ESConv", name, split=split)
    return examples_from_rows(ds, f"{name}[{split}]", history_turns)
