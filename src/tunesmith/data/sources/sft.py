"""Chat data for `recipe: sft`: OpenAI messages, ShareGPT, Alpaca and prompt/completion records.

Everything is read with `datasets.load_dataset` (the "json"/"parquet"/"csv" builders for local files
and folders, the hub otherwise), so the HF cache and offline mode apply. `datasets` forgets where a
record came from; `Source.where(i)` maps a record index back to `file:line` for JSONL (one record per
non-blank line, the rule the json builder follows) and to file + record/row otherwise, so a
malformed record is reported at its place in the user's file.

The encoded features are cached by `Dataset.map` under a fingerprint of (data content, tokenizer and
chat template, the encoder's code, max_length, train_on, format, columns, system prompt): a rerun with
the same inputs tokenises nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data import chat
from tunesmith.data.chat import Encoded, encode
from tunesmith.data.mixing import subset
from tunesmith.data.schema import Example
from tunesmith.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
# logical fields a `columns` mapping may rename, per format
FIELDS = {
    "messages": ("messages",),
    "sharegpt": ("conversations", "system"),
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "prompt_completion": ("prompt", "completion"),
}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass
class Source:
    ref: str
    dataset: object  # datasets.Dataset
    fingerprint: str
    where: Callable[[int], str]


def _looks_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or Path(ref).suffix.lower() in BUILDERS or Path(ref).expanduser().exists()


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _locator(files: list[Path], builder: str) -> Callable[[int], str]:
    """Record index -> place in the files, in the order the builder reads them."""
    spans: list[tuple[int, Path, list[int] | None]] = []  # (first index, file, line numbers for JSONL)
    start = 0
    for f in files:
        if f.suffix.lower() == ".jsonl":
            with f.open(encoding="utf-8", errors="replace") as fh:
                lines = [n for n, line in enumerate(fh, 1) if line.strip()]
            spans.append((start, f, lines))
            start += len(lines)
        else:
            spans.append((start, f, None))
            start += 10**12 if len(files) == 1 else _count_records(f, builder)

    def where(i: int) -> str:
        for first, f, lines in reversed(spans):
            if i >= first:
                k = i - first
                if lines is not None and k < len(lines):
                    return f"{f}:{lines[k]}"
                if f.suffix.lower() == ".csv":
                    return f"{f}:{k + 2}"  # header on line 1; a quoted field with a newline shifts this
                return f"{f} record {k}"
        return f"record {i}"

    return where


def _count_records(f: Path, builder: str) -> int:
    import datasets

    return datasets.load_dataset(builder, data_files=[str(f)], split="train").num_rows


def _jsonl_problem(files: list[Path]) -> str | None:
    """The first line the json builder would choke on, found the slow way (only after it failed)."""
    first_types: dict[str, tuple[str, str]] = {}
    for f in files:
        if f.suffix.lower() != ".jsonl":
            continue
        with f.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    return f"{f}:{n}: malformed JSON ({e.msg})"
                if not isinstance(row, dict):
                    return f"{f}:{n}: expected a JSON object, got {type(row).__name__}"
                for k, v in row.items():
                    t = type(v).__name__
                    if v is None:
                        continue
                    seen = first_types.setdefault(k, (t, f"{f}:{n}"))
                    if seen[0] != t and {seen[0], t} != {"int", "float"}:
                        return f"{f}:{n}: field '{k}' is a {t} here but a {seen[0]} at {seen[1]}"
    return None


def load_source(ref: str, split: str = "train", subset: str | None = None, revision: str | None = None) -> Source:
    """A local file/folder or a hub dataset as a `datasets.Dataset`, with a content fingerprint."""
    import datasets

    if _looks_local(ref):
        p = Path(ref).expanduser()
        if p.is_file():
            files = [p]
        elif p.is_dir():
            # datasets' own rule for which files form which split (train.jsonl, data/validation-*.parquet, ...);
            # a folder without split names is all "train"
            from datasets.data_files import DataFilesDict, get_data_patterns

            try:
                by_split = DataFilesDict.from_patterns(get_data_patterns(str(p)), base_path=str(p))
            except Exception:  # EmptyDatasetError: nothing datasets can read
                raise DataError(f"{p}: no .jsonl/.json/.parquet/.csv files in this folder") from None
            splits = {str(k): [Path(f) for f in v if Path(f).suffix.lower() in BUILDERS] for k, v in by_split.items()}
            files = splits.get(split, [])
            if not files:
                raise DataError(
                    f"{p}: no '{split}' split of .jsonl/.json/.parquet/.csv files "
                    f"(found: {', '.join(k for k, v in splits.items() if v) or 'none'})"
                )
        else:
            raise DataError(f"data file not found: {p}")
        builders = {BUILDERS.get(f.suffix.lower()) for f in files}
        if None in builders:
            raise DataError(f"{p}: unsupported file type '{p.suffix}' (use .jsonl, .json, .parquet or .csv)")
        if len(builders) > 1:
            raise DataError(f"{p}: mixes file types ({', '.join(sorted(builders))}); keep one kind per folder")
        builder = builders.pop()
        try:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
        except Exception as e:  # datasets wraps pyarrow's parse errors without a line number
            problem = _jsonl_problem(files)
            cause = e.__cause__ or e
            raise DataError(
                problem
                or f"{p}: datasets could not read it ({type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else ''})"
            ) from None
        return Source(str(p), ds, _hash_files(files), _locator(files, builder))
    try:
        ds = datasets.load_dataset(ref, name=subset, split=split, revision=revision)
    except Exception as e:  # not found, offline without a cached copy, bad split/subset
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"dataset '{ref}' (split {split}{', subset ' + subset if subset else ''}): {msg}") from None
    return Source(f"{ref}[{split}]", ds, ds._fingerprint, lambda i: f"{ref}[{split}] record {i}")


# ---- formats ----------------------------------------------------------------------------------
def check_columns(columns: dict[str, str]) -> None:
    valid = sorted({f for fs in FIELDS.values() for f in fs})
    for k in columns:
        if k not in valid:
            raise ConfigError(f"data.sft.columns: unknown field '{k}' (valid: {', '.join(valid)})")


def _get(record: dict, field: str, columns: dict[str, str]):
    return record.get(columns.get(field, field))


def _name(field: str, columns: dict[str, str]) -> str:
    return columns.get(field, field)


def detect_format(record: dict, columns: dict[str, str]) -> str:
    has = {f for fs in FIELDS.values() for f in fs if _get(record, f, columns) is not None}
    if "messages" in has:
        return "messages"
    if "conversations" in has:
        return "sharegpt"
    if {"instruction", "output"} <= has:
        return "alpaca"
    if {"prompt", "completion"} <= has:
        return "prompt_completion"
    raise DataError(
        f"cannot detect the format from the keys {sorted(record)}: expected messages, conversations, "
        "instruction+output or prompt+completion; set data.sft.format and data.sft.columns"
    )


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"field '{field}': expected a string, got {type(value).__name__}")
    return value


def _turns(value, field: str, role_key: str, content_key: str, roles: dict[str, str]) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        raise DataError(f"field '{field}': expected a non-empty list of turns, got {got}")
    out = []
    for j, t in enumerate(value):
        if not isinstance(t, dict):
            raise DataError(f"field '{field}[{j}]': expected an object, got {type(t).__name__}")
        rk, ck = role_key, content_key
        if rk not in t and "role" in t:  # ShareGPT files written with OpenAI keys
            rk, ck = "role", "content"
        if t.get(rk) is None:
            raise DataError(f"field '{field}[{j}].{rk}': missing")
        role = roles.get(str(t[rk]).lower())
        if role is None:
            raise DataError(f"field '{field}[{j}].{rk}': unknown role '{t[rk]}' (expected {', '.join(sorted(roles))})")
        if t.get(ck) is None:
            raise DataError(f"field '{field}[{j}].{ck}': missing")
        out.append({"role": role, "content": _text(t[ck], f"{field}[{j}].{ck}")})
    return out


def _check_chat(messages: list[dict], field: str) -> list[dict]:
    for j, m in enumerate(messages):
        if m["role"] == "system" and j > 0:
            raise DataError(f"field '{field}[{j}]': a system turn is only allowed first")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"field '{field}': no assistant turn to train on")
    return messages


def to_example(record: dict, fmt: str, columns: dict[str, str]) -> Example:
    """One record as an Example; a DataError names the offending field (the caller adds file:line)."""
    if fmt == "messages":
        f = _name("messages", columns)
        msgs = _turns(_get(record, "messages", columns), f, "role", "content", {r: r for r in MESSAGE_ROLES})
        return Example(messages=_check_chat(msgs, f), source="sft")
    if fmt == "sharegpt":
        f = _name("conversations", columns)
        msgs = _turns(_get(record, "conversations", columns), f, "from", "value", SHAREGPT_ROLES)
        system = _get(record, "system", columns)
        if system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": _text(system, _name("system", columns))}, *msgs]
        return Example(messages=_check_chat(msgs, f), source="sft")
    if fmt == "alpaca":
        fi, fo = _name("instruction", columns), _name("output", columns)
        instruction = _get(record, "instruction", columns)
        if instruction is None:
            raise DataError(f"field '{fi}': missing")
        output = _get(record, "output", columns)
        if output is None:
            raise DataError(f"field '{fo}': missing")
        # LLaMA-Factory's Alpaca conversion: user turn = instruction and input joined by a newline
        query = [_text(instruction, fi)]
        extra = _get(record, "input", columns)
        if extra:
            query.append(_text(extra, _name("input", columns)))
        msgs: list[dict[str, str]] = []
        system = _get(record, "system", columns)
        if system:
            msgs.append({"role": "system", "content": _text(system, _name("system", columns))})
        fh = _name("history", columns)
        for j, pair in enumerate(_get(record, "history", columns) or []):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise DataError(f"field '{fh}[{j}]': expected a [user, assistant] pair")
            msgs += [
                {"role": "user", "content": _text(pair[0], f"{fh}[{j}][0]")},
                {"role": "assistant", "content": _text(pair[1], f"{fh}[{j}][1]")},
            ]
        msgs += [{"role": "user", "content": "\n".join(query)}, {"role": "assistant", "content": _text(output, fo)}]
        return Example(messages=msgs, source="sft")
    if fmt == "prompt_completion":
        fp, fc = _name("prompt", columns), _name("completion", columns)
        prompt, completion = _get(record, "prompt", columns), _get(record, "completion", columns)
        if prompt is None:
            raise DataError(f"field '{fp}': missing")
        if completion is None:
            raise DataError(f"field '{fc}': missing")
        # TRL's conversational prompt/completion: lists of turns; plain strings become one user/assistant turn
        p = (
            _turns(prompt, fp, "role", "content", {r: r for r in MESSAGE_ROLES})
            if isinstance(prompt, list)
            else [{"role": "user", "content": _text(prompt, fp)}]
        )
        c = (
            _turns(completion, fc, "role", "content", {"assistant": "assistant"})
            if isinstance(completion, list)
            else [{"role": "assistant", "content": _text(completion, fc)}]
        )
        return Example(messages=_check_chat(p + c, fc), source="sft")
    raise ConfigError(f"data.sft.format: unknown format '{fmt}' (valid: auto, {', '.join(FORMATS)})")


def resolve_format(src: Source, fmt: str, columns: dict[str, str], say: Callable[[str], None] | None = None) -> str:
    if src.dataset.num_rows == 0:
        raise DataError(f"{src.ref}: no records")
    if fmt != "auto":
        return fmt
    try:
        found = detect_format(src.dataset[0], columns)
    except DataError as e:
        raise DataError(f"{src.where(0)}: {e}") from None
    keys = ", ".join(sorted(k for k, v in src.dataset[0].items() if v is not None))
    (say or log.info)(f"data.sft.format auto: {src.ref} is {found} (first record's keys: {keys})")
    return found


# ---- encoding + cache ---------------------------------------------------------------------------
def _encoder_version() -> str:
    # the cache must not outlive a change to how conversations are rendered or labelled
    return hashlib.sha256(inspect.getsource(chat).encode() + inspect.getsource(to_example).encode()).hexdigest()[:16]


def cache_key(
    src: Source, tokenizer, fmt: str, columns: dict[str, str], max_length: int, train_on: str, system_prompt: str | None
) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    parts = {
        "data": src.fingerprint,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab": len(tokenizer),
        "template": hashlib.sha256(str(template).encode()).hexdigest(),
        "encoder": _encoder_version(),
        "format": fmt,
        "columns": sorted(columns.items()),
        "max_length": max_length,
        "train_on": train_on,
        "system_prompt": system_prompt,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def encode_source(
    src: Source,
    tokenizer,
    fmt: str,
    columns: dict[str, str],
    max_length: int,
    train_on: str = "all",
    system_prompt: str | None = None,
) -> list[Encoded]:
    """Every record encoded (one Encoded per record, index for index); cached by content hash."""
    where = src.where

    def fn(record: dict, i: int) -> dict:
        try:
            ex = to_example(record, fmt, columns)
            e = encode(tokenizer, ex, max_length, system_prompt, train_on=train_on)
        except DataError as err:
            raise DataError(f"{where(i)}: {err}") from None
        return {
            "input_ids": e.input_ids,
            "labels": e.labels,
            "pool_index": e.pool_index,
            "user_span": list(e.user_span),
        }

    key = cache_key(src, tokenizer, fmt, columns, max_length, train_on, system_prompt)
    ds = src.dataset
    # without a cache file behind it (an in-memory dataset) map cannot cache; that is fine
    mapped = ds.map(
        fn,
        with_indices=True,
        remove_columns=ds.column_names,
        new_fingerprint=key,
        desc="tokenising",
        load_from_cache_file=True,
    )
    cols = mapped[:]
    return [
        Encoded(
            input_ids=list(ids), labels=list(lab), pool_index=int(pi), user_span=(int(us[0]), int(us[1])), source="sft"
        )
        for ids, lab, pi, us in zip(
            cols["input_ids"], cols["labels"], cols["pool_index"], cols["user_span"], strict=True
        )
    ]


# ---- splits ----------------------------------------------------------------------------------
@dataclass
class SftSplits:
    train: list[Encoded]
    validation: list[Encoded]
    format: str
    train_ref: str
    validation_ref: str | None
    dropped: int  # examples without a single label token left after truncation


def load_sft(cfg, tokenizer, say: Callable[[str], None] | None = None) -> SftSplits:
    """Train and validation features for a Config with `recipe: sft`."""
    s, seed = cfg.data.sft, cfg.training.seed
    check_columns(s.columns)
    src = load_source(s.train, s.split, s.subset, s.revision)
    fmt = resolve_format(src, s.format, s.columns, say)
    kw = dict(
        fmt=fmt,
        columns=s.columns,
        max_length=cfg.data.max_length,
        train_on=s.train_on,
        system_prompt=cfg.data.system_prompt,
    )
    feats = encode_source(src, tokenizer, **kw)
    val: list[Encoded] = []
    val_ref = None
    if isinstance(s.validation, float):
        order = list(range(len(feats)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(s.validation * len(feats)))
        if n_val >= len(feats):
            raise DataError(
                f"{src.ref}: {len(feats)} record(s) are too few to split off a validation fraction of {s.validation}"
            )
        held = set(order[:n_val])
        val = [feats[i] for i in sorted(held)]
        feats = [f for i, f in enumerate(feats) if i not in held]
        val_ref = f"{s.validation:.0%} of {src.ref} (seed {seed})"
    elif isinstance(s.validation, str):
        if _looks_local(s.validation):
            vsrc = load_source(s.validation)
        elif _looks_local(s.train) and not Path(s.train).expanduser().is_dir():
            raise DataError(
                f"data.sft.validation: file not found: {s.validation} (a split name needs a folder or a "
                "hub dataset as data.sft.train)"
            )
        else:  # a split of the same folder or hub dataset
            vsrc = load_source(s.train, s.validation, s.subset, s.revision)
        vfmt = resolve_format(vsrc, s.format, s.columns, say)
        val = encode_source(vsrc, tokenizer, **{**kw, "fmt": vfmt})
        val_ref = vsrc.ref
    n = len(feats) + len(val)
    feats = [f for f in feats if f.n_labels]
    val = [f for f in val if f.n_labels]
    dropped = n - len(feats) - len(val)
    feats = subset(feats, s.limit_train, seed)
    val = subset(val, s.limit_validation, seed)
    if not feats:
        raise DataError(f"{src.ref}: no training examples with a reply inside data.max_length={cfg.data.max_length}")
    return SftSplits(feats, val, fmt, src.ref, val_ref, dropped)
