"""recipe sft: every chat format, auto-detection, column mapping, malformed records named by
file:line and field, validation splits, the tokenised cache, the recipe end to end (validation on
schedule, TensorBoard scalars, best adapter + model card), and `tunesmith push` up to the upload."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.config import parse_config
from tunesmith.data.chat import IGNORE
from tunesmith.data.sources import sft
from tunesmith.errors import ConfigError, DataError

FIX = Path(__file__).parent / "fixtures" / "sft"
ROOT = Path(__file__).resolve().parents[1]


def labelled_text(tok, e) -> str:
    return tok.decode([t for t in e.labels if t != IGNORE])


def load(path, fmt="auto", columns=None):
    src = sft.load_source(str(path))
    fmt = sft.resolve_format(src, fmt, columns or {}, lambda m: None)
    return src, fmt


@pytest.mark.parametrize(
    "name,fmt,n",
    [
        ("messages.jsonl", "messages", 4),
        ("sharegpt.jsonl", "sharegpt", 4),
        ("alpaca.jsonl", "alpaca", 3),
        ("alpaca.json", "alpaca", 2),
        ("prompt_completion.jsonl", "prompt_completion", 3),
        ("prompt_completion.csv", "prompt_completion", 2),
    ],
)
def test_auto_detects_every_format_and_says_so(name, fmt, n):
    said: list[str] = []
    src = sft.load_source(str(FIX / name))
    assert sft.resolve_format(src, "auto", {}, said.append) == fmt
    assert src.dataset.num_rows == n
    assert len(said) == 1 and f"is {fmt}" in said[0]


def test_messages_multi_turn_system_and_train_on(tokenizer):
    src, fmt = load(FIX / "messages.jsonl")
    ex = [sft.to_example(src.dataset[i], fmt, {}) for i in range(src.dataset.num_rows)]
    assert [m["role"] for m in ex[0].messages] == ["system", "user", "assistant"]
    assert [m["role"] for m in ex[1].messages] == ["user", "assistant", "user", "assistant"]
    every = sft.encode_source(src, tokenizer, fmt, {}, 256, train_on="all")
    last = sft.encode_source(src, tokenizer, fmt, {}, 256, train_on="last")
    both = labelled_text(tokenizer, every[1])
    assert "That sounds frustrating" in both and "Starting with how it affects you" in both
    only = labelled_text(tokenizer, last[1])
    assert "That sounds frustrating" not in only and "Starting with how it affects you" in only
    # prompts are never targets
    assert "flatmate" not in both and "patient study coach" not in labelled_text(tokenizer, every[0])


def test_sharegpt_roles_and_top_level_system():
    src, fmt = load(FIX / "sharegpt.jsonl")
    exs = [sft.to_example(src.dataset[i], fmt, {}) for i in range(4)]
    assert exs[0].messages[0] == {"role": "system", "content": "You listen kindly."}
    assert [m["role"] for m in exs[1].messages] == ["user", "assistant", "user", "assistant"]
    assert exs[2].messages[0] == {"role": "system", "content": "Keep replies to one sentence."}
    assert exs[3].messages[-1] == {"role": "assistant", "content": "Well done, that took real persistence."}


def test_alpaca_joins_instruction_and_input_like_llama_factory():
    src, fmt = load(FIX / "alpaca.jsonl")
    a, b = (sft.to_example(src.dataset[i], fmt, {}) for i in range(2))
    assert a.messages == [
        {"role": "user", "content": "Rewrite this sentence kindly.\nYour essay is bad."},
        {"role": "assistant", "content": "Your essay has a good core, and a few changes would make it stronger."},
    ]
    assert b.messages[0] == {"role": "user", "content": "Suggest one way to unwind after work."}  # empty input


def test_prompt_completion_strings_and_conversational(tokenizer):
    src, fmt = load(FIX / "prompt_completion.jsonl")
    e0, e2 = sft.to_example(src.dataset[0], fmt, {}), sft.to_example(src.dataset[2], fmt, {})
    assert e0.messages == [
        {"role": "user", "content": "Say something encouraging to a nervous speaker."},
        {"role": "assistant", "content": "You know your material; take a breath and begin."},
    ]
    assert e2.messages[1]["content"].startswith("Weekends can feel long")
    feats = sft.encode_source(src, tokenizer, fmt, {}, 256)
    assert labelled_text(tokenizer, feats[0]).startswith("You know your material")


def test_columns_map_a_renamed_field():
    src = sft.load_source(str(FIX / "renamed_columns.jsonl"))
    with pytest.raises(DataError, match=r"renamed_columns.jsonl:1: cannot detect the format"):
        sft.resolve_format(src, "auto", {}, None)
    assert sft.resolve_format(src, "auto", {"messages": "dialog"}, None) == "messages"
    ex = sft.to_example(src.dataset[1], "messages", {"messages": "dialog"})
    assert ex.messages[1]["content"] == "That is a rotten feeling. Did you report it?"
    with pytest.raises(ConfigError, match="unknown field 'message'"):
        sft.check_columns({"message": "dialog"})


@pytest.mark.parametrize(
    "name,where,what",
    [
        ("bad_json.jsonl", "bad_json.jsonl:4", "malformed JSON"),
        ("bad_role.jsonl", "bad_role.jsonl:3", r"field 'conversations\[1\].from': unknown role 'robot'"),
        ("bad_missing.jsonl", "bad_missing.jsonl:2", "field 'output': missing"),
        ("bad_no_assistant.jsonl", "bad_no_assistant.jsonl:2", "field 'messages': no assistant turn"),
        ("bad_type.jsonl", "bad_type.jsonl:2", "field 'completion'"),
        ("unknown_keys.jsonl", "unknown_keys.jsonl:1", "cannot detect the format"),
    ],
)
def test_malformed_records_name_file_line_and_field(tokenizer, name, where, what):
    with pytest.raises(DataError, match=rf"{where}: {what}"):
        src, fmt = load(FIX / name)
        sft.encode_source(src, tokenizer, fmt, {}, 256)


def test_explicit_format_mismatch_names_the_missing_field(tokenizer):
    src = sft.load_source(str(FIX / "sharegpt.jsonl"))
    with pytest.raises(DataError, match=r"sharegpt.jsonl:1: field 'instruction': missing"):
        sft.encode_source(src, tokenizer, "alpaca", {}, 256)


def test_folder_and_parquet_and_record_index_locations(tmp_path, tokenizer):
    import datasets

    d = tmp_path / "shards"
    d.mkdir()
    shutil.copy(FIX / "sharegpt.jsonl", d / "a.jsonl")
    (d / "b.jsonl").write_text((FIX / "bad_role.jsonl").read_text())
    src, fmt = load(d)
    assert src.dataset.num_rows == 6
    # the 2nd record of b.jsonl, on its line 3, is the 6th of the folder
    with pytest.raises(DataError, match=r"b.jsonl:3: field 'conversations\[1\].from'"):
        sft.encode_source(src, tokenizer, fmt, {}, 256)
    # a folder laid out as a dataset repo: datasets' split rules pick the files of each split
    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    shutil.copy(FIX / "sharegpt.jsonl", repo / "train.jsonl")
    shutil.copy(FIX / "messages.jsonl", repo / "validation.jsonl")
    assert sft.load_source(str(repo.parent)).dataset.num_rows == 4
    assert "messages" in sft.load_source(str(repo.parent), "validation").dataset.column_names
    with pytest.raises(DataError, match="no 'test' split"):
        sft.load_source(str(repo.parent), "test")
    rows = [json.loads(x) for x in (FIX / "alpaca.jsonl").read_text().splitlines()]
    rows[2] = {**rows[2], "output": None}
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "alpaca.parquet"))
    src, fmt = load(tmp_path / "alpaca.parquet")
    assert fmt == "alpaca"
    with pytest.raises(DataError, match=r"alpaca.parquet record 2: field 'output': missing"):
        sft.encode_source(src, tokenizer, fmt, {}, 256)
    with pytest.raises(DataError, match="data file not found"):
        sft.load_source(str(tmp_path / "nope.jsonl"))


def test_tokenised_features_are_cached_by_content(tmp_path, tokenizer, monkeypatch):
    f = tmp_path / "data.jsonl"
    shutil.copy(FIX / "sharegpt.jsonl", f)
    calls = []
    real = sft.encode
    monkeypatch.setattr(sft, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = sft.encode_source(sft.load_source(str(f)), tokenizer, "sharegpt", {}, 256)
    assert len(calls) == 4
    again = sft.encode_source(sft.load_source(str(f)), tokenizer, "sharegpt", {}, 256)
    assert len(calls) == 4 and [e.input_ids for e in again] == [e.input_ids for e in first]
    sft.encode_source(sft.load_source(str(f)), tokenizer, "sharegpt", {}, 64)  # another max_length: re-encoded
    assert len(calls) == 8
    f.write_text(f.read_text().replace("I burnt dinner again.", "I burnt lunch again."))
    changed = sft.encode_source(sft.load_source(str(f)), tokenizer, "sharegpt", {}, 256)
    assert len(calls) == 12 and changed[1].input_ids != first[1].input_ids


def sft_cfg(tmp_path, model_dir, train, **over):
    raw = {
        "recipe": "sft",
        "run_name": "sft",
        "output_dir": str(tmp_path / "runs"),
        "summary_csv": str(tmp_path / "summary.csv"),
        "model": {"name": str(model_dir), "dtype": "fp32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"max_length": 128, "sft": {"train": str(train), "validation": 0.25}},
        "training": {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 8, "eval_steps": 2, "seed": 0},
        "safety": {"enabled": False},
    }
    for k, v in over.items():
        cur = raw
        *head, last = k.split(".")
        for h in head:
            cur = cur.setdefault(h, {})
        cur[last] = v
    return parse_config(raw)


def test_validation_fraction_is_seeded_and_disjoint(tmp_path, tiny_model_dir, tokenizer):
    cfg = sft_cfg(tmp_path, tiny_model_dir, FIX / "messages.jsonl")
    a = sft.load_sft(cfg, tokenizer)
    b = sft.load_sft(cfg, tokenizer)
    assert len(a.train) == 3 and len(a.validation) == 1
    assert [e.input_ids for e in a.validation] == [e.input_ids for e in b.validation]
    assert not {tuple(e.input_ids) for e in a.train} & {tuple(e.input_ids) for e in a.validation}
    other = sft.load_sft(sft_cfg(tmp_path, tiny_model_dir, FIX / "messages.jsonl", **{"training.seed": 5}), tokenizer)
    assert len(other.validation) == 1
    path = sft.load_sft(
        sft_cfg(
            tmp_path, tiny_model_dir, FIX / "messages.jsonl", **{"data.sft.validation": str(FIX / "sharegpt.jsonl")}
        ),
        tokenizer,
    )
    assert len(path.train) == 4 and len(path.validation) == 4  # a file: a different format is detected on its own
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(FIX / "sharegpt.jsonl", repo / "train.jsonl")
    shutil.copy(FIX / "messages.jsonl", repo / "validation.jsonl")
    split = sft.load_sft(sft_cfg(tmp_path, tiny_model_dir, repo, **{"data.sft.validation": "validation"}), tokenizer)
    assert (len(split.train), len(split.validation), split.format) == (4, 4, "sharegpt")
    with pytest.raises(DataError, match="data.sft.validation: file not found: validation"):
        sft.load_sft(
            sft_cfg(tmp_path, tiny_model_dir, FIX / "messages.jsonl", **{"data.sft.validation": "validation"}),
            tokenizer,
        )
    with pytest.raises(ConfigError, match="fraction must lie in"):
        sft_cfg(tmp_path, tiny_model_dir, FIX / "messages.jsonl", **{"data.sft.validation": 1.5})


@pytest.mark.parametrize("train", ["sharegpt.jsonl", "alpaca.jsonl"])
def test_recipe_trains_evaluates_logs_and_saves_the_best_adapter_with_a_card(tmp_path, tiny_model_dir, train):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tunesmith.recipes import sft as recipe

    data = tmp_path / "data.jsonl"  # enough rows for a validation split that learns the template
    data.write_text("".join([(FIX / train).read_text()] * 4))
    cfg = sft_cfg(tmp_path, tiny_model_dir, data, **{"training.learning_rate": 3e-2})
    m = recipe.run(cfg)
    run = cfg.run_dir
    v = m["validation"]
    assert v["evaluations"] == 4 and v["first_step"] == 2
    # a tiny random model caps its logits near ±1.3 (see test_trainer): its loss can only fall a little
    assert v["best"] < v["base"] - 0.1, v  # the validation loss falls
    assert v["best"] <= v["first"]
    events = EventAccumulator(str(run / "tensorboard" / "sft"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4, 6, 8]
    assert len(events.Scalars("train/loss")) == 8
    card = (run / "adapter" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and f"base_model: {tiny_model_dir}" in card
    assert "PeftModel.from_pretrained" in card and str(data) in card and f"{v['best']:.4f}" in card
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["validation"]["best"] == pytest.approx(v["best"])
    assert "sft" in Path(cfg.summary_csv).read_text()
    # validation conversations answered by base and tuned after training, beside the reference reply
    assert len(m["samples"]) == min(cfg.eval.samples, m["validation_examples"])
    assert all({"prompt", "reference", "base", "tuned"} <= set(r) and r["reference"] for r in m["samples"])
    assert (run / "report.html").is_file()


def test_packed_recipe_and_early_stop_then_resume_is_a_no_op(tmp_path, tiny_model_dir, capsys):
    from tunesmith.recipes import sft as recipe

    data = tmp_path / "data.jsonl"
    data.write_text("".join([(FIX / "sharegpt.jsonl").read_text()] * 4))
    cfg = sft_cfg(
        tmp_path,
        tiny_model_dir,
        data,
        **{
            "training.learning_rate": 2.0,
            "training.max_grad_norm": None,
            "training.max_steps": 30,
            "training.eval_steps": 1,
            "training.early_stopping_patience": 2,
            "training.packing": True,
            "training.report_to": "none",
        },
    )
    m = recipe.run(cfg)
    assert m["validation"]["stopped_early"] and m["train"]["steps"] < 30 and m["train"]["packing"]
    assert m["validation"]["adapter_step"] == m["validation"]["best_step"]
    recipe.run(cfg, resume=True)
    assert "stopped early" in capsys.readouterr().err


def test_cli_validate_reports_a_malformed_record_in_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"recipe: sft\nsafety: {{enabled: false}}\ndata: {{sft: {{train: {FIX / 'bad_role.jsonl'}}}}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "validate", str(cfg)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {FIX / 'bad_role.jsonl'}:3: field 'conversations[1].from': unknown role 'robot' "
        "(expected assistant, bard, bing, chatgpt, gpt, human, system, user)"
    )
    assert "Traceback" not in r.stderr


# ---- push ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    from tunesmith.recipes import sft as recipe

    tmp = tmp_path_factory.mktemp("push")
    data = tmp / "data.jsonl"
    data.write_text("".join([(FIX / "sharegpt.jsonl").read_text()] * 2))
    cfg = sft_cfg(tmp, tiny_model_dir, data, **{"training.max_steps": 2, "training.report_to": "none"})
    recipe.run(cfg)
    return cfg.run_dir


def test_push_to_folder_stages_the_adapter_and_card(finished_run, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    out = tmp_path / "staged"
    r = CliRunner().invoke(app, ["push", str(finished_run), "me/sft-test", "--to-folder", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert (out / "adapter_model.safetensors").read_bytes() == (
        finished_run / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    assert 'PeftModel.from_pretrained(base, "me/sft-test")' in (out / "README.md").read_text()


def test_push_merged_stages_full_weights(finished_run, tmp_path):
    from tunesmith.reporting.model_card import stage

    out = stage(finished_run, tmp_path / "merged", merged=True, repo_id="me/sft-merged")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md"} <= names and "adapter_config.json" not in names
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and 'AutoModelForCausalLM.from_pretrained("me/sft-merged")' in card


def test_push_calls_the_hub_with_the_staged_folder(finished_run, monkeypatch):
    # no network here: the two HfApi calls are replaced by recorders that check what they receive
    # (the folder exists only during the call, so its content is read there)
    from huggingface_hub import HfApi

    from tunesmith.reporting.model_card import push

    seen = {}
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, repo_id, **kw: seen.update(create=(repo_id, kw)) or f"https://huggingface.co/{repo_id}",
    )

    def upload(self, folder_path, repo_id, **kw):
        seen["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kw)

    monkeypatch.setattr(HfApi, "upload_folder", upload)
    url = push(finished_run, "me/sft-test", private=True)
    assert url == "https://huggingface.co/me/sft-test"
    assert seen["create"] == ("me/sft-test", {"private": True, "exist_ok": True, "repo_type": "model"})
    repo, files, kw = seen["upload"]
    assert repo == "me/sft-test" and kw["repo_type"] == "model"
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_push_refuses_a_folder_without_an_adapter(tmp_path):
    from tunesmith.errors import TunesmithError
    from tunesmith.reporting.model_card import stage

    with pytest.raises(TunesmithError, match="no adapter/"):
        stage(tmp_path, tmp_path / "out")
