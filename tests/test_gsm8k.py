"""GSM8K data and scoring: few-shot pool determinism and removal from training, answer extraction
(strict / flexible), scoring, and file:line errors for bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared

from tunesmith.config import parse_config
from tunesmith.data.mixing import subset
from tunesmith.data.sources import gsm8k as data
from tunesmith.errors import DataError
from tunesmith.evaluation.gsm8k import INVALID, extract_answer, is_correct
from tunesmith.io import read_jsonl


def records(n: int, offset: int = 0) -> list[dict]:
    return [
        {"question": f"Q{i}: what is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
        for i in range(offset, offset + n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- few-shot pool -----------------------------------------------------------------------------


def test_pool_is_deterministic_for_a_seed():
    train = records(50)
    a, rest_a = data.fewshot_pool(train, 8, seed=42)
    b, rest_b = data.fewshot_pool(train, 8, seed=42)
    assert a == b and rest_a == rest_b
    assert len(a) == 8
    c, _ = data.fewshot_pool(train, 8, seed=7)
    assert [r["question"] for r in c] != [r["question"] for r in a]


def test_pool_is_removed_from_training_including_duplicates():
    base = records(30)
    # every question appears twice, the copy with different surrounding whitespace
    dupes = [{"question": "  " + r["question"] + "\n", "answer": r["answer"]} for r in base]
    train = base + dupes
    pool, rest = data.fewshot_pool(train, 6, seed=3)
    pool_q = {r["question"].strip() for r in pool}
    assert pool_q
    rest_q = [r["question"].strip() for r in rest]
    assert not pool_q & set(rest_q)
    # exactly the pool questions (both copies) were dropped, nothing else
    assert len(rest) == len(train) - 2 * len(pool_q)
    assert set(rest_q) == {r["question"] for r in base} - pool_q


def test_pool_larger_than_train_is_an_error():
    with pytest.raises(DataError, match="few-shot pool of 5"):
        data.fewshot_pool(records(3), 5)


def test_fewshot_turns_alternate_user_and_clean_assistant():
    pool = records(3)
    turns = data.fewshot_turns(pool, 2)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0]["content"] == pool[0]["question"]
    assert "<<" not in turns[1]["content"] and turns[1]["content"].endswith("#### 1")
    assert data.fewshot_turns(pool, 0) == []


def test_load_data_saves_the_pool_and_keeps_it_out_of_training(tmp_path):
    train = records(40)
    train.append(dict(train[5]))  # an exact duplicate somewhere else in the file
    train.append(dict(train[17]))
    train_p = write_jsonl(tmp_path / "train.jsonl", train)
    test_p = write_jsonl(tmp_path / "test.jsonl", records(10, offset=100))
    from tunesmith.recipes.gsm8k import load_data

    for seed in (0, 1, 2, 3, 4, 5):
        cfg = parse_config(
            {
                "data": {
                    "gsm8k": {"train": str(train_p), "test": str(test_p), "fewshot_pool_size": 4, "fewshot_seed": seed}
                },
                "eval": {"k_shot": 2},
            }
        )
        run_dir = tmp_path / f"run{seed}"
        _, tr, te, pool, _ = load_data(cfg, run_dir)
        saved = read_jsonl(run_dir / "data" / "fewshot_pool.jsonl")
        assert saved == pool and len(pool) == 4
        pool_q = {r["question"] for r in pool}
        assert not pool_q & {r["question"] for r in tr}
        assert len(te) == 10
    # the same seed gives the same saved pool, another seed another one
    cfg = parse_config(
        {
            "data": {"gsm8k": {"train": str(train_p), "test": str(test_p), "fewshot_pool_size": 4, "fewshot_seed": 0}},
            "eval": {"k_shot": 2},
        }
    )
    load_data(cfg, tmp_path / "again")
    again = (tmp_path / "again/data/fewshot_pool.jsonl").read_bytes()
    assert again == (tmp_path / "run0/data/fewshot_pool.jsonl").read_bytes()
    assert again != (tmp_path / "run1/data/fewshot_pool.jsonl").read_bytes()


def test_subset_is_deterministic_and_ordered():
    rows = records(20)
    a = subset(rows, 5, seed=1)
    assert a == subset(rows, 5, seed=1)
    assert len(a) == 5
    assert [rows.index(r) for r in a] == sorted(rows.index(r) for r in a)
    assert subset(rows, None, 0) == rows
    assert subset(rows, 100, 0) == rows


# ---- loading errors ----------------------------------------------------------------------------


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "train.jsonl"
    good = json.dumps(records(1)[0])
    p.write_text(f"{good}\n\n{good}\n{{not json\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        data.load_records(str(p))
    assert f"{p}:4" in str(e.value)


def test_missing_field_names_file_and_line(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text(json.dumps(records(1)[0]) + "\n" + json.dumps({"question": "q"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        data.load_records(str(p))
    assert f"{p}:2" in str(e.value) and "answer" in str(e.value)


def test_answer_without_hashes_is_an_error(tmp_path):
    with pytest.raises(DataError, match="####"):
        data.gold_answer("the answer is 5")
    with pytest.raises(DataError, match="####"):
        data.to_example({"question": "q", "answer": "5"})
    # and already when the file is loaded, before any run starts
    p = write_jsonl(tmp_path / "test.jsonl", [*records(2), {"question": "q", "answer": "just 5"}])
    with pytest.raises(DataError) as e:
        data.load_records(str(p))
    assert str(p) in str(e.value) and "####" in str(e.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.load_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="not found"):
        data.load_records("not-a-hub-id-or-file")


def test_gold_answer_and_example():
    assert data.gold_answer("a\n#### 1,250") == "1250"
    assert data.gold_answer("#### 3 #### 4") == "4"
    ex = data.to_example({"question": "What?", "answer": "2*3=<<2*3=6>>6\n#### 6"})
    assert ex.messages[1]["content"] == "2*3=6\n#### 6"
    assert ex.meta["gold"] == "6"


# ---- answer extraction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the total is 18.\n#### 18", "18"),
        ("#### 1,000", "1000"),
        ("#### $1,000.", INVALID),  # lm-eval strict-match: no `$`, exactly one space after ####
        ("#### $ 70", INVALID),
        ("####42", INVALID),
        ("#### -5", "-5"),
        ("#### -$5", INVALID),
        ("#### 3.50", "3.50"),
        ("#### .5", ".5"),
        ("#### 1,234,567 apples", "1234567"),
        ("first #### 42. then #### 43", "42"),  # the first match
        ("#### 18 dollars #### 20", "18"),
        ("The answer is 72.", INVALID),  # no #### line
        ("####", INVALID),
        ("#### abc", INVALID),
        ("", INVALID),
    ],
)
def test_extract_strict(text, expected):
    assert extract_answer(text, "strict") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the total is 18.\n#### 18", "18"),
        ("#### 1,000", "1000"),
        ("#### $1,000.", "1000"),
        ("#### $ 70", "70"),
        ("####42", "42"),
        ("#### -5", "-5"),
        ("#### -$5", "-5"),
        ("#### 3.50", "3.50"),
        ("#### .5", ".5"),
        ("#### 1,234,567 apples", "1234567"),
        ("first #### 42. then #### 43", "42"),  # the first match
        ("#### 18 dollars #### 20", "18"),
        ("The answer is 72.", INVALID),  # no #### line
        ("####", INVALID),
        ("#### abc", INVALID),
        ("", INVALID),
    ],
)
def test_extract_lenient(text, expected):
    # tunesmith's own parser keeps the formats lm-eval's strict-match rejects
    assert extract_answer(text, "lenient") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 72.", "72"),
        ("It costs $1,234.56 total.", "1234.56"),
        ("3 apples and 4 pears make 7 fruit", "7"),  # the last number
        ("first #### 42. then #### 43", "43"),
        ("She has -3 left", "-3"),
        ("The answer is -$3.", "-3"),
        ("x 5 y 6.", "6"),
        ("#### $1,000.", "1000"),
        ("in total 1,000,", "1000"),
        ("half is .5", ".5"),
        ("no numbers here", INVALID),
        ("", INVALID),
    ],
)
def test_extract_flexible(text, expected):
    assert extract_answer(text, "flexible") == expected


def test_extract_rejects_unknown_mode():
    with pytest.raises(ValueError):
        extract_answer("#### 1", "loose")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("18", "18", True),
        ("18.0", "18", False),  # lm-eval's exact match compares strings
        ("3.50", "3.5", False),
        ("-5", "-5", True),
        ("1000", "1000", True),
        ("17", "18", False),
        ("-18", "18", False),
        (INVALID, "18", False),
        (INVALID, INVALID, False),
    ],
)
def test_is_correct(pred, gold, ok):
    assert is_correct(pred, gold) is ok
    assert is_correct(pred, gold, "flexible") is ok


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("3.50", "3.5", True),
        ("17", "18", False),
        (INVALID, "18", False),
    ],
)
def test_is_correct_lenient_is_numeric(pred, gold, ok):
    assert is_correct(pred, gold, "lenient") is ok


def test_extract_then_score_against_gold():
    gold = data.gold_answer("...\n#### 1,000")
    assert is_correct(extract_answer("so $1,000.\n#### 1,000.", "strict"), gold)
    # `#### $1,000.` is invalid for lm-eval's strict-match, credited by the lenient parser
    assert not is_correct(extract_answer("so $1,000.\n#### $1,000.", "strict"), gold)
    assert is_correct(extract_answer("so $1,000.\n#### $1,000.", "lenient"), gold, "lenient")
    assert is_correct(extract_answer("The total is 1,000 dollars.", "flexible"), gold)
    assert not is_correct(extract_answer("The total is 1,000 dollars.", "strict"), gold)


@pytest.mark.shared_data
def test_real_gsm8k_files_load_and_pool_is_removed():
    train = data.load_records(str(shared("gsm8k", "train.jsonl")))
    test = data.load_records(str(shared("gsm8k", "test.jsonl")))
    assert len(train) > 7000 and len(test) > 1000
    pool, rest = data.fewshot_pool(train, 8, 42)
    assert len(pool) == 8
    assert not {r["question"].strip() for r in pool} & {r["question"].strip() for r in rest}
    # every test gold answer is a number
    assert all(is_correct(data.gold_answer(r["answer"]), data.gold_answer(r["answer"])) for r in test)
