"""EQ-Bench v2: hand-worked scoring examples, parser edge cases, and the validation set.

The validation files live outside the repository, in ../shared/data/eqbench (they are never
copied here); the tests that need them skip when that folder is absent.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tunesmith.errors import DataError
from tunesmith.evaluation import eqbench as E
from tunesmith.evaluation.eqbench import (
    EqBenchQuestion,
    build_messages,
    choose_pass,
    load_questions,
    parse_answer,
    penalty,
    run_eqbench,
    score_answer,
    score_passes,
    score_run,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eqbench"
QUESTIONS_FILE = SHARED / "eq_bench_v2_questions_171.json"
VALIDATION = SHARED / "validation"
needs_shared = pytest.mark.skipif(
    not (QUESTIONS_FILE.is_file() and (VALIDATION / "eqbench_cases.jsonl").is_file()),
    reason=f"EQ-Bench v2 data not found at {SHARED} (../shared/data/eqbench is not shipped with the repo)",
)

# A made-up question for the hand-worked examples (reference order: emotion1..4).
REF = {"Anger": 7.0, "Joy": 0.0, "Fear": 3.0, "Pride": 5.0}
PROMPT = (
    "\nA: Hello.\n[End dialogue]\n\nGive each of these possible emotions a score from 0-10. Then critique your "
    "answer by thinking it through step by step. Finally, give your revised scores.\n\nFirst pass scores:\n"
    "Anger: <score>\n\nCritique: <your critique here>\n\nRevised scores:\nAnger: <revised score>\n\n"
    "[End of answer]\n\nRemember: zero is a valid score.\n"
)
Q = EqBenchQuestion(id="x1", prompt=PROMPT, reference=REF)


def answer(anger, joy, fear, pride) -> str:
    return f"Anger: {anger}\nJoy: {joy}\nFear: {fear}\nPride: {pride}\n"


def revise_answer(first: str, revised: str, critique: str = "Looks right.") -> str:
    return f"First pass scores:\n{first}\nCritique: {critique}\n\nRevised scores:\n{revised}\n[End of answer]"


# ----------------------------------------------------------------- hand-worked arithmetic


def test_penalty_table():
    # 6.5 / (1 + e^(-1.2 (d - 4))):
    #   d=1: e^3.6 = 36.5982 -> 6.5 / 37.5982 = 0.172880
    #   d=2: e^2.4 = 11.0232 -> 6.5 / 12.0232 = 0.540623
    #   d=3: e^1.2 = 3.32012 -> 6.5 / 4.32012 = 1.504589
    #   d=4: e^0   = 1       -> 6.5 / 2       = 3.25
    #   d=5: e^-1.2 = 0.301194 -> 6.5 / 1.301194 = 4.995411 (5.0 under the d5_linear variant)
    #   d>5: linear, penalty = d
    assert penalty(0) == 0
    for d, expected in [(1, 0.172880), (2, 0.540623), (3, 1.504589), (4, 3.25), (5, 4.995411)]:
        assert penalty(d) == pytest.approx(expected, abs=1e-6)
    assert penalty(5, d5_linear=True) == 5.0
    assert penalty(4, d5_linear=True) == 3.25  # the variant only moves d = 5
    assert penalty(6) == 6 and penalty(10) == 10 and penalty(93) == 93


def test_score_exact_match_is_10():
    assert score_answer(answer(7, 0, 3, 5), REF, revise=False) == 10.0


def test_score_small_distances_use_the_sigmoid():
    # d = 1, 2, 0, 3 -> T = 0.172880 + 0.540623 + 0 + 1.504589 = 2.218092
    # score = 10 - 0.7477 * 2.218092 = 10 - 1.658467 = 8.341533
    assert score_answer(answer(6, 2, 3, 8), REF, revise=False) == pytest.approx(8.341533, abs=1e-6)


def test_score_d4_d5_and_linear_distance():
    # d = 4 (Anger 3), 5 (Joy 5), 7 (Fear 10), 0 (Pride 5)
    # T = 3.25 + 4.995411 + 7 + 0 = 15.245411 -> 10 - 0.7477 * 15.245411 = 10 - 11.398994 = -1.398994
    assert score_answer(answer(3, 5, 10, 5), REF, revise=False) == pytest.approx(-1.398994, abs=1e-6)
    # d5_linear: T = 3.25 + 5 + 7 = 15.25 -> 10 - 11.402425 = -1.402425
    assert score_answer(answer(3, 5, 10, 5), REF, revise=False, d5_linear=True) == pytest.approx(-1.402425, abs=1e-6)


def test_score_is_not_clamped():
    # Anger 100: d = 93 (linear) -> 10 - 0.7477 * 93 = 10 - 69.5361 = -59.5361
    assert score_answer(answer(100, 0, 3, 5), REF, revise=False) == pytest.approx(-59.5361, abs=1e-9)


def test_unparseable_is_none():
    assert score_answer("I think Anger is high and Joy low.", REF, revise=False) is None
    assert score_answer("", REF) is None
    assert score_answer(answer(7, 0, 3, 5) + "Confidence: 9\n", REF, revise=False) is None  # 5 entries


def test_all_zero_answer_is_rejected_in_plain_mode():
    # The v2 formula alone would give 10 - 0.7477 * (7 + 0 + 1.504589 + 4.995411) = 10 - 0.7477 * 13.5
    # = -0.09395, but the harness's per-attempt check refuses answers that sum to 0.
    zeros = answer(0, 0, 0, 0)
    assert E.v2_score(parse_answer(zeros, revise=False)["first_pass"], REF) == pytest.approx(-0.09395, abs=1e-9)
    assert score_answer(zeros, REF, revise=False) is None


def test_revise_reading_and_selection():
    # First pass d = 1 on Anger -> 10 - 0.7477 * 0.172880 = 9.870737
    # Revised exact -> 10. Revised >= first pass, so the revised score is used.
    text = revise_answer(answer(6, 0, 3, 5), answer(7, 0, 3, 5))
    assert score_passes(text, REF) == (pytest.approx(9.870737, abs=1e-6), 10.0)
    assert score_answer(text, REF) == 10.0

    # Revision made it worse: revised d = 2 on Fear -> 10 - 0.7477 * 0.540623 = 9.595777 < 10 (first pass).
    worse = revise_answer(answer(7, 0, 3, 5), answer(7, 0, 5, 5))
    first, revised = score_passes(worse, REF)
    assert first == 10.0 and revised == pytest.approx(9.595777, abs=1e-6)
    assert score_answer(worse, REF) == 10.0

    # Revised pass missing an emotion: the first pass (d = 1 on Joy -> 9.870737) is the result.
    missing = revise_answer(answer(7, 1, 3, 5), "Anger: 7\nJoy: 0\nFear: 3\n")
    assert score_passes(missing, REF) == (pytest.approx(9.870737, abs=1e-6), None)
    assert score_answer(missing, REF) == pytest.approx(9.870737, abs=1e-6)

    # A partial result keeps BOTH passes: the all-zero first pass fails the harness check, the
    # revised pass passes, so the first pass is scored anyway: 10 - 0.7477 * 13.5 = -0.09395.
    partial = revise_answer(answer(0, 0, 0, 0), answer(7, 0, 3, 4))
    first, revised = score_passes(partial, REF)
    assert first == pytest.approx(-0.09395, abs=1e-9)
    assert revised == pytest.approx(9.870737, abs=1e-6)  # d = 1 on Pride

    # Neither pass accepted (both all-zero): nothing stored.
    assert score_passes(revise_answer(answer(0, 0, 0, 0), answer(0, 0, 0, 0)), REF) == (None, None)


def test_plain_mode_on_a_revise_reply_takes_the_later_values():
    text = revise_answer(answer(6, 0, 3, 5), answer(7, 0, 3, 5))
    assert parse_answer(text, revise=False)["first_pass"] == {"Anger": 7, "Joy": 0, "Fear": 3, "Pride": 5}
    assert score_answer(text, REF, revise=False) == 10.0
    # ...but a "word: digits" in the critique is a fifth entry in plain mode
    spoilt = revise_answer(answer(6, 0, 3, 5), answer(7, 0, 3, 5), critique="Note: 2 things changed.")
    assert score_answer(spoilt, REF, revise=False) is None
    assert score_passes(spoilt, REF) == (None, 10.0)  # revise reading: only the first pass is spoilt


def test_score_answer_equals_a_one_question_run():
    for text in [
        revise_answer(answer(6, 0, 3, 5), answer(7, 0, 3, 5)),
        revise_answer(answer(7, 0, 3, 5), answer(7, 0, 5, 5)),
        revise_answer(answer(7, 1, 3, 5), "Anger: 7\n"),
        revise_answer("Anger: 7\n", answer(7, 2, 3, 5)),
    ]:
        run = score_run([text], [Q])
        assert score_answer(text, REF) == pytest.approx(run.raw_score / 10, abs=1e-12)


def test_score_run_mean_over_parseable_only():
    # Three questions: exact (10), d = 1 once (9.870737), unparseable.
    # Mean over the 2 parseable = (10 + 9.870737) / 2 = 9.935369 -> ×10 = 99.35369 -> 99.35.
    qs = [Q, EqBenchQuestion("x2", "p", REF), EqBenchQuestion("x3", "p", REF)]
    res = score_run([answer(7, 0, 3, 5), answer(7, 0, 3, 6), "no idea"], qs, revise=False)
    assert res.raw_score == pytest.approx(99.35369, abs=1e-5)
    assert res.score == 99.35
    assert (res.n_parsed, res.n_total) == (2, 3)
    assert res.parse_rate == pytest.approx(2 / 3)
    assert res.valid is False  # 0.667 < 0.8333
    assert res.selected == "first_pass" and res.revised_parsed == 0
    assert [it.first_pass_score is not None for it in res.items] == [True, True, False]


def test_score_run_none_answer_counts_as_unparseable():
    res = score_run([answer(7, 0, 3, 5), None], [Q, EqBenchQuestion("x2", "p", REF)], revise=False)
    assert (res.n_parsed, res.n_total, res.score) == (1, 2, 100.0)


def test_score_run_applies_the_selection_to_aggregates():
    # Only a revised pass, scoring below 0: per question that is the score, but at run level
    # the harness compares the revised mean (< 0) with the empty first pass (0, count 0), so
    # revised >= first fails and the run reports the first pass: 0 with 0 parseable.
    # Revised d = 7, 10, 0, 0 -> 10 - 0.7477 * 17 = -2.7109
    text = revise_answer("nothing", answer(0, 10, 3, 5))
    assert score_answer(text, REF) == pytest.approx(-2.7109, abs=1e-9)
    res = score_run([text], [Q])
    assert (res.selected, res.score, res.n_parsed) == ("first_pass", 0.0, 0)
    assert (res.revised_parsed, res.revised_score) == (1, pytest.approx(-27.109, abs=1e-9))


def test_score_run_nothing_parses():
    res = score_run(["?", "?"], [Q, Q], revise=True)
    assert (res.score, res.n_parsed, res.valid) == (0.0, 0, False)


def test_validity_threshold_is_143_of_171():
    qs = [EqBenchQuestion(str(i), "p", REF) for i in range(171)]
    good, bad = answer(7, 0, 3, 5), "unparseable"
    assert score_run([good] * 143 + [bad] * 28, qs, revise=False).valid is True  # 0.8363
    assert score_run([good] * 142 + [bad] * 29, qs, revise=False).valid is False  # 0.8304


def test_choose_pass_rule():
    assert choose_pass(80.0, 20, 90.0, 19) == ("revised", 90.0, 19)  # 19 >= 0.95 * 20
    assert choose_pass(80.0, 20, 90.0, 18) == ("first_pass", 80.0, 20)  # too few revised answers
    assert choose_pass(80.0, 20, 79.99, 20) == ("first_pass", 80.0, 20)  # revised scores lower
    assert choose_pass(80.0, 20, 80.0, 20) == ("revised", 80.0, 20)  # ties go to revised
    assert choose_pass(70.0, 171, 0.0, 0) == ("first_pass", 70.0, 171)  # plain mode


def test_score_run_revised_needs_95_percent_of_first_pass_count():
    # 20 questions; revised is perfect on 18 and missing on 2, first pass is d = 1 everywhere.
    # Revised (100) beats first pass (98.71), but 18 < 0.95 * 20 = 19, so the first pass is used.
    qs = [EqBenchQuestion(str(i), "p", REF) for i in range(20)]
    texts = [revise_answer(answer(6, 0, 3, 5), answer(7, 0, 3, 5))] * 18
    texts += [revise_answer(answer(6, 0, 3, 5), "Anger: 7\n")] * 2
    res = score_run(texts, qs)
    assert (res.revised_score, res.revised_parsed, res.first_pass_parsed) == (100.0, 18, 20)
    assert res.selected == "first_pass" and res.n_parsed == 20
    assert res.score == round(10 * (10 - 0.7477 * penalty(1)), 2) == 98.71


# ----------------------------------------------------------------- parsing edge cases


def fp(text: str) -> dict:
    return parse_answer(text, revise=False)["first_pass"]


def test_parse_extra_text_and_separators():
    assert fp("Sure! Here are my scores:\nAnger: 7\nJoy: 0") == {"Anger": 7, "Joy": 0}  # 'scores:\n' + word
    assert fp("Step 1: read it.\nAnger: 7") == {"Anger": 7}
    assert fp("Anger: 7, Joy: 0, Fear: 3.") == {"Anger": 7, "Joy": 0, "Fear": 3}
    assert fp("- Anger: 7\n1. Joy: 2\n**Fear: 3**") == {"Anger": 7, "Joy": 2, "Fear": 3}
    assert fp("Feeling Anger: 7") == {"Anger": 7}  # only the word before the colon
    assert fp("Anger:\n7\nJoy:\t2") == {"Anger": 7, "Joy": 2}  # any whitespace after the colon
    assert fp("Anger: 7 - she is furious\nConfidence: 8/10") == {"Anger": 7, "Confidence": 8}


def test_parse_rejected_forms():
    assert fp("Anger:7") == {}  # no whitespace after the colon
    assert fp("Anger : 7") == {}
    assert fp("**Anger**: 7") == {}
    assert fp("Anger: **7**") == {}
    assert fp("Anger (0-10): 7") == {}
    assert fp("Anger - 7") == {}
    assert fp("Anger: -3") == {}  # the sign stops the match
    assert fp("Anger\uff1a 7") == {}  # full-width colon
    assert fp("Anger: <score>") == {}


def test_parse_numbers_and_duplicates():
    assert fp("Anger: 7.5\nJoy: 0.9") == {"Anger": 7, "Joy": 0}  # integer part only
    assert fp("Anger: 07") == {"Anger": 7}
    parsed = fp("Anger: 3\nJoy: 1\nAnger: 8")
    assert parsed == {"Anger": 8, "Joy": 1} and list(parsed) == ["Anger", "Joy"]  # last value, first slot


def test_parse_case_sensitivity():
    # Names are kept as written and compared case-sensitively with the reference.
    assert fp("anger: 7") == {"anger": 7}
    assert score_answer("anger: 7\nJoy: 0\nFear: 3\nPride: 5", REF, revise=False) is None
    assert score_answer("ANGER: 7\nJOY: 0\nFEAR: 3\nPRIDE: 5", REF, revise=False) is None
    # Section headings are case-sensitive too: 'revised scores:' is not a heading.
    text = "First pass scores:\nAnger: 7\n\nrevised scores:\nAnger: 6\n"
    assert parse_answer(text) == {"first_pass": {}, "revised": {}}


def test_parse_missing_and_extra_emotions():
    assert score_answer("Anger: 7\nJoy: 0\nFear: 3\n", REF, revise=False) is None
    assert score_answer(answer(7, 0, 3, 5) + "Sad: 2", REF, revise=False) is None
    assert score_answer("Remember: 0 is valid.\n" + answer(7, 0, 3, 5), REF, revise=False) is None
    # Four entries, but one is not a reference emotion
    assert score_answer("Anger: 7\nJoy: 0\nFear: 3\nHope: 5", REF, revise=False) is None


def test_parse_revise_sections():
    text = (
        "**First pass scores:**\nAnger: 6\n\n**Critique:** more anger.\n\n"
        "**Revised scores:**\nAnger: 9\n\nRevised scores:\nAnger: 7\n[End of answer]\nConfidence: 9"
    )
    # First pass ends at the first 'Revised scores:'; revised runs to the end (last value wins,
    # trailing pairs after [End of answer] included).
    assert parse_answer(text) == {"first_pass": {"Anger": 6}, "revised": {"Anger": 7, "Confidence": 9}}
    # No 'Revised scores:' heading: no first-pass section either.
    assert parse_answer("First pass scores:\nAnger: 6\n") == {"first_pass": {}, "revised": {}}
    # No 'First pass scores:' heading: only the revised section is read.
    assert parse_answer("Anger: 6\nRevised scores:\nAnger: 7") == {"first_pass": {}, "revised": {"Anger": 7}}


def test_huge_numbers_do_not_crash():
    # int() refuses > 4300 digits; the harness's float(str) gives inf, so the score is -inf.
    assert score_answer(answer("9" * 5000, 0, 3, 5), REF, revise=False) == -math.inf


# ----------------------------------------------------------------- prompts and runs


def test_build_messages_revise_is_verbatim():
    assert build_messages(Q) == [{"role": "user", "content": PROMPT}]


def test_build_messages_plain_edits_like_the_harness():
    # Drop the critique sentence and the first-pass heading, cut from the critique template up
    # to (not including) "[End of answer]" leaving one "\n", then append "\nYour answer:\n".
    want = (
        "\nA: Hello.\n[End dialogue]\n\nGive each of these possible emotions a score from 0-10.\n\n"
        "Anger: <score>\n\n\n[End of answer]\n\nRemember: zero is a valid score.\n\nYour answer:\n"
    )
    assert build_messages(Q, revise=False) == [{"role": "user", "content": want}]


def test_plain_prompt_needs_the_markers():
    with pytest.raises(DataError):
        build_messages(EqBenchQuestion("x", "no markers here", REF), revise=False)


def test_run_eqbench_retries_and_writes_jsonl(tmp_path):
    qs = [Q, EqBenchQuestion("x2", PROMPT.replace("Hello", "Bye"), REF)]
    calls: list[tuple[int, float]] = []

    def generate(batch, temperature):
        calls.append((len(batch), temperature))
        if len(calls) == 1:  # first attempt: q1 fine, q2 garbage
            return [answer(7, 0, 3, 5), "no scores"]
        return [answer(7, 0, 3, 6)]  # retry of q2 only: d = 1

    out = tmp_path / "eq.jsonl"
    res = run_eqbench(generate, qs, out_path=out, revise=False)
    assert calls == [(2, pytest.approx(0.01)), (1, pytest.approx(0.16))]
    assert res.n_parsed == 2
    assert res.raw_score == pytest.approx(10 * (10 + 10 - 0.7477 * penalty(1)) / 2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["x1", "x2"]
    assert rows[1]["raw_output"] == answer(7, 0, 3, 6) and rows[1]["attempts"] == 2
    assert rows[1]["parsed"]["first_pass"] == {"Anger": 7, "Joy": 0, "Fear": 3, "Pride": 6}
    assert rows[0]["score"] == 10.0 and rows[0]["attempts"] == 1


def test_run_eqbench_keeps_the_first_partial_result():
    partial = revise_answer(answer(0, 0, 0, 0), answer(7, 0, 3, 5))
    outputs = iter([[partial], ["garbage"], ["garbage"]])
    seen_batches = []

    def generate(batch, **kwargs):  # **kwargs: takes temperature, so failures are retried
        seen_batches.append(batch)
        return next(outputs)

    res = run_eqbench(generate, [Q])
    assert len(seen_batches) == 3
    assert seen_batches[0] == [build_messages(Q)]
    assert res.items[0].raw_output == partial
    assert res.items[0].revised_score == 10.0 and res.n_parsed == 1


def test_run_eqbench_greedy_engine_is_asked_once():
    seen = []

    def chat(conversations, max_new_tokens=None):  # the shape of Generator.chat: no temperature
        seen.append((len(conversations), max_new_tokens))
        return ["no scores"] * len(conversations)

    res = run_eqbench(chat, [Q], revise=False)
    assert seen == [(1, E.MAX_NEW_TOKENS["plain"])]
    assert res.n_parsed == 0 and res.items[0].raw_output == "no scores"
    run_eqbench(chat, [Q], revise=True)
    assert seen[-1] == (1, E.MAX_NEW_TOKENS["revise"])


def test_run_eqbench_checks_output_count():
    with pytest.raises(ValueError):
        run_eqbench(lambda batch: [], [Q])


# ----------------------------------------------------------------- loading


def test_load_questions_malformed_file(tmp_path):
    bad = tmp_path / "questions.json"
    bad.write_text("{not json")
    with pytest.raises(DataError) as e:
        load_questions(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)

    bad.write_text(json.dumps({"1": {"prompt": "p", "reference_answer_fullscale": {"emotion1": "A"}}}))
    with pytest.raises(DataError) as e:
        load_questions(bad)
    assert str(bad) in str(e.value) and "emotion1_score" in str(e.value)

    bad.write_text("[]")
    with pytest.raises(DataError, match="questions.json"):
        load_questions(bad)


def test_load_questions_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.json"):
        load_questions(tmp_path / "nope.json")


def test_load_questions_hub_id_goes_to_datasets(monkeypatch):
    seen = []
    monkeypatch.setattr(E, "_load_from_hub", lambda hub_id: seen.append(hub_id) or [])
    load_questions()
    load_questions("someone/EQ-Bench")
    assert seen == [E.HUB_DATASET, "someone/EQ-Bench"]


@needs_shared
@pytest.mark.shared_data
def test_load_questions_real_file():
    qs = load_questions(QUESTIONS_FILE)
    assert len(qs) == E.N_QUESTIONS == 171
    assert [q.id for q in qs] == [str(i) for i in range(1, 172)]
    assert all(len(q.reference) == 4 and all(isinstance(v, float) for v in q.reference.values()) for q in qs)
    assert all(0 <= v <= 10 for q in qs for v in q.reference.values())
    # question 1's reference mixes an int 0 and a string "6" in the file
    assert qs[0].reference == {"Remorseful": 0.0, "Indifferent": 6.0, "Affectionate": 0.0, "Annoyed": 7.0}
    assert all(build_messages(q)[0]["content"] == q.prompt for q in qs)
    assert all(build_messages(q, revise=False)[0]["content"].endswith("\nYour answer:\n") for q in qs)


# ----------------------------------------------------------------- validation set


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def questions() -> dict[str, EqBenchQuestion]:
    return {q.id: q for q in load_questions(QUESTIONS_FILE)}


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return _read_jsonl(VALIDATION / "eqbench_cases.jsonl")


TOL = 1e-9  # the expected scores are the harness formula's floats; only summation order may differ


def _same(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return abs(got - want) <= TOL


@needs_shared
@pytest.mark.shared_data
def test_cases_match_the_question_file(cases, questions):
    assert len(cases) == 766
    for c in cases:
        q = questions[c["question_id"]]
        assert c["prompt"] == q.prompt, c["case_id"]
        assert list(q.reference) == list(c["reference"]), c["case_id"]
        assert q.reference == {k: float(v) for k, v in c["reference"].items()}, c["case_id"]


@needs_shared
@pytest.mark.shared_data
def test_cases_parsing(cases):
    wrong = []
    for c in cases:
        plain = parse_answer(c["response"], revise=False)
        rev = parse_answer(c["response"], revise=True)
        if plain["first_pass"] != c["parsed"] or plain["revised"] != {}:
            wrong.append((c["case_id"], "plain", plain))
        if rev["first_pass"] != c["revise"]["parsed_first_pass"] or rev["revised"] != c["revise"]["parsed_revised"]:
            wrong.append((c["case_id"], "revise", rev))
    assert not wrong, f"{len(wrong)} of {len(cases)} cases parse differently: {wrong[:3]}"


@needs_shared
@pytest.mark.shared_data
@pytest.mark.parametrize("d5_linear", [False, True], ids=["code_rule", "d5_linear"])
def test_cases_scores(cases, questions, d5_linear):
    wrong = []
    for c in cases:
        ref = questions[c["question_id"]].reference
        if d5_linear:
            want_plain = c["d5_linear"]["expected_score"]
            want_fp, want_rv = c["d5_linear"]["revise_first_pass_score"], c["d5_linear"]["revise_revised_score"]
        else:
            want_plain = c["expected_score"]
            want_fp, want_rv = c["revise"]["first_pass_score"], c["revise"]["revised_score"]
        got_plain = score_answer(c["response"], ref, revise=False, d5_linear=d5_linear)
        got_fp, got_rv = score_passes(c["response"], ref, revise=True, d5_linear=d5_linear)
        if not (_same(got_plain, want_plain) and _same(got_fp, want_fp) and _same(got_rv, want_rv)):
            wrong.append((c["case_id"], (got_plain, got_fp, got_rv), (want_plain, want_fp, want_rv)))
        if (got_plain is not None) != c["parseable"]:
            wrong.append((c["case_id"], "parseable", got_plain))
        # score_answer in revise mode applies the benchmark's selection to this one question
        if want_fp is None and want_rv is None:
            want_sel = None
        elif want_rv is not None and (want_fp is None or want_rv >= want_fp):
            want_sel = want_rv
        else:
            want_sel = want_fp
        if not _same(score_answer(c["response"], ref, revise=True, d5_linear=d5_linear), want_sel):
            wrong.append((c["case_id"], "selected", want_sel))
    assert not wrong, f"{len(wrong)} mismatches in {len(cases)} cases: {wrong[:3]}"


@needs_shared
@pytest.mark.shared_data
def test_cases_unchecked_formula(cases, questions):
    # The bare v2 formula (no sum > 0 check), e.g. for all-zero answers.
    wrong = []
    for c in cases:
        ref = questions[c["question_id"]].reference
        plain = parse_answer(c["response"], revise=False)["first_pass"]
        rev = parse_answer(c["response"], revise=True)
        pairs = [
            (E.v2_score(plain, ref), c["unchecked_fullscale_score"]),
            (E.v2_score(rev["first_pass"], ref), c["revise"]["unchecked_first_pass_score"]),
            (E.v2_score(rev["revised"], ref), c["revise"]["unchecked_revised_score"]),
        ]
        if not all(_same(got, want) for got, want in pairs):
            wrong.append((c["case_id"], pairs))
    assert not wrong, f"{len(wrong)} mismatches: {wrong[:3]}"


@needs_shared
@pytest.mark.shared_data
def test_prompt_cases(questions):
    rows = _read_jsonl(VALIDATION / "eqbench_prompt_cases.jsonl")
    assert len(rows) == 5
    for r in rows:
        q = questions[str(r["question_id"])]
        assert build_messages(q, revise=True) == [{"role": "user", "content": r["prompt_revise"]}]
        assert build_messages(q, revise=False) == [{"role": "user", "content": r["prompt_plain"]}]


def _runs() -> list[dict]:
    return json.loads((VALIDATION / "eqbench_runs.json").read_text(encoding="utf-8"))


def _published() -> dict[str, float]:
    with (SHARED / "published_v2_scores.csv").open(encoding="utf-8", newline="") as f:
        return {row["source_file"]: float(row["eqbench_v2_score"]) for row in csv.DictReader(f)}


@needs_shared
@pytest.mark.shared_data
def test_whole_published_runs_reproduced(cases, questions):
    """Runs whose every stored answer is in the cases file, re-scored from the raw answers.

    Questions without a stored answer are ones the harness gave up on: they are passed as None.
    """
    published = _published()
    order = [questions[str(i)] for i in range(1, 172)]
    full = [r for r in _runs() if r["responses_in_cases"] == r["n_questions"] and r["responses_in_cases"] > 0]
    assert {r["model"] for r in full} == {"gpt-4-0613", "gpt-4-0125-preview", "01-ai/Yi-6B-Chat", "vince62s/phi-2-psy"}
    for run in full:
        by_id = {c["question_id"]: c["response"] for c in cases if c["model"] == run["model"]}
        answers = [by_id.get(q.id) for q in order]
        revise = run["run_mode"] == "revise"
        res = score_run(answers, order, revise=revise)
        assert res.raw_score == pytest.approx(run["expected_benchmark_score_unrounded"], abs=TOL), run["model"]
        assert res.score == run["expected_benchmark_score"], run["model"]
        assert res.selected == run["selected"], run["model"]
        assert res.first_pass_score == pytest.approx(run["first_pass"]["score"], abs=TOL)
        assert res.first_pass_parsed == run["first_pass"]["parseable"]
        assert res.revised_score == pytest.approx(run["revised"]["score"], abs=TOL)
        assert res.revised_parsed == run["revised"]["parseable"]
        assert (res.n_parsed, res.n_total) == (run["n_parseable"], run["n_questions_total"])
        assert res.parse_rate == pytest.approx(run["parse_rate"])
        assert res.valid is run["run_valid"]
        # The published number (from the CSV) is reproduced exactly with d = 5 treated as
        # linear, and within 0.022 with the code's rule.
        res5 = score_run(answers, order, revise=revise, d5_linear=True)
        assert res5.score == published[run["source_file"]], run["model"]
        assert res5.score == run["d5_linear"]["expected_benchmark_score"]
        assert abs(res.raw_score - published[run["source_file"]]) <= 0.022


@needs_shared
@pytest.mark.shared_data
def test_pass_selection_on_all_86_runs():
    """For every published run, the stored per-pass aggregates through `choose_pass` give the
    recorded selection, score, parseable count and validity (under both d = 5 rules)."""
    runs = _runs()
    assert len(runs) == 86
    for run in runs:
        fp, rv = run["first_pass"], run["revised"]
        selected, score, n = choose_pass(fp["score"], fp["parseable"], rv["score"], rv["parseable"])
        assert (selected, round(score, 2), n) == (run["selected"], run["expected_benchmark_score"], run["n_parseable"])
        assert (n / E.N_QUESTIONS >= E.MIN_PARSE_RATE) is run["run_valid"], run["model"]
        d5 = run["d5_linear"]
        selected5, score5, _ = choose_pass(
            d5["first_pass_score"], fp["parseable"], d5["revised_score"], rv["parseable"]
        )
        assert (selected5, round(score5, 2)) == (d5["selected"], d5["expected_benchmark_score"]), run["model"]
