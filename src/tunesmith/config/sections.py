"""Config sections every recipe shares: model, LoRA, training (optimisation), evaluation, safety
(the AILuminate evaluation), smoke-test caps and the run's output place (`RunConfig`).

Every section is a pydantic model with `extra="forbid"`, so a typo is an error that names the key
and suggests the closest valid one instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    # passed to every chat template render (training, few-shot prompts, evaluation, guard, chat, pairs, DPO),
    # e.g. {enable_thinking: false} for Qwen3's hybrid thinking template
    chat_template_kwargs: dict[str, Any] = {}


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # "auto": every q/k/v/o/gate/up/down projection the model has
    target_modules: Literal["auto", "attention"] | list[str] = "auto"


class DataConfig(Section):
    """What every recipe's `data:` holds; each recipe adds its own dataset subsection."""

    system_prompt: str | None = None
    # a .jinja chat template that replaces the model's own (or gives a base model one); its sha256 is recorded
    chat_template: str | None = None
    # templates without a system role (Gemma 2): fold = system prompt + "\n\n" + first user turn; error = refuse
    system_prompt_fallback: Literal["fold", "error"] = "fold"
    max_length: int = Field(512, gt=16)


Scheduler = Literal[
    "linear", "cosine", "constant", "constant_with_warmup"
]  # transformers.get_scheduler names both trainers accept


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
    report_to: (
        list[Literal["tensorboard", "wandb", "mlflow", "trackio", "none"]]
        | Literal["tensorboard", "wandb", "mlflow", "trackio", "none"]
    ) = ["tensorboard"]

    @model_validator(mode="after")
    def _early_stopping(self) -> TrainingConfig:
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError("training.early_stopping_patience needs training.eval_steps (how often to evaluate)")
        return self

    @property
    def trackers(self) -> list[str]:
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        return [n for n in names if n != "none"]


class EvalConfig(Section):
    max_new_tokens: int = Field(512, gt=0)
    batch_size: int = Field(16, gt=0)
    # generation backend of every evaluation, the guard's replies included: hf (in process) or vllm (CUDA)
    backend: Literal["hf", "vllm"] = "hf"


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


class SmokeCaps(Section):
    train: int = 200
    test: int = 50
    safety: int = 50


class RunConfig(Section):
    """The sections every recipe has. A recipe's config subclasses it (or `EvaluatedRunConfig`),
    fixes `recipe` to its name and adds (or narrows) its own sections."""

    recipe: str
    run_name: str = "run"
    output_dir: str = "runs"
    # summary.csv collects one row per run across runs
    summary_csv: str = "results/summary.csv"
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def apply_smoke_test(self) -> None:
        from tunesmith.errors import ConfigError

        raise ConfigError(f"--smoke-test: the {self.recipe} recipe has no smoke-test caps")


class EvaluatedRunConfig(RunConfig):
    """A recipe that evaluates what it trained: generation settings, the AILuminate safety
    evaluation and the `--smoke-test` caps."""

    eval: EvalConfig = EvalConfig()
    safety: SafetyConfig = SafetyConfig()
    smoke: SmokeCaps = SmokeCaps()

    def apply_smoke_test(self) -> None:
        """Cap every size at `smoke:` (recipes extend this for their own data)."""
        self.safety.limit = min(self.safety.limit or self.smoke.safety, self.smoke.safety)
