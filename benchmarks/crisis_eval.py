"""The crisis detector on the held-out evaluation set (benchmarks/data/crisis_heldout.jsonl).

    python benchmarks/crisis_eval.py [--data FILE] [--boot 2000] [--json OUT] [--misses]
                                     [--background DIR | --no-background] [--background-n 1000]

The set (the thirteenth held-out set: 2,400 rows by twelve writers, 400 per language, 200 of them
benign) was written in a separate pass from the training data and from the calibration sets
(resources/crisis/calibration*.jsonl, which weigh, standardise, calibrate and threshold the scores)
and is never used for any of them. The earlier held-out sets, each measured once, are now
training data (resources/crisis/train_heldout_pass*.jsonl) and calibration data
(calibration_heldout_pass*.jsonl). Single statements go through `CrisisDetector.check`, multi-turn
rows (`messages`) through `check_conversation`. Reports crisis recall and benign false-positive rate
overall, per language, per category and per kind, with bootstrap 95% intervals (rows resampled
with replacement), the category agreement on flagged crisis rows, and how often the resources
shown (no locale set) are the ones for the message's language, and for single messages a
threshold-free AUC and recall at 5% FPR (to compare detectors whose thresholds differ). Targets:
recall ≥ 0.98 and FPR ≤ 0.05, overall and for each language.

`--background` (on by default when ../shared/data is there) also reports the flag rate on real text
nobody wrote for this detector: random GoEmotions test comments (Reddit; a few are genuinely
worrying, so this is an upper bound on the false-positive rate for everyday messages) and GSM8K
test questions (benign). The fit reads 4,000 GoEmotions and 1,000 GSM8K *train* texts as benign
background rows, so both rates are within their datasets' distribution, not new to the detector.
Texts are never printed.
"""

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from tunesmith.chat.crisis import CrisisLayer
from tunesmith.chat.crisis_model import load_statements

DEFAULT = Path(__file__).resolve().parent / "data" / "crisis_heldout.jsonl"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RECALL_TARGET, FPR_TARGET = 0.98, 0.05


def rate_ci(hits: np.ndarray, boot: int, rng: np.random.Generator) -> tuple[float, float, float]:
    if len(hits) == 0:
        return float("nan"), float("nan"), float("nan")
    samples = rng.choice(hits, size=(boot, len(hits)), replace=True).mean(axis=1)
    return float(hits.mean()), float(np.quantile(samples, 0.025)), float(np.quantile(samples, 0.975))


def threshold_free(crisis_scores: np.ndarray, benign_scores: np.ndarray, fpr: float) -> dict[str, float]:
    """For comparing detectors whose thresholds differ: AUC (ties count half) and the recall at the
    score that flags at most `fpr` of the benign rows. That score is read off the evaluation set
    itself, so it is a comparison, never an operating point. NaN when either class is missing."""
    sc, sb = np.asarray(crisis_scores, dtype=float), np.sort(np.asarray(benign_scores, dtype=float))[::-1]
    if not len(sc) or not len(sb):
        return {"auc": float("nan"), "recall_at_fpr": float("nan")}
    auc = float(np.mean(sc[:, None] > sb[None, :]) + 0.5 * np.mean(sc[:, None] == sb[None, :]))
    # flagging score > sb[k] flags the k benign rows above it: the largest k with k / n <= fpr
    return {"auc": auc, "recall_at_fpr": float(np.mean(sc > sb[int(fpr * len(sb))]))}


def background_rates(det, shared: Path, n: int, boot: int, rng) -> dict[str, tuple[int, tuple]]:
    from tunesmith.data.sources.goemotions import load_goemotions
    from tunesmith.data.sources.gsm8k import load_records

    pick = np.random.default_rng(0)
    from tunesmith.chat.crisis_model import unmask_goemotions

    sources = []
    if (shared / "goemotions" / "test.tsv").is_file():
        comments = [unmask_goemotions(e.text) for e in load_goemotions(shared / "goemotions", "test")]
        sources.append(("GoEmotions test comments", comments))
    if (shared / "gsm8k" / "test.jsonl").is_file():
        sources.append(
            ("GSM8K test questions", [r["question"] for r in load_records(str(shared / "gsm8k" / "test.jsonl"))])
        )
    if not sources:
        print(f"background: neither goemotions/test.tsv nor gsm8k/test.jsonl under {shared}")
    out = {}
    for name, texts in sources:
        sample = [texts[i] for i in pick.choice(len(texts), min(n, len(texts)), replace=False)]
        hits = np.asarray([det.check(t).flagged for t in sample], dtype=float)
        out[name] = (len(sample), rate_ci(hits, boot, rng))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--json")
    # the text of held-out rows is never printed: reading misses invites tuning to them
    ap.add_argument(
        "--misses", action="store_true", help="also print the per-kind table and each error's lang, kind, reason"
    )
    ap.add_argument("--background", default=str(SHARED) if SHARED.is_dir() else None, help="../shared/data folder")
    ap.add_argument("--no-background", dest="background", action="store_const", const=None)
    ap.add_argument("--background-n", type=int, default=1000)
    args = ap.parse_args()
    rows = load_statements(args.data)
    layer = CrisisLayer()
    det = layer.detector
    t = time.perf_counter()
    results = [det.check_conversation(list(r.messages)) if r.messages else det.check(r.text) for r in rows]
    secs = time.perf_counter() - t
    rng = np.random.default_rng(0)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups["all"].append(i)
        groups[f"lang={r.lang}"].append(i)
        groups["multi_turn" if r.messages else "single"].append(i)
        # benign rows are look-alikes (idioms, fiction, clinical questions…) or ordinary messages;
        # the ordinary ones are easy, so look-alikes get their own FPR rows (crisis rows join both)
        if r.crisis or r.kind != "ordinary":
            groups["look-alikes"].append(i)
            groups[f"look-alikes lang={r.lang}"].append(i)
        if r.crisis:
            groups[f"category={r.category}"].append(i)
        groups[f"kind={r.kind}"].append(i)
    flagged = np.asarray([res.flagged for res in results])
    crisis = np.asarray([r.crisis for r in rows])
    out: dict[str, dict] = {}
    lines = ["| group | crisis n | recall [95% CI] | benign n | FPR [95% CI] |", "|---|---:|---|---:|---|"]
    for name, idx in groups.items():
        idx = np.asarray(idx)
        c, b = idx[crisis[idx]], idx[~crisis[idx]]
        rec, fpr = rate_ci(flagged[c].astype(float), args.boot, rng), rate_ci(flagged[b].astype(float), args.boot, rng)
        out[name] = {"crisis": len(c), "recall": rec, "benign": len(b), "fpr": fpr}
        if name.startswith("kind=") and not args.misses:
            continue
        fmt = lambda v: "–" if np.isnan(v[0]) else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
        lines.append(f"| {name} | {len(c)} | {fmt(rec)} | {len(b)} | {fmt(fpr)} |")
    agree = [res.category == r.category for r, res in zip(rows, results) if r.crisis and res.flagged]
    lang_ok = [
        layer.locale_for(r.messages[-1] if r.messages else r.text, None).code
        == layer.resources.by_language.get(r.lang, layer.resources.default)
        for r in rows
    ]
    print(
        f"held-out set: {args.data} ({len(rows)} rows, {int(crisis.sum())} crisis); "
        f"threshold {det.threshold:.3f}; {1000 * secs / len(rows):.1f} ms/row"
    )
    print("\n".join(lines))
    print(f"category agreement on flagged crisis rows: {np.mean(agree):.3f} ({sum(agree)}/{len(agree)})")
    print(
        f"resources in the message's language (no locale set): {np.mean(lang_ok):.3f} ({sum(lang_ok)}/{len(lang_ok)})"
    )
    by_lang = [k for k in out if k.startswith("lang=")]
    met = all(
        out[k]["recall"][0] >= RECALL_TARGET and (out[k]["benign"] == 0 or out[k]["fpr"][0] <= FPR_TARGET)
        for k in ["all", *by_lang]
    )
    print(
        f"targets recall ≥ {RECALL_TARGET} and FPR ≤ {FPR_TARGET}, overall and per language: {'met' if met else 'NOT met'}"
    )
    one = np.asarray([not r.messages for r in rows])
    score = np.asarray([res.score for res in results])
    free = threshold_free(score[one & crisis], score[one & ~crisis], FPR_TARGET)
    print(
        f"single messages, threshold-free: AUC {free['auc']:.4f}, "
        f"recall at {FPR_TARGET:.0%} FPR {free['recall_at_fpr']:.3f}"
    )
    hard = [k for k in out if k.startswith("look-alikes")]
    hard_ok = all(out[k]["benign"] == 0 or out[k]["fpr"][0] <= FPR_TARGET for k in hard)
    print(f"FPR ≤ {FPR_TARGET} on look-alikes alone, overall and per language: {'met' if hard_ok else 'NOT met'}")
    background = {}
    if args.background:
        background = background_rates(det, Path(args.background), args.background_n, args.boot, rng)
        for name, (n, rate) in background.items():
            print(f"background flag rate, {name} ({n} texts): {rate[0]:.3f} [{rate[1]:.3f}, {rate[2]:.3f}]")
    if args.misses:
        for r, res in zip(rows, results):
            if r.crisis != res.flagged:
                print(f"{'MISS' if r.crisis else 'FP  '} [{r.lang} {r.kind}] ({res.reason})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "data": args.data,
                    "rows": len(rows),
                    "threshold": det.threshold,
                    "groups": out,
                    "single_threshold_free": free,
                    "category_agreement": float(np.mean(agree)),
                    "resources_language": float(np.mean(lang_ok)),
                    "background": {k: {"n": n, "rate": list(v)} for k, (n, v) in background.items()},
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
