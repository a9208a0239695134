"""Datasets from the Hugging Face hub (or its local cache, under HF_HUB_OFFLINE) via `datasets`."""

from __future__ import annotations

from tunesmith.errors import DataError


def load_hub_dataset(what: str, name: str, *args, split: str, **kwargs):
    """`datasets.load_dataset(name, *args, split=split, **kwargs)`; any failure (offline, renamed,
    gated, ...) is one line naming the dataset: datasets raises many exception types."""
    from datasets import load_dataset

    try:
        return load_dataset(name, *args, split=split, **kwargs)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot load {what} '{name}' split {split}: {first}") from None
