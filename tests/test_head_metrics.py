"""evaluation.heads.head_metrics against hand-computed numbers, and its confusion-matrix PNG."""

from __future__ import annotations

import struct

import pytest

from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES
from tunesmith.evaluation.head_metrics import head_metrics

LABELS = ["a", "b", "c"]
# gold:       a a a b b c
# predicted:  a a b b c c
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_hand_computed_example():
    m = head_metrics(Y_TRUE, Y_PRED, LABELS)
    # per class (precision, recall -> F1):
    #   a: tp 2, fp 0, fn 1 -> P 1,   R 2/3 -> F1 0.8      support 3
    #   b: tp 1, fp 1, fn 1 -> P 1/2, R 1/2 -> F1 0.5      support 2
    #   c: tp 1, fp 1, fn 0 -> P 1/2, R 1   -> F1 2/3      support 1
    f1 = {"a": 0.8, "b": 0.5, "c": 2 / 3}
    weighted = (3 * f1["a"] + 2 * f1["b"] + 1 * f1["c"]) / 6
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["weighted_f1"] == pytest.approx(weighted)
    assert m["weighted_f1"] == pytest.approx(0.677777, abs=1e-6)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["majority_accuracy"] == pytest.approx(3 / 6)
    assert m["majority_label"] == "a"
    assert m["support"] == {"a": 3, "b": 2, "c": 1}
    assert m["confusion_png"] is None


def test_label_names_give_the_same_result_as_ids():
    by_id = head_metrics(Y_TRUE, Y_PRED, LABELS)
    by_name = head_metrics([LABELS[i] for i in Y_TRUE], [LABELS[i] for i in Y_PRED], LABELS)
    assert by_id == by_name


def test_classes_absent_from_gold_weigh_nothing():
    # "d" is predicted once but never gold: its F1 is 0 yet its weight (support) is 0 too
    labels = ["a", "b", "c", "d"]
    m = head_metrics([0, 0, 1, 1], [0, 3, 1, 1], labels)
    # a: tp 1, fn 1, fp 0 -> F1 2/3 ; b: tp 2 -> F1 1
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 1.0) / 4)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)  # over gold classes only
    assert m["support"]["d"] == 0 and m["accuracy"] == pytest.approx(0.75)


def test_majority_tie_takes_the_first_label_and_all_wrong_scores_zero():
    m = head_metrics([1, 1, 0, 0], [2, 2, 2, 2], LABELS)
    assert m["majority_label"] == "a" and m["majority_accuracy"] == 0.5
    assert m["accuracy"] == 0.0 and m["weighted_f1"] == 0.0


def test_no_examples_gives_none_rates_and_no_png(tmp_path):
    m = head_metrics([], [], LABELS, png_path=tmp_path / "cm.png")
    assert m["n"] == 0 and m["accuracy"] is None and m["weighted_f1"] is None and m["confusion_png"] is None
    assert not (tmp_path / "cm.png").exists()


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([0, 1], [0], "2 gold labels but 1 predictions"),
        ([0, 3], [0, 1], r"y_true\[1\] = 3 is outside 0..2"),
        (["a", "zz"], ["a", "a"], r"y_true\[1\] = 'zz' is not one of the 3 labels"),
        ([0, 1], [0, -1], r"y_pred\[1\] = -1"),
    ],
)
def test_bad_input_is_named(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        head_metrics(y_true, y_pred, LABELS)


def test_confusion_png_for_28_emotions(tmp_path):
    import random

    rng = random.Random(0)
    y_true = [rng.randrange(len(EMOTIONS)) for _ in range(300)]
    y_pred = [y if rng.random() < 0.5 else rng.randrange(len(EMOTIONS)) for y in y_true]
    png = tmp_path / "plots" / "confusion_emotion.png"  # parent does not exist yet
    m = head_metrics(y_true, y_pred, EMOTIONS, png_path=png, title="emotion head")
    assert m["confusion_png"] == str(png)
    w, h = png_size(png)
    # big enough that 28 tick labels at fontsize 8 do not overlap (~0.32 in per class at 110 dpi)
    assert w >= 28 * 30 and h >= 28 * 30
    assert png.stat().st_size > 20_000
    assert not list(png.parent.glob(".*.tmp"))  # written atomically, no temp file left


def test_confusion_png_for_8_strategies_with_a_missing_class(tmp_path):
    # strategy 7 never occurs in gold: its row stays empty instead of dividing by zero
    y_true = [i % 7 for i in range(40)]
    y_pred = [(i + (i % 3 == 0)) % 8 for i in range(40)]
    png = tmp_path / "cm8.png"
    m = head_metrics(y_true, y_pred, STRATEGIES, png_path=png)
    assert m["support"]["Others"] == 0
    assert png.stat().st_size > 5_000
    assert png_size(png)[0] > 300
