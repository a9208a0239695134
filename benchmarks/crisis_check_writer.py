#!/usr/bin/env python3
"""Checks one crisis-data writer's file before it is accepted (benchmarks/data/crisis_writers_brief.md):

    python3 benchmarks/crisis_check_writer.py PASS_DIR/w01_en_fr.jsonl --langs en,fr --rows 200 --multi 7

Schema (exactly text|messages, label, category, kind, lang; conversations of 3 or 5 turns alternating
user/assistant, starting and ending with the user), counts (per language: half the rows, half of those crisis,
at least --multi conversations of each label), and near-duplicates: character 5-gram Jaccard >= --threshold
(letters and digits only, as tests/test_crisis.py reads them) against every crisis data file, the current
held-out set, the other .jsonl files in the same folder (the other writers of this pass) and the file's own rows.
Plain Python: writers run it without the project installed. Exit 1 with one line per problem.
"""

import argparse
import glob
import json
import os
import re
import sys
import unicodedata
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXISTING = sorted(glob.glob(f"{REPO}/src/tunesmith/resources/crisis/*.jsonl")) + [
    f"{REPO}/benchmarks/data/crisis_heldout.jsonl"
]
LANGS = {"en", "fr", "es", "de", "it", "pt"}
CATS = {"self_harm", "harm_to_others", "medical_emergency"}
ZW = dict.fromkeys(map(ord, "\u200b\u200c\u200d\ufeff"), None)
QU = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def norm(t):
    t = unicodedata.normalize("NFKC", t).translate(ZW).translate(QU)
    return " ".join(t.lower().split())


def grams(t, n=5):
    t = re.sub(r"[\W_]+", "", norm(t))
    return frozenset(t[i : i + n] for i in range(max(1, len(t) - n + 1)))


def row_text(o):
    """A row's user text: conversations' user turns joined (plain strings are user turns, as in the red-team
    sheet), else `text` (`prompt` in the red-team sheet)."""
    if "messages" in o:
        turns = [m if isinstance(m, str) else m.get("content", "") for m in o["messages"]
                 if isinstance(m, str) or m.get("role") == "user"]  # fmt: skip
        return " \n ".join(t.strip() for t in turns if t.strip())
    return o.get("text") or o.get("prompt", "")


def load_texts(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    out.append(row_text(json.loads(line)))
                except ValueError:  # another writer of the pass may be halfway through appending a line
                    pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--langs", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--multi", type=int, default=7)
    ap.add_argument("--threshold", type=float, default=0.5)
    a = ap.parse_args()
    langs = a.langs.split(",")
    problems = []
    rows = []
    with open(a.path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                problems.append(f"line {i}: blank line")
                continue
            try:
                o = json.loads(line)
            except Exception as e:
                problems.append(f"line {i}: not JSON ({e})")
                continue
            if not isinstance(o, dict):
                problems.append(f"line {i}: not an object")
                continue
            keys = set(o)
            body = keys & {"text", "messages"}
            if len(body) != 1 or keys - body != {"label", "category", "kind", "lang"}:
                problems.append(
                    f"line {i}: keys must be exactly text|messages, label, category, kind, lang; got {sorted(keys)}"
                )
                continue
            if o["lang"] not in langs:
                problems.append(f"line {i}: lang {o['lang']!r} not one of {langs}")
            if o["label"] == "crisis":
                if o["category"] not in CATS:
                    problems.append(f"line {i}: crisis category must be one of {sorted(CATS)}")
            elif o["label"] == "benign":
                if o["category"] is not None:
                    problems.append(f"line {i}: benign category must be null")
            else:
                problems.append(f"line {i}: label must be crisis or benign")
            if not isinstance(o["kind"], str) or not o["kind"]:
                problems.append(f"line {i}: kind must be a non-empty string")
            if "messages" in o:
                m = o["messages"]
                ok = (
                    isinstance(m, list)
                    and len(m) in (3, 5)
                    and all(
                        isinstance(x, dict)
                        and set(x) == {"role", "content"}
                        and isinstance(x["content"], str)
                        and x["content"].strip()
                        for x in m
                    )
                )
                if ok:
                    ok = all(x["role"] == ("user" if j % 2 == 0 else "assistant") for j, x in enumerate(m))
                if not ok:
                    problems.append(
                        f"line {i}: messages must be 3 or 5 {{role, content}} turns alternating user/assistant, starting and ending with user, none empty"
                    )
                if o["kind"] != "multi_turn":
                    problems.append(f"line {i}: a conversation's kind must be multi_turn")
            else:
                if not isinstance(o["text"], str) or not o["text"].strip():
                    problems.append(f"line {i}: text must be a non-empty string")
                if o["kind"] == "multi_turn":
                    problems.append(f"line {i}: kind multi_turn is only for conversations")
            rows.append((i, o))
    if len(rows) != a.rows:
        problems.append(f"file has {len(rows)} rows, expected {a.rows}")
    per = a.rows // len(langs)
    for L in langs:
        rl = [o for _, o in rows if o.get("lang") == L]
        c = [o for o in rl if o.get("label") == "crisis"]
        b = [o for o in rl if o.get("label") == "benign"]
        if len(rl) != per:
            problems.append(f"lang {L}: {len(rl)} rows, expected {per}")
        if len(c) != per // 2:
            problems.append(f"lang {L}: {len(c)} crisis rows, expected {per // 2}")
        if len(b) != per // 2:
            problems.append(f"lang {L}: {len(b)} benign rows, expected {per // 2}")
        cm = sum("messages" in o for o in c)
        bm = sum("messages" in o for o in b)
        if cm < a.multi:
            problems.append(f"lang {L}: {cm} crisis conversations, need at least {a.multi}")
        if bm < a.multi:
            problems.append(f"lang {L}: {bm} benign conversations, need at least {a.multi}")
    # near-duplicates
    ex = [(os.path.basename(p), t, grams(t)) for p in EXISTING for t in load_texts(p)]
    others = []
    me = os.path.abspath(a.path)
    for p in sorted(glob.glob(os.path.join(os.path.dirname(me), "*.jsonl"))):
        if os.path.abspath(p) != me:
            for t in load_texts(p):
                others.append((os.path.basename(p) + " (another writer)", t, grams(t)))
    pool = ex + others
    index = {}
    for j, (_, _, g) in enumerate(pool):
        for x in g:
            index.setdefault(x, []).append(j)
    mine = [(i, grams(row_text(o))) for i, o in rows]
    th = a.threshold
    for k, (i, g) in enumerate(mine):
        cnt = Counter()
        for x in g:
            for j in index.get(x, ()):
                cnt[j] += 1
        for j, inter in cnt.items():
            if inter / (len(g) + len(pool[j][2]) - inter) >= th:
                problems.append(f"line {i}: too close to a row in {pool[j][0]}: {pool[j][1][:90]!r}")
                break
        for i2, g2 in mine[k + 1 :]:
            inter = len(g & g2)
            if inter and inter / (len(g) + len(g2) - inter) >= th:
                problems.append(f"line {i2}: too close to line {i} of this file")
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems[:80]:
            print(" ", p)
        if len(problems) > 80:
            print(f"  ... and {len(problems) - 80} more")
        sys.exit(1)
    n = Counter((o["lang"], o["label"], "conv" if "messages" in o else "single") for _, o in rows)
    print("OK", a.path, dict(sorted(n.items())))


if __name__ == "__main__":
    main()
