"""LoRA trainer: an explicit loop on top of accelerate.

Why not an HF Trainer subclass: the empathy recipe needs one forward that feeds the LM loss, two
heads and a KL against the adapter-disabled model, each normalised over the whole accumulation
window (token counts for the LM and KL, labelled rows for the heads). Trainer's compute_loss
averages per micro-batch and materialises full-vocabulary logits; working around both costs more
code than this loop, and the loop is faster on CPU (see BENCHMARKS.md). Distribution
(DDP/FSDP/DeepSpeed), mixed precision and device placement stay accelerate's job.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tunesmith.config import LossConfig, TrainingConfig
from tunesmith.data.batching import collate, collate_packed, pack_rows, sorted_batches
from tunesmith.data.chat import IGNORE, Encoded, pad_token_id
from tunesmith.errors import TunesmithError
from tunesmith.io import atomic_open, write_json
from tunesmith.modeling.forward import causal_lm, decoder_hidden
from tunesmith.modeling.heads import Heads
from tunesmith.training.dropout import use_fast_lora_dropout
from tunesmith.training.losses import head_ce_sum, kl_policy_base_sum, lm_nll_sum
from tunesmith.training.precision import LoraAutocast

COMPONENTS = ("lm", "emotion", "strategy", "kl")


class NonFiniteLoss(TunesmithError):
    pass


def counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Normalisers of each loss term: [lm tokens, emotion rows, strategy rows, kl positions]."""
    return torch.tensor(
        [
            (batch["labels"][:, 1:] != IGNORE).sum(),
            (batch["emotion"] >= 0).sum(),
            (batch["strategy"] >= 0).sum(),
            batch["kl_mask"].sum(),
        ],
        dtype=torch.float64,
    )


class TrainModule(nn.Module):
    """Model + heads in one module so accelerate/DDP see a single forward."""

    def __init__(self, model, heads: Heads | None = None, kl: bool = False):
        super().__init__()
        self.model = model
        self.heads = heads
        self.kl = kl

    @property
    def _no_split_modules(self):  # FSDP's transformer-layer auto-wrap reads it from the top module
        return getattr(causal_lm(self.model), "_no_split_modules", None)

    def forward(
        self, input_ids, attention_mask, labels, pool_index, user_span, emotion, strategy, kl_mask, position_ids=None
    ):
        lm_head = causal_lm(self.model).get_output_embeddings()
        hidden = decoder_hidden(self.model, input_ids, attention_mask, position_ids)
        zero = hidden.new_zeros((), dtype=torch.float32)
        out = {"lm": lm_nll_sum(hidden, labels, lm_head), "emotion": zero, "strategy": zero, "kl": zero}
        if self.heads is not None and ((emotion >= 0).any() or (strategy >= 0).any()):
            logits = self.heads(self.heads.pool(hidden, pool_index, user_span))
            out["head_logits"] = logits  # evaluation reads them; the training loop ignores them
            if "emotion" in logits:
                out["emotion"] = head_ce_sum(logits["emotion"], emotion)
            if "strategy" in logits:
                out["strategy"] = head_ce_sum(logits["strategy"], strategy)
        if self.kl and kl_mask.any():
            rows = kl_mask.any(1)
            policy = lm_head(hidden[kl_mask])
            with torch.no_grad(), self.model.disable_adapter():
                base_hidden = decoder_hidden(self.model, input_ids[rows], attention_mask[rows])
                base = lm_head(base_hidden[kl_mask[rows]])
            out["kl"] = kl_policy_base_sum(policy, base)
        return out


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    # validation: one record per evaluation; the best so far; evaluations since it; early stop
    evals: list[dict] = field(default_factory=list)
    best_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False


def batches_for_epoch(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-grouped batches: shuffle, sort within chunks of 64 batches, shuffle batch order.

    Similar lengths share a batch (little padding) while the order stays random; the result is a
    pure function of (seed, epoch) so a resumed run replays the same order.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = batch_size * 64
    batches = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c : c + chunk], key=lambda i: -lengths[i])
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


class Trainer:
    def __init__(
        self,
        model,
        tokenizer,
        cfg: TrainingConfig,
        epoch_data: Callable[[int], list[Encoded]],
        run_dir: str | Path,
        heads: Heads | None = None,
        loss: LossConfig | None = None,
        kl: bool = False,
        log: Callable[[str], None] = print,
        validation: list[Encoded] | None = None,
        eval_batch_size: int = 8,
        pack_length: int | None = None,
        run_name: str | None = None,
        tracker_config: dict | None = None,
    ):
        """`validation`: features whose loss is measured every `cfg.eval_steps` steps and at the end
        (best checkpoint, early stopping). `pack_length`: row length for `cfg.packing` (default: the
        longest example). `tracker_config`: hyperparameters for the trackers (default: `cfg`)."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg, self.tokenizer, self.epoch_data, self.log = cfg, tokenizer, epoch_data, log
        self.run_dir = Path(run_dir)
        self.loss_cfg = loss or LossConfig(lambda_emotion=0, lambda_strategy=0, lambda_kl=0)
        self.weights = {
            "lm": self.loss_cfg.lambda_lm,
            "emotion": self.loss_cfg.lambda_emotion,
            "strategy": self.loss_cfg.lambda_strategy,
            "kl": self.loss_cfg.lambda_kl,
        }
        from accelerate.utils import DistributedDataParallelKwargs

        # heads skip a batch without head labels; under DDP that batch's process must still
        # take part in the gradient all-reduce for them. The scheduler counts optimizer steps:
        # accelerate would otherwise step it once per process each step (N× too fast a decay).
        trackers = check_trackers(cfg.trackers)
        self.accelerator = Accelerator(
            step_scheduler_with_optimizer=False,
            log_with=trackers or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "tensorboard")
            ),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=heads is not None)],
        )
        self.trackers = trackers
        self.run_name = run_name or self.run_dir.name
        self.tracker_config = tracker_config if tracker_config is not None else cfg.model_dump(mode="json")
        self.validation = validation or []
        self.eval_batch_size = eval_batch_size
        if cfg.packing and (heads is not None or (kl and self.weights["kl"] > 0)):
            raise TunesmithError(
                "training.packing: the emotion/strategy heads and the KL term read one example per "
                "row; turn packing off for them"
            )
        torch.manual_seed(cfg.seed)
        use_fast_lora_dropout(model)
        self.amp = LoraAutocast(model)
        self.module = TrainModule(model, heads, kl=kl and self.weights["kl"] > 0)
        head_ids = {id(p) for p in heads.parameters()} if heads is not None else set()
        groups = [
            {
                "params": [p for p in self.module.parameters() if p.requires_grad and id(p) not in head_ids],
                "lr": cfg.learning_rate,
            }
        ]
        if head_ids:
            groups.append(
                {
                    "params": [p for p in heads.parameters() if p.requires_grad],
                    "lr": cfg.head_learning_rate or cfg.learning_rate,
                }
            )
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        first = epoch_data(0)
        if not first:
            raise TunesmithError("training set is empty after filtering")
        self.pack_length = pack_length or max(len(e.input_ids) for e in first)
        lengths = [len(e.input_ids) for e in first]
        rows = len(pack_rows(lengths, self.pack_length, cfg.seed, 0)) if cfg.packing else len(first)
        batches_per_process = math.ceil(math.ceil(rows / cfg.batch_size) / self.accelerator.num_processes)
        self.steps_per_epoch = math.ceil(batches_per_process / cfg.grad_accum)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            cfg.scheduler,
            self.optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.module, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.module, self.optimizer, self.scheduler
        )
        self.pad_id = pad_token_id(tokenizer)
        from accelerate.utils import DistributedType

        dist = self.accelerator.distributed_type
        self._deepspeed = dist == DistributedType.DEEPSPEED
        # FSDP and DeepSpeed hold weights (ZeRO-3/FSDP) or optimizer state sharded: saving gathers
        # the weights first, a collective every process joins; their optimizer state is not saved
        self._sharded = dist in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.state = TrainState()
        self._epoch_cache: tuple[int, list, list[list[int]]] | None = None

    # ---- data -------------------------------------------------------------------------------
    def _epoch(self, epoch: int):
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            data = self.epoch_data(epoch)
            lengths = [len(e.input_ids) for e in data]
            if self.cfg.packing:  # the units of a batch become rows of packed examples
                data = [[data[i] for i in row] for row in pack_rows(lengths, self.pack_length, self.cfg.seed, epoch)]
                batches = [
                    list(range(b, min(b + self.cfg.batch_size, len(data))))
                    for b in range(0, len(data), self.cfg.batch_size)
                ]
            else:
                batches = batches_for_epoch(lengths, self.cfg.batch_size, self.cfg.seed, epoch)
            # each process takes its own share of the batches (DDP); one process takes all
            n, r = self.accelerator.num_processes, self.accelerator.process_index
            batches = batches[r::n] if n > 1 else batches
            self._epoch_cache = (epoch, data, batches)
        return self._epoch_cache

    def _next_window(self) -> list[dict[str, torch.Tensor]]:
        window = []
        while len(window) < self.cfg.grad_accum:
            epoch, data, batches = self._epoch(self.state.epoch)
            if self.state.batch_in_epoch >= len(batches):
                if window:  # an epoch's tail makes a short last window
                    break
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            items = [data[i] for i in batches[self.state.batch_in_epoch]]
            self.state.batch_in_epoch += 1
            window.append(collate_packed(items, self.pad_id) if self.cfg.packing else collate(items, self.pad_id))
        return window

    # ---- loop -------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> TrainState:
        if not resume and self.ckpt_root.is_dir() and self.accelerator.is_main_process:
            # a fresh run in an earlier run's directory: its checkpoints would join this run's in the
            # sweep and in the rotation
            old = sorted(p.name for p in self.ckpt_root.iterdir() if p.is_dir())
            if old:
                self.log(
                    f"fresh run (no --resume): removing {len(old)} checkpoint(s) of an earlier run in {self.ckpt_root}"
                )
                shutil.rmtree(self.ckpt_root)
        if resume:
            self.load_checkpoint()
            if self.state.stopped_early:
                self.log(
                    f"--resume: this run stopped early at step {self.state.step} (validation loss not lower for "
                    f"{self.state.bad_evals} evaluations; best {self.state.best_loss:.4f} at step "
                    f"{self.state.best_step}); nothing left to train, adapter/ is unchanged"
                )
                return self.state
        acc = self.accelerator
        if self.trackers:
            acc.init_trackers(self.run_name, config=hparams(self.tracker_config))
        try:
            return self._train()
        finally:
            if self.trackers:
                acc.end_training()

    def _train(self) -> TrainState:
        acc = self.accelerator
        self.module.train()
        device = acc.device
        tokens_seen = self.state.history[-1].get("tokens", 0) if self.state.history else 0
        from tunesmith.ui import progress_bar

        bar, task = progress_bar("training", self.total_steps)
        import sys

        interactive = sys.stderr.isatty()
        log_every = max(1, self.total_steps // 20)
        bar.update(task, completed=self.state.step)
        # Ctrl-C takes effect at the end of the current optimizer step: stopping inside one would
        # checkpoint a half-consumed window (data position ahead of the weights) or weights already
        # stepped with the step counter not yet advanced, and the resumed run would differ.
        interrupted: list[int] = []

        def on_sigint(signum, frame):
            if interrupted:  # a second Ctrl-C: stop now; the last checkpoint stays as it was
                raise KeyboardInterrupt
            interrupted.append(signum)
            self.log("Ctrl-C: saving a checkpoint after the current step (press again to stop without saving)")

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
        try:
            with bar:
                while self.state.step < self.total_steps:
                    t0 = time.perf_counter()
                    window = self._next_window()
                    norm = sum(counts(b) for b in window).to(device)
                    norm = acc.reduce(norm, reduction="sum") if acc.num_processes > 1 else norm
                    sums = {k: 0.0 for k in COMPONENTS}
                    step_tokens = 0
                    for i, batch in enumerate(window):
                        batch = {k: v.to(device) for k, v in batch.items()}
                        if self._deepspeed:  # its engine steps inside backward at a window's last micro-batch only
                            acc.gradient_state._set_sync_gradients(i == len(window) - 1)
                        sync = acc.no_sync(self.module) if i < len(window) - 1 else contextlib.nullcontext()
                        with sync:
                            with self.amp():
                                out = self.module(**batch)
                            loss = 0.0
                            for j, k in enumerate(COMPONENTS):
                                if norm[j] > 0 and self.weights[k] > 0:
                                    loss = loss + self.weights[k] * out[k] / norm[j]
                                sums[k] += float(out[k].detach())
                            if torch.is_tensor(loss):
                                # DDP averages gradients over processes; the normaliser is already global
                                acc.backward(loss * acc.num_processes)
                        step_tokens += int(batch["attention_mask"].sum())
                    # the logged loss and token count cover every process's share of the window
                    totals = torch.tensor(
                        [*(sums[k] for k in COMPONENTS), step_tokens], dtype=torch.float64, device=device
                    )
                    totals = acc.reduce(totals, reduction="sum") if acc.num_processes > 1 else totals
                    tokens_seen += int(totals[-1])
                    parts = {k: float(totals[j]) / float(norm[j]) for j, k in enumerate(COMPONENTS) if norm[j] > 0}
                    total = sum(self.weights[k] * v for k, v in parts.items())
                    if not math.isfinite(total):
                        ckpt = self.latest_checkpoint()
                        raise NonFiniteLoss(
                            f"loss became {total} at step {self.state.step + 1}; last good checkpoint: {ckpt or 'none'}"
                        )
                    grad_norm = None
                    if self.cfg.max_grad_norm:
                        gn = acc.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
                        grad_norm = None if gn is None else float(gn)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.state.step += 1
                    dt = time.perf_counter() - t0
                    rec = {
                        "step": self.state.step,
                        "epoch": self.state.epoch,
                        "loss": total,
                        **{k: parts.get(k) for k in COMPONENTS},
                        "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        "tokens": tokens_seen,
                        "step_seconds": round(dt, 4),
                    }
                    self.state.history.append(rec)
                    if self.trackers and self.state.step % self.cfg.logging_steps == 0:
                        acc.log(
                            {
                                "train/loss": total,
                                **{f"train/{k}": v for k, v in parts.items()},
                                "train/learning_rate": rec["lr"],
                                "train/tokens_per_s": int(totals[-1]) / dt,
                                **({"train/grad_norm": grad_norm} if grad_norm is not None else {}),
                                "train/epoch": self.state.epoch,
                            },
                            step=self.state.step,
                        )
                    bar.update(task, advance=1, description=f"training loss {total:.4f}")
                    if (
                        acc.is_main_process
                        and not interactive
                        and (self.state.step % log_every == 0 or self.state.step == self.total_steps)
                    ):
                        # no live bar in a log file: a line every ~5% of the run instead
                        h = self.state.history
                        before = h[-log_every - 1]["tokens"] if len(h) > log_every else 0
                        secs = sum(r["step_seconds"] for r in h[-log_every:])
                        parts_txt = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
                        self.log(
                            f"step {self.state.step}/{self.total_steps} loss {total:.4f} ({parts_txt}) "
                            f"{(h[-1]['tokens'] - before) / secs if secs else 0:.0f} tokens/s"
                        )
                    if (
                        self.validation
                        and self.cfg.eval_steps
                        and self.state.step % self.cfg.eval_steps == 0
                        and self.state.step < self.total_steps
                    ):
                        self.validate()
                    saved = self.cfg.save_steps and self.state.step % self.cfg.save_steps == 0
                    if saved:
                        self.save_checkpoint()
                    if self.state.stopped_early:
                        break
                    stop = bool(interrupted)
                    if acc.num_processes > 1:  # every process stops at the same step
                        stop = bool(acc.reduce(torch.tensor(float(stop), device=device), reduction="sum") > 0)
                    if stop:
                        path = self.latest_checkpoint() if saved else self.save_checkpoint()
                        self.log(
                            f"interrupted at step {self.state.step}; checkpoint saved to {path}; continue with --resume"
                        )
                        raise KeyboardInterrupt
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if self.validation and (not self.state.evals or self.state.evals[-1]["step"] != self.state.step):
            self.validate(final=True)
        if not self.cfg.save_steps or self.state.step % self.cfg.save_steps or self.state.stopped_early:
            self.save_checkpoint()
        if self.cfg.load_best and self.state.best_step is not None and self.state.best_step != self.state.step:
            self.load_weights(self.best_dir)
            self.log(
                f"adapter/ = the best evaluation: step {self.state.best_step}, validation loss "
                f"{self.state.best_loss:.4f} (training.load_best)"
            )
        self.save_final()
        return self.state

    # ---- validation -------------------------------------------------------------------------
    @property
    def best_dir(self) -> Path:
        return self.ckpt_root / "best"

    def validation_loss(self) -> tuple[float, dict[str, float | None]]:
        """(weighted total, components) of the validation set with the current weights."""
        with self.amp():
            parts = evaluate_loss(self.unwrapped(), self.validation, self.pad_id, self.eval_batch_size)
        return sum(self.weights[k] * v for k, v in parts.items() if v is not None and self.weights[k] > 0), parts

    def validate(self, final: bool = False) -> dict:
        """Validation loss now; updates the best weights and the early-stopping count."""
        total, parts = self.validation_loss()
        st = self.state
        improved = st.best_loss is None or total < st.best_loss
        if improved:
            st.best_loss, st.best_step, st.bad_evals = total, st.step, 0
            if self.cfg.load_best:
                self._save_best()
        else:
            st.bad_evals += 1
        rec = {"step": st.step, "loss": total, **{k: v for k, v in parts.items() if v is not None}}
        st.evals.append(rec)
        if self.trackers:
            self.accelerator.log(
                {"eval/loss": total, **{f"eval/{k}": v for k, v in parts.items() if v is not None}}, step=st.step
            )
        patience = self.cfg.early_stopping_patience
        stop = bool(patience and not final and st.bad_evals >= patience)
        self.log(
            f"step {st.step}: validation loss {total:.4f} ({len(self.validation)} examples; best "
            f"{st.best_loss:.4f} at step {st.best_step})"
            + (f"; no improvement in {patience} evaluations: stopping early" if stop else "")
        )
        st.stopped_early = st.stopped_early or stop
        return rec

    def _save_best(self) -> None:
        state = self._gathered_state()
        if self.accelerator.is_main_process:
            tmp = self.ckpt_root / ".tmp-best"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self._save_weights(tmp, state)
            write_json(tmp / "best.json", {"step": self.state.step, "validation_loss": self.state.best_loss})
            shutil.rmtree(self.best_dir, ignore_errors=True)
            tmp.rename(self.best_dir)
        self.accelerator.wait_for_everyone()

    def load_weights(self, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        m = self.unwrapped()
        set_peft_model_state_dict(m.model, load_file(path / "adapter_model.safetensors"))
        if m.heads is not None and (path / "heads.safetensors").is_file():
            m.heads.load_state_dict(load_file(path / "heads.safetensors"))

    # ---- saving -----------------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def unwrapped(self) -> TrainModule:
        return self.accelerator.unwrap_model(self.module)

    def _gathered_state(self) -> dict | None:
        """Full state dict under FSDP/DeepSpeed (every process must call this), else None."""
        return self.accelerator.get_state_dict(self.module) if self._sharded else None

    def _save_weights(self, d: Path, state: dict | None = None) -> None:
        m = self.unwrapped()
        # PEFT's default "auto" asks the hub whether the base vocabulary was resized (a network call per save
        # when the base is a hub id); tunesmith never resizes it, so the base embeddings never need saving
        kw = {"safe_serialization": True, "save_embedding_layers": False}
        if state is None:
            m.model.save_pretrained(d, **kw)
            if m.heads is not None:
                m.heads.save(d)
            return
        m.model.save_pretrained(d, state_dict={k[6:]: v for k, v in state.items() if k.startswith("model.")}, **kw)
        if m.heads is not None:
            full = Heads(**m.heads.config())
            full.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("heads.")})
            full.save(d)

    def save_checkpoint(self) -> Path:
        """Adapter, heads, optimizer, scheduler, RNG and data position; written to a temp dir
        and renamed, so a kill mid-save never leaves a checkpoint that looks complete."""
        acc = self.accelerator
        final = self.ckpt_root / f"checkpoint-{self.state.step}"
        state = self._gathered_state()
        if acc.is_main_process:
            tmp = self.ckpt_root / f".tmp-checkpoint-{self.state.step}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self._save_weights(tmp, state)
            torch.save(
                {
                    "optimizer": None if self._sharded else self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "step": self.state.step,
                    "epoch": self.state.epoch,
                    "batch_in_epoch": self.state.batch_in_epoch,
                    "evals": self.state.evals,
                    "best_loss": self.state.best_loss,
                    "best_step": self.state.best_step,
                    "bad_evals": self.state.bad_evals,
                    "stopped_early": self.state.stopped_early,
                },
                tmp / "trainer_state.pt",
            )
            write_json(tmp / "training_history.json", self.state.history)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self._rotate()
        acc.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        limit = self.cfg.save_total_limit
        if not limit:
            return
        for old in self.checkpoints()[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_root.is_dir():
            return []
        found = [p for p in self.ckpt_root.glob("checkpoint-*") if (p / "trainer_state.pt").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        c = self.checkpoints()
        return c[-1] if c else None

    def load_checkpoint(self, path: Path | None = None) -> None:
        path = path or self.latest_checkpoint()
        if path is None:
            self.log("--resume: no checkpoint found, starting from scratch")
            return
        self.load_weights(path)
        st = torch.load(path / "trainer_state.pt", weights_only=True)
        if st["optimizer"] is None or self._sharded:
            raise TunesmithError(
                f"{path}: --resume works for single-process and DDP runs, not FSDP/DeepSpeed ones; "
                "each checkpoint's adapter is complete, start a new run from it instead"
            )
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        self.state.step, self.state.epoch, self.state.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        self.state.history = json.loads((path / "training_history.json").read_text())
        # checkpoints written before validation existed carry none of these
        self.state.evals = st.get("evals", [])
        self.state.best_loss, self.state.best_step = st.get("best_loss"), st.get("best_step")
        self.state.bad_evals, self.state.stopped_early = st.get("bad_evals", 0), st.get("stopped_early", False)
        self._check_best_dir()
        self.log(f"resumed from {path} at step {self.state.step}")

    def _check_best_dir(self) -> None:
        """After a crash the best weights on disk may come from steps the resumed run has not reached
        (saved after the checkpoint it resumes from), so they would be handed out under another step's
        label. Such a folder is dropped and the best is re-established from the next evaluation."""
        marker = self.best_dir / "best.json"
        on_disk = json.loads(marker.read_text()).get("step") if marker.is_file() else None
        if on_disk == self.state.best_step or (on_disk is None and not self.cfg.load_best):
            return
        if self.accelerator.is_main_process:
            shutil.rmtree(self.best_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.log(
            f"checkpoints/best (step {on_disk}) does not match the resumed state (best step {self.state.best_step}): "
            "dropped; the next evaluation sets the best again"
        )
        self.state.best_loss, self.state.best_step, self.state.bad_evals = None, None, 0

    def save_final(self) -> Path:
        d = self.run_dir / "adapter"
        state = self._gathered_state()
        if self.accelerator.is_main_process:
            tmp = self.run_dir / ".tmp-adapter"
            shutil.rmtree(tmp, ignore_errors=True)
            self._save_weights(tmp, state)
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
            with atomic_open(self.run_dir / "training_history.json") as f:
                json.dump(self.state.history, f, indent=1)
            if self.state.evals:
                write_json(
                    self.run_dir / "validation_history.json",
                    {
                        "evaluations": self.state.evals,
                        "best_step": self.state.best_step,
                        "best_loss": self.state.best_loss,
                        "stopped_early": self.state.stopped_early,
                        "adapter_step": self.state.best_step if self.cfg.load_best else self.state.step,
                    },
                )
        self.accelerator.wait_for_everyone()
        return d


TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_trackers(names: list[str]) -> list[str]:
    import importlib.util

    for n in names:
        if importlib.util.find_spec(TRACKER_MODULES[n]) is None:
            raise TunesmithError(
                f"training.report_to: {n} is not installed (pip install {TRACKER_MODULES[n]}), "
                "or drop it from report_to"
            )
    return names


def hparams(config: dict, prefix: str = "") -> dict:
    """A nested config as flat scalar hyperparameters (what every tracker's config API takes)."""
    flat: dict = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat |= hparams(v, key + ".")
        elif isinstance(v, (bool, int, float, str)):
            flat[key] = v
        else:  # lists, None
            flat[key] = json.dumps(v)
    return flat


@torch.no_grad()
def evaluate_loss(
    module: TrainModule,
    features: list[Encoded],
    pad_id: int,
    batch_size: int = 8,
    head_logits: dict[str, torch.Tensor] | None = None,
) -> dict[str, float | None]:
    """Each loss component's mean over held-out examples (same normalisation as training).

    Given a dict as `head_logits`, also fills in each head's logits per example in `features` order
    (NaN rows for batches without any head label), so head metrics need no second forward pass.
    """
    was = module.training
    module.eval()
    device = next(module.parameters()).device
    sums = torch.zeros(len(COMPONENTS), dtype=torch.float64)
    norm = torch.zeros(len(COMPONENTS), dtype=torch.float64)
    try:
        for idx in sorted_batches(features, batch_size):
            batch = collate([features[i] for i in idx], pad_id)
            norm += counts(batch)
            out = module(**{k: v.to(device) for k, v in batch.items()})
            sums += torch.tensor([float(out[k]) for k in COMPONENTS], dtype=torch.float64)
            if head_logits is not None:
                for k, v in out.get("head_logits", {}).items():
                    if k not in head_logits:
                        head_logits[k] = torch.full((len(features), v.shape[-1]), float("nan"))
                    head_logits[k][torch.as_tensor(idx)] = v.float().cpu()
    finally:
        module.train(was)
    return {k: (float(sums[j] / norm[j]) if norm[j] > 0 else None) for j, k in enumerate(COMPONENTS)}
