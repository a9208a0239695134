"""Adapter export: merged full weights (`tunesmith export`), optional GGUF, and adapter algebra.

`export_merged` loads the base model and the LoRA adapter, folds the adapter into the weights
(peft `merge_and_unload`) and writes a plain Hugging Face folder (safetensors + tokenizer with its
chat template) that any HF-compatible stack loads without peft. The emotion/strategy heads are
not part of a causal LM: heads.safetensors is copied beside the weights as a side file (the
merged model's hidden states equal base+adapter's, so the heads stay valid; load them with
`tunesmith.modeling.heads.Heads.load(OUT_DIR)`).

GGUF (llama.cpp, Ollama, LM Studio): the `gguf` Python package can write GGUF files but has no
HF-to-GGUF converter, which lives in llama.cpp. `find_gguf_converter` looks for
$TUNESMITH_GGUF_CONVERTER, `convert_hf_to_gguf.py` (or the older `convert-hf-to-gguf.py`) on
PATH, and $LLAMA_CPP_DIR/convert_hf_to_gguf.py; without one, `gguf_instructions` says how.

`combine_adapters` turns two LoRA adapters applied one after the other (the DPO adapter trained on
base+SFT) into a single adapter on the base model, exactly: ΔW = s₁B₁A₁ + s₂B₂A₂ = [B₁ B₂]·[s₁A₁; s₂A₂],
rank r₁+r₂ with alpha = rank (scaling 1).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from tunesmith.errors import ModelError
from tunesmith.modeling.loading import base_model_ref

EXPORT_INFO = "tunesmith_export.json"
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")


# ---- merged export --------------------------------------------------------------------------
def _saved_dtype(model_ref: str) -> str:
    """The dtype the base checkpoint is stored in (config.json), as a pick_dtype name."""
    from tunesmith.modeling.loading import resolve

    path, _ = resolve(model_ref)
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return "auto"
    c = json.loads(cfg.read_text())
    name = str(c.get("dtype") or c.get("torch_dtype") or "")
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(name, "auto")


def export_merged(
    adapter_dir: str | Path, out_dir: str | Path, model_ref: str | None = None, dtype: str = "auto"
) -> Path:
    """Base + adapter merged into full safetensors weights in `out_dir` (+ tokenizer, heads side file).

    dtype "auto": the dtype the base checkpoint is stored in; the merge runs in that dtype."""
    from tunesmith.io import write_json
    from tunesmith.modeling.heads import HEADS_FILE
    from tunesmith.modeling.loading import load_for_inference

    adapter = Path(adapter_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out} exists and is not empty; choose a new folder")
    ref = base_model_ref(adapter, model_ref) if (adapter / "adapter_config.json").is_file() else model_ref
    load_dtype = _saved_dtype(ref) if dtype == "auto" and ref else dtype
    model, tok, _ = load_for_inference(adapter, ref, load_dtype)
    merged = model.merge_and_unload()
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if (adapter / HEADS_FILE).is_file():
            shutil.copy2(adapter / HEADS_FILE, tmp / HEADS_FILE)
        write_json(
            tmp / EXPORT_INFO,
            {
                "base_model": ref,
                "adapter": str(adapter.resolve()),
                "dtype": str(next(merged.parameters()).dtype).removeprefix("torch."),
                "heads": (adapter / HEADS_FILE).is_file(),
            },
        )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- GGUF -----------------------------------------------------------------------------------
def find_gguf_converter() -> list[str] | None:
    """Command prefix of llama.cpp's HF→GGUF converter, or None."""
    env = os.environ.get("TUNESMITH_GGUF_CONVERTER")
    candidates = [Path(env)] if env else []
    for name in ("convert_hf_to_gguf.py", "convert-hf-to-gguf.py", "convert_hf_to_gguf"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found))
    if os.environ.get("LLAMA_CPP_DIR"):
        candidates.append(Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py")
    for c in candidates:
        if c.is_file():
            return [sys.executable, str(c)] if c.suffix == ".py" else [str(c)]
    return None


def gguf_instructions(hf_dir: Path, outtype: str = "f16") -> str:
    return (
        "no HF→GGUF converter found (the 'gguf' package has none; it is part of llama.cpp). To make one:\n"
        "  git clone --depth 1 https://github.com/ggml-org/llama.cpp\n"
        "  pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt\n"
        f"  python llama.cpp/convert_hf_to_gguf.py {hf_dir} --outfile {hf_dir}/model-{outtype}.gguf --outtype {outtype}\n"
        "or point TUNESMITH_GGUF_CONVERTER (or LLAMA_CPP_DIR) at it and rerun with --gguf."
    )


def export_gguf(hf_dir: str | Path, outtype: str = "f16", converter: list[str] | None = None) -> Path:
    hf = Path(hf_dir)
    if outtype not in GGUF_OUTTYPES:
        raise ModelError(f"GGUF outtype must be one of {', '.join(GGUF_OUTTYPES)}")
    conv = converter or find_gguf_converter()
    if conv is None:
        raise ModelError(gguf_instructions(hf, outtype))
    target = hf / f"model-{outtype}.gguf"
    proc = subprocess.run(
        [*conv, str(hf), "--outfile", str(target), "--outtype", outtype], capture_output=True, text=True
    )
    if proc.returncode != 0 or not target.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ModelError(f"GGUF conversion failed (exit {proc.returncode}): " + " | ".join(tail))
    return target


# ---- adapter algebra ------------------------------------------------------------------------
def _lora_config(d: Path) -> dict:
    f = d / "adapter_config.json"
    if not f.is_file():
        raise ModelError(f"{d} is not an adapter folder (no adapter_config.json)")
    c = json.loads(f.read_text())
    problems = [k for k in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform") if c.get(k)]
    if c.get("peft_type") != "LORA":
        problems.append(f"peft_type {c.get('peft_type')}")
    if c.get("use_dora"):
        problems.append("use_dora")
    if c.get("bias", "none") != "none":
        problems.append(f"bias={c['bias']}")
    if isinstance(c.get("target_modules"), str):
        problems.append("target_modules given as a regex")
    if problems:
        raise ModelError(f"{d}: cannot combine this adapter ({', '.join(problems)}); keep both adapters instead")
    return c


def _scaling(c: dict) -> float:
    return c["lora_alpha"] / (math.sqrt(c["r"]) if c.get("use_rslora") else c["r"])


def combine_adapters(first: str | Path, second: str | Path, out_dir: str | Path) -> Path:
    """One LoRA adapter on the base model equal to `first` (e.g. SFT) plus `second` (e.g. DPO,
    trained on base+first merged). Both must target modules of the same base model."""
    from safetensors.torch import load_file, save_file

    first, second, out = Path(first), Path(second), Path(out_dir)
    c1, c2 = _lora_config(first), _lora_config(second)
    sd1 = load_file(first / "adapter_model.safetensors")
    sd2 = load_file(second / "adapter_model.safetensors")
    A, B = ".lora_A.weight", ".lora_B.weight"
    for name, sd in ((first, sd1), (second, sd2)):
        odd = [k for k in sd if not k.endswith((A, B))]
        if odd:
            raise ModelError(f"{name}: cannot combine an adapter with non-LoRA-matrix weights ({odd[0]})")
    r1, r2 = c1["r"], c2["r"]
    s1, s2 = _scaling(c1), _scaling(c2)
    r = r1 + r2
    mods = sorted({k[: -len(A)] for k in (*sd1, *sd2) if k.endswith(A)})
    merged: dict[str, torch.Tensor] = {}
    for m in mods:
        a1, b1, a2, b2 = sd1.get(m + A), sd1.get(m + B), sd2.get(m + A), sd2.get(m + B)
        ref_a, ref_b = (a1, b1) if a1 is not None else (a2, b2)
        a = torch.zeros(r, ref_a.shape[1], dtype=torch.float32)
        b = torch.zeros(ref_b.shape[0], r, dtype=torch.float32)
        if a1 is not None:
            a[:r1], b[:, :r1] = s1 * a1.float(), b1.float()
        if a2 is not None:
            a[r1:], b[:, r1:] = s2 * a2.float(), b2.float()
        merged[m + A], merged[m + B] = a.contiguous(), b.contiguous()
    cfg = dict(c1)
    cfg.update(
        r=r,
        lora_alpha=r,
        use_rslora=False,
        lora_dropout=0.0,
        target_modules=sorted(set(c1["target_modules"]) | set(c2["target_modules"])),
    )
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(merged, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "README.md").write_text(
        f"LoRA adapter combining {first} (r={r1}) and {second} (r={r2}) by rank concatenation "
        f"(exact: ΔW = s1·B1A1 + s2·B2A2). Written by tunesmith.\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
