"""Typed run configuration.

One YAML file drives a whole run (data → model → train → evaluate → report). Every section is a
pydantic model with `extra="forbid"`, so a typo is an error that names the key and suggests the
closest valid one instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.errors import ConfigError

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    # hub id, local HF folder, path to a .gguf file, or builtin:<name> (see `tunesmith models`)
    name: str = DEFAULT_MODEL
    revision: str | None = None
    trust_remote_code: bool = False
    # auto: bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AMX/AVX512-bf16), else fp32
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # QLoRA (nf4 + double quant). CUDA only: on CPU it falls back to bf16 LoRA with a warning.
    load_in_4bit: bool = False
    attn_implementation: str | None = None


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # "auto": every q/k/v/o/gate/up/down projection the model has
    target_modules: Literal["auto", "attention"] | list[str] = "auto"


class GSM8KData(Section):
    # local JSONL (question, answer) or a hub id such as openai/gsm8k
    train: str = "../shared/data/gsm8k/train.jsonl"
    test: str = "../shared/data/gsm8k/test.jsonl"
    # used instead of `train` by the strong preset when the file exists
    refined_train: str | None = None
    # training questions held out (seeded) as the validation set for training.eval_steps / early stopping
    validation_size: int = Field(0, ge=0)
    fewshot_pool_size: int = Field(8, gt=0)
    fewshot_seed: int = 42
    limit_train: int | None = Field(None, gt=0)
    limit_test: int | None = Field(None, gt=0)
    # take the test subset from the end of the shuffled test file (fixed by this seed)
    test_seed: int = 0


SftFormat = Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion"]


class SftData(Section):
    """Any chat data for `recipe: sft` (loaded with `datasets`, local files and the hub alike)."""

    # local .jsonl/.json/.parquet/.csv file, a folder of them, or a hub dataset id
    train: str | None = None
    split: str = "train"  # hub datasets (and local folders laid out as a dataset repo)
    subset: str | None = None  # hub config name
    revision: str | None = None  # hub datasets only
    format: SftFormat = "auto"
    # logical field -> the dataset's column name, e.g. {messages: conversation} or {instruction: question}
    columns: dict[str, str] = {}
    # a fraction of train split off (seeded by training.seed), a local file, or a split of the hub dataset;
    # null: no validation
    validation: float | str | None = 0.05
    # all: every assistant turn is a target; last: only the final one
    train_on: Literal["all", "last"] = "all"
    limit_train: int | None = Field(None, gt=0)
    limit_validation: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _fraction(self) -> SftData:
        if isinstance(self.validation, float) and not 0 < self.validation < 1:
            raise ValueError(f"data.sft.validation={self.validation}: a fraction must lie in (0, 1)")
        return self


class EmpathyData(Section):
    esconv: str | None = "../shared/data/esconv"
    goemotions: str | None = "../shared/data/goemotions"
    empathetic_dialogues: str | None = None
    safety_prompts: str | None = None  # None: the set shipped with tunesmith
    alpha: float = Field(0.5, ge=0, le=1)
    examples_per_epoch: int | None = Field(None, gt=0)
    history_turns: int = Field(6, gt=0)
    limit_eval: int | None = Field(None, gt=0)
    # the base model's own reply to each safety prompt, generated once: the positions where the
    # safety_kl term compares policy and base
    safety_response_tokens: int = Field(48, gt=0)


class DataConfig(Section):
    system_prompt: str | None = None
    max_length: int = Field(512, gt=16)
    gsm8k: GSM8KData = GSM8KData()
    empathy: EmpathyData = EmpathyData()
    sft: SftData = SftData()


Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]  # transformers.get_scheduler names both trainers accept


class TrainingConfig(Section):
    enabled: bool = True
    learning_rate: float = Field(2e-4, gt=0)
    # the emotion/strategy heads start from random weights while LoRA starts from a working model:
    # they need larger steps to converge in the same number of updates (None: learning_rate)
    head_learning_rate: float | None = Field(None, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Scheduler = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 42
    gradient_checkpointing: bool = False
    save_steps: int | None = Field(None, gt=0)
    save_total_limit: int | None = Field(3, gt=0)
    logging_steps: int = Field(1, gt=0)
    # validation loss every N optimizer steps (and always at the end when there is a validation set)
    eval_steps: int | None = Field(None, gt=0)
    # stop after N evaluations without a lower validation loss (needs eval_steps)
    early_stopping_patience: int | None = Field(None, gt=0)
    # adapter/ holds the weights of the evaluation with the lowest validation loss, not the last step's
    load_best: bool = True
    # several examples per row of data.max_length tokens, attention kept inside each example (LM-only recipes)
    packing: bool = False
    # experiment trackers (accelerate's): tensorboard, wandb, mlflow, trackio; [] or "none" for none
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio", "none"]] | Literal[
        "tensorboard", "wandb", "mlflow", "trackio", "none"] = ["tensorboard"]

    @model_validator(mode="after")
    def _early_stopping(self) -> TrainingConfig:
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError("training.early_stopping_patience needs training.eval_steps (how often to evaluate)")
        return self

    @property
    def trackers(self) -> list[str]:
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        return [n for n in names if n != "none"]


class SweepConfig(Section):
    enabled: bool = False
    last_n: int = Field(3, gt=0)


class EqBenchEval(Section):
    enabled: bool = True
    questions: str = "../shared/data/eqbench/eq_bench_v2_questions_171.json"
    # plain = the harness's default since v2.1 (answer with the four scores only, 60 new tokens);
    # revise = first pass, critique, revised scores (500 new tokens)
    revise: bool = False
    limit: int | None = Field(None, gt=0)  # fewer than 171 questions: score is marked not comparable


class EvalConfig(Section):
    k_shot: int = Field(3, ge=0)
    max_new_tokens: int = Field(512, gt=0)
    batch_size: int = Field(16, gt=0)
    evaluate_base: bool = False
    backend: Literal["hf", "vllm"] = "hf"
    checkpoint_sweep: SweepConfig = SweepConfig()
    eqbench: EqBenchEval = EqBenchEval()
    samples: bool = True  # side-by-side replies to the fixed scenario set (empathy recipe)


class GuardConfig(Section):
    # model reference like ModelConfig.name; "self" = the evaluated base model prompted as a guard
    model: str = "self"
    kind: Literal["generative", "classifier"] = "generative"
    guidelines: str | None = None  # Safety Guidelines file prepended to the guard prompt
    categories: str | None = None  # Llama Guard S1–S14 list, one per line; None: the built-in list
    max_new_tokens: int = Field(10, gt=0)
    batch_size: int = Field(8, gt=0)


class SafetyConfig(Section):
    enabled: bool = True
    prompts: str = "../shared/data/ailuminate/airr_official_1.0_demo_en_us_prompt_set_release.csv"
    limit: int | None = Field(None, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    guard: GuardConfig = GuardConfig()


class HeadsConfig(Section):
    emotion: bool = True
    strategy: bool = True
    # "last_prompt_token": the hidden state that predicts the reply's first token, so it has
    # read the whole prompt (causal attention) — see modeling/heads.py for why it is the default.
    pooling: Literal["last_prompt_token", "mean_last_user"] = "last_prompt_token"
    dropout: float = Field(0.1, ge=0, lt=1)


class LossConfig(Section):
    lambda_lm: float = Field(1.0, ge=0)
    lambda_emotion: float = Field(0.2, ge=0)
    lambda_strategy: float = Field(0.2, ge=0)
    lambda_safety_kl: float = Field(0.1, ge=0)


class Thresholds(Section):
    strict: float | None = Field(None, ge=0, le=1)
    flexible: float | None = Field(None, ge=0, le=1)


class SmokeCaps(Section):
    train: int = 200
    test: int = 50
    safety: int = 50


DPO_LOSS_TYPES = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                         "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class DpoConfig(Section):
    """Preference tuning (`tunesmith dpo`): a new LoRA adapter (shape from `lora:`) trained with TRL's
    DPOTrainer on top of the SFT model; the reference is the SFT model (the new adapter disabled)."""

    # prompt/chosen/rejected JSONL (`tunesmith pairs` writes it)
    pairs: str | None = None
    # held-out pairs for the reward-margin check; None: `heldout_size` pairs split off `pairs` (seeded)
    heldout: str | None = None
    heldout_size: int = Field(16, ge=0)
    # SFT adapter folder (runs/<run>/adapter) merged into the base as the frozen starting point;
    # None: preference-tune the base model itself
    sft_adapter: str | None = None
    beta: float = Field(0.1, gt=0)
    loss_type: DPO_LOSS_TYPES = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Scheduler = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(1024, gt=16)  # prompt + reply tokens
    gradient_checkpointing: bool = False
    seed: int = 42
    logging_steps: int = Field(1, gt=0)
    eval_batch_size: int = Field(8, gt=0)  # reward-margin evaluation


class Config(Section):
    recipe: Literal["gsm8k", "empathy", "sft"] = "gsm8k"
    run_name: str = "run"
    output_dir: str = "runs"
    # summary.csv collects one row per run across runs
    summary_csv: str = "results/summary.csv"
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    safety: SafetyConfig = SafetyConfig()
    heads: HeadsConfig = HeadsConfig()
    loss: LossConfig = LossConfig()
    thresholds: Thresholds = Thresholds()
    smoke: SmokeCaps = SmokeCaps()
    dpo: DpoConfig = DpoConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        pool = self.data.gsm8k.fewshot_pool_size
        if self.recipe == "gsm8k" and self.eval.k_shot > pool:
            raise ValueError(f"eval.k_shot={self.eval.k_shot} is larger than data.gsm8k.fewshot_pool_size={pool}")
        if self.recipe == "sft" and not self.data.sft.train:
            raise ValueError("recipe sft needs data.sft.train (a .jsonl/.json/.parquet/.csv file, a folder or a hub id)")
        if self.training.packing and self.recipe == "empathy":
            raise ValueError("training.packing works for the LM-only recipes (sft, gsm8k): the empathy heads and "
                             "safety KL read one example per row")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def apply_smoke_test(self) -> None:
        g = self.data.gsm8k
        g.limit_train = min(g.limit_train or self.smoke.train, self.smoke.train)
        g.limit_test = min(g.limit_test or self.smoke.test, self.smoke.test)
        self.safety.limit = min(self.safety.limit or self.smoke.safety, self.smoke.safety)
        s = self.data.sft
        s.limit_train = min(s.limit_train or self.smoke.train, self.smoke.train)
        s.limit_validation = min(s.limit_validation or self.smoke.test, self.smoke.test)
        e = self.data.empathy
        e.examples_per_epoch = min(e.examples_per_epoch or self.smoke.train, self.smoke.train)
        e.limit_eval = min(e.limit_eval or self.smoke.test, self.smoke.test)
        q = self.eval.eqbench
        q.limit = min(q.limit or self.smoke.test, self.smoke.test)
        if self.eval.checkpoint_sweep.enabled:
            # enough checkpoints in a short run for the sweep to compare several
            t = self.training
            steps = -(-self.smoke.train // (t.batch_size * t.grad_accum))
            t.save_steps = max(1, steps // (self.eval.checkpoint_sweep.last_n + 1)) if steps > 1 else 1


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (the parent of the failing key)."""
    cur: Any = model
    for part in loc:
        field = cur.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        cur = field.annotation
    return list(cur.model_fields)


def _format_error(err: dict, source: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(Config, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{source}: unknown config key '{key}'{hint} (valid here: {', '.join(valid)})"
    msg = err["msg"]
    if err["type"] == "value_error":
        return f"{source}: {msg.removeprefix('Value error, ')}"
    return f"{source}: config key '{key}': {msg} (got {err.get('input')!r})"


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e.errors()[0], source)) from None


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Load a YAML config; relative data paths stay relative to the working directory.

    `overrides` are `dotted.key=value` strings (value parsed as YAML), applied before validation.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    for ov in overrides or []:
        apply_override(data, ov)
    return parse_config(data, str(p))


def apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.sub=value")
    key, raw = override.split("=", 1)
    cur = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
    cur[parts[-1]] = yaml.safe_load(raw)
