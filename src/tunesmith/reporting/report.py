"""`report.md` and `report.html` for one run directory.

The report is built once as a small document model (sections of tables, text, images and
samples) and rendered twice, so the Markdown and the HTML cannot drift apart.

- Every section is optional: a gsm8k run has no EQ-Bench or heads, an empathy run no GSM8K,
  a run that stopped after training only has its curves. What exists is rendered.
- Model outputs, dataset names and anything else read from the run are untrusted text: the
  HTML escapes all of it and forbids scripts with a Content-Security-Policy; the Markdown
  escapes HTML and Markdown syntax so a sample cannot inject markup into a rendered page.
- The HTML is self-contained (PNGs as base64 data URIs): it opens from disk, survives being
  moved or mailed, and needs no server. The Markdown links the PNG files under `plots/`.
- AILuminate prompts are hazardous text: the report reads only the safety summaries in
  metrics.json (hazard codes and counts), never the per-prompt `ailuminate_safety_*.jsonl`.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import json
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError, TunesmithError
from tunesmith.io import atomic_open

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SAFETY_MODELS = ("base", "tuned")


# --------------------------------------------------------------------------- document model
@dataclass
class Text:
    text: str
    kind: str = "p"  # "p" | "note" | "warn"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    align: str = ""  # one letter per column, "l" or "r"; missing letters mean "l"


@dataclass
class Image:
    path: Path
    alt: str


@dataclass
class Samples:
    rows: list[Mapping[str, Any]]


Block = Text | Table | Image | Samples


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class RunData:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]


# --------------------------------------------------------------------------- loading
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read the run's JSON files; a directory with none of them is not a run directory."""
    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise TunesmithError(f"run directory not found: {d}")
    files = {name: d / name for name in ("metrics.json", "training_history.json", "config_resolved.json")}
    if not any(p.is_file() for p in files.values()):
        raise TunesmithError(
            f"not a run directory: {d} (no metrics.json, training_history.json or config_resolved.json)"
        )

    def obj(name: str, kind: type) -> Any:
        p = files[name]
        if not p.is_file():
            return kind()
        value = _read_json(p)
        if not isinstance(value, kind):
            raise DataError(f"{p}: expected a JSON {'object' if kind is dict else 'array'}, got {type(value).__name__}")
        return value

    history = [row for row in obj("training_history.json", list) if isinstance(row, dict)]
    return RunData(d, obj("metrics.json", dict), history, obj("config_resolved.json", dict))


# --------------------------------------------------------------------------- formatting
def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def fmt_num(x: Any, digits: int = 3) -> str:
    v = _num(x)
    if v is None:
        return "—" if x is None else str(x)
    return str(int(v)) if float(v).is_integer() and isinstance(x, int) else f"{v:.{digits}f}"


def fmt_pct(x: Any, n: Any = None) -> str:
    """0.0416 -> "4.2%"; with n, also the count when it is whole: "4.2% (1/24)"."""
    v = _num(x)
    if v is None:
        return "—"
    s = f"{100 * v:.1f}%"
    total = _num(n)
    if total:
        k = v * total
        if abs(k - round(k)) < 1e-6:
            s += f" ({round(k)}/{int(total)})"
    return s


def fmt_pp(new: Any, old: Any) -> str:
    a, b = _num(new), _num(old)
    return "—" if a is None or b is None else f"{100 * (a - b):+.1f} pp"


def fmt_bool(x: Any, yes: str = "yes", no: str = "no") -> str:
    return "—" if x is None else yes if x else no


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


# --------------------------------------------------------------------------- plots
def _stale(png: Path, sources: Sequence[Path]) -> bool:
    """Draw again when the PNG is missing or older than what it is drawn from."""
    if not png.is_file():
        return True
    t = png.stat().st_mtime
    return any(s.is_file() and s.stat().st_mtime > t for s in sources)


def _ablations(run: RunData) -> list[dict[str, Any]]:
    """metrics.json's `ablations`, else the run's ablations.csv (numbers parsed)."""
    rows = run.metrics.get("ablations")
    if isinstance(rows, list):
        return [r for r in rows if isinstance(r, dict)]
    p = run.run_dir / "ablations.csv"
    if not p.is_file():
        return []
    out = []
    with p.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            parsed: dict[str, Any] = {}
            for k, v in row.items():
                if k is None:
                    continue
                try:
                    parsed[k] = float(v) if k != "variant" and v not in ("", None) else (v or None)
                except ValueError:
                    parsed[k] = v
            out.append(parsed)
    return out


def make_plots(run: RunData) -> dict[str, Path]:
    """The run's charts under run_dir/plots/, drawn where missing or stale; {kind: path}.

    A chart that fails to draw is logged and left out: the report is written at the end of a
    long run, and one odd value must not cost the user the rest of it.
    """
    from tunesmith.reporting import plots

    out_dir = run.run_dir / "plots"
    metrics_src = [run.run_dir / "metrics.json"]
    jobs: list[tuple[str, str, list[Path], Callable[[Path], Path | None]]] = []
    if run.history:
        jobs.append(
            (
                "training",
                "training_curves.png",
                [run.run_dir / "training_history.json"],
                lambda p: plots.plot_training_curves(run.history, p),
            )
        )
    safety = run.metrics.get("safety")
    if isinstance(safety, Mapping) and isinstance(run.metrics.get("base_safety"), Mapping):
        safety = {"base": run.metrics["base_safety"], "tuned": safety}  # a gsm8k run that also judged its base
    if isinstance(safety, Mapping):
        jobs.append(("safety", "safety_by_hazard.png", metrics_src, lambda p: plots.plot_safety_by_hazard(safety, p)))
    ablations = _ablations(run)
    if ablations:
        jobs.append(
            (
                "ablations",
                "ablations.png",
                metrics_src + [run.run_dir / "ablations.csv"],
                lambda p: plots.plot_ablations(ablations, p),
            )
        )
    made: dict[str, Path] = {}
    for kind, name, sources, draw in jobs:
        png = out_dir / name
        try:
            result = draw(png) if _stale(png, sources) else png
        except Exception:  # noqa: BLE001 - see docstring
            log.warning("report: could not draw %s", name, exc_info=True)
            continue
        if result is not None:
            made[kind] = result
    return made


def _run_png(run_dir: Path, ref: Any) -> Path | None:
    """A PNG named in metrics.json (e.g. a confusion matrix), but only one inside the run dir.

    The path may be absolute from before the run dir was moved, or relative to the cwd the
    recipe ran in, so plots/<name> is tried too. Anything outside the run dir or not a PNG is
    refused: embedding it would copy an arbitrary file into the report.
    """
    if not isinstance(ref, str) or not ref:
        return None
    p = Path(ref)
    root = run_dir.resolve()
    for cand in (p if p.is_absolute() else run_dir / p, p, run_dir / "plots" / p.name):
        try:
            c = cand.resolve()
            if c.is_file() and c.is_relative_to(root):
                with c.open("rb") as f:
                    if f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE:
                        return c
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------- sections
def _overview(run: RunData) -> Section:
    m, c = run.metrics, run.config
    prov = c.get("provenance") if isinstance(c.get("provenance"), Mapping) else {}
    rows: list[list[str]] = [
        ["run", str(m.get("run") or c.get("run_name") or run.run_dir.name)],
        ["recipe", str(m.get("recipe") or c.get("recipe") or "—")],
    ]
    model = _get(c, "model", "name")
    if model:
        rev = _get(c, "model", "revision")
        rows.append(["model", f"{model} @ {rev}" if rev else str(model)])
    if isinstance(c.get("lora"), Mapping):
        if _get(c, "training", "enabled") is False:
            rows.append(["method", "no training (base model)"])
        else:
            method = "QLoRA (4-bit)" if _get(c, "model", "load_in_4bit") else "LoRA"
            rows.append(
                [
                    "method",
                    f"{method} r={_get(c, 'lora', 'r')} alpha={_get(c, 'lora', 'alpha')} "
                    f"dropout={_get(c, 'lora', 'dropout')}",
                ]
            )
    t = c.get("training") if isinstance(c.get("training"), Mapping) else {}
    if t and t.get("enabled", True):
        length = f"{t.get('max_steps')} steps" if t.get("max_steps") else f"{t.get('epochs')} epochs"
        rows.append(
            [
                "training",
                f"lr {t.get('learning_rate')} · batch {t.get('batch_size')} × accum "
                f"{t.get('grad_accum')} · {length} · seed {t.get('seed')}",
            ]
        )
    if (m.get("recipe") or c.get("recipe")) == "empathy" and isinstance(c.get("loss"), Mapping):
        rows.append(["loss weights", " · ".join(f"{k.removeprefix('lambda_')} {v}" for k, v in c["loss"].items())])
    for key, label in (("train_examples", "train examples"), ("test_examples", "test examples")):
        if m.get(key) is not None:
            rows.append([label, str(m[key])])
    for key, label in (
        ("train_sizes", "train examples per dataset"),
        ("heldout_sizes", "held-out examples per dataset"),
    ):
        if isinstance(m.get(key), Mapping) and m[key]:
            rows.append([label, ", ".join(f"{k} {v}" for k, v in m[key].items())])
    if m.get("checkpoint") is not None:
        rows.append(["checkpoint", str(m["checkpoint"])])
    if "passed" in m:
        rows.append(["thresholds", {True: "PASS", False: "FAIL"}.get(m["passed"], "none set")])
    if prov.get("git_commit"):
        rows.append(["git commit", str(prov["git_commit"])])
    if prov.get("started_at"):
        rows.append(["started", str(prov["started_at"])])
    if isinstance(prov.get("versions"), Mapping):
        rows.append(["versions", ", ".join(f"{k} {v}" for k, v in prov["versions"].items())])
    rows.append(["report generated", dt.datetime.now().isoformat(timespec="seconds")])
    return Section("Run", [Table(["", ""], rows)])


def _gsm8k(m: Mapping[str, Any]) -> Section | None:
    base, tuned = m.get("base"), m.get("tuned")
    models = {k: v for k, v in (("base", base), ("tuned", tuned)) if isinstance(v, Mapping)}
    if not any("strict_accuracy" in v for v in models.values()):
        return None
    cols = ["metric"] + list(models) + (["Δ tuned − base"] if len(models) == 2 else [])
    rows = []
    for key, label in (
        ("format_rate", "replies with a `#### N` line"),
        ("strict_accuracy", "strict-match (lm-eval)"),
        ("flexible_accuracy", "flexible-extract (lm-eval)"),
        ("lenient_accuracy", "lenient (tunesmith parser)"),
    ):
        if not any(key in v for v in models.values()):
            continue
        row = [label] + [fmt_pct(v.get(key), v.get("n")) for v in models.values()]
        if len(models) == 2:
            row.append(fmt_pp(tuned.get(key), base.get(key)))
        rows.append(row)
    held = m.get("heldout_loss")
    if isinstance(held, Mapping) and len(models) == 2:
        rows.append(
            [
                f"held-out loss ({held.get('n')} questions, lower is better)",
                fmt_num(held.get("base")),
                fmt_num(held.get("tuned")),
                fmt_num((_num(held.get("tuned")) or 0) - (_num(held.get("base")) or 0)),
            ]
        )
    blocks: list[Block] = [Table(cols, rows, "l" + "r" * (len(cols) - 1))]
    th = [t for t in m.get("thresholds") or [] if isinstance(t, Mapping)]
    if th:
        blocks.append(
            Table(
                ["threshold", "required", "tuned", "result"],
                [
                    [
                        str(t.get("metric")),
                        fmt_pct(t.get("threshold")),
                        fmt_pct(t.get("value")),
                        fmt_bool(t.get("passed"), "PASS", "FAIL"),
                    ]
                    for t in th
                ],
                "lrrl",
            )
        )
    else:
        blocks.append(Text("No accuracy thresholds were set for this run.", "note"))
    sweep = [s for s in m.get("sweep") or [] if isinstance(s, Mapping)]
    if sweep:
        split = sweep[0].get("split") or "test"  # runs before the validation split scored the test set
        blocks.append(
            Text(f"Checkpoint sweep on the {split} split (best by strict accuracy, then flexible, then safety rate):")
        )
        blocks.append(
            Table(
                ["checkpoint", "strict", "flexible", "safety rate", "chosen"],
                [
                    [
                        str(s.get("checkpoint")),
                        fmt_pct(s.get("strict_accuracy")),
                        fmt_pct(s.get("flexible_accuracy")),
                        fmt_pct(s.get("safety_rate")),
                        "✓" if s.get("checkpoint") == m.get("checkpoint") else "",
                    ]
                    for s in sweep
                ],
                "lrrrl",
            )
        )
    return Section("GSM8K", blocks)


def _eqbench(m: Mapping[str, Any]) -> Section | None:
    eq = m.get("eqbench")
    if not isinstance(eq, Mapping):
        return None
    models = {k: v for k, v in eq.items() if k in SAFETY_MODELS and isinstance(v, Mapping)}
    if not models:
        return None
    rows = [
        [
            name,
            fmt_num(r.get("score"), 2),
            fmt_pct(r.get("parse_rate")),
            f"{r.get('n_parsed', '—')}/{r.get('n_total', '—')}",
            fmt_bool(r.get("valid")),
            str(r.get("mode") or "—"),
        ]
        for name, r in models.items()
    ]
    blocks: list[Block] = [
        Table(["model", "score (≤ 100; random answers ≈ 0)", "parse rate", "parsed", "valid", "mode"], rows, "lrrrll")
    ]
    if any(r.get("valid") is False for r in models.values()):
        blocks.append(
            Text(
                "A score marked not valid comes from too few parseable answers (the benchmark's minimum "
                "parse rate); do not compare it with published scores.",
                "warn",
            )
        )
    if any(r.get("comparable") is False for r in models.values()):
        blocks.append(
            Text("Scored on a subset of the questions: not comparable with published EQ-Bench scores.", "warn")
        )
    return Section("EQ-Bench v2", blocks)


def _heads(run: RunData) -> Section | None:
    heads = run.metrics.get("heads")
    if not isinstance(heads, Mapping) or not heads:
        return None
    rows, images = [], []
    for name, h in heads.items():
        if not isinstance(h, Mapping):
            continue
        majority = fmt_pct(h.get("majority_accuracy"))
        if h.get("majority_label"):
            majority += f" ({h['majority_label']})"
        rows.append(
            [
                str(name),
                str(h.get("data") or "—"),
                fmt_num(h.get("n")),
                fmt_pct(h.get("accuracy")),
                fmt_num(h.get("weighted_f1")),
                fmt_num(h.get("macro_f1")),
                majority,
            ]
        )
        png = _run_png(run.run_dir, h.get("confusion_png"))
        if png is not None:
            images.append(Image(png, f"{name} head: row-normalised confusion matrix"))
    if not rows:
        return None
    blocks: list[Block] = [
        Table(
            ["head", "evaluated on", "n", "accuracy", "weighted F1", "macro F1", "majority-class accuracy"],
            rows,
            "llrrrrl",
        ),
        Text(
            "Majority-class accuracy is what always predicting the commonest gold label scores: "
            "a head is only useful above it.",
            "note",
        ),
    ]
    return Section("Classification heads", blocks + images)


def _validation_loss(m: Mapping[str, Any]) -> Section | None:
    vl = m.get("validation_loss")
    if not isinstance(vl, Mapping) or not vl:
        return None
    rows = [[str(k), fmt_num(v, 4)] for k, v in vl.items() if v is not None]
    return Section("Validation loss", [Table(["component", "loss"], rows, "lr")]) if rows else None


def _safety(m: Mapping[str, Any], chart: Path | None) -> Section | None:
    s = m.get("safety")
    if not isinstance(s, Mapping):
        return None
    if "by_hazard" in s or "safety_rate" in s:  # the gsm8k recipe: tuned, and base when it was evaluated
        models = {"base": m["base_safety"]} if isinstance(m.get("base_safety"), Mapping) else {}
        models["tuned"] = s
    else:
        models = {k: s[k] for k in SAFETY_MODELS if isinstance(s.get(k), Mapping)}
    if not models:
        return None
    rows = [
        [
            name,
            fmt_pct(r.get("safety_rate")),
            f"{r.get('safe', '—')}/{r.get('total', '—')}",
            fmt_num(r.get("unparsed_verdicts")),
        ]
        for name, r in models.items()
    ]
    blocks: list[Block] = [Table(["model", "safety rate", "safe / total", "unparsed verdicts"], rows, "lrrr")]
    guard = s.get("guard")
    if isinstance(guard, str) and guard:
        blocks.append(Text(f"Guard: {guard}", "note"))
    if any((_num(r.get("unparsed_verdicts")) or 0) > 0 for r in models.values()):
        blocks.append(Text("Unparsed guard verdicts count as unsafe, so the rate never flatters the model.", "note"))
    hazards = sorted(
        {h for r in models.values() for h in (r.get("by_hazard") or {}) if isinstance(r.get("by_hazard"), Mapping)}
    )
    if hazards:
        hrows = []
        for h in hazards:
            row = [str(h)]
            for r in models.values():
                e = (r.get("by_hazard") or {}).get(h)
                row.append(
                    f"{fmt_pct(e.get('safety_rate'))} ({e.get('safe', '—')}/{e.get('total', '—')})"
                    if isinstance(e, Mapping)
                    else "—"
                )
            hrows.append(row)
        blocks.append(Table(["hazard"] + list(models), hrows, "l" + "r" * len(models)))
    if chart is not None:
        blocks.append(Image(chart, "safety rate by AILuminate hazard"))
    blocks.append(Text("AILuminate prompts are not reproduced in this report; only hazard codes and counts.", "note"))
    return Section("Safety (AILuminate)", blocks)


def _training(run: RunData, chart: Path | None) -> Section | None:
    h = run.history
    if not h:
        return None
    last = next((r for r in reversed(h) if _num(r.get("loss")) is not None), {})
    rows = [["optimizer steps", str(len(h))], ["final loss", fmt_num(last.get("loss"), 4)]]
    for comp in ("lm", "emotion", "strategy", "kl"):
        v = next((r.get(comp) for r in reversed(h) if _num(r.get(comp)) is not None), None)
        if v is not None:
            rows.append([f"final {comp}", fmt_num(v, 4)])
    tokens = [_num(r.get("tokens")) for r in h]
    if any(t is not None for t in tokens):
        rows.append(["tokens (cumulative)", f"{int(max(t for t in tokens if t is not None)):,}"])
    secs = [s for s in (_num(r.get("step_seconds")) for r in h) if s is not None]
    if secs:
        rows.append(["training time", f"{sum(secs) / 60:.1f} min ({sum(secs) / len(secs):.2f} s/step)"])
    blocks: list[Block] = [Table(["", ""], rows, "lr")]
    if chart is not None:
        blocks.append(Image(chart, "training loss per component"))
    return Section("Training", blocks)


def _mixing(m: Mapping[str, Any]) -> Section | None:
    mix = m.get("mixing")
    if not isinstance(mix, Mapping) or not mix:
        return None
    counts = mix.get("counts_per_epoch", mix.get("counts"))
    if not isinstance(counts, Mapping):  # a bare {dataset: count}
        counts = {k: v for k, v in mix.items() if _num(v) is not None and k != "alpha"}
    sizes = mix.get("sizes") if isinstance(mix.get("sizes"), Mapping) else {}
    total = sum(_num(v) or 0 for v in counts.values())
    if not counts:
        return None
    rows = [
        [str(k), fmt_num(v), fmt_pct((_num(v) or 0) / total) if total else "—", fmt_num(sizes.get(k))]
        for k, v in counts.items()
    ]
    blocks: list[Block] = [Table(["dataset", "examples per epoch", "share", "dataset size"], rows, "lrrr")]
    if _num(mix.get("alpha")) is not None:
        blocks.append(Text(f"Temperature sampling p ∝ n^α with α = {mix['alpha']}.", "note"))
    return Section("Data mixing", blocks)


LAMBDAS = ("lambda_lm", "lambda_emotion", "lambda_strategy", "lambda_kl")


def _ablation_cell(key: str, v: Any) -> str:
    if _num(v) is None:
        return "—" if v is None else str(v)
    if key.startswith("lambda_"):
        return f"{v:g}"  # a setting: 0.2, not 20.0%
    if key == "eqbench_score":
        return fmt_num(v, 2)
    if "loss" in key:
        return fmt_num(v, 4)
    if any(t in key for t in ("accuracy", "f1", "rate")):
        return fmt_pct(v)
    return fmt_num(v)


def _ablation_section(rows: list[dict[str, Any]], chart: Path | None) -> Section | None:
    if not rows:
        return None
    from tunesmith.reporting.plots import ablation_metrics

    keys = {k for r in rows for k in r}
    settings = [k for k in LAMBDAS if k in keys] + sorted(
        k for k in keys if k.startswith("lambda_") and k not in LAMBDAS
    )
    metrics = ablation_metrics(rows)
    cols = settings + metrics
    table = Table(
        ["variant"] + cols,
        [[str(r.get("variant", "—"))] + [_ablation_cell(k, r.get(k)) for k in cols] for r in rows],
        "l" + "r" * len(cols),
    )
    return Section("Ablations", [table] + ([Image(chart, "ablation metrics per variant")] if chart else []))


def _samples(m: Mapping[str, Any]) -> Section | None:
    rows = [r for r in m.get("samples") or [] if isinstance(r, Mapping)]
    if not rows:
        return None
    return Section(
        "Side-by-side samples",
        [
            Text(
                "Fixed scenario prompts answered by the base and the tuned model (model outputs are shown verbatim, "
                "as untrusted text).",
                "note",
            ),
            Samples(rows),
        ],
    )


_KNOWN_TOP = {"run", "recipe", "train_examples", "test_examples", "checkpoint", "passed"}


def _other(m: Mapping[str, Any]) -> Section | None:
    """Top-level numbers this report has no section for yet (a new metric should not vanish)."""
    rows = [
        [str(k), fmt_num(v, 4)]
        for k, v in m.items()
        if k not in _KNOWN_TOP and (_num(v) is not None or isinstance(v, bool))
    ]
    return Section("Other metrics", [Table(["metric", "value"], rows, "lr")]) if rows else None


def build_sections(run: RunData, charts: Mapping[str, Path]) -> list[Section]:
    m = run.metrics
    parts = [
        _overview(run),
        _gsm8k(m),
        _eqbench(m),
        _heads(run),
        _validation_loss(m),
        _safety(m, charts.get("safety")),
        _training(run, charts.get("training")),
        _mixing(m),
        _ablation_section(_ablations(run), charts.get("ablations")),
        _other(m),
        _samples(m),
    ]
    return [s for s in parts if s is not None]


# --------------------------------------------------------------------------- Markdown
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: Any) -> str:
    """Inline text safe in a Markdown table cell: Markdown syntax escaped, raw HTML neutralised
    (renderers pass HTML through), newlines as <br>."""
    s = _MD_SPECIAL.sub(r"\\\1", str(text))
    s = html.escape(s, quote=False)
    return s.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def _md_table(t: Table) -> list[str]:
    align = {"l": ":--", "r": "--:"}
    head = [md_escape(c) or " " for c in t.columns]
    out = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align.get(t.align[i] if i < len(t.align) else "l", ":--") for i in range(len(head))) + " |",
    ]
    out += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in t.rows]
    return out


def _md_link(path: Path, run_dir: Path) -> str:
    rel = os.path.relpath(path.resolve(), run_dir.resolve())
    return urllib.parse.quote(Path(rel).as_posix())


def render_markdown(title: str, sections: Sequence[Section], run_dir: Path) -> str:
    lines = [f"# {md_escape(title)}", ""]
    for sec in sections:
        lines += [f"## {md_escape(sec.title)}", ""]
        for b in sec.blocks:
            if isinstance(b, Table):
                lines += _md_table(b)
            elif isinstance(b, Text):
                prefix = {"note": "> ", "warn": "> **Warning:** "}.get(b.kind, "")
                lines.append(prefix + md_escape(b.text))
            elif isinstance(b, Image):
                lines.append(f"![{md_escape(b.alt)}]({_md_link(b.path, run_dir)})")
            elif isinstance(b, Samples):
                lines += _md_table(
                    Table(
                        ["scenario", "prompt", "base", "tuned"],
                        [
                            [_scenario_label(r), str(r.get("prompt", "")), _text(r.get("base")), _text(r.get("tuned"))]
                            for r in b.rows
                        ],
                    )
                )
            lines.append("")
    return "\n".join(lines)


def _text(x: Any) -> str:
    return "—" if x is None else str(x)


def _scenario_label(r: Mapping[str, Any]) -> str:
    parts = [str(r.get("scenario") or "—")]
    parts += [f"{k.removesuffix('_pred')}: {r[k]}" for k in ("emotion_pred", "strategy_pred") if r.get(k) is not None]
    return "\n".join(parts)


# --------------------------------------------------------------------------- HTML
# No script may run in a report that holds model output; images only as data URIs.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2rem auto;padding:0 1rem;color:#1f2328}
h1{font-size:1.7rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
h2{font-size:1.3rem;margin-top:2rem;border-bottom:1px solid #eaeef2;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;vertical-align:top}
th{background:#f6f8fa;text-align:left}
td.r{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#57606a;font-size:.9rem}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.4rem .6rem;border-radius:4px}
figure{margin:1rem 0}
img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.85rem}
table.samples{width:100%;table-layout:fixed}
table.samples td{white-space:pre-wrap;overflow-wrap:anywhere}
table.samples td.prompt{background:#f6f8fa}
.scenario{font-weight:600}
.pred{color:#57606a;font-size:.85rem}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _html_table(t: Table) -> str:
    cls = ["r" if i < len(t.align) and t.align[i] == "r" else "" for i in range(len(t.columns))]
    head = (
        "" if not any(t.columns) else "<thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in t.columns) + "</tr></thead>"
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{cls[i]}">{_e(c)}</td>' if cls[i] else f"<td>{_e(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in t.rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_samples(rows: Sequence[Mapping[str, Any]]) -> str:
    out = ['<table class="samples"><thead><tr><th>base model</th><th>tuned model</th></tr></thead><tbody>']
    for r in rows:
        preds = " · ".join(
            f"{k.removesuffix('_pred')}: {r[k]}" for k in ("emotion_pred", "strategy_pred") if r.get(k) is not None
        )
        out.append(
            f'<tr><td class="prompt" colspan="2"><span class="scenario">{_e(r.get("scenario") or "—")}</span>'
            + (f' <span class="pred">({_e(preds)})</span>' if preds else "")
            + f"\n{_e(r.get('prompt', ''))}</td></tr>"
        )
        out.append(f"<tr><td>{_e(_text(r.get('base')))}</td><td>{_e(_text(r.get('tuned')))}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(title: str, sections: Sequence[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    for sec in sections:
        parts.append(f"<section><h2>{_e(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Table):
                parts.append(_html_table(b))
            elif isinstance(b, Text):
                parts.append(f'<p class="{b.kind}">{_e(b.text)}</p>' if b.kind != "p" else f"<p>{_e(b.text)}</p>")
            elif isinstance(b, Image):
                parts.append(
                    f'<figure><img src="{_data_uri(b.path)}" alt="{_e(b.alt)}">'
                    f"<figcaption>{_e(b.alt)}</figcaption></figure>"
                )
            elif isinstance(b, Samples):
                parts.append(_html_samples(b.rows))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- entry point
def write_report(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write run_dir/report.md and run_dir/report.html (charts into run_dir/plots/ as needed).

    Raises TunesmithError when run_dir is missing or holds none of the run files, DataError
    when one of them is malformed.
    """
    run = load_run(run_dir)
    charts = make_plots(run)
    sections = build_sections(run, charts)
    title = f"tunesmith report · {run.metrics.get('run') or run.config.get('run_name') or run.run_dir.name}"
    md_path, html_path = run.run_dir / "report.md", run.run_dir / "report.html"
    with atomic_open(md_path) as f:
        f.write(render_markdown(title, sections, run.run_dir))
    with atomic_open(html_path) as f:
        f.write(render_html(title, sections))
    return md_path, html_path
