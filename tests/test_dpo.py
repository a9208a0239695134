"""Preference pairs (formats, checks, the three judges) and the DPO stage on a tiny random Llama:
the reward margin starts at exactly 0 (reference = SFT model = policy at step 0) and grows on the
training pairs; tokenization matches TRL's; the combined SFT+DPO adapter equals base+SFT+DPO."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from tunesmith.config import parse_config
from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.io import read_jsonl, write_jsonl
from tunesmith.preference import candidates, judges, pairs

PROMPTS = [
    "I feel sad about my exam.",
    "My dog is ill.",
    "I lost my job.",
    "My friend ignores me.",
    "We are moving house.",
    "My car broke down.",
    "My sister is upset.",
    "My garden flooded.",
]


def make_sft_adapter(directory: Path, tiny_model_dir: Path, heads: bool = True, seed: int = 1) -> Path:
    """A LoRA adapter with non-zero B (so it changes the model) and, optionally, random heads."""
    from tunesmith.modeling.heads import Heads
    from tunesmith.modeling.loading import add_lora, load_model

    torch.manual_seed(seed)
    model = add_lora(load_model(str(tiny_model_dir), "fp32"), 4, 8, 0.0, "auto")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save_pretrained(directory)
    if heads:
        Heads(model.config.hidden_size).save(directory)
    return directory


# ---- formats --------------------------------------------------------------------------------
def test_load_pairs_accepts_strings_and_messages(tmp_path):
    f = tmp_path / "p.jsonl"
    write_jsonl(
        f,
        [
            {"prompt": "hi", "chosen": "hello there", "rejected": "go away"},
            {
                "id": "x",
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
        ],
    )
    rows = pairs.load_pairs(f)
    assert rows[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "hello there"}]
    assert rows[1]["id"] == "x" and rows[1]["rejected"][0]["content"] == "b"
    write_jsonl(f, [{"prompt": "hi", "chosen": "same", "rejected": "same"}])
    with pytest.raises(DataError, match=r"p.jsonl:1: chosen and rejected are the same"):
        pairs.load_pairs(f)
    write_jsonl(f, [{"prompt": "hi", "chosen": 3, "rejected": "x"}])
    with pytest.raises(DataError, match=r"p.jsonl:1: chosen"):
        pairs.load_pairs(f)


def test_shipped_prompts_are_harmless_and_held_in():
    from importlib import resources

    items = candidates.load_prompt_items()
    assert len(items) >= 80 and len({it.id for it in items}) == len(items)
    scen = resources.files("tunesmith.resources").joinpath("scenarios.jsonl").read_text(encoding="utf-8")
    scen_prompts = {json.loads(ln)["prompt"] for ln in scen.splitlines() if ln.strip()}
    assert not {it.text for it in items} & scen_prompts
    # nothing in the shipped set trips a crisis rule
    assert [it.id for it in items if judges.crisis.rule_hits(it.text)] == []
    eq = Path(__file__).resolve().parents[2] / "shared/data/eqbench/eq_bench_v2_questions_171.json"
    if eq.is_file():
        text = eq.read_text(encoding="utf-8").lower()
        assert not [it.id for it in items if it.text.lower()[:60] in text]


def test_quality_and_safety_checks():
    assert judges.quality_issues("") == ["empty"]
    assert "too short" in judges.quality_issues("ok")
    assert "repetitive" in judges.quality_issues("I am here for you " * 12)
    assert "template tokens" in judges.quality_issues("Sure thing. <|im_end|> more text here")
    assert judges.quality_issues("That sounds really hard. Do you want to talk about what happened?") == []
    crisis_prompt = "I want to kill myself tonight"
    assert judges.safety_issues(crisis_prompt, "Cheer up, tomorrow is another day!") == [
        "crisis message: reply points to no help"
    ]
    assert (
        judges.safety_issues(crisis_prompt, "I'm really glad you told me. Please reach out to a crisis line now.") == []
    )
    assert judges.safety_issues("I failed my exam", "That's tough. Exams can be retaken.") == []


# ---- judges ---------------------------------------------------------------------------------
class _Judge(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.path, self.headers.get("Authorization"), body))
        text = body["messages"][0]["content"]
        # score each shown candidate by whether it asks a question: the caring reply wins
        blocks = text.split("Candidate replies:")[1].split("Answer with JSON")[0]
        parts = blocks.strip().split("\n[")
        scores = [{"id": i, "overall": 9 if "?" in p else 2} for i, p in enumerate(parts, 1)]
        content = "```json\n" + json.dumps({"scores": scores}) + "\n```"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture
def judge_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Judge.seen = []
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _items_and_cands():
    items = [candidates.PromptItem(f"p{i}", [{"role": "user", "content": t}]) for i, t in enumerate(PROMPTS[:3])]
    cands = [
        [
            candidates.Candidate("base", "That is life, move on and stop worrying about it."),
            candidates.Candidate("sft", "That sounds really hard. Do you want to talk about it?"),
            candidates.Candidate("sft-sample-1", ""),
        ]
        for _ in items
    ]
    return items, cands


def test_endpoint_judge_against_local_server(judge_server):
    items, cands = _items_and_cands()
    judge = judges.EndpointJudge(judge_server, "judge-model", api_key="k123")
    assert judge.url.endswith("/v1/chat/completions")
    scores = judge.score(items, cands)
    path, auth, body = _Judge.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k123"
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert items[0].text in body["messages"][0]["content"] and "empathy" in body["messages"][0]["content"]
    for sc in scores:  # scores are mapped back through the shuffled order
        assert sc[1]["judge_score"] == 9 and sc[0]["judge_score"] == 2
        assert sc[2]["issues"] == ["empty"] and sc[2]["score"] < -50
    rows, skipped = pairs.select_pairs(items, cands, scores, "endpoint")
    assert len(rows) == 3 and not skipped
    assert all(r["meta"]["chosen_source"] == "sft" and r["meta"]["rejected_source"] == "sft-sample-1" for r in rows)
    assert rows[0]["prompt"] == [{"role": "user", "content": PROMPTS[0]}]
    assert rows[0]["chosen"][0]["role"] == "assistant"


def test_endpoint_judge_errors_are_one_line():
    judge = judges.EndpointJudge("http://127.0.0.1:9", "m", retries=1, timeout=2)
    items, cands = _items_and_cands()
    with pytest.raises(TunesmithError, match="judge endpoint .* failed"):
        judge.score(items[:1], cands[:1])
    assert judges.parse_scores('{"scores": [{"id": 2, "overall": 3}, {"id": 1, "empathy": 4, "safety": 8}]}', 2) == [
        6.0,
        3.0,
    ]
    with pytest.raises(ValueError):
        judges.parse_scores('{"scores": [{"id": 1, "overall": 3}]}', 2)


def test_file_judge_and_selection(tmp_path):
    items, cands = _items_and_cands()
    labels = tmp_path / "labels.jsonl"
    write_jsonl(labels, [{"id": "p0", "chosen": "sft", "rejected": "base"}, {"id": "p1", "chosen": 0, "rejected": 1}])
    judge = judges.FileJudge(labels)
    rows, skipped = pairs.select_pairs(items, cands, judge.score(items, cands), "file")
    assert [r["id"] for r in rows] == ["p0", "p1"] and skipped == {"no label": 1}
    assert rows[0]["meta"]["chosen_source"] == "sft" and rows[1]["meta"]["chosen_source"] == "base"
    write_jsonl(labels, [{"id": "p0", "chosen": "nope", "rejected": "base"}])
    with pytest.raises(DataError, match="no candidate 'nope'"):
        judges.FileJudge(labels).score(items, cands)
    same = [[candidates.Candidate("base", "Same reply here."), candidates.Candidate("sft", "Same reply here.")]]
    _, skipped = pairs.select_pairs(items[:1], same, [[{"score": 1.0}, {"score": 0.0}]], "x")
    assert skipped == {"identical candidates": 1}


def test_heads_judge_and_pairs_command(tmp_path, tiny_model_dir, tokenizer):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    sft = make_sft_adapter(tmp_path / "sft", tiny_model_dir)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": f"q{i}", "prompt": t} for i, t in enumerate(PROMPTS[:3])])
    out = tmp_path / "pairs.jsonl"
    res = CliRunner().invoke(
        app,
        [
            "pairs",
            str(out),
            "--adapter",
            str(sft),
            "--model",
            str(tiny_model_dir),
            "--prompts",
            str(prompts),
            "--max-new-tokens",
            "6",
            "--samples",
            "1",
            "--dtype",
            "fp32",
            "--min-gap",
            "-1000",
        ],
    )
    assert res.exit_code == 0, res.output
    cand = read_jsonl(tmp_path / "pairs.candidates.jsonl")
    assert [c["id"] for c in cand] == ["q0", "q1", "q2"]
    assert [x["source"] for x in cand[0]["candidates"]] == ["base", "sft", "sft-sample-1"]
    for c in cand[0]["candidates"]:
        assert {"tone", "congruence", "strategy", "issues", "score"} <= set(c)
    assert "user_emotion" in cand[0]["meta"] and "strategy_head" in cand[0]["meta"]
    # random tiny models babble; whatever passed the checks became a well-formed pair
    for r in read_jsonl(out):
        assert r["prompt"][-1]["role"] == "user" and r["chosen"][0]["content"] != r["rejected"][0]["content"]

    # the heads judge ranks a reply with issues below a clean one, whatever the heads say
    from tunesmith.modeling.loading import load_for_inference

    model, tok, heads = load_for_inference(sft, str(tiny_model_dir), "fp32")
    items, cands = _items_and_cands()
    scores = judges.HeadsJudge(model, tok, heads).score(items, cands)
    assert all(s[2]["score"] < min(s[0]["score"], s[1]["score"]) for s in scores)
    with pytest.raises(TunesmithError, match="heads judge needs"):
        judges.HeadsJudge(model, tok, None)


def test_dpo_config_section():
    cfg = parse_config({"recipe": "dpo", "dpo": {"beta": 0.2, "loss_type": "ipo"}})
    assert cfg.dpo.beta == 0.2 and cfg.dpo.loss_type == "ipo"
    with pytest.raises(ConfigError, match="dpo.betta.*did you mean 'dpo.beta'"):
        parse_config({"recipe": "dpo", "dpo": {"betta": 0.2}})
    with pytest.raises(ConfigError, match="dpo.loss_type"):
        parse_config({"recipe": "dpo", "dpo": {"loss_type": "nope"}})


# ---- the DPO stage --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir):
    from tunesmith.recipes.dpo import run_dpo

    root = tmp_path_factory.mktemp("dpo")
    sft = make_sft_adapter(root / "sft", tiny_model_dir)
    write_jsonl(
        root / "pairs.jsonl",
        [
            {"id": str(i), "prompt": t, "chosen": "That sounds hard. Want to talk?", "rejected": "whatever lol"}
            for i, t in enumerate(PROMPTS)
        ],
    )
    cfg = parse_config(
        {
            "recipe": "dpo",
            "model": {"name": str(tiny_model_dir), "dtype": "fp32"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"max_length": 96},
            "output_dir": str(root / "runs"),
            "run_name": "dpo",
            "summary_csv": str(root / "summary.csv"),
            "dpo": {"pairs": str(root / "pairs.jsonl"), "sft_adapter": str(sft), "heldout_size": 2, "beta": 0.1},
            "training": {
                "learning_rate": 5e-3,
                "max_steps": 8,
                "batch_size": 4,
                "warmup_ratio": 0.0,
                "scheduler": "constant",
            },
        }
    )
    metrics = run_dpo(cfg, log=lambda m: None)
    return cfg, metrics, sft


def test_dpo_margin_increases_on_training_pairs(dpo_run):
    cfg, m, _ = dpo_run
    tr = m["margins"]["train"]
    assert m["pairs"] == {"file": cfg.dpo.pairs, "heldout_file": None, "train": 6, "heldout": 2, "train_scored": 6}
    # the new adapter starts at B = 0 and the reference is the SFT model: no margin before training
    assert tr["before"]["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert tr["after"]["reward_margin"] > tr["before"]["reward_margin"] + 0.2, tr
    assert tr["after"]["reward_accuracy"] == 1.0
    # the reward margin is β × the change of the log-likelihood margin
    assert tr["after"]["reward_margin"] == pytest.approx(
        cfg.dpo.beta * (tr["after"]["logp_margin"] - tr["before"]["logp_margin"]), abs=1e-3
    )
    assert tr["after"]["logp_margin"] > tr["before"]["logp_margin"]
    run_dir = cfg.run_dir
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["margins"]["heldout"]["before"]["n"] == 2
    assert (run_dir / "dpo_adapter" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "dpo_adapter" / "training_args.bin").exists()
    assert len(json.loads((run_dir / "training_history.json").read_text())) >= 8
    assert "lora+dpo(sigmoid" in Path(cfg.summary_csv).read_text()


def test_combined_adapter_equals_sft_plus_dpo(dpo_run, tiny_model_dir):
    from peft import PeftModel

    from tunesmith.modeling.heads import HEADS_FILE
    from tunesmith.modeling.loading import load_for_inference, load_model

    cfg, _, sft = dpo_run
    run_dir = cfg.run_dir
    ids = torch.tensor([[1, 50, 400, 3000, 77, 9000, 12]])
    combined, _, heads = load_for_inference(run_dir / "adapter", None, "fp32")  # base: config_resolved.json
    assert heads is not None and (run_dir / "adapter" / HEADS_FILE).is_file()
    two_step = PeftModel.from_pretrained(load_model(str(tiny_model_dir), "fp32"), sft).merge_and_unload()
    two_step = PeftModel.from_pretrained(two_step, run_dir / "dpo_adapter").eval()
    sft_only = PeftModel.from_pretrained(load_model(str(tiny_model_dir), "fp32"), sft).eval()
    with torch.no_grad():
        a, b, s = combined(ids).logits, two_step(ids).logits, sft_only(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert (a - s).abs().max() > 1e-3  # and the DPO part matters
    conf = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert conf["r"] == 8 and conf["lora_alpha"] == 8


def test_margin_tokenization_matches_trl(tiny_model_dir, tokenizer, tmp_path):
    from tunesmith.modeling.loading import load_model
    from tunesmith.preference.dpo import build_trainer, sequence_logps, tokenize_pair

    pair = {
        "prompt": [{"role": "user", "content": PROMPTS[0]}],
        "chosen": [{"role": "assistant", "content": "Oh no."}],
        "rejected": [{"role": "assistant", "content": "Fine."}],
    }
    cfg = parse_config(
        {
            "recipe": "dpo",
            "model": {"name": str(tiny_model_dir), "dtype": "fp32"},
            "lora": {"r": 2, "alpha": 4},
            "data": {"max_length": 96},
        }
    )
    model = load_model(str(tiny_model_dir), "fp32")
    trainer = build_trainer(cfg, model, tokenizer, [pair], tmp_path / "t")
    row = trainer.train_dataset[0]
    c, cs, r, rs = tokenize_pair(tokenizer, pair, 96)
    assert c[:cs] == row["prompt_ids"] and c[cs:] == row["chosen_ids"] and r[rs:] == row["rejected_ids"]
    # log-probs summed over the reply tokens, against a plain full-logits computation
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.tensor([c])).logits[0].float().log_softmax(-1)
    manual = sum(float(logits[t - 1, c[t]]) for t in range(cs, len(c)))
    assert float(sequence_logps(trainer.model, [(c, cs)], tokenizer.pad_token_id)[0]) == pytest.approx(manual, abs=1e-3)


def test_dpo_needs_pairs():
    from tunesmith.preference.dpo import split_pairs

    with pytest.raises(ConfigError, match="dpo.pairs is not set"):
        split_pairs(parse_config({"recipe": "dpo"}))


def test_dpo_logs_to_tensorboard_and_writes_a_model_card(dpo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, m, _ = dpo_run
    acc = EventAccumulator(str(cfg.run_dir / "tensorboard" / cfg.run_name))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/rewards/margins"} <= tags, tags
    assert len(acc.Scalars("train/loss")) == cfg.training.max_steps // cfg.training.logging_steps
    card = (cfg.run_dir / "adapter" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "PeftModel.from_pretrained" in card
