"""Metrics of the classification heads (emotion: 28 GoEmotions labels, strategy: 8 ESConv labels).

`head_metrics` reports accuracy and support-weighted F1 next to the majority-class accuracy of
the same gold labels: on skewed label sets (GoEmotions is dominated by `neutral`) a head that
always predicts the commonest class already looks respectable, so the baseline belongs beside
the number. It can also draw a row-normalised confusion matrix as a PNG.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Label = int | str


def _indices(values: Sequence[Label], labels: Sequence[str], what: str) -> list[int]:
    """Label ids or names -> ids; anything outside `labels` is a caller bug, named precisely."""
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for pos, v in enumerate(values):
        if isinstance(v, str):
            if v not in index:
                raise ValueError(f"{what}[{pos}] = {v!r} is not one of the {len(labels)} labels")
            out.append(index[v])
        else:
            i = int(v)  # numpy/torch integer scalars too
            if not 0 <= i < len(labels):
                raise ValueError(f"{what}[{pos}] = {i} is outside 0..{len(labels) - 1}")
            out.append(i)
    return out


def head_metrics(
    y_true: Sequence[Label],
    y_pred: Sequence[Label],
    labels: Sequence[str],
    png_path: str | os.PathLike | None = None,
    title: str = "confusion matrix",
) -> dict[str, Any]:
    """Accuracy, weighted F1 and the majority-class baseline of one head's predictions.

    `y_true`/`y_pred` hold label ids (indices into `labels`) or label names. Returns
    `{n, accuracy, weighted_f1, macro_f1, majority_accuracy, majority_label, support,
    confusion_png}`; `support` maps every label to its count in `y_true`, and `confusion_png`
    is `str(png_path)` when a PNG was written, else None. With no examples the rates are None
    (a smoke run can hold out nothing) and no PNG is drawn.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    labels = list(labels)
    t = _indices(y_true, labels, "y_true")
    p = _indices(y_pred, labels, "y_pred")
    counts = Counter(t)
    support = {name: counts.get(i, 0) for i, name in enumerate(labels)}
    n = len(t)
    if n == 0:
        return {
            "n": 0,
            "accuracy": None,
            "weighted_f1": None,
            "macro_f1": None,
            "majority_accuracy": None,
            "majority_label": None,
            "support": support,
            "confusion_png": None,
        }

    from sklearn.metrics import accuracy_score, f1_score

    ids = list(range(len(labels)))
    # weighted F1 weights each class by its support, so labels absent from y_true weigh nothing;
    # zero_division=0 scores a never-predicted class as F1 0 instead of warning.
    weighted = f1_score(t, p, labels=ids, average="weighted", zero_division=0)
    # macro F1 only over classes that occur in the gold labels: a 28-way head evaluated on a
    # sample missing some emotions should not be charged zeros for classes it was never shown.
    present = sorted(counts)
    macro = f1_score(t, p, labels=present, average="macro", zero_division=0)
    top_id, top_count = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))  # ties -> lower id
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(accuracy_score(t, p)),
        "weighted_f1": float(weighted),
        "macro_f1": float(macro),
        "majority_accuracy": top_count / n,
        "majority_label": labels[top_id],
        "support": support,
        "confusion_png": None,
    }
    if png_path is not None:
        out["confusion_png"] = str(
            write_confusion_png(
                t,
                p,
                labels,
                png_path,
                f"{title}\nacc {out['accuracy']:.3f} · weighted F1 "
                f"{weighted:.3f} · majority {out['majority_accuracy']:.3f} · n={n}",
            )
        )
    return out


def write_confusion_png(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str], png_path: str | os.PathLike, title: str
) -> Path:
    """Row-normalised confusion matrix (each row: where that gold class went) as a PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    from tunesmith.io import atomic_open

    k = len(labels)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    rows = cm.sum(axis=1, keepdims=True)
    # rows of classes absent from y_true stay 0 rather than dividing by zero
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)

    # the figure grows with the label count so 28 tick labels stay legible at fontsize 8
    side = max(6.0, 0.32 * k + 2.5)
    fig = Figure(figsize=(side + 1.2, side), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: never touch pyplot's global (possibly GUI) backend
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="share of gold row")
    fs = 8 if k > 12 else 10
    # vertical names for many classes; fewer, longer ones (ESConv strategies) read better slanted
    ax.set_xticks(
        range(k),
        labels=list(labels),
        rotation=90 if k > 12 else 35,
        ha="center" if k > 12 else "right",
        rotation_mode="anchor" if k <= 12 else "default",
        fontsize=fs,
    )
    # gold support beside each row label: a dark diagonal cell over 2 examples means little
    ax.set_yticks(range(k), labels=[f"{name} ({int(rows[i, 0])})" for i, name in enumerate(labels)], fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold (support)")
    ax.set_title(title, fontsize=9)
    if k <= 12:  # numbers in the cells only while they fit
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black",
                    )
    path = Path(png_path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", bbox_inches="tight", pad_inches=0.15)  # never clip long tick labels
    return path
