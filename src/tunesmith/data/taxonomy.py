"""Label sets of the empathy recipe and the tables that map every dataset onto them.

Two label spaces, one per head:

- `EMOTIONS`: the 28 GoEmotions labels (27 emotions + neutral) in the order of the official
  `emotions.txt`, so a GoEmotions label id *is* the emotion id.
- `STRATEGIES`: the 8 ESConv support strategies in the order of ESConv's `strategy.json`.

EmpatheticDialogues (32 situation emotions) and ESConv (the seeker's `emotion_type`) are mapped
onto GoEmotions by explicit tables below. Each source label goes to exactly one GoEmotions label;
a table rather than a heuristic, so a reviewer can disagree with a single line.
"""

from __future__ import annotations

from tunesmith.errors import DataError

EMOTIONS: tuple[str, ...] = (
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion",
    "curiosity", "desire", "disappointment", "disapproval", "disgust", "embarrassment",
    "excitement", "fear", "gratitude", "grief", "joy", "love", "nervousness", "optimism",
    "pride", "realization", "relief", "remorse", "sadness", "surprise", "neutral",
)  # fmt: skip

NEUTRAL = EMOTIONS.index("neutral")

STRATEGIES: tuple[str, ...] = (
    "Question",
    "Restatement or Paraphrasing",
    "Reflection of feelings",
    "Self-disclosure",
    "Affirmation and Reassurance",
    "Providing Suggestions",
    "Information",
    "Others",
)

# Spellings found in ESConv releases besides the canonical ones (matched case-insensitively,
# after stripping `strategy.json`'s brackets). FailedESConv.json uses an older annotation scheme.
STRATEGY_ALIASES: dict[str, str] = {
    "questions": "Question",
    "other": "Others",
    "restatement": "Restatement or Paraphrasing",
    "paraphrasing": "Restatement or Paraphrasing",
    "approval and reassurance": "Affirmation and Reassurance",
    # The older scheme's directive advice; "Providing Suggestions" is its successor label.
    "direct guidance": "Providing Suggestions",
}

# EmpatheticDialogues `context` (32 labels) -> GoEmotions. Reasons are given where the target is
# not the same word; GoEmotions definitions (Demszky et al. 2020, Table 1) decide close calls.
ED_TO_GOEMOTIONS: dict[str, str] = {
    "afraid": "fear",
    "angry": "anger",
    "annoyed": "annoyance",
    # eager expectation of an upcoming event ("anticipating my vacation"): GoEmotions' excitement
    # is "great enthusiasm and eagerness"
    "anticipating": "excitement",
    # GoEmotions defines nervousness as "apprehension, worry, anxiety"
    "anxious": "nervousness",
    "apprehensive": "nervousness",
    # shame is a self-conscious emotion like embarrassment; remorse is kept for guilt (an act)
    "ashamed": "embarrassment",
    "caring": "caring",
    # ED "confident" situations are mostly about an upcoming test/interview going well:
    # a positive expectation of an outcome, i.e. optimism, not pride in a past achievement
    "confident": "optimism",
    # calm satisfaction; GoEmotions' joy covers "pleasure and happiness"
    "content": "joy",
    # intense sorrow, mostly over a loss: GoEmotions' grief ("intense sorrow ... caused by death")
    "devastated": "grief",
    "disappointed": "disappointment",
    "disgusted": "disgust",
    "embarrassed": "embarrassment",
    "excited": "excitement",
    # loyalty/devotion to a partner, friend or belief is an attachment emotion; love is the
    # nearest GoEmotions label (no trust/loyalty label exists)
    "faithful": "love",
    "furious": "anger",
    "grateful": "gratitude",
    # regret over something one did: GoEmotions' remorse ("regret or guilt")
    "guilty": "remorse",
    "hopeful": "optimism",
    # GoEmotions' admiration is "respect and warm approval" of someone/something impressive
    "impressed": "admiration",
    # resentment of a rival's advantage; GoEmotions has no envy label and anger is the
    # resentful component (same choice as ESConv "jealousy")
    "jealous": "anger",
    "joyful": "joy",
    # an unpleasant feeling of lack/loss: sadness
    "lonely": "sadness",
    # wistful longing for what is gone; the loss component dominates the label's situations
    "nostalgic": "sadness",
    # readiness for an upcoming event, again a positive expectation: optimism
    "prepared": "optimism",
    "proud": "pride",
    "sad": "sadness",
    # tender feelings about people/keepsakes: love ("strong positive emotion of regard and affection")
    "sentimental": "love",
    "surprised": "surprise",
    "terrified": "fear",
    # a favourable judgement of someone's reliability; approval ("having or expressing a
    # favourable opinion") is the nearest label, there is no trust label
    "trusting": "approval",
}

# ESConv `emotion_type` (all 11 values in the 1,300 released conversations) -> GoEmotions.
ESCONV_EMOTION_TO_GOEMOTIONS: dict[str, str] = {
    # GoEmotions defines nervousness as "apprehension, worry, anxiety"
    "anxiety": "nervousness",
    "nervousness": "nervousness",
    # ESConv's depression is the seeker's low mood ("ongoing depression"); sadness is the emotion
    "depression": "sadness",
    "sadness": "sadness",
    "anger": "anger",
    "fear": "fear",
    "disgust": "disgust",
    # self-conscious emotion, as for ED "ashamed"
    "shame": "embarrassment",
    # regret over one's own act, as for ED "guilty"
    "guilt": "remorse",
    # the one "jealousy" conversation is resentment of a friend's possession; as for ED "jealous"
    "jealousy": "anger",
    # the one "pain" conversation is heartbreak after betrayal: emotional pain, i.e. sadness
    "pain": "sadness",
}

_STRATEGY_BY_KEY: dict[str, str] = {s.lower(): s for s in STRATEGIES} | STRATEGY_ALIASES


def _where(where: str | None) -> str:
    return f"{where}: " if where else ""


def emotion_id(name: str, where: str | None = None) -> int:
    """Id of a GoEmotions label (case-insensitive). `where` ("file:line") prefixes the error."""
    key = str(name).strip().lower()
    try:
        return EMOTIONS.index(key)
    except ValueError:
        raise DataError(f"{_where(where)}unknown emotion {name!r} (expected one of the 28 GoEmotions labels)") from None


def canonical_strategy(name: str, where: str | None = None) -> str:
    """The canonical spelling of an ESConv strategy, accepting the variants in ESConv releases."""
    key = " ".join(str(name).strip().strip("[]").split()).lower()
    try:
        return _STRATEGY_BY_KEY[key]
    except KeyError:
        raise DataError(f"{_where(where)}unknown strategy {name!r} (expected one of {', '.join(STRATEGIES)})") from None


def strategy_id(name: str, where: str | None = None) -> int:
    """Id of an ESConv strategy (spelling variants accepted, see `STRATEGY_ALIASES`)."""
    return STRATEGIES.index(canonical_strategy(name, where))


def ed_emotion_id(context: str, where: str | None = None) -> int:
    """GoEmotions id for an EmpatheticDialogues `context` label."""
    key = str(context).strip().lower()
    if key not in ED_TO_GOEMOTIONS:
        raise DataError(f"{_where(where)}unknown EmpatheticDialogues emotion {context!r}")
    return EMOTIONS.index(ED_TO_GOEMOTIONS[key])


def esconv_emotion_id(emotion_type: str, where: str | None = None) -> int:
    """GoEmotions id for an ESConv `emotion_type`."""
    key = str(emotion_type).strip().lower()
    if key not in ESCONV_EMOTION_TO_GOEMOTIONS:
        raise DataError(f"{_where(where)}unknown ESConv emotion_type {emotion_type!r}")
    return EMOTIONS.index(ESCONV_EMOTION_TO_GOEMOTIONS[key])
