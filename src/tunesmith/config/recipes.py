"""Each recipe's config: the shared sections (`sections.py`) plus the recipe's own, selected by
`recipe:` (a discriminated union: `RECIPE_CONFIGS` maps each registered recipe name to its class)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunesmith.config.sections import (
    DataConfig,
    EvalConfig,
    EvaluatedRunConfig,
    RunConfig,
    Scheduler,
    Section,
    TrainingConfig,
)


# ---- gsm8k ------------------------------------------------------------------------------------
class GSM8KData(Section):
    # local JSONL (question, answer) or a hub id such as openai/gsm8k
    train: str = "../shared/data/gsm8k/train.jsonl"
    test: str = "../shared/data/gsm8k/test.jsonl"
    # used instead of `train` by the strong preset when the file exists
    refined_train: str | None = None
    fewshot_pool_size: int = Field(8, gt=0)
    fewshot_seed: int = 42
    limit_train: int | None = Field(None, gt=0)
    limit_test: int | None = Field(None, gt=0)
    # the seed of the random test subset (limit_test)
    test_seed: int = 0
    # training questions held out (seeded; disjoint from the few-shot pool and the test file) as the validation
    # set: the checkpoint sweep chooses on it (never on the test set) and training.eval_steps / early stopping
    # read its loss; carved only when one of them is on
    validation_size: int = Field(200, gt=0)
    validation_seed: int = 0


class Gsm8kDataConfig(DataConfig):
    gsm8k: GSM8KData = GSM8KData()


class SweepConfig(Section):
    enabled: bool = False
    last_n: int = Field(3, gt=0)


class Gsm8kEvalConfig(EvalConfig):
    # also score the base model (the adapter disabled): accuracy, answer format, held-out loss, safety, samples
    evaluate_base: bool = False
    k_shot: int = Field(3, ge=0)
    checkpoint_sweep: SweepConfig = SweepConfig()


class Thresholds(Section):
    strict: float | None = Field(None, ge=0, le=1)
    flexible: float | None = Field(None, ge=0, le=1)


class Gsm8kRunConfig(EvaluatedRunConfig):
    recipe: Literal["gsm8k"] = "gsm8k"
    data: Gsm8kDataConfig = Gsm8kDataConfig()
    eval: Gsm8kEvalConfig = Gsm8kEvalConfig()
    thresholds: Thresholds = Thresholds()

    @model_validator(mode="after")
    def _consistent(self) -> Gsm8kRunConfig:
        pool = self.data.gsm8k.fewshot_pool_size
        if self.eval.k_shot > pool:
            raise ValueError(f"eval.k_shot={self.eval.k_shot} is larger than data.gsm8k.fewshot_pool_size={pool}")
        return self

    def apply_smoke_test(self) -> None:
        super().apply_smoke_test()
        g = self.data.gsm8k
        g.limit_train = min(g.limit_train or self.smoke.train, self.smoke.train)
        g.limit_test = min(g.limit_test or self.smoke.test, self.smoke.test)
        g.validation_size = min(g.validation_size, self.smoke.test)
        if self.eval.checkpoint_sweep.enabled:
            # enough checkpoints in a short run for the sweep to compare several
            t = self.training
            steps = -(-self.smoke.train // (t.batch_size * t.grad_accum))
            t.save_steps = max(1, steps // (self.eval.checkpoint_sweep.last_n + 1)) if steps > 1 else 1


# ---- empathy ----------------------------------------------------------------------------------
class EmpathyData(Section):
    esconv: str | None = "../shared/data/esconv"
    goemotions: str | None = "../shared/data/goemotions"
    empathetic_dialogues: str | None = None
    kl_prompts: str | None = None  # None: the set shipped with tunesmith
    alpha: float = Field(0.5, ge=0, le=1)
    examples_per_epoch: int | None = Field(None, gt=0)
    history_turns: int = Field(6, gt=0)
    limit_eval: int | None = Field(None, gt=0)
    # with training.eval_steps: examples per labelled training source moved out of training (seeded;
    # whole ESConv/ED conversations) as the validation set for early stopping and load_best, so the
    # held-out sets the run reports were never used to choose a checkpoint
    validation_size: int = Field(200, gt=0)
    # the base model's own reply to each safety prompt, generated once: the positions where the
    # kl term compares policy and base
    kl_response_tokens: int = Field(48, gt=0)


class EmpathyDataConfig(DataConfig):
    empathy: EmpathyData = EmpathyData()


class EqBenchEval(Section):
    enabled: bool = True
    questions: str = "../shared/data/eqbench/eq_bench_v2_questions_171.json"
    # plain = the harness's default since v2.1 (answer with the four scores only, 60 new tokens);
    # revise = first pass, critique, revised scores (500 new tokens)
    revise: bool = False
    limit: int | None = Field(None, gt=0)  # fewer than 171 questions: score is marked not comparable


class EmpathyEvalConfig(EvalConfig):
    """The empathy recipe always scores the base model beside the tuned one (EQ-Bench, safety, samples)."""

    eqbench: EqBenchEval = EqBenchEval()
    samples: bool = True  # side-by-side replies (eval.max_new_tokens long) to the fixed scenario set


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
    lambda_kl: float = Field(0.1, ge=0)


class EmpathyRunConfig(EvaluatedRunConfig):
    recipe: Literal["empathy"] = "empathy"
    data: EmpathyDataConfig = EmpathyDataConfig()
    eval: EmpathyEvalConfig = EmpathyEvalConfig()
    heads: HeadsConfig = HeadsConfig()
    loss: LossConfig = LossConfig()

    @model_validator(mode="after")
    def _one_example_per_row(self) -> EmpathyRunConfig:
        if self.training.packing:
            raise ValueError(
                "training.packing works for the LM-only recipes (sft, gsm8k): the empathy heads and "
                "the KL term read one example per row"
            )
        return self

    def apply_smoke_test(self) -> None:
        super().apply_smoke_test()
        e = self.data.empathy
        e.examples_per_epoch = min(e.examples_per_epoch or self.smoke.train, self.smoke.train)
        e.limit_eval = min(e.limit_eval or self.smoke.test, self.smoke.test)
        q = self.eval.eqbench
        q.limit = min(q.limit or self.smoke.test, self.smoke.test)


# ---- sft ----------------------------------------------------------------------------------------
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


class SftDataConfig(DataConfig):
    sft: SftData = SftData()


class SftEvalConfig(EvalConfig):
    # base-model replies beside the tuned ones (samples, safety); the base validation loss is always measured
    evaluate_base: bool = True
    samples: int = Field(3, ge=0)  # validation conversations answered by the model(s) after training


class SftRunConfig(EvaluatedRunConfig):
    recipe: Literal["sft"] = "sft"
    data: SftDataConfig = SftDataConfig()
    eval: SftEvalConfig = SftEvalConfig()

    @model_validator(mode="after")
    def _has_data(self) -> SftRunConfig:
        if not self.data.sft.train:
            raise ValueError(
                "recipe sft needs data.sft.train (a .jsonl/.json/.parquet/.csv file, a folder or a hub id)"
            )
        return self

    def apply_smoke_test(self) -> None:
        super().apply_smoke_test()
        s = self.data.sft
        s.limit_train = min(s.limit_train or self.smoke.train, self.smoke.train)
        s.limit_validation = min(s.limit_validation or self.smoke.test, self.smoke.test)


# ---- dpo --------------------------------------------------------------------------------------
DPO_LOSS_TYPES = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]


class DpoConfig(Section):
    """Preference tuning: a new LoRA adapter (shape from `lora:`) trained with TRL's DPOTrainer on
    top of the SFT model; the reference is the SFT model (the new adapter disabled). Optimisation
    comes from `training:`, prompt + reply length from `data.max_length`."""

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
    eval_batch_size: int = Field(8, gt=0)  # reward-margin evaluation


# training keys the DPO recipe does not read (TRL saves no checkpoints here, there are no heads)
DPO_UNUSED_TRAINING_KEYS = (
    "enabled",
    "head_learning_rate",
    "save_steps",
    "save_total_limit",
    "eval_steps",
    "early_stopping_patience",
    "load_best",
    "packing",
)


class DpoDataConfig(DataConfig):
    max_length: int = Field(1024, gt=16)  # prompt + reply


class DpoTrainingConfig(TrainingConfig):
    """The training section with DPO's usual defaults (a small learning rate, warm-up, cosine)."""

    learning_rate: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Scheduler = "cosine"


class DpoRunConfig(RunConfig):
    recipe: Literal["dpo"] = "dpo"
    data: DpoDataConfig = DpoDataConfig()
    training: DpoTrainingConfig = DpoTrainingConfig()
    dpo: DpoConfig = DpoConfig()

    @model_validator(mode="after")
    def _reads_every_key(self) -> DpoRunConfig:
        unused = [k for k in DPO_UNUSED_TRAINING_KEYS if k in self.training.model_fields_set]
        if unused:
            raise ValueError(f"training.{unused[0]} is not used by the dpo recipe")
        return self


RECIPE_CONFIGS: dict[str, type[RunConfig]] = {
    "gsm8k": Gsm8kRunConfig,
    "empathy": EmpathyRunConfig,
    "sft": SftRunConfig,
    "dpo": DpoRunConfig,
}
