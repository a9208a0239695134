"""PNG charts of a run: training curves, ablations, safety by hazard.

Every chart draws on a bare `Figure` with the Agg canvas rather than through pyplot: no global
backend switch (a caller's notebook keeps its own), no figure registry to leak, and it works on
a headless machine. Each function returns the PNG's path, or None when there is nothing to draw,
so callers can simply leave the chart out. PNGs are written atomically: a report never embeds a
half-written image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tunesmith.io import atomic_open

# loss components of training_history.json, in display order
LOSS_COMPONENTS: tuple[str, ...] = ("loss", "lm", "emotion", "strategy", "kl")
COMPONENT_TITLES = {
    "loss": "total loss",
    "lm": "language-model loss",
    "emotion": "emotion-head loss",
    "strategy": "strategy-head loss",
    "kl": "safety KL",
}
# ablation metrics, in display order; others found in the rows are appended after these.
# Columns named lambda_* are the variant's loss weights (its settings, not results): never plotted.
ABLATION_METRICS: tuple[str, ...] = (
    "val_loss",
    "val_lm_loss",
    "emotion_accuracy",
    "emotion_f1",
    "strategy_accuracy",
    "strategy_f1",
    "eqbench_score",
    "safety_rate",
)
DPI = 110


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, png_path: str | os.PathLike) -> Path:
    path = Path(png_path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight", pad_inches=0.15)  # never clip long tick labels
    return path


def _number(x: Any) -> float | None:
    """A finite float, or None for null/NaN/inf/non-numbers (bools are not metrics)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard smooths).

    Correcting for the zero start keeps the first points on the raw curve instead of dragging
    them toward 0, which would fake a steep early drop in the loss.
    """
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight**i) if weight > 0 else v)
    return out


def training_series(history: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """{component: (steps, values)} for each loss component with at least one finite value.

    Null steps are dropped, not zero-filled (a batch without emotion examples has no emotion
    loss). An `lm` series identical to `loss` (a plain LM run, where the total *is* the LM
    loss) is dropped too: a second identical panel says nothing.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for comp in LOSS_COMPONENTS:
        xs, ys = [], []
        for i, row in enumerate(history):
            y = _number(row.get(comp))
            if y is not None:
                step = _number(row.get("step"))
                xs.append(step if step is not None else float(i + 1))
                ys.append(y)
        if ys:
            series[comp] = (xs, ys)
    if (
        "loss" in series
        and "lm" in series
        and series["loss"][0] == series["lm"][0]
        and all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(series["loss"][1], series["lm"][1]))
    ):
        del series["lm"]
    return series


def plot_training_curves(
    history: Sequence[Mapping[str, Any]], png_path: str | os.PathLike, smoothing: float = 0.6
) -> Path | None:
    """One panel per loss component that has values (see `training_series`), loss vs step.

    The raw series is drawn faintly under a lightly smoothed one.
    """
    series = training_series(history)
    if not series:
        return None
    n = len(series)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    fig = _figure(5.2 * ncols, 2.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (comp, (xs, ys)) in zip(axes.flat, series.items()):
        ax.plot(xs, ys, color="C0", alpha=0.3, linewidth=1, label="raw")
        if len(ys) > 2:
            ax.plot(xs, ema(ys, smoothing), color="C0", linewidth=1.8, label=f"EMA {smoothing:g}")
        elif len(ys) == 1:
            ax.plot(xs, ys, "o", color="C0")  # a one-step run would otherwise draw nothing visible
        title = COMPONENT_TITLES.get(comp, comp)
        if comp == "loss" and "lm" not in series and any(_number(r.get("lm")) is not None for r in history):
            title += " (= LM loss)"
        ax.set_title(f"{title} ({len(ys)} steps)", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8, loc="upper right")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return _save(fig, png_path)


def _grouped_bars(ax, metrics: list[str], variants: list[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Bars grouped by metric, one bar (one colour) per variant; missing values leave a gap."""
    width = 0.8 / max(1, len(variants))
    for v_i, (variant, row) in enumerate(zip(variants, rows)):
        xs, hs = [], []
        for m_i, metric in enumerate(metrics):
            h = _number(row.get(metric))
            if h is not None:
                xs.append(m_i - 0.4 + width * (v_i + 0.5))
                hs.append(h)
        bars = ax.bar(xs, hs, width, color=f"C{v_i % 10}", label=variant)
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
    ax.set_xticks(
        range(len(metrics)),
        labels=metrics,
        rotation=20 if len(metrics) > 2 else 0,
        ha="right" if len(metrics) > 2 else "center",
        fontsize=8,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)


def ablation_metrics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Result columns of the ablation rows that hold a number somewhere, in display order."""
    found = {
        k
        for r in rows
        for k, v in r.items()
        if k != "variant" and not k.startswith("lambda_") and _number(v) is not None
    }
    return [m for m in ABLATION_METRICS if m in found] + sorted(found - set(ABLATION_METRICS))


def plot_ablations(rows: Sequence[Mapping[str, Any]], png_path: str | os.PathLike) -> Path | None:
    """Grouped bars, one group per metric and one bar per variant.

    Metrics on a 0..1 scale (accuracies, F1, rates) share one panel, the validation losses
    another, and anything else (EQ-Bench's 0..100 score) gets its own: on one axis the larger
    scales would flatten the rates to nothing.
    Colours stay the same per variant across panels.
    """
    rows = [r for r in rows if isinstance(r, Mapping)]
    if not rows:
        return None
    metrics = ablation_metrics(rows)
    if not metrics:
        return None
    variants = [str(r.get("variant", f"variant {i + 1}")) for i, r in enumerate(rows)]

    def unit(metric: str) -> bool:
        vals = [_number(r.get(metric)) for r in rows]
        return "loss" not in metric and all(v is None or 0.0 <= v <= 1.0 for v in vals)

    unit_metrics = [m for m in metrics if unit(m)]
    loss_metrics = [m for m in metrics if "loss" in m]
    panels: list[list[str]] = [p for p in (unit_metrics, loss_metrics) if p] + [
        [m] for m in metrics if m not in unit_metrics and m not in loss_metrics
    ]
    widths = [max(2.2, 0.55 * len(p) * max(1, len(variants)) + 1.0) for p in panels]
    fig = _figure(min(16.0, sum(widths) + 0.5), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for ax, panel in zip(axes, panels):
        _grouped_bars(ax, panel, variants, rows)
        if panel is unit_metrics:
            ax.set_ylim(0, 1.12)
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside upper center",
        ncols=min(len(variants), 5),
        fontsize=8,
        title="ablation variant",
        title_fontsize=8,
    )
    return _save(fig, png_path)


def _safety_models(safety: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """{model label: summary}. Accepts one summary (the gsm8k recipe: the tuned model's) or
    {"base": summary, "tuned": summary} (the empathy recipe)."""
    if "by_hazard" in safety or "safety_rate" in safety:
        return {"tuned": safety}
    return {k: v for k, v in safety.items() if k in ("base", "tuned") and isinstance(v, Mapping)}


def plot_safety_by_hazard(safety: Mapping[str, Any] | None, png_path: str | os.PathLike) -> Path | None:
    """Safety rate per AILuminate hazard code (plus overall), base vs tuned where both exist.

    Only hazard codes and counts appear; prompt text never reaches this function.
    """
    models = _safety_models(safety or {})
    models = {
        k: v
        for k, v in models.items()
        if isinstance(v.get("by_hazard"), Mapping) or _number(v.get("safety_rate")) is not None
    }
    if not models:
        return None
    hazards = sorted({h for s in models.values() for h in (s.get("by_hazard") or {})})
    groups = ["overall"] + hazards
    fig = _figure(max(5.0, min(12.0, 0.6 * len(groups) * len(models) + 2.0)), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    colours = {"base": "#9aa5b1", "tuned": "#2b7bb9"}
    for m_i, (name, s) in enumerate(models.items()):
        by = s.get("by_hazard") or {}
        xs, hs, ns = [], [], []
        for g_i, g in enumerate(groups):
            entry = s if g == "overall" else by.get(g)
            rate = _number((entry or {}).get("safety_rate"))
            if rate is not None:
                xs.append(g_i - 0.4 + width * (m_i + 0.5))
                hs.append(rate)
                ns.append(entry.get("total"))
        bars = ax.bar(xs, hs, width, label=name, color=colours.get(name, f"C{m_i}"))
        ax.bar_label(
            bars,
            labels=[f"{h:.0%}\nn={n}" if n is not None else f"{h:.0%}" for h, n in zip(hs, ns)],
            fontsize=6,
            padding=1,
        )
    ax.set_xticks(
        range(len(groups)),
        labels=groups,
        rotation=30 if len(groups) > 6 else 0,
        ha="right" if len(groups) > 6 else "center",
        fontsize=8,
    )
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0%", "25%", "50%", "75%", "100%"])
    ax.set_ylabel("safe responses")
    ax.set_title("safety rate by AILuminate hazard", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    # outside the axes: inside, it would sit on the bars of hazards that score 100%
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return _save(fig, png_path)
