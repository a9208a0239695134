"""Chosen/rejected pairs: picked from judged candidates, and read back for DPO."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import DataError
from tunesmith.io import read_jsonl
from tunesmith.preference.candidates import Candidate, PromptItem, messages_of


def load_pairs(path: str | Path) -> list[dict]:
    """Preference pairs in conversational form ({prompt, chosen, rejected} as message lists)."""
    p = Path(path)
    out = []
    for i, row in enumerate(read_jsonl(p, required=("prompt", "chosen", "rejected")), 1):
        where = f"{p}:{i}"
        prompt = messages_of(row["prompt"], "user", f"{where}: prompt")
        if prompt[-1]["role"] != "user":
            raise DataError(f"{where}: the prompt must end with a user turn")
        chosen = messages_of(row["chosen"], "assistant", f"{where}: chosen")
        rejected = messages_of(row["rejected"], "assistant", f"{where}: rejected")
        for name, msgs in (("chosen", chosen), ("rejected", rejected)):
            if [m["role"] for m in msgs] != ["assistant"]:
                raise DataError(f"{where}: {name} must be one assistant message")
        if chosen[0]["content"] == rejected[0]["content"]:
            raise DataError(f"{where}: chosen and rejected are the same text")
        out.append({"id": str(row.get("id", i)), "prompt": prompt, "chosen": chosen, "rejected": rejected})
    if not out:
        raise DataError(f"{p}: no pairs")
    return out


def select_pairs(
    items: list[PromptItem],
    cands: list[list[Candidate]],
    scores: list[list[dict] | None],
    judge: str,
    min_gap: float = 0.0,
) -> tuple[list[dict], dict[str, int]]:
    """Best vs worst candidate per prompt → pair rows; counts of skipped prompts by reason."""
    pairs, skipped = [], {}

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    for it, cs, sc in zip(items, cands, scores, strict=True):
        if sc is None:
            skip("no label")
            continue
        ranked = [j for j in range(len(cs)) if sc[j].get("score") is not None]
        if len({cs[j].text.strip() for j in ranked}) < 2:
            skip("identical candidates")
            continue
        best = max(ranked, key=lambda j: sc[j]["score"])
        worst = min((j for j in ranked if cs[j].text.strip() != cs[best].text.strip()), key=lambda j: sc[j]["score"])
        gap = sc[best]["score"] - sc[worst]["score"]
        if gap <= min_gap:
            skip("score gap too small")
            continue
        if sc[best].get("issues"):
            skip("no candidate passes the checks")
            continue
        pairs.append(
            {
                "id": it.id,
                "prompt": it.messages,
                "chosen": [{"role": "assistant", "content": cs[best].text}],
                "rejected": [{"role": "assistant", "content": cs[worst].text}],
                "meta": {
                    "judge": judge,
                    "chosen_source": cs[best].source,
                    "rejected_source": cs[worst].source,
                    "gap": round(gap, 4),
                    **it.meta,
                    "scores": {
                        c.source: (None if s.get("score") is None else round(s["score"], 4))
                        for c, s in zip(cs, sc, strict=True)
                    },
                },
            }
        )
    return pairs, skipped
