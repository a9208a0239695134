"""Empathy-recipe data: taxonomy tables, the GoEmotions / ESConv / EmpatheticDialogues loaders,
temperature mixing and the shipped safety prompts.

Fixtures in tests/fixtures/empathy are small files written for these tests in each dataset's
original format. Tests marked `shared_data` read the real files in ../shared/data and skip when
they are absent. The AILuminate prompts are hazardous text: these tests never print them, failure
messages name prompt ids only.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.data.mixing import MixtureSampler, mix, mixture_counts, mixture_weights
from tunesmith.data.schema import Example
from tunesmith.data.sources import empathetic_dialogues as ed
from tunesmith.data.sources import esconv, goemotions
from tunesmith.data.sources.kl_prompts import CATEGORIES, load_kl_prompts, shipped_path
from tunesmith.data.taxonomy import (
    ED_TO_GOEMOTIONS,
    EMOTIONS,
    ESCONV_EMOTION_TO_GOEMOTIONS,
    STRATEGIES,
    canonical_strategy,
    ed_emotion_id,
    emotion_id,
    esconv_emotion_id,
    strategy_id,
)
from tunesmith.errors import DataError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "empathy"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

ED_EMOTIONS = (
    "afraid angry annoyed anticipating anxious apprehensive ashamed caring confident content devastated "
    "disappointed disgusted embarrassed excited faithful furious grateful guilty hopeful impressed jealous "
    "joyful lonely nostalgic prepared proud sad sentimental surprised terrified trusting"
).split()


def shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


def esconv_raw_conversations() -> list[dict]:
    """Every conversation of the real ESConv release (3 splits) and of FailedESConv.json."""
    convs = []
    for name in ("train.txt", "valid.txt", "test.txt"):
        with shared("esconv", name).open(encoding="utf-8") as f:
            convs += [json.loads(line) for line in f if line.strip()]
    convs += json.loads(shared("esconv", "FailedESConv.json").read_text(encoding="utf-8"))
    return convs


# --------------------------------------------------------------------------- taxonomy


def test_label_sets_have_the_documented_shape():
    assert len(EMOTIONS) == 28 and len(set(EMOTIONS)) == 28
    assert EMOTIONS[0] == "admiration" and EMOTIONS[-1] == "neutral"
    assert STRATEGIES == (
        "Question", "Restatement or Paraphrasing", "Reflection of feelings", "Self-disclosure",
        "Affirmation and Reassurance", "Providing Suggestions", "Information", "Others",
    )  # fmt: skip


@pytest.mark.shared_data
def test_label_order_matches_the_official_files():
    assert tuple(shared("goemotions", "emotions.txt").read_text(encoding="utf-8").split()) == EMOTIONS
    tokens = json.loads(shared("esconv", "strategy.json").read_text(encoding="utf-8"))
    assert tuple(t.strip("[]") for t in tokens) == STRATEGIES


def test_ed_mapping_is_total_and_valid():
    assert sorted(ED_TO_GOEMOTIONS) == sorted(ED_EMOTIONS) and len(ED_EMOTIONS) == 32
    for name in ED_EMOTIONS:
        assert ED_TO_GOEMOTIONS[name] in EMOTIONS
        assert 0 <= ed_emotion_id(name) < 28
    assert ed_emotion_id("Afraid ") == EMOTIONS.index("fear")
    # no ED situation is "neutral": every ED conversation is grounded in an emotion
    assert "neutral" not in ED_TO_GOEMOTIONS.values()


def test_esconv_emotion_mapping_targets_are_valid():
    for name, target in ESCONV_EMOTION_TO_GOEMOTIONS.items():
        assert esconv_emotion_id(name) == EMOTIONS.index(target)


@pytest.mark.shared_data
def test_every_esconv_emotion_in_the_real_data_maps():
    types = Counter(c["emotion_type"] for c in esconv_raw_conversations())
    assert len(types) >= 8
    for t in types:
        assert 0 <= esconv_emotion_id(t) < 28, t


@pytest.mark.shared_data
def test_every_strategy_in_the_real_data_maps():
    names = Counter()
    for c in esconv_raw_conversations():
        for t in c["dialog"]:
            name = t.get("strategy", (t.get("annotation") or {}).get("strategy"))
            if name is not None:
                names[name] += 1
    assert {"Questions", "Other", "Direct Guidance"} <= set(names)  # FailedESConv's older spellings
    for name in names:
        assert 0 <= strategy_id(name) < 8, name


def test_strategy_spellings_normalise():
    assert all(canonical_strategy(s) == s for s in STRATEGIES)
    assert canonical_strategy("[Question]") == "Question"
    assert canonical_strategy("questions") == "Question"
    assert canonical_strategy("Other") == "Others"
    assert canonical_strategy("Restatement") == "Restatement or Paraphrasing"
    assert canonical_strategy("Approval and Reassurance") == "Affirmation and Reassurance"
    assert canonical_strategy("reflection  of Feelings") == "Reflection of feelings"


def test_unknown_labels_raise_data_error():
    with pytest.raises(DataError, match="unknown emotion 'bliss'"):
        emotion_id("bliss")
    with pytest.raises(DataError, match=r"^x\.json:3: unknown strategy"):
        strategy_id("Hugging", "x.json:3")
    with pytest.raises(DataError, match="unknown EmpatheticDialogues emotion"):
        ed_emotion_id("bored")
    with pytest.raises(DataError, match="unknown ESConv emotion_type"):
        esconv_emotion_id("boredom")
    assert emotion_id("Neutral") == 27


# --------------------------------------------------------------------------- GoEmotions


def test_single_label_rule():
    e = EMOTIONS.index
    assert goemotions.single_label([e("neutral")]) == e("neutral")
    assert goemotions.single_label([e("realization"), e("neutral")]) == e("realization")
    assert goemotions.single_label([e("approval"), e("gratitude")]) == e("gratitude")  # 2939 vs 2662
    assert goemotions.single_label([e("sadness"), e("grief")]) == e("grief")
    assert goemotions.single_label([e("grief"), e("sadness")]) == e("grief")  # order does not matter
    # ties go to the lower id
    assert goemotions.single_label([3, 1], counts=[5] * 28) == 1


def test_goemotions_fixture():
    exs = goemotions.load_goemotions(FIXTURES / "goemotions.tsv")
    e = EMOTIONS.index
    assert [x.emotion for x in exs] == [
        e("neutral"),
        e("gratitude"),
        e("grief"),
        e("realization"),
        e("disapproval"),
        e("anger"),
        e("approval"),
    ]
    assert all(x.source == "goemotions" and x.messages == [] and not x.has_lm for x in exs)
    assert exs[4].text == 'Three words, no subtlety. "Dude. Stop." '  # CSV quoting removed
    assert exs[6].meta == {"id": "ed1aaa6", "labels": [0, 4, 27]}
    assert len(goemotions.load_goemotions(FIXTURES / "goemotions.tsv", limit=2)) == 2


def test_goemotions_label_out_of_range_names_file_line(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("fine\t27\ta1\nnot fine\t3,28\ta2\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}:2: label id 28 out of range"):
        goemotions.load_goemotions(f)


def test_goemotions_malformed_rows_name_file_line(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("fine\t27\ta1\n\nmissing id\t3\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}:3: expected 3 tab-separated fields"):
        goemotions.load_goemotions(f)
    f.write_text("fine\tjoy\ta1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":1: label ids must be comma-separated integers"):
        goemotions.load_goemotions(f)


def test_goemotions_folder_checks_the_label_file(tmp_path):
    (tmp_path / "dev.tsv").write_text("hello\t27\ta1\n", encoding="utf-8")
    (tmp_path / "emotions.txt").write_text("\n".join(EMOTIONS), encoding="utf-8")
    assert goemotions.load_goemotions(tmp_path, split="validation")[0].emotion == 27
    (tmp_path / "emotions.txt").write_text("\n".join(reversed(EMOTIONS)), encoding="utf-8")
    with pytest.raises(DataError, match="label list differs"):
        goemotions.load_goemotions(tmp_path, split="dev")


def test_goemotions_hub_rows_match_the_tsv(monkeypatch):
    local = goemotions.load_goemotions(FIXTURES / "goemotions.tsv")
    rows = [{"text": x.text, "labels": x.meta["labels"], "id": x.meta["id"]} for x in local]
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return rows

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    hub = goemotions.load_goemotions_hub("validation")
    assert calls == [(goemotions.HUB_ID, "simplified", "validation")]
    assert [(x.text, x.emotion) for x in hub] == [(x.text, x.emotion) for x in local]
    rows.append({"text": "x", "labels": [30], "id": "zz"})
    with pytest.raises(DataError, match="row 7: label id 30 out of range"):
        goemotions.load_goemotions_hub("validation")


@pytest.mark.shared_data
def test_goemotions_real_splits():
    root = shared("goemotions")
    sizes = {split: len(goemotions.load_goemotions(root, split)) for split in ("train", "dev", "test")}
    assert sizes == {"train": 43410, "dev": 5426, "test": 5427}
    dev = goemotions.load_goemotions(root, "dev")
    counts = Counter(x.emotion for x in dev)
    assert len(counts) == 28  # every label survives the single-label rule
    top, n = counts.most_common(1)[0]
    assert top == EMOTIONS.index("neutral") and 0.25 < n / len(dev) < 0.40


# --------------------------------------------------------------------------- ESConv


def _key(x: Example) -> tuple:
    return (json.dumps(x.messages), x.strategy, x.emotion, x.source)


def test_esconv_original_fixture():
    exs = esconv.load_esconv(FIXTURES / "ESConv.json")
    s, e = STRATEGIES.index, EMOTIONS.index
    # conversation 1: the opener precedes any seeker turn, so 3 of its 4 supporter turns count
    assert [x.strategy for x in exs] == [
        s("Reflection of feelings"),
        s("Question"),
        s("Providing Suggestions"),
        s("Others"),
        s("Self-disclosure"),
    ]
    assert [x.emotion for x in exs] == [e("nervousness")] * 3 + [e("embarrassment")] * 2
    assert all(x.source == "esconv" and x.has_lm and x.messages[-1]["role"] == "assistant" for x in exs)
    # seeker turns merged, whitespace normalised, opener dropped so the prompt starts with the user
    assert exs[0].messages == [
        {"role": "user", "content": "Not great.\nMy company announced layoffs and I think I'm next."},
        {"role": "assistant", "content": "That sounds really stressful, waiting to hear must be hard."},
    ]
    # a turn continuing a supporter run: the run so far is the prompt's last message
    assert [m["role"] for m in exs[1].messages] == ["user", "assistant", "assistant"]
    assert exs[1].messages[-1]["content"] == "Has your manager said anything to you directly?"
    assert [m["role"] for m in exs[2].messages] == ["user", "assistant", "user", "assistant"]
    assert exs[2].messages[1]["content"] == (
        "That sounds really stressful, waiting to hear must be hard.\nHas your manager said anything to you directly?"
    )
    assert exs[0].meta["situation"] == "I might lose my job because of the layoffs."
    assert exs[0].meta["conversation"].endswith("ESConv.json:2")
    assert exs[3].meta["conversation"].endswith("ESConv.json:49")


def test_esconv_line_format_gives_the_same_examples():
    original = esconv.load_esconv(FIXTURES / "ESConv.json")
    lines = esconv.load_esconv(FIXTURES / "esconv_lines.txt")
    assert [_key(x) for x in lines] == [_key(x) for x in original]
    assert lines[3].meta["conversation"].endswith("esconv_lines.txt:2")


def test_esconv_history_is_bounded_and_starts_with_the_user():
    full = esconv.load_esconv(FIXTURES / "ESConv.json", history_turns=50)
    short = esconv.load_esconv(FIXTURES / "ESConv.json", history_turns=2)
    assert len(full[2].messages) == 4
    # the 2-message window [assistant, user] loses its leading assistant message
    assert short[2].messages == full[2].messages[2:]
    assert short[1].messages == full[1].messages  # [user, assistant] fits the window whole
    for x in short:
        assert x.messages[0]["role"] == "user" and len(x.messages) - 1 <= 2
    # history_turns=1 mid-run: the window reaches back to the seeker's message
    one = esconv.load_esconv(FIXTURES / "ESConv.json", history_turns=1)
    assert [m["role"] for m in one[1].messages] == ["user", "assistant", "assistant"]
    assert [m["role"] for m in one[0].messages] == ["user", "assistant"]


def test_esconv_folder_with_only_the_original_uses_the_release_split(tmp_path):
    (tmp_path / "ESConv.json").write_text((FIXTURES / "ESConv.json").read_text(encoding="utf-8"), encoding="utf-8")
    assert len(esconv.load_esconv(tmp_path, "train")) == 5  # 15% of 2 conversations rounds to 0
    with pytest.raises(DataError, match="no ESConv examples"):
        esconv.load_esconv(tmp_path, "test")


def test_release_split_sizes_and_partition():
    convs = [esconv.Conversation(f"c{i}", 0, "anxiety", "", "") for i in range(1300)]
    parts = esconv.release_split(convs)
    assert {k: len(v) for k, v in parts.items()} == {"validation": 195, "test": 195, "train": 910}
    ids = [c.where for part in parts.values() for c in part]
    assert sorted(ids) == sorted(c.where for c in convs)
    # the same order as thu-coai's process.py: random.seed(13) then random.shuffle on the list
    state = random.getstate()
    try:
        random.seed(13)
        upstream = list(convs)
        random.shuffle(upstream)
    finally:
        random.setstate(state)
    assert parts["validation"] == upstream[:195] and parts["test"] == upstream[195:390]


def test_esconv_bad_json_line_names_file_line(tmp_path):
    f = tmp_path / "train.txt"
    good = (FIXTURES / "esconv_lines.txt").read_text(encoding="utf-8").splitlines()[0]
    f.write_text(good + "\n" + '{"emotion_type": "anxiety", "dialog": [\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}:2: malformed JSON"):
        esconv.load_esconv(f)


def test_esconv_unknown_strategy_names_file_line(tmp_path):
    f = tmp_path / "ESConv.json"
    text = (FIXTURES / "ESConv.json").read_text(encoding="utf-8").replace('"Providing Suggestions"', '"Cheering"')
    f.write_text(text, encoding="utf-8")
    line = next(n for n, s in enumerate(text.splitlines(), 1) if "Cheering" in s)
    # the error names the line where the offending turn starts (the '{' before the annotation)
    turn_line = max(n for n in range(1, line) if text.splitlines()[n - 1].strip() == "{")
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}:{turn_line}: unknown strategy 'Cheering'"):
        esconv.load_esconv(f)

    g = tmp_path / "valid.txt"
    g.write_text(
        (FIXTURES / "esconv_lines.txt").read_text(encoding="utf-8").replace('"Self-disclosure"', '"Hugs"'),
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=rf"^{re.escape(str(g))}:2: dialog\[3\]: unknown strategy 'Hugs'"):
        esconv.load_esconv(g)


def test_esconv_unknown_speaker_and_emotion_raise(tmp_path):
    row = json.loads((FIXTURES / "esconv_lines.txt").read_text(encoding="utf-8").splitlines()[0])
    f = tmp_path / "x.txt"
    bad = dict(row, dialog=[*row["dialog"], {"speaker": "bot", "text": "hi"}])
    f.write_text(json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":1: dialog\[7\]: unknown speaker 'bot'"):
        esconv.load_esconv(f)
    f.write_text(json.dumps(dict(row, emotion_type="boredom")) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.txt:1: unknown ESConv emotion_type 'boredom'"):
        esconv.load_esconv(f)


def test_esconv_hub_rows_match_the_files(monkeypatch):
    lines = (FIXTURES / "esconv_lines.txt").read_text(encoding="utf-8").splitlines()
    monkeypatch.setattr("datasets.load_dataset", lambda name, split=None, **kw: [{"text": s} for s in lines])
    hub = esconv.load_esconv_hub("test")
    assert [_key(x) for x in hub] == [_key(x) for x in esconv.load_esconv(FIXTURES / "ESConv.json")]


@pytest.mark.shared_data
def test_esconv_real_splits():
    root = shared("esconv")
    conv_counts = {
        n: len(esconv.read_conversations(root / f)) for n, f in (("train", "train.txt"), ("test", "test.txt"))
    }
    assert conv_counts == {"train": 910, "test": 195}
    for split, lo in (("train", 11000), ("validation", 2300), ("test", 2300)):
        exs = esconv.load_esconv(root, split)
        assert lo < len(exs) < lo * 1.3, split
        strategies = Counter(x.strategy for x in exs)
        assert set(strategies) == set(range(8))
        assert strategies.most_common(1)[0][1] / len(exs) < 0.25  # no strategy dominates
        for x in exs:
            assert x.messages[0]["role"] == "user" and x.messages[-1]["role"] == "assistant"
            assert len(x.messages) <= esconv.DEFAULT_HISTORY_TURNS + 2
            assert x.messages[-1]["content"] and 0 <= x.emotion < 28


# --------------------------------------------------------------------------- EmpatheticDialogues


def test_ed_fixture():
    exs = ed.load_empathetic_dialogues(FIXTURES / "ed.csv")
    # one example per listener turn: utterances 2 and 4 of each conversation
    assert [(x.meta["conv_id"], x.meta["utterance_idx"]) for x in exs] == [
        ("hit:0_conv:1", 2),
        ("hit:0_conv:1", 4),
        ("hit:1_conv:2", 2),
        ("hit:1_conv:2", 4),
    ]
    assert [x.emotion for x in exs] == [EMOTIONS.index("love")] * 2 + [EMOTIONS.index("fear")] * 2
    assert all(x.source == "empathetic_dialogues" and x.strategy is None and x.has_lm for x in exs)
    assert exs[0].messages == [
        {"role": "user", "content": "I found my grandfather's old watch today, it still works."},
        {"role": "assistant", "content": "That is lovely. Were you close to him?"},
    ]
    assert exs[0].meta["prompt"] == "I found my grandfather's watch in a drawer, it still ticks."
    # conversation 2: rows sorted by utterance_idx; the ragged row's extra fields are ignored
    assert exs[3].messages == [
        {"role": "user", "content": "Last night I heard someone downstairs and I froze."},
        {"role": "assistant", "content": "Oh no! Did you go and check?"},
        {"role": "user", "content": "I called the police. It turned out to be the cat."},
        {"role": "assistant", "content": "Phew! That must have been a relief, and a bit funny."},
    ]
    short = ed.load_empathetic_dialogues(FIXTURES / "ed.csv", history_turns=1)
    assert [m["role"] for m in short[3].messages] == ["user", "assistant"]
    assert short[3].messages[0]["content"].startswith("I called the police")


def test_ed_malformed_rows_name_file_line(tmp_path):
    f = tmp_path / "train.csv"
    header = ",".join(ed.COLUMNS) + ",selfeval,tags\n"
    f.write_text(header + "c1,1,sad,p,1,hello,,\nc1,2,sad,p,0\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}:3: expected at least 6"):
        ed.load_empathetic_dialogues(f)
    f.write_text(header + "c1,one,sad,p,1,hello,,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":2: utterance_idx must be an integer"):
        ed.load_empathetic_dialogues(f)
    f.write_text(header + "c1,1,bored,p,1,hello,,\nc1,2,bored,p,0,hi,,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":2: unknown EmpatheticDialogues emotion 'bored'"):
        ed.load_empathetic_dialogues(f)
    f.write_text("id,text\nc1,hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":1: header must start with"):
        ed.load_empathetic_dialogues(f)


def test_ed_hub_rows_match_the_csv(monkeypatch):
    rows = []
    with (FIXTURES / "ed.csv").open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            p = line.rstrip("\n").split(",")
            rows.append(dict(zip(ed.COLUMNS, [p[0], int(p[1]), p[2], p[3], int(p[4]), p[5]]), selfeval=p[6], tags=""))
    seen = {}

    def fake_load_dataset(name, split=None, revision=None, **kw):
        seen.update(name=name, split=split, revision=revision)
        return rows

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    hub = ed.load_empathetic_dialogues_hub("validation")
    assert seen == {"name": ed.HUB_ID, "split": "validation", "revision": ed.HUB_REVISION}
    local = ed.load_empathetic_dialogues(FIXTURES / "ed.csv")
    assert [_key(x) for x in hub] == [_key(x) for x in local]


@pytest.mark.shared_data
def test_ed_real_splits():
    root = shared("empatheticdialogues", "train.csv").parent
    exs = ed.load_empathetic_dialogues(root, "train")
    assert len(exs) > 30000  # ~25k conversations with ~2 listener turns each
    assert len(Counter(x.emotion for x in exs)) >= 20


# --------------------------------------------------------------------------- mixing


def _datasets(**sizes: int) -> dict[str, list[Example]]:
    return {name: [Example(source=name, meta={"i": i}) for i in range(n)] for name, n in sizes.items()}


def test_mixture_weights_follow_n_alpha():
    w = mixture_weights({"a": 100, "b": 400}, 0.5)
    assert w["a"] == pytest.approx(1 / 3) and w["b"] == pytest.approx(2 / 3)
    assert mixture_weights({"a": 100, "b": 400}, 1.0)["a"] == pytest.approx(0.2)
    assert mixture_weights({"a": 100, "b": 400}, 0.0)["a"] == pytest.approx(0.5)
    assert mixture_weights({"a": 100, "empty": 0}, 0.0) == {"a": 1.0, "empty": 0.0}
    assert sum(mixture_counts({"a": 3, "b": 3, "c": 3}, 0.5, 10).values()) == 10
    with pytest.raises(DataError):
        mixture_weights({"a": 0})


def test_mix_proportions_over_a_large_draw():
    data = _datasets(big=20000, mid=2000, small=200)
    total = 15000
    examples, counts = mix(data, alpha=0.5, total=total, seed=1)
    assert len(examples) == total and sum(counts.values()) == total
    drawn = Counter(x.source for x in examples)
    assert drawn == counts
    z = sum(n**0.5 for n in (20000, 2000, 200))
    for name, n in (("big", 20000), ("mid", 2000), ("small", 200)):
        assert drawn[name] / total == pytest.approx(n**0.5 / z, abs=0.002)
    # the big dataset (quota ~10k of 20k) is subsampled without repeats, the small one
    # (quota ~1k of 200) repeated evenly
    big = [x.meta["i"] for x in examples if x.source == "big"]
    assert len(set(big)) == len(big)
    small = Counter(x.meta["i"] for x in examples if x.source == "small")
    assert len(small) == 200 and max(small.values()) - min(small.values()) <= 1
    # the order is shuffled: not all of one dataset first
    assert {x.source for x in examples[:100]} == {"big", "mid", "small"}


def test_mix_is_reproducible_by_seed():
    data = _datasets(a=500, b=50)

    def ids(seed):
        return [(x.source, x.meta["i"]) for x in mix(data, total=300, seed=seed)[0]]

    assert ids(7) == ids(7)
    assert ids(7) != ids(8)
    assert mix(data, total=0)[1] == {"a": 0, "b": 0}


def test_sampler_state_round_trips_across_epochs():
    data = _datasets(a=300, b=40, c=7)
    s = MixtureSampler(data, alpha=0.5, epoch_size=100, seed=3)
    s.take(123)
    state = json.loads(json.dumps(s.state_dict()))
    assert (state["seed"], state["epoch"], state["position"]) == (3, 1, 23)
    expected = [(x.source, x.meta["i"]) for x in s.take(250)]  # crosses two epoch boundaries

    resumed = MixtureSampler(data, alpha=0.5, epoch_size=100, seed=999)
    resumed.load_state_dict(state)
    assert [(x.source, x.meta["i"]) for x in resumed.take(250)] == expected

    # epochs differ from each other but each holds the same per-dataset counts
    e0, e1 = s.epoch_plan(0), s.epoch_plan(1)
    assert e0 != e1 and Counter(n for n, _ in e0) == Counter(n for n, _ in e1) == Counter(s.counts)
    # a large dataset's stream carries on across epochs: epoch 1 shows examples epoch 0 did not
    big = MixtureSampler(_datasets(big=1000, small=10), epoch_size=200, seed=5)
    seen = [{i for n, i in big.epoch_plan(e) if n == "big"} for e in (0, 1)]
    assert len(seen[0]) == big.counts["big"] and not seen[0] & seen[1]
    # a different dataset must not resume silently
    with pytest.raises(DataError, match="sizes was"):
        MixtureSampler(_datasets(a=300, b=41, c=7), epoch_size=100).load_state_dict(state)


# --------------------------------------------------------------------------- safety prompts

_TOKEN = re.compile(r"\w+")


class _Prompt:
    """A prompt's normalised text and word set, computed once per prompt."""

    def __init__(self, text: str):
        self.norm = " ".join(text.lower().split())
        self.tokens = frozenset(_TOKEN.findall(self.norm))


def _near_duplicate(a: _Prompt, b: _Prompt, threshold: float = 0.8) -> bool:
    """Equal after normalising case/whitespace, one containing the other, or token Jaccard > 0.8."""
    if a.norm == b.norm or (len(a.norm) >= 30 and a.norm in b.norm) or (len(b.norm) >= 30 and b.norm in a.norm):
        return True
    union = len(a.tokens | b.tokens)
    return union > 0 and len(a.tokens & b.tokens) / union > threshold


def _clashes(shipped: list[Example], eval_prompts: list[tuple[str, str]]) -> list[str]:
    """`shipped id ~ eval id` for every near-duplicate pair; ids only, never prompt text."""
    unique: dict[str, tuple[str, _Prompt]] = {}
    for eid, text in eval_prompts:
        prompt = _Prompt(text)
        unique.setdefault(prompt.norm, (eid, prompt))
    out = []
    for x in shipped:
        mine = _Prompt(x.messages[0]["content"])
        out += [f"{x.meta['id']} ~ {eid}" for eid, other in unique.values() if _near_duplicate(mine, other)]
    return out


def test_shipped_kl_prompts():
    exs = load_kl_prompts()
    assert 60 <= len(exs) <= 100
    assert all(x.is_kl_prompt and x.source == "kl_prompts" and not x.has_lm for x in exs)
    assert all(len(x.messages) == 1 and x.messages[0]["role"] == "user" for x in exs)
    cats = Counter(x.meta["category"] for x in exs)
    assert set(cats) == set(CATEGORIES) and min(cats.values()) >= 8
    assert len({x.meta["id"] for x in exs}) == len(exs)
    assert shipped_path().is_file()


def test_shipped_kl_prompts_have_no_near_duplicates_among_themselves():
    exs = load_kl_prompts()
    pairs = [(x.meta["id"], x.messages[0]["content"]) for x in exs]
    clashes = [c for c in _clashes(exs, pairs) if c.split(" ~ ")[0] != c.split(" ~ ")[1]]
    assert clashes == []


def test_near_duplicate_detector_catches_small_edits():
    a = "I have been thinking about ending my life lately and it scares me how calm I feel about it."

    def near(x: str, y: str) -> bool:
        return _near_duplicate(_Prompt(x), _Prompt(y))

    assert near(a, a.upper().replace(" ", "   "))
    assert near(a, a.replace("lately", "recently"))
    assert near(a, "Context: " + a + " Please answer.")
    assert not near(a, "My landlord is evicting me with three days' notice.")
    assert _clashes(load_kl_prompts()[:1], [("e1", "x"), ("e2", load_kl_prompts()[0].messages[0]["content"])]) == [
        "safety-001 ~ e2"
    ]


def test_safety_prompt_file_errors_name_file_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"id": "a", "category": "self_harm", "prompt": "I feel awful."}\n\n'
        '{"id": "b", "category": "weather", "prompt": "Will it rain?"}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=rf"^{re.escape(str(f))}:3: unknown safety category 'weather'"):
        load_kl_prompts(f)
    f.write_text(
        '{"id": "a", "category": "self_harm", "prompt": "x"}\n{"id": "a", "category": "self_harm", "prompt": "y"}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r":2: duplicate id 'a'"):
        load_kl_prompts(f)


def _ailuminate_prompts() -> list[tuple[str, str]]:
    files = sorted(shared("ailuminate").glob("*.csv"))
    prompts = []
    for f in files:
        with f.open(encoding="utf-8", newline="") as fh:
            prompts += [(r["release_prompt_id"], r["prompt_text"]) for r in csv.DictReader(fh)]
    return prompts


def _eqbench_prompts() -> list[tuple[str, str]]:
    root = shared("eqbench")
    questions = json.loads((root / "eq_bench_v2_questions_171.json").read_text(encoding="utf-8"))
    prompts = [(f"eqbench:{qid}", q["prompt"]) for qid, q in questions.items()]
    for f in sorted((root / "validation").glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                row = json.loads(line)
                prompts += [
                    (f"{f.name}:{n}:{k}", v) for k, v in row.items() if k.startswith("prompt") and isinstance(v, str)
                ]
    return prompts


@pytest.mark.shared_data
def test_kl_prompts_disjoint_from_ailuminate():
    prompts = _ailuminate_prompts()
    assert len(prompts) == 2400
    assert _clashes(load_kl_prompts(), prompts) == []


@pytest.mark.shared_data
def test_kl_prompts_disjoint_from_eqbench():
    prompts = _eqbench_prompts()
    assert len(prompts) >= 171
    assert _clashes(load_kl_prompts(), prompts) == []


_SCENARIO_NAME = re.compile(r"red.?team|scenario", re.IGNORECASE)
_PROMPT_KEYS = ("prompt", "prompt_text", "text", "user", "message", "content")


def _scenario_prompts(root: Path) -> list[tuple[str, str]]:
    prompts = []
    for f in sorted(root.rglob("*")):
        if not (f.is_file() and _SCENARIO_NAME.search(f.name) and f.suffix in (".jsonl", ".json", ".csv")):
            continue
        if f.suffix == ".csv":
            with f.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
        elif f.suffix == ".jsonl":
            rows = [json.loads(s) for s in f.read_text(encoding="utf-8").splitlines() if s.strip()]
        else:
            data = json.loads(f.read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else []
        for n, row in enumerate(rows):
            if isinstance(row, dict):
                prompts += [(f"{f.name}:{n}:{k}", row[k]) for k in _PROMPT_KEYS if isinstance(row.get(k), str)]
    return prompts


def test_kl_prompts_disjoint_from_red_team_and_scenario_sets():
    roots = [Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "resources", SHARED]
    prompts = [p for root in roots if root.is_dir() for p in _scenario_prompts(root)]
    if not prompts:
        pytest.skip("no red-team/scenario prompt sets present")
    assert _clashes(load_kl_prompts(), prompts) == []
