"""reporting.plots: training curves, ablation bars, safety by hazard (PNG files, Agg only)."""

from __future__ import annotations

import math
import struct
import sys

import pytest

from tunesmith.reporting import plots


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def synthetic_history(steps: int = 60) -> list[dict]:
    """Every component present; emotion null every 3rd step, kl on even steps only,
    one NaN (a diverged step) that must be skipped like a null."""
    rows = []
    for s in range(1, steps + 1):
        lm = 2.0 / (1 + s / 10) + 0.05 * math.sin(s)
        emotion = None if s % 3 == 0 else 3.0 / (1 + s / 15)
        strategy = 2.0 / (1 + s / 20)
        kl = 0.05 + 0.01 * math.cos(s) if s % 2 == 0 else None
        loss = lm + 0.2 * (emotion or 0) + 0.2 * strategy + 0.1 * (kl or 0)
        rows.append(
            {
                "step": s,
                "epoch": s // 30,
                "loss": loss,
                "lm": lm,
                "emotion": emotion,
                "strategy": strategy,
                "kl": kl,
                "lr": 3e-4,
                "grad_norm": 1.0,
                "tokens": 1000 * s,
                "step_seconds": 0.5,
            }
        )
    rows[10]["strategy"] = float("nan")
    return rows


def test_training_series_skips_nulls_and_keeps_every_component():
    series = plots.training_series(synthetic_history())
    assert list(series) == ["loss", "lm", "emotion", "strategy", "kl"]
    steps, values = series["emotion"]
    assert len(steps) == 40 and 3.0 not in steps and all(v is not None for v in values)
    assert series["kl"][0] == [float(s) for s in range(2, 61, 2)]
    assert len(series["strategy"][0]) == 59  # the NaN step is dropped


def test_training_series_drops_components_that_are_all_null_and_lm_equal_to_loss():
    hist = [
        {"step": s, "loss": 1.0 / s, "lm": 1.0 / s, "emotion": None, "strategy": None, "kl": None} for s in range(1, 6)
    ]
    assert list(plots.training_series(hist)) == ["loss"]
    assert plots.training_series([]) == {}


def test_ema_is_bias_corrected():
    assert plots.ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])
    sm = plots.ema([1.0, 0.0], 0.5)
    assert sm[0] == pytest.approx(1.0) and sm[1] == pytest.approx(1 / 3)
    assert plots.ema([1.0, 2.0], 0.0) == [1.0, 2.0]


def test_training_curves_png(tmp_path):
    png = plots.plot_training_curves(synthetic_history(), tmp_path / "plots" / "curves.png")
    assert png == tmp_path / "plots" / "curves.png"
    w, h = png_size(png)
    # five panels in a 2-column grid: three rows
    assert w > 1000 and h > 800
    assert png.stat().st_size > 30_000


def test_training_curves_single_step_and_nothing_to_draw(tmp_path):
    one = plots.plot_training_curves([{"step": 1, "loss": 1.2}], tmp_path / "one.png")
    assert one is not None and png_size(one)[0] > 300
    assert plots.plot_training_curves([{"step": 1, "loss": None}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


ABLATIONS = [
    {
        "variant": "full",
        "val_loss": 1.81,
        "emotion_accuracy": 0.42,
        "emotion_f1": 0.38,
        "strategy_accuracy": 0.31,
        "strategy_f1": 0.27,
        "eqbench_score": 41.2,
        "safety_rate": 0.93,
    },
    {
        "variant": "no heads",
        "val_loss": 1.9,
        "emotion_accuracy": None,
        "emotion_f1": None,
        "strategy_accuracy": None,
        "strategy_f1": None,
        "eqbench_score": 38.0,
        "safety_rate": 0.9,
    },
    {
        "variant": "no safety KL",
        "val_loss": 1.7,
        "emotion_accuracy": 0.44,
        "emotion_f1": 0.4,
        "strategy_accuracy": 0.3,
        "strategy_f1": 0.26,
        "eqbench_score": 42.5,
        "safety_rate": 0.81,
    },
]


def test_ablation_metrics_leave_out_the_loss_weights():
    rows = [dict(r, lambda_emotion=0.2, lambda_lm=1.0) for r in ABLATIONS]
    assert plots.ablation_metrics(rows) == [
        "val_loss",
        "emotion_accuracy",
        "emotion_f1",
        "strategy_accuracy",
        "strategy_f1",
        "eqbench_score",
        "safety_rate",
    ]
    assert plots.ablation_metrics([{"variant": "v", "zeta": 1, "val_lm_loss": 2.0, "note": "x"}]) == [
        "val_lm_loss",
        "zeta",
    ]


def test_ablation_bars(tmp_path):
    png = plots.plot_ablations(ABLATIONS, tmp_path / "ablations.png")
    w, h = png_size(png)
    assert w > 800 and h > 300
    assert plots.plot_ablations([], tmp_path / "empty.png") is None
    assert plots.plot_ablations([{"variant": "x", "val_loss": None}], tmp_path / "nan.png") is None
    # one variant, one metric still draws
    assert plots.plot_ablations([{"variant": "only", "eqbench_score": 40}], tmp_path / "one.png") is not None


def _summary(rates: dict[str, float]) -> dict:
    by = {h: {"total": 4, "safe": round(4 * r), "safety_rate": round(4 * r) / 4} for h, r in rates.items()}
    safe = sum(v["safe"] for v in by.values())
    return {
        "total": 4 * len(by),
        "safe": safe,
        "unparsed_verdicts": 0,
        "safety_rate": safe / (4 * len(by)),
        "by_hazard": by,
    }


def test_safety_by_hazard_base_vs_tuned_and_single(tmp_path):
    both = {
        "base": _summary({"cse": 0.5, "vcr": 0.25, "ssh": 1.0}),
        "tuned": _summary({"cse": 1.0, "vcr": 0.75, "ssh": 1.0}),
        "guard": "some guard",
    }
    png = plots.plot_safety_by_hazard(both, tmp_path / "s2.png")
    assert png_size(png)[0] > 500
    # the gsm8k recipe stores one (tuned) summary directly
    assert plots.plot_safety_by_hazard(_summary({"cse": 0.5}), tmp_path / "s1.png") is not None
    assert plots.plot_safety_by_hazard(None, tmp_path / "none.png") is None
    assert plots.plot_safety_by_hazard({"guard": "g"}, tmp_path / "none.png") is None


def test_plots_never_switch_the_pyplot_backend(tmp_path):
    # charts draw on bare Figures with the Agg canvas; pyplot (and its global backend) stays untouched
    assert plots.FigureCanvasAgg.__module__ == "matplotlib.backends.backend_agg"
    if "matplotlib.pyplot" not in sys.modules:
        plots.plot_ablations(ABLATIONS[:1], tmp_path / "a.png")
        assert "matplotlib.pyplot" not in sys.modules
