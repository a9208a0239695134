"""Model cards for adapter/ folders, and `tunesmith push` to the Hugging Face Hub.

The card is a hub README.md: YAML front matter through huggingface_hub's ModelCardData (base_model,
library_name, tags, datasets) and a body with the data, the hyperparameters, the final metrics and
how to load the adapter with PEFT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunesmith.errors import TunesmithError

CARD = "README.md"


def hub_base_model(ref: str) -> str:
    """The model id a hub reader can resolve: a builtin's hub equivalent, else the reference itself."""
    if ref.startswith("builtin:"):
        from tunesmith.modeling.loading import BUILTINS

        b = BUILTINS.get(ref.removeprefix("builtin:"))
        return b.hub_equivalent if b else ref
    return ref


def _is_hub_id(ref: str) -> bool:
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not Path(ref).exists()


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}.")
        elif v is not None and not isinstance(v, list):
            rows.append((f"{prefix}{k}", v))
    return rows


def card_text(cfg: dict, metrics: dict, data: list[str], merged: bool = False, repo_id: str | None = None) -> str:
    """README.md text for a run's resolved config (`config_resolved.json` form) and metrics."""
    from huggingface_hub import ModelCard, ModelCardData

    base = hub_base_model(cfg["model"]["name"])
    recipe = cfg.get("recipe", "sft")
    datasets = [d for d in data if _is_hub_id(d)]
    card_data = ModelCardData(
        base_model=base,
        library_name="transformers" if merged else "peft",
        pipeline_tag="text-generation",
        datasets=datasets or None,
        tags=["tunesmith", recipe, *([] if merged else ["lora", "peft"])],
    )
    t, lo = cfg.get("training", {}), cfg.get("lora", {})
    name = repo_id or "PATH_OR_REPO_ID"
    hp = [
        ("method", "QLoRA (nf4)" if cfg["model"].get("load_in_4bit") else "LoRA"),
        ("lora r / alpha / dropout", f"{lo.get('r')} / {lo.get('alpha')} / {lo.get('dropout')}"),
        ("lora target_modules", lo.get("target_modules")),
        *[
            (k, t[k])
            for k in (
                "learning_rate",
                "scheduler",
                "warmup_ratio",
                "batch_size",
                "grad_accum",
                "epochs",
                "max_steps",
                "weight_decay",
                "max_grad_norm",
                "packing",
                "eval_steps",
                "early_stopping_patience",
                "load_best",
                "seed",
            )
            if k in t and t[k] is not None
        ],
        ("max_length", cfg.get("data", {}).get("max_length")),
    ]
    lines = [
        f"# {cfg.get('run_name', 'tunesmith run')}",
        "",
        f"{'Merged weights' if merged else 'A LoRA adapter'} for [{base}](https://huggingface.co/{base}) trained with "
        f"tunesmith (recipe `{recipe}`).",
        "",
        "## Data",
        "",
        *[f"- {d}" for d in data],
        "",
        "## Hyperparameters",
        "",
        "| key | value |",
        "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in hp],
        "",
        "## Final metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in _flat(metrics)],
        "",
        "## How to load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
    ]
    if merged:
        lines += [
            f'model = AutoModelForCausalLM.from_pretrained("{name}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        ]
    else:
        lines += [
            "from peft import PeftModel",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(base, "{name}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        ]
    lines += ["```", ""]
    body = "\n".join(lines)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}").content


def write_model_card(adapter_dir: str | Path, cfg, metrics: dict, data: list[str]) -> Path:
    """adapter/README.md for a finished run (`cfg`: a Config or its resolved-config dict)."""
    from tunesmith.io import atomic_open

    d = cfg if isinstance(cfg, dict) else cfg.model_dump(mode="json")
    path = Path(adapter_dir) / CARD
    with atomic_open(path) as f:
        f.write(card_text(d, metrics, data))
    return path


# ---- push ------------------------------------------------------------------------------------
def stage(run_dir: str | Path, folder: str | Path, merged: bool = False, repo_id: str | None = None) -> Path:
    """Exactly what `push` uploads, written to `folder`: the adapter (or merged weights) + README.md."""
    run = Path(run_dir)
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise TunesmithError(f"{run}: no adapter/ with adapter_config.json (is this a finished run directory?)")
    out = Path(folder)
    if out.exists() and any(out.iterdir()):
        raise TunesmithError(f"{out} exists and is not empty; choose a new folder")
    cfg_path = run / "config_resolved.json"
    cfg = (
        json.loads(cfg_path.read_text())
        if cfg_path.is_file()
        else {"model": {"name": json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]}}
    )
    cfg.pop("provenance", None)
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics = {
        k: v
        for k, v in metrics.items()
        if k in ("train", "validation", "validation_loss", "tuned", "base", "safety", "eqbench", "heads")
    }
    data = [x for x in metrics_data(cfg)]
    if merged:
        from tunesmith.modeling.export import export_merged

        export_merged(adapter, out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(adapter, out, dirs_exist_ok=True)
    (out / CARD).write_text(card_text(cfg, metrics, data, merged=merged, repo_id=repo_id), encoding="utf-8")
    return out


def metrics_data(cfg: dict) -> list[str]:
    """The data a run trained on, as the card lists it (from the resolved config)."""
    d, recipe = cfg.get("data", {}), cfg.get("recipe")
    if recipe == "sft":
        s = d.get("sft", {})
        return [x for x in (s.get("train"), s.get("validation") if isinstance(s.get("validation"), str) else None) if x]
    if recipe == "gsm8k":
        return [d.get("gsm8k", {}).get("train")]
    if recipe == "empathy":
        e = d.get("empathy", {})
        return [v for k in ("esconv", "goemotions", "empathetic_dialogues") if (v := e.get(k))]
    return []


def push(
    run_dir: str | Path, repo_id: str, merged: bool = False, private: bool = False, to_folder: str | Path | None = None
) -> str:
    """Upload a run's adapter (or merged weights) with its card; with `to_folder`, stage only (no network)."""
    import tempfile

    if to_folder is not None:
        return str(stage(run_dir, to_folder, merged, repo_id))
    from huggingface_hub import HfApi

    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="tunesmith-push-") as tmp:
        folder = stage(run_dir, Path(tmp) / "upload", merged, repo_id)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"tunesmith: upload {'merged model' if merged else 'adapter'} from {run_dir}",
        )
    return str(url)
