"""GSM8K strict/flexible exactly as lm-evaluation-harness's gsm8k task v3 defines them.

The expected values below were worked out by hand from lm-eval's own code, not from ours:
lm_eval/tasks/gsm8k/gsm8k.yaml (filter_list: strict-match = regex `#### (\\-?[0-9\\.\\,]+)` + take_first;
flexible-extract = regex `(-?[$0-9.,]{2,})|(-?[0-9]+)` with group_select -1 + take_first; metric_list:
exact_match, ignore_case, regexes_to_ignore `,` `\\$` `(?s).*#### ` `\\.$`, applied to prediction and
reference), lm_eval/filters/extraction.py RegexFilter (findall, match[group_select], first non-empty group
of a tuple, strip, fallback "[invalid]"), and lm_eval/api/metrics.py exact_match_hf_evaluate.
When lm-eval is installed (the `bench` extra) the same cases also go through its real filter and metric.
"""

from __future__ import annotations

import re

import pytest

from tunesmith.evaluation.gsm8k import INVALID, extract_answer, is_correct, reference

G18 = "She pays 3 * 6 = <<3*6=18>>18 dollars.\n#### 18"

# text, gold answer field, strict (pred, correct), flexible (pred, correct)
CASES = [
    # `$` is outside strict-match's class: no match at all → fallback; flexible's class has `$`, cleanup drops it
    ("#### $18", G18, (INVALID, False), ("18", True)),
    # strict-match needs exactly one space after ####
    ("####72", "#### 72", (INVALID, False), ("72", True)),
    ("####  18", G18, (INVALID, False), ("18", True)),
    # `,` is removed, `.` kept: a European decimal is a different string
    ("#### 1.234,56", "#### 1234", ("1.23456", False), ("1.23456", False)),
    # a match of dots only; `\.$` removes one trailing dot
    ("#### ...", G18, ("..", False), ("..", False)),
    ("The answer is 18...", G18, (INVALID, False), ("18..", False)),
    ("So she pays 18.\n#### 18", G18, ("18", True), ("18", True)),
    ("#### 18.", G18, ("18", True), ("18", True)),
    # exact string match, not numeric: 18.00 is wrong
    ("#### 18.00", G18, ("18.00", False), ("18.00", False)),
    ("#### -5", "#### -5", ("-5", True), ("-5", True)),
    # `-$5`: strict's `\-?` cannot skip the `$`; flexible takes `-$5` → `-5`
    ("#### -$5", "#### -5", (INVALID, False), ("-5", True)),
    ("#### 1,000", "#### 1,000", ("1000", True), ("1000", True)),
    ("#### $1,000.", "#### 1000", (INVALID, False), ("1000", True)),
    # strict takes the first match, flexible the last
    ("first #### 42. then #### 43", "#### 43", ("42", False), ("43", True)),
    ("#### 18\n#### 19", "#### 19", ("18", False), ("19", True)),
    ("#### 5 apples and 6.5 pears", "#### 5", ("5", True), ("6.5", False)),
    # single digits only through flexible's second group; `7,` is a first-group match
    ("She has 5 apples and 3 pears, so 8", "#### 8", (INVALID, False), ("8", True)),
    ("so 7, .", "#### 7", (INVALID, False), ("7", True)),
    ("The temperature fell to -3", "#### -3", (INVALID, False), ("-3", True)),
    ("answer: 18 dollars, i.e. 18$", G18, (INVALID, False), ("18", True)),
    ("half is .5", "#### 0.5", (INVALID, False), (".5", False)),
    ("one thousand is 1 000", "#### 1000", (INVALID, False), ("000", False)),
    ("no numbers here", G18, (INVALID, False), (INVALID, False)),
    ("", G18, (INVALID, False), (INVALID, False)),
    # a reasoning model's thoughts are dropped first (lm-eval: think_end_token="</think>")
    ("<think>maybe #### 17, or 19</think>\n#### 18", G18, ("18", True), ("18", True)),
    ("<think>\n\n</think>\n\nShe pays 18 dollars", G18, (INVALID, False), ("18", True)),
    # unfinished thoughts: nothing to drop
    ("<think>so #### 17 and then", G18, ("17", False), ("17", False)),
]


@pytest.mark.parametrize("text, gold, strict, flexible", CASES)
def test_matches_lm_eval_gsm8k_v3(text, gold, strict, flexible):
    for mode, (pred, ok) in (("strict", strict), ("flexible", flexible)):
        got = extract_answer(text, mode)
        assert got == pred, mode
        assert is_correct(got, gold, mode) is ok, mode


def test_reference_is_the_cleaned_answer_field():
    assert reference(G18) == "18"
    assert reference("a #### b\n#### 1,250") == "1250"  # `(?s).*#### ` is greedy: the last ####
    assert reference("#### 7.") == "7"
    # the number alone is accepted as gold too
    assert is_correct("18", "18") and not is_correct("18", "19")


def _lm_eval():
    pytest.importorskip("lm_eval", reason="lm-eval is a benchmarks-only dependency (pip install -e '.[bench]')")
    from importlib import resources

    import yaml
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.models.utils import postprocess_generated_text

    task = yaml.safe_load((resources.files("lm_eval") / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    return task, RegexFilter, exact_match_hf_evaluate, postprocess_generated_text


def test_task_yaml_is_the_one_we_implement():
    from tunesmith.evaluation import gsm8k as ours

    task, *_ = _lm_eval()
    assert task["metadata"]["version"] == 3.0
    filters = {f["name"]: f["filter"] for f in task["filter_list"]}
    assert filters["strict-match"][0]["regex_pattern"] == ours.STRICT_MATCH.pattern
    assert filters["strict-match"][0].get("group_select", 0) == 0
    assert filters["flexible-extract"][0]["regex_pattern"] == ours.FLEXIBLE_EXTRACT.pattern
    assert filters["flexible-extract"][0]["group_select"] == -1
    assert all(f[1]["function"] == "take_first" for f in filters.values())
    (metric,) = task["metric_list"]
    assert metric["metric"] == "exact_match" and metric["ignore_case"] is True and metric["ignore_punctuation"] is False
    assert tuple(metric["regexes_to_ignore"]) == ours.REGEXES_TO_IGNORE


@pytest.mark.parametrize("text, gold, strict, flexible", CASES)
def test_cases_through_lm_eval_itself(text, gold, strict, flexible):
    task, RegexFilter, exact_match, postprocess = _lm_eval()
    (metric,) = task["metric_list"]
    resp = postprocess(text, None, "</think>")
    for f in task["filter_list"]:
        regex = f["filter"][0]
        ((pred,),) = RegexFilter(regex["regex_pattern"], regex.get("group_select", 0)).apply([[resp]], [None])
        score = exact_match(
            predictions=[pred],
            references=[gold],
            regexes_to_ignore=metric["regexes_to_ignore"],
            ignore_case=metric["ignore_case"],
            ignore_punctuation=metric["ignore_punctuation"],
        )
        expected = strict if f["name"] == "strict-match" else flexible
        assert bool(score["exact_match"]) is expected[1], f["name"]
        mode = "strict" if f["name"] == "strict-match" else "flexible"
        # our extracted string is lm-eval's filtered prediction after the metric's own normalisation
        cleaned = pred
        for p in metric["regexes_to_ignore"]:
            cleaned = re.sub(p, "", cleaned)
        assert extract_answer(text, mode) == (INVALID if pred == INVALID else cleaned.lower()), f["name"]


def test_lenient_scores_against_the_full_answer_field():
    # the recipe passes GSM8K's whole `answer` (solution + "#### N"), as it does for strict and flexible
    field = "John has $300.\nHe needs $100 more.\n#### 100"
    assert is_correct(extract_answer("so $100.\n#### $100", "lenient"), field, "lenient")
    assert is_correct(extract_answer("#### 100.0", "lenient"), field, "lenient")
    assert not is_correct(extract_answer("#### 99", "lenient"), field, "lenient")
    assert is_correct(extract_answer("#### 100", "strict"), field, "strict")
