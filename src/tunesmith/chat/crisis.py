"""Crisis layer: decides, before any generation, whether a message needs crisis resources.

Two detectors and an optional guard, any of which flags a message:

- **Learned detector** (`tunesmith.chat.crisis_model`): an MLP on two frozen sentence encoders
  (all-MiniLM-L6-v2 and the multilingual Universal Sentence Encoder) averaged with MiniLM
  fine-tuned by a LoRA adapter and with a TF-IDF n-gram classifier, calibrated on separate
  calibration sets, plus a category model;
  trained on statements written for the purpose in English, French, Spanish, German, Italian and
  Portuguese (crisis statements, benign look-alikes: idioms, hyperbole, fiction, clinical
  questions, recovery stories; and ordinary everyday messages). It carries the indirect statements
  no pattern list covers: goodbye behaviour, an overdose described by its symptoms, hopelessness,
  any of the six languages.
- **Rules**: a short list of regular expressions for explicit first-person plans and means
  ("kill myself", "took all my pills", "bringing a gun to school", "she isn't breathing"). They
  are precise and explainable; explicit safety statements ("I'm not suicidal", "I would never
  hurt myself") are masked out before the rules read the text (`mask`).
- **Guard** (optional): when a Llama Guard style guard is given, its unsafe verdict with S11
  (self-harm) or S1 (violent crimes) on the user's message is a further signal.

`check_conversation` scores the last user turn alone and together with the preceding user turns,
so risk carries across turns ("I've found a spot out by the old quarry" → "Saturday works, nobody
will be around"); and it asks the context model (`crisis_model.ContextClear`) whether the earlier
turns make an alarming last turn harmless ("playing Hitman" → "how do I take him out without
anyone seeing"), in which case neither score flags it (the rules and the guard still can).

When a message is flagged, `CrisisLayer.screen` returns a banner with resources for the user's
locale, or, when no locale is set, for the message's language (`resources/crisis/resources.yaml`).
The banner is put in front of the reply by code, so safety never depends on what a small model
happens to generate.

The evaluation set (`benchmarks/data/crisis_heldout.jsonl`) was written separately and is never
used for training, calibration or choosing the threshold; `benchmarks/crisis_eval.py` measures on it. The
red-team sheet (`resources/crisis/redteam.jsonl`) is the end-to-end regression gate.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.chat.crisis_model import CONTEXT_TURNS, normalize
from tunesmith.errors import TunesmithError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

SELF_HARM, HARM_TO_OTHERS, MEDICAL = "self_harm", "harm_to_others", "medical_emergency"
# Order = priority when rules of several categories fire: self-harm first because its banner
# already leads with the emergency number, so nothing a medical banner says is lost.
CATEGORIES: tuple[str, ...] = (SELF_HARM, HARM_TO_OTHERS, MEDICAL)
MASK_NEGATION = " _neg_ "
# Llama Guard 3 hazard codes that mean the *user* may be in danger or dangerous
GUARD_CODES = {"S11": SELF_HARM, "S1": HARM_TO_OTHERS}


class CrisisError(TunesmithError):
    """Bad crisis-layer input (unknown locale, malformed resources file)."""


def data_path(name: str) -> Path:
    return Path(str(importlib_resources.files("tunesmith") / "resources" / "crisis" / name))


# ------------------------------------------------------------------------------ normalisation


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# Explicit safety statements, masked before the rules read the text; the rest of the message is
# still read ("I'm not suicidal but I've been stockpiling my pills" flags on the second clause).
NEGATIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (n, _rx(p))
    for n, p in (
        ("not_suicidal", r"\b(?:i'?m|i\s+am|am)\s+not\s+(?:\w+\s+){0,2}?suicidal\b|\bnot\s+(?:feeling\s+)?suicidal\b"),
        (
            "would_never",
            r"\b(?:would|will|could|'d)\s*(?:n'?t|not|never)\s+(?:ever\s+|actually\s+|really\s+)?"
            r"(?:kill|hurt|harm)\s+(?:myself|anyone|anybody|a\s+fly)\b",
        ),
        ("never_hurt", r"\bnever\s+(?:\w+\s+)?(?:kill|hurt|harm)\s+(?:myself|anyone|anybody)\b"),
        (
            "dont_want_die",
            r"\b(?:don'?t|do\s+not|never)\s+(?:want|plan|intend|mean)\s+to\s+(?:die|kill\s+myself|"
            r"(?:hurt|harm)\s+(?:myself|anyone)|end\s+my\s+life)\b",
        ),
        (
            "not_going_to",
            r"\b(?:not|never)\s+(?:going|gonna)\s+(?:to\s+)?(?:do\s+anything\s+to\s+myself|"
            r"(?:kill|hurt|harm)\s+(?:myself|anyone|anybody))\b",
        ),
        # hyperbole about someone else's anger: "my mom is going to kill me"
        ("will_kill_me", r"\b(?:gonna|going\s+to|will|'ll|would)\s+(?:\w+\s+)?(?:kill|murder)\s+me\b"),
    )
)


def mask(text: str) -> str:
    """Normalised text with explicit safety statements replaced by a placeholder token."""
    t = normalize(text)
    for _, rx in NEGATIONS:
        t = rx.sub(MASK_NEGATION, t)
    return " ".join(t.split())


def masked_spans(text: str) -> list[str]:
    """Names of the safety-statement patterns that matched (for explanations and tests)."""
    t = normalize(text)
    return [f"negation:{name}" for name, rx in NEGATIONS if rx.search(t)]


# ---------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    name: str
    category: str
    pattern: re.Pattern[str]


_FIRST = r"(?:i|i'm|im|i've|ive|i'll|ill|i\s+am|i\s+have|i\s+will)"
_PILLS = (
    r"(?:pills?|tablets?|meds|medications?|sleeping\s+pills|tylenol|paracetamol|acetaminophen|ibuprofen|"
    r"aspirin|insulin|painkillers|antidepressants|oxy(?:codone|contin)?|xanax|benzos?|opioids)"
)
_WEAPON = r"(?:gun|rifle|pistol|shotgun|knife|machete|bomb|weapon|ar-?15)"

# Only explicit first-person plans and means: everything vaguer is the learned detector's call,
# because a rule cannot tell a novel's plot or a pharmacology question from a plan.
RULES: tuple[Rule, ...] = tuple(
    Rule(n, c, _rx(p))
    for n, c, p in (
        (
            "kill_self",
            SELF_HARM,
            r"\b(?:kill(?:ing)?|hang(?:ing)?|shoot(?:ing)?|unaliv(?:e|ing)|off(?:ing)?|drown(?:ing)?)\s+myself\b"
            r"|\bkms\b|\bunalive\s+myself\b",
        ),
        ("end_my_life", SELF_HARM, r"\b(?:end(?:ing)?|take|taking)\s+my\s+(?:own\s+)?life\b"),
        ("i_am_suicidal", SELF_HARM, rf"\b{_FIRST}\s+(?:\w+\s+)?(?:feeling\s+|so\s+|really\s+)?suicidal\b"),
        (
            "took_pills",
            SELF_HARM,
            rf"\b{_FIRST}\s+(?:just\s+)?(?:took|swallowed|taken|downed|swallow(?:ed)?)\s+(?:all|every\s+one|a\s+(?:whole\s+)?"
            rf"(?:bottle|handful|box|pack)|[2-9]\d|\d{{3}}|too\s+many)\s+(?:of\s+)?(?:my|the|those|these|his|her)?\s*"
            rf"(?:\w+\s+)?{_PILLS}\b",
        ),
        (
            "stockpile",
            SELF_HARM,
            rf"\b{_FIRST}\s+(?:\w+\s+)?(?:been\s+)?(?:stockpil(?:e|ing|ed)|hoard(?:ing|ed)?|sav(?:ing|ed)\s+up|saving)\s+"
            rf"(?:up\s+)?(?:my|the|all\s+my)?\s*(?:sleeping\s+)?{_PILLS}\b",
        ),
        (
            "rope_ready",
            SELF_HARM,
            rf"\b{_FIRST}\s+(?:\w+\s+)?(?:tied|bought|made|got|have)\s+(?:a|the)\s+(?:noose|rope)\b",
        ),
        (
            "suicide_note",
            SELF_HARM,
            rf"\b{_FIRST}\s+(?:\w+\s+)?(?:wrote|written|writing|left|finished)\s+(?:my|a)\s+(?:suicide|goodbye)\s+(?:note|letter)s?\b",
        ),
        (
            "jump_intent",
            SELF_HARM,
            rf"\b{_FIRST}\s+(?:\w+\s+)?(?:going\s+to|gonna|about\s+to|will|want\s+to)\s+jump\s+(?:off|from|in\s+front\s+of)\b",
        ),
        (
            "weapon_place",
            HARM_TO_OTHERS,
            rf"\b{_FIRST}\s+(?:\w+\s+)?(?:bring(?:ing)?|tak(?:e|ing)|carry(?:ing)?)\s+(?:a|my|the|his|her|\w+'s)\s+(?:\w+'s\s+)?"
            rf"{_WEAPON}\s+"
            rf"(?:to|into)\s+(?:school|work|class|the\s+office|church|the\s+mall)\b"
            r"|\bshoot(?:ing)?\s+up\s+(?:the|my|our)\s+(?:school|office|class|church|mall)\b",
        ),
        (
            "kill_person",
            HARM_TO_OTHERS,
            rf"\b{_FIRST}\s+(?:\w+\s+)?(?:going\s+to|gonna|will|plan(?:ning)?\s+to)\s+(?:kill|murder|stab|shoot|strangle)\s+"
            r"(?:him|her|them|my\s+(?:wife|husband|ex|boss|dad|mom|father|mother|girlfriend|boyfriend|neighbou?r))\b"
            r"(?![^.!?]*\b(?:if|when|unless)\b)",
        ),
        (
            "not_breathing",
            MEDICAL,
            r"\b(?:he|she|they|my\s+\w+|the\s+baby|baby)\s+(?:is\s*n'?t|is\s+not|'s\s+not|are\s*n'?t|stopped|has\s+stopped)\s+"
            r"breathing\b",
        ),
        (
            "unresponsive",
            MEDICAL,
            r"\b(?:he|she|they|my\s+\w+|the\s+baby)\s+(?:is|'s|are|went|has\s+gone)\s+(?:\w+\s+)?(?:unconscious|unresponsive|"
            r"not\s+responding)\b|\bcan'?t\s+wake\s+(?:him|her|them)\s+up\b",
        ),
    )
)


@dataclass(frozen=True)
class RuleHit:
    rule: str
    category: str


def rule_hits(text: str) -> list[RuleHit]:
    """Every rule that fires on the masked text, in RULES order."""
    t = mask(text)
    return [RuleHit(r.name, r.category) for r in RULES if r.pattern.search(t)]


# ------------------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class CrisisResult:
    flagged: bool
    category: str | None  # one of CATEGORIES when flagged
    reason: str  # "rule:<name>", "classifier p=0.87 ≥ 0.42", "context p=…", "guard:S11" (or why it did not flag)
    score: float  # 1.0 for a rule hit, else the classifier's P(crisis)
    rules: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()  # safety statements masked out before the rules
    language: str = "en"
    context_score: float | None = None  # P(crisis) of the recent user turns read together

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rules"], d["masked"] = list(self.rules), list(self.masked)
        return d


GuardFn = Callable[[str], tuple[bool | None, list[str]]]


def guard_signal(guard) -> GuardFn:
    """Adapt a `tunesmith.evaluation.ailuminate` guard (generative Llama Guard style or classifier) to
    a user-message verdict: the guard judges the user's message as the conversation's only turn."""

    def verdict(text: str) -> tuple[bool | None, list[str]]:
        safe, codes, _ = guard.judge([(text, "")])[0]
        return (None if safe is None else not safe), list(codes)

    return verdict


class CrisisDetector:
    """`check(text)` for one message, `check_conversation(messages)` for a chat's last user turn."""

    def __init__(self, model=None, rules: tuple[Rule, ...] = RULES, featurizer=None, guard: GuardFn | None = None):
        from tunesmith.chat import crisis_model as M

        self.featurizer = featurizer or M.default_featurizer()
        if model is None:
            self.model = M.load_model(self.featurizer)
        else:  # a model of its own still scores with the shipped adapter's tuned embeddings
            M.attach_adapter(self.featurizer)
            self.model = model
        self.rules = rules
        self.guard = guard

    @classmethod
    def default(cls) -> CrisisDetector:
        return _default_detector()

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def scores(self, texts: list[str]) -> tuple[list[float], list[str]]:
        """(P(crisis), most likely category) per text, in one encoder batch."""
        ps, cats, _ = self._scores(texts)
        return ps, cats

    def _scores(self, texts: list[str]) -> tuple[list[float], list[str], np.ndarray]:
        x, t = self.featurizer.both(texts)
        return [float(p) for p in self.model.proba(x, t, texts)], self.model.category(x), x

    def check(self, text: str) -> CrisisResult:
        return self._decide(text, context=None)

    def check_conversation(self, messages: Sequence[dict | str]) -> CrisisResult:
        """Verdict on the last user turn, read alone and with up to CONTEXT_TURNS-1 user turns before
        it, which may also clear it (ContextClear); OpenAI-style dicts or plain strings, which count
        as user turns."""
        turns = [
            m if isinstance(m, str) else str(m.get("content") or "")
            for m in messages
            if isinstance(m, str) or m.get("role", "user") == "user"
        ]
        turns = [t for t in turns if t.strip()]
        if not turns:
            raise CrisisError("check_conversation needs at least one non-empty user message")
        recent = turns[-CONTEXT_TURNS:]
        return self._decide(turns[-1], context=recent if len(recent) > 1 else None)

    def _decide(self, text: str, context: list[str] | None) -> CrisisResult:
        from tunesmith.chat.crisis_model import conversation_text
        from tunesmith.chat.language import detect_language

        lang = detect_language(text)
        t = mask(text)
        masked = tuple(masked_spans(text))
        hits = [r for r in self.rules if r.pattern.search(t)]
        # an explicit safety statement ("I'm not suicidal") is masked for the classifier too: its crisis
        # words would otherwise dominate the embedding of the whole message
        read = lambda s: mask(s) if masked_spans(s) else s  # noqa: E731
        turns = [read(c) for c in context] if context else []
        texts = [read(text)] + ([conversation_text(turns)] if context else [])
        ps, cats, x = self._scores(texts)
        p, cat = ps[0], cats[0]
        pc, catc = (ps[1], cats[1]) if context else (None, None)
        th = self.threshold
        rounded = round(p, 4)
        ctx = None if pc is None else round(pc, 4)
        if hits:
            rcat = min((h.category for h in hits), key=CATEGORIES.index)
            first = next(h for h in hits if h.category == rcat)
            return CrisisResult(True, rcat, f"rule:{first.name}", 1.0, tuple(h.name for h in hits), masked, lang, ctx)
        clear, tc = self.model.clear, self.model.context_threshold
        q = None
        if context and clear is not None and (p >= th or pc >= tc):
            # only when a reading would flag: the earlier turns are a third encoder pass (about 10 ms)
            pe, _, xe = self._scores([conversation_text(turns[:-1])])
            q = float(clear.proba(xe, x[0:1])[0])
        # harmless earlier turns that explain the last one overrule both classifier readings, not the
        # rules or the guard
        cleared = q is not None and bool(clear.clears(q, p, pe[0], th))
        if p >= th and not cleared:
            # when the joined turns are flagged too, they name the risk better than the last turn alone
            # ("Saturday works, nobody will be around" after a spot by the quarry)
            if pc is not None and pc >= tc:
                cat = catc
            return CrisisResult(True, cat, f"classifier p={p:.2f} ≥ {th:.2f}", rounded, (), masked, lang, ctx)
        if pc is not None and pc >= tc and not cleared:
            return CrisisResult(
                True,
                catc,
                f"context p={pc:.2f} ≥ {tc:.2f} over {len(context)} user turns",
                rounded,
                (),
                masked,
                lang,
                ctx,
            )
        if self.guard is not None:
            unsafe, codes = self.guard(text)
            hit = next((GUARD_CODES[c] for c in codes if c in GUARD_CODES), None) if unsafe else None
            if hit:
                return CrisisResult(True, hit, f"guard:{','.join(codes)}", rounded, (), masked, lang, ctx)
        if cleared and (p >= th or pc >= tc):
            why = f"no rule; context clears it: q={q:.2f} ≥ {clear.threshold:.2f} (classifier p={p:.2f}, context p={pc:.2f})"
        else:
            why = f"no rule; classifier p={p:.2f} < {th:.2f}" + (f"; context p={pc:.2f}" if pc is not None else "")
        return CrisisResult(False, None, why, rounded, (), masked, lang, ctx)


@lru_cache(maxsize=1)
def _default_detector() -> CrisisDetector:
    # the encoders load once per process; the coefficients come from the shipped JSON
    return CrisisDetector()


# ------------------------------------------------------------------------------------ resources


@dataclass(frozen=True)
class Helpline:
    name: str
    contact: str
    url: str | None = None

    def line(self) -> str:
        return f"{self.name}: {self.contact}" + (f" — {self.url}" if self.url else "")


@dataclass(frozen=True)
class LocaleResources:
    code: str
    name: str
    emergency: str
    crisis: tuple[Helpline, ...]
    medical: tuple[Helpline, ...] = ()
    intros: dict[str, str] = field(default_factory=dict)  # per category, in the locale's language


INTROS = {
    SELF_HARM: "It sounds like you might be thinking about hurting yourself or ending your life. "
    "You deserve support right now, and you don't have to go through this alone.",
    HARM_TO_OTHERS: "It sounds like you might be thinking about hurting someone, or someone may be in danger. "
    "Talking to someone now can help keep everyone safe.",
    MEDICAL: "This sounds like a medical emergency. Please call emergency services now; don't wait for my reply.",
}
BANNER_MARK = "⚠"  # first character of every banner; `strip_banner` relies on it


@dataclass
class CrisisResources:
    locales: dict[str, LocaleResources]
    default: str
    source: str = ""
    by_language: dict[str, str] = field(default_factory=dict)  # message language → locale code

    @classmethod
    def load(cls, path: str | Path | None = None) -> CrisisResources:
        import yaml

        p = Path(path) if path else data_path("resources.yaml")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise CrisisError(f"cannot read crisis resources {p}: {e}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("locales"), dict) or not raw["locales"]:
            raise CrisisError(f"{p}: expected a mapping with 'locales'")

        def lines(items, code: str, key: str) -> tuple[Helpline, ...]:
            out = []
            for i, it in enumerate(items or []):
                if not isinstance(it, dict) or "name" not in it or "contact" not in it:
                    raise CrisisError(f"{p}: locales.{code}.{key}[{i}] needs name and contact")
                out.append(Helpline(str(it["name"]), str(it["contact"]), it.get("url")))
            return tuple(out)

        locales = {}
        for code, v in raw["locales"].items():
            if not isinstance(v, dict) or "emergency" not in v or not v.get("crisis"):
                raise CrisisError(f"{p}: locale {code} needs 'emergency' and at least one 'crisis' line")
            intros = v.get("intros") or {}
            if not isinstance(intros, dict) or set(intros) - set(CATEGORIES):
                raise CrisisError(f"{p}: locales.{code}.intros must map categories ({', '.join(CATEGORIES)}) to text")
            locales[str(code)] = LocaleResources(
                str(code),
                str(v.get("name", code)),
                " ".join(str(v["emergency"]).split()),
                lines(v["crisis"], code, "crisis"),
                lines(v.get("medical"), code, "medical"),
                {k: " ".join(str(t).split()) for k, t in intros.items()},
            )
        default = str(raw.get("default", next(iter(locales))))
        if default not in locales:
            raise CrisisError(f"{p}: default locale {default!r} is not among the locales")
        by_language = {str(k): str(c) for k, c in (raw.get("languages") or {}).items()}
        for lang, code in by_language.items():
            if code not in locales:
                raise CrisisError(f"{p}: languages.{lang} names unknown locale {code!r}")
        return cls(locales, default, str(p), by_language)

    def for_language(self, lang: str) -> LocaleResources:
        """The locale shown for a message in `lang` when the user has set none (default: the default)."""
        return self.locales[self.by_language.get(lang, self.default)]

    def resolve(self, locale: str | None) -> LocaleResources:
        """Exact code, else case/separator-insensitive ("en-us" → en_US); unknown → error."""
        if not locale:
            return self.locales[self.default]
        if locale in self.locales:
            return self.locales[locale]
        key = locale.replace("-", "_").lower()
        for code, res in self.locales.items():
            if code.lower() == key:
                return res
        raise CrisisError(f"unknown locale {locale!r}; available: {', '.join(self.locales)}")

    def banner(self, category: str, locale: str | None = None) -> str:
        """Plain-text resources block: intro, emergency line, helplines, how to change locale.
        Lines are separated by single newlines and the block has no blank line inside, so a reply
        is `banner + "\\n\\n" + model text` and `strip_banner` can split it again."""
        res = self.resolve(locale)
        intro = res.intros.get(category) or INTROS.get(category, INTROS[SELF_HARM])
        lines = [f"{BANNER_MARK} {intro}", f"• {res.emergency}"]
        extra = res.medical + res.crisis if category == MEDICAL else res.crisis
        lines += [f"• {h.line()}" for h in extra]
        others = ", ".join(c for c in self.locales if c != res.code)
        lines.append(f"(Resources for: {res.name}. You can choose another locale: {others}.)")
        return "\n".join(lines)


def strip_banner(text: str) -> str:
    """The model's part of a reply that may start with a crisis banner (clients send replies back
    as history; the banner should not fill the model's context turn after turn)."""
    if text.startswith(BANNER_MARK):
        head, sep, rest = text.partition("\n\n")
        return rest if sep else ""
    return text


# ---------------------------------------------------------------------------------------- layer


@dataclass
class Screening:
    result: CrisisResult
    banner: str | None  # resources text to show before the reply; None when not flagged
    locale: str
    # a crisis earlier in the conversation: the resources stay reachable even when this turn is calm
    session_flagged: bool = False
    session_banner: str | None = None

    def to_dict(self) -> dict:
        return {
            **self.result.to_dict(),
            "banner": self.banner,
            "locale": self.locale,
            "session_flagged": self.session_flagged,
            "session_banner": self.session_banner,
        }


@dataclass
class CrisisLayer:
    """Detector + resources + logging: what a chat pipeline calls before generating."""

    detector: CrisisDetector = field(default_factory=CrisisDetector.default)
    resources: CrisisResources = field(default_factory=CrisisResources.load)

    def locale_for(self, text: str, locale: str | None) -> LocaleResources:
        """The set locale, else the one for the message's language (unknown locale → error)."""
        if locale:
            return self.resources.resolve(locale)
        from tunesmith.chat.language import detect_language

        return self.resources.for_language(detect_language(text))

    def screen(
        self,
        text: str,
        locale: str | None = None,
        history: Sequence[dict] | None = None,
        earlier_crisis: str | None = None,
    ) -> Screening:
        """Screen the user's message; `history` (earlier OpenAI-style turns) gives the context, and
        `earlier_crisis` (a category) marks a conversation that was already flagged."""
        if locale:
            self.resources.resolve(locale)  # unknown locale fails before anything is generated
        user_turns = [m for m in history or [] if m.get("role") == "user"]
        if user_turns:
            result = self.detector.check_conversation([*user_turns, {"role": "user", "content": text}])
        else:
            result = self.detector.check(text)
        res = self.locale_for(text, locale)
        banner = self.resources.banner(result.category or SELF_HARM, res.code) if result.flagged else None
        if result.flagged:
            # the flag and its reason, never the message itself (it may be sensitive)
            log.info(
                "crisis layer flagged a message: category=%s reason=%s score=%.2f locale=%s chars=%d",
                result.category,
                result.reason,
                result.score,
                res.code,
                len(text),
            )
        sticky = result.category if result.flagged else earlier_crisis
        return Screening(
            result,
            banner,
            res.code,
            sticky is not None,
            banner or (self.resources.banner(sticky, res.code) if sticky else None),
        )

    def earlier_crisis(self, history: Sequence[dict]) -> str | None:
        """Category of the first flagged user turn of a conversation (stateless clients send the
        whole history each time, so the server re-reads it), or None."""
        turns = [m for m in history if m.get("role") == "user" and str(m.get("content") or "").strip()]
        for i in range(len(turns)):
            r = self.detector.check_conversation(turns[: i + 1])
            if r.flagged:
                return r.category
        return None
