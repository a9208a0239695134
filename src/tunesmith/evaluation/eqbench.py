"""EQ-Bench v2 (Paech 2023, arXiv:2312.06281): prompts, parsing and scoring.

This reproduces the reference harness (`EQ-bench/EQ-Bench` @ d28c60c, the v2.3 code:
`lib/scoring.py`, `lib/eq_bench_utils.py`, `lib/run_bench_helper_functions.py`), English path.
It deliberately keeps the harness's quirks, because a score is only comparable with the
published ones if it is computed the same way:

* pairs are read with the regex ``(\\w+):\\s+(\\d+)``: integers only (``7.5`` reads as 7), the
  colon must touch the name and be followed by whitespace, a later duplicate overwrites an
  earlier one, and any other ``word: digits`` text becomes an extra entry;
* an answer counts only with exactly 4 entries whose names equal the reference names
  (case-sensitive) and whose values sum to more than 0 (the harness's v1 check);
* unparseable questions are left out of the mean, not counted as 0.

Two prompt modes exist. ``revise=True`` sends the stored prompt unchanged (first-pass scores,
critique, revised scores: the v2.0 default, used by 61 of the 86 published runs);
``revise=False`` edits the prompt the way the harness does without ``-revise`` (its default since
v2.1). Give the model room for the answer: the published revise runs allowed 500 new tokens,
the plain mode 60 (`MAX_NEW_TOKENS`).
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError
from tunesmith.io import write_jsonl

HUB_DATASET = "pbevan11/EQ-Bench"  # the copy lm-evaluation-harness uses; split "validation"
N_QUESTIONS = 171
# The harness fails a run below this parse rate ("... questions were parseable (min is 83%)"):
# 143 of 171 questions must parse.
MIN_PARSE_RATE = 0.8333
# 0.7477 is the author's constant that makes uniformly random answers score about 0.
ADJUST_CONST = 0.7477
# Retries: the harness asks up to 3 times, raising the temperature by 0.15 after each failure.
MAX_ATTEMPTS = 3
FIRST_TEMPERATURE = 0.01
TEMPERATURE_STEP = 0.15
MAX_NEW_TOKENS = {"revise": 500, "plain": 60}

_PAIR = re.compile(r"(\w+):\s+(\d+)")
_FIRST_PASS_SECTION = re.compile(r"First pass scores:(.*?)Revised scores:", re.DOTALL)
_REVISED_SECTION = re.compile(r"Revised scores:(.*?)$", re.DOTALL)

# The harness's prompt edits for plain mode (`remove_revision_instructions`, language "en").
_REVISION_SENTENCE = (
    " Then critique your answer by thinking it through step by step. Finally, give your revised scores."
)
_FIRST_PASS_HEADING = "First pass scores:\n"
_CRITIQUE_TEMPLATE = "Critique: <your critique here>"
_END_OF_ANSWER = "[End of answer]"
_ANSWER_CUE = "\nYour answer:\n"


@dataclass(frozen=True)
class EqBenchQuestion:
    """One v2 question. `reference` is the v2 (fullscale) reference, in emotion1..4 order."""

    id: str
    prompt: str  # the stored prompt, i.e. the revise form
    reference: dict[str, float]


@dataclass
class EqBenchItem:
    """One question's outcome, as the harness would store it (None: no score for that pass)."""

    question_id: str
    raw_output: str | None
    parsed: dict[str, dict[str, int | float]]
    first_pass_score: float | None
    revised_score: float | None

    @property
    def stored(self) -> bool:
        """True if the harness would have stored a result for this question."""
        return self.first_pass_score is not None or self.revised_score is not None


@dataclass
class EqBenchResult:
    """A scored run (one iteration).

    score: the benchmark score, rounded to 2 decimals like the published numbers;
        raw_score is the unrounded value. Both are 10 × the mean per-question score of the
        chosen pass, over the questions that have a score for that pass.
    selected: "first_pass" or "revised" (the benchmark's selection rule, see `choose_pass`).
    n_parsed: questions scored in the chosen pass; n_total: questions asked.
    valid: n_parsed / n_total >= MIN_PARSE_RATE (the harness still reports the score otherwise).
    """

    score: float
    raw_score: float
    selected: str
    n_parsed: int
    n_total: int
    parse_rate: float
    valid: bool
    first_pass_score: float
    first_pass_parsed: int
    revised_score: float
    revised_parsed: int
    revise: bool
    d5_linear: bool
    items: list[EqBenchItem] = field(default_factory=list)


# --------------------------------------------------------------------------- loading


def load_questions(path: str | Path | None = None) -> list[EqBenchQuestion]:
    """Load the 171 v2 questions.

    `path` is the local `eq_bench_v2_questions_171.json` (one object keyed "1".."171"). When it
    is None, or a hub id ("owner/name") that is not a local file, the questions come from the
    Hugging Face hub via `datasets.load_dataset` (default `HUB_DATASET`).
    """
    if path is None:
        return _load_from_hub(HUB_DATASET)
    p = Path(path).expanduser()
    if not p.exists() and _looks_like_hub_id(str(path)):
        return _load_from_hub(str(path))
    if not p.is_file():
        raise DataError(f"EQ-Bench questions file not found: {p}")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{p}: expected a non-empty JSON object keyed by question id, got {type(raw).__name__}")
    return [_question_from_record(str(qid), rec, where=f"{p}: question {qid!r}") for qid, rec in raw.items()]


def _looks_like_hub_id(s: str) -> bool:
    # "owner/name" with no file suffix; anything path-like falls through to "file not found".
    return re.fullmatch(r"[\w.-]+/[\w.-]+", s) is not None and not s.endswith((".json", ".jsonl"))


def _load_from_hub(hub_id: str) -> list[EqBenchQuestion]:  # pragma: no cover - needs the network
    from tunesmith.data.hub import load_hub_dataset

    ds = load_hub_dataset("EQ-Bench", hub_id, split="validation")
    questions = []
    for i, row in enumerate(ds):
        # The hub copy has no id column; its rows are in question order "1".."171".
        qid = str(row.get("id", i + 1))
        questions.append(_question_from_record(qid, dict(row), where=f"{hub_id}: row {i}"))
    return questions


def _question_from_record(qid: str, rec: Any, where: str) -> EqBenchQuestion:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: missing or empty 'prompt'")
    ref = rec.get("reference_answer_fullscale")
    if isinstance(ref, str):  # the hub copy stores the dict as its Python repr
        try:
            ref = ast.literal_eval(ref)
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: 'reference_answer_fullscale' is not a dict literal") from None
    if not isinstance(ref, dict):
        raise DataError(f"{where}: missing 'reference_answer_fullscale'")
    reference: dict[str, float] = {}
    for i in range(1, 5):
        name, score = ref.get(f"emotion{i}"), ref.get(f"emotion{i}_score")
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: reference lacks emotion{i}")
        try:
            # Scores are stored as a mix of ints and strings ("6"); the harness uses float().
            value = float(score)
        except (TypeError, ValueError):
            raise DataError(f"{where}: emotion{i}_score {score!r} is not a number") from None
        if name in reference:
            raise DataError(f"{where}: emotion {name!r} is listed twice")
        reference[name] = value
    return EqBenchQuestion(id=qid, prompt=prompt, reference=reference)


# --------------------------------------------------------------------------- prompting


def plain_prompt(prompt: str) -> str:
    """The stored (revise) prompt edited as the harness does when revision is off."""
    if _CRITIQUE_TEMPLATE not in prompt or _END_OF_ANSWER not in prompt:
        # str.find would return -1 here and the harness would splice garbage; refuse instead.
        raise DataError("EQ-Bench prompt lacks the 'Critique: <your critique here>' / '[End of answer]' markers")
    prompt = prompt.replace(_REVISION_SENTENCE, "")
    prompt = prompt.replace(_FIRST_PASS_HEADING, "")
    prompt = prompt[: prompt.find(_CRITIQUE_TEMPLATE)] + "\n" + prompt[prompt.find(_END_OF_ANSWER) :]
    return prompt + _ANSWER_CUE


def build_messages(question: EqBenchQuestion, revise: bool = True) -> list[dict[str, str]]:
    """The chat to send: one user turn holding the prompt, no system turn (as the harness's
    OpenAI and ooba paths send it). revise=True: the stored prompt verbatim."""
    content = question.prompt if revise else plain_prompt(question.prompt)
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------- parsing


def _pairs(text: str) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for name, digits in _PAIR.findall(text):
        # A repeated name keeps its first position and takes the last value, as dict() does.
        # int() refuses digit strings over 4300 characters and float(int) overflows past ~308
        # digits; the harness's float(str) gives inf there, so keep that.
        out[name] = int(digits) if len(digits) <= 300 else float(digits)
    return out


def parse_answer(text: str, revise: bool = True) -> dict[str, dict[str, int | float]]:
    """Read {"first_pass": {emotion: value}, "revised": {emotion: value}} from a reply.

    revise=False: the whole text feeds "first_pass" ("revised" stays empty), so in a reply
    holding both blocks the later (revised) values win.
    revise=True: "first_pass" is the text between the first "First pass scores:" and the first
    "Revised scores:" after it (the critique included); empty without both headings.
    "revised" is everything after the first "Revised scores:". Headings are case-sensitive.
    """
    if not revise:
        return {"first_pass": _pairs(text), "revised": {}}
    first_pass: dict[str, int | float] = {}
    revised: dict[str, int | float] = {}
    if m := _FIRST_PASS_SECTION.search(text):
        first_pass = _pairs(m.group(1))
    if m := _REVISED_SECTION.search(text):
        revised = _pairs(m.group(1))
    return {"first_pass": first_pass, "revised": revised}


# --------------------------------------------------------------------------- scoring


def penalty(d: float, d5_linear: bool = False) -> float:
    """Penalty for a distance d between model and reference value.

    0 at d = 0; the sigmoid 6.5 / (1 + e^(-1.2 (d - 4))) for 0 < d <= 5, which softens small
    errors; d itself above 5. d5_linear=True treats d = 5 as linear (5.0 instead of 4.9954):
    the harness code says `d <= 5`, but only the linear variant reproduces all the published
    run scores to 2 decimals (see the validation set's EQBENCH_RULES.md §9).
    """
    if d == 0:
        return 0.0
    if d < 5 or (d == 5 and not d5_linear):
        # math.e ** x rather than math.exp(x): the harness's form, to match it to the last bit.
        return 6.5 * (1 / (1 + math.e ** (-1.2 * (d - 4))))
    return d


def v2_score(
    parsed: Mapping[str, int | float], reference: Mapping[str, float], d5_linear: bool = False
) -> float | None:
    """`calculate_score_fullscale`: 10 - 0.7477 × Σ penalty, or None if not exactly the 4
    reference names. No clamping: values above 10 are used as they are."""
    if len(parsed) != 4 or any(name not in reference for name in parsed):
        return None
    tally = 0.0
    for name, value in parsed.items():  # the reply's order, as the harness sums
        tally += penalty(abs(float(value) - float(reference[name])), d5_linear)
    return 10 - (tally * ADJUST_CONST)


def accepted(parsed: Mapping[str, int | float], reference: Mapping[str, float]) -> bool:
    """The harness's per-attempt check (the legacy v1 scorer): v2-scorable and values sum > 0.
    So an all-zero answer is rejected even though the v2 formula could score it."""
    return v2_score(parsed, reference) is not None and sum(float(v) for v in parsed.values()) > 0


def score_passes(
    text: str | None, reference: Mapping[str, float], revise: bool = True, d5_linear: bool = False
) -> tuple[float | None, float | None]:
    """(first_pass_score, revised_score) the harness stores for this reply, assuming every
    attempt returned this same text (as greedy decoding does).

    plain: the first-pass score if the whole-text dict is accepted, else nothing.
    revise: if either pass is accepted the reply is kept (as a success, or as a "partial result"
    after the retries), and then *both* passes get a v2 score, with only the 4-names rule, so an
    all-zero pass next to an accepted one is scored. If neither pass is accepted: nothing.
    """
    if text is None:
        return None, None
    parsed = parse_answer(text, revise)
    if not revise:
        fp = parsed["first_pass"]
        return (v2_score(fp, reference, d5_linear) if accepted(fp, reference) else None), None
    if not (accepted(parsed["first_pass"], reference) or accepted(parsed["revised"], reference)):
        return None, None
    return v2_score(parsed["first_pass"], reference, d5_linear), v2_score(parsed["revised"], reference, d5_linear)


def pass_aggregate(scores: Sequence[float | None]) -> tuple[float, int]:
    """(100 × mean / 10, count) over the non-None scores; (0, 0) when there are none."""
    present = [s for s in scores if s is not None]
    if not present:
        return 0.0, 0
    total = 0.0
    for s in present:  # sequential sum, as the harness does, so the float result matches
        total += s
    return 100 * (total / len(present) / 10), len(present)


def choose_pass(first_score: float, first_n: int, revised_score: float, revised_n: int) -> tuple[str, float, int]:
    """The benchmark's pass selection: revised only if it scores at least as high AND has at
    least 95% as many parseable questions as the first pass; otherwise the first pass."""
    if revised_score >= first_score and revised_n >= 0.95 * first_n:
        return "revised", revised_score, revised_n
    return "first_pass", first_score, first_n


def score_answer(
    text: str, reference: Mapping[str, float], revise: bool = True, d5_linear: bool = False
) -> float | None:
    """Per-question v2 score (-19.9..10 for in-range values; 10 is an exact match), or None
    when the harness would store nothing for this reply.

    plain: the whole-text score. revise: the benchmark's pass selection applied to this one
    question: the revised score if it exists and is >= the first-pass score, or if the first
    pass has no score; otherwise the first-pass score. (At run level, `score_run` applies the
    rule to the aggregates instead; the two agree except in the degenerate case of a run whose
    first pass never parsed and whose revised mean is negative, where the run rule gives 0.)
    """
    first, revised = score_passes(text, reference, revise, d5_linear)
    if revised is None:
        return first
    if first is None or revised >= first:
        return revised
    return first


def score_run(
    answers: Sequence[str | None],
    questions: Sequence[EqBenchQuestion],
    revise: bool = True,
    d5_linear: bool = False,
) -> EqBenchResult:
    """Score one iteration: answers[i] replies to questions[i] (None: no reply, unparseable).

    Reproduces `calculate_eq_bench_score(fullscale=True)` for one iteration. The benchmark
    averages several iterations when asked; every published run has one.
    """
    if len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    items = []
    for text, q in zip(answers, questions):
        first, revised = score_passes(text, q.reference, revise, d5_linear)
        parsed = parse_answer(text, revise) if text is not None else {"first_pass": {}, "revised": {}}
        items.append(EqBenchItem(q.id, text, parsed, first, revised))
    fp_score, fp_n = pass_aggregate([it.first_pass_score for it in items])
    rv_score, rv_n = pass_aggregate([it.revised_score for it in items])
    selected, final, n_parsed = choose_pass(fp_score, fp_n, rv_score, rv_n)
    n_total = len(questions)
    parse_rate = n_parsed / n_total if n_total else 0.0
    return EqBenchResult(
        score=round(final, 2),
        raw_score=final,
        selected=selected,
        n_parsed=n_parsed,
        n_total=n_total,
        parse_rate=parse_rate,
        valid=parse_rate >= MIN_PARSE_RATE,
        first_pass_score=fp_score,
        first_pass_parsed=fp_n,
        revised_score=rv_score,
        revised_parsed=rv_n,
        revise=revise,
        d5_linear=d5_linear,
        items=items,
    )


# --------------------------------------------------------------------------- running

Generate = Callable[..., list[str]]


def _attempt_outcome(text: str | None, reference: Mapping[str, float], revise: bool) -> str:
    """'success', 'partial' (revise: one pass accepted) or 'fail', as `process_question` decides."""
    if text is None:
        return "fail"
    parsed = parse_answer(text, revise)
    fp_ok = accepted(parsed["first_pass"], reference)
    if not revise:
        return "success" if fp_ok else "fail"
    rv_ok = accepted(parsed["revised"], reference)
    if fp_ok and rv_ok:
        return "success"
    return "partial" if (fp_ok or rv_ok) else "fail"


def _generation_kwargs(generate: Generate, temperature: float, max_new_tokens: int) -> dict[str, Any]:
    # Pass the harness's sampling settings only to an engine that takes them, so a plain
    # `generate(batch)` callable still works.
    try:
        params = inspect.signature(generate).parameters
    except (TypeError, ValueError):
        return {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    candidates = {"temperature": temperature, "max_new_tokens": max_new_tokens}
    return {k: v for k, v in candidates.items() if takes_any or k in params}


def run_eqbench(
    generate: Generate,
    questions: Sequence[EqBenchQuestion],
    out_path: str | Path | None = None,
    revise: bool = True,
    attempts: int = MAX_ATTEMPTS,
    d5_linear: bool = False,
) -> EqBenchResult:
    """Ask every question, retry failures like the harness, and score the run.

    `generate(list_of_message_lists) -> list[str]` is the batched engine (e.g.
    `Generator.chat`). A `max_new_tokens` keyword, if it takes one, gets `MAX_NEW_TOKENS`.
    If it takes a `temperature` keyword, questions whose reply fails the harness check are asked
    again like the harness does (up to `attempts` times, temperature 0.01 then +0.15 each time;
    in revise mode the first reply with one accepted pass is kept if no attempt fully succeeds).
    An engine without `temperature` is taken to be greedy: asked once, since a retry would
    return the same text (the validation data assumes exactly this).

    With out_path, writes one JSONL row per question: question id, raw output, parsed dicts,
    both pass scores, the per-question score and the number of attempts.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    max_new_tokens = MAX_NEW_TOKENS["revise" if revise else "plain"]
    if "temperature" not in _generation_kwargs(generate, FIRST_TEMPERATURE, max_new_tokens):
        attempts = 1
    from tunesmith.data.reasoning import split_reasoning

    chosen: list[str | None] = [None] * len(questions)  # the answers (a reply's think block is not parsed)
    reasoning: list[str] = [""] * len(questions)
    partial: list[str | None] = [None] * len(questions)
    n_attempts = [0] * len(questions)
    pending = list(range(len(questions)))
    for attempt in range(attempts):
        if not pending:
            break
        batch = [build_messages(questions[i], revise) for i in pending]
        kwargs = _generation_kwargs(generate, FIRST_TEMPERATURE + attempt * TEMPERATURE_STEP, max_new_tokens)
        outputs = list(generate(batch, **kwargs))
        if len(outputs) != len(batch):
            raise ValueError(f"generate returned {len(outputs)} outputs for {len(batch)} prompts")
        still_pending = []
        for i, reply in zip(pending, outputs):
            n_attempts[i] += 1
            thought, text = split_reasoning(reply) if reply is not None else ("", None)
            reasoning[i] = thought
            outcome = _attempt_outcome(text, questions[i].reference, revise)
            if outcome == "success":
                chosen[i] = text
                continue
            if outcome == "partial" and partial[i] is None:
                partial[i] = text
            chosen[i] = text  # kept for the record; replaced by a partial result below
            still_pending.append(i)
        pending = still_pending
    for i in pending:
        if partial[i] is not None:
            chosen[i] = partial[i]

    result = score_run(chosen, questions, revise=revise, d5_linear=d5_linear)
    if out_path is not None:
        rows = []
        for item, q, n, thought in zip(result.items, questions, n_attempts, reasoning):
            rows.append(
                {
                    "question_id": item.question_id,
                    "raw_output": item.raw_output,
                    "reasoning": thought,
                    "parsed": item.parsed,
                    "first_pass_score": item.first_pass_score,
                    "revised_score": item.revised_score,
                    "score": score_answer(item.raw_output, q.reference, revise, d5_linear)
                    if item.raw_output is not None
                    else None,
                    "attempts": n,
                }
            )
        write_jsonl(out_path, rows)
    return result
