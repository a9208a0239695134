"""Console output shared by every stage: messages, result tables, progress bars, library noise."""

from __future__ import annotations

import logging
import os

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)  # progress and messages; no wrapping of paths in logs
out = Console()  # results tables


def say(msg: str) -> None:
    console.print(f"[bold cyan]tunesmith[/] {msg}")


def fmt(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def quiet_libraries() -> None:
    """Silence what transformers/peft/tokenizers print that a user cannot act on."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    # deprecation chatter from inside peft/transformers, not actionable by a user
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*|peft\..*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


_live = 0  # rich allows one live display at a time: a bar opened inside another (the guard
# judging inside a generation callback) stays silent


class _Bar:
    def __init__(self, progress):
        self.p = progress

    def __enter__(self):
        global _live
        _live += 1
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        global _live
        _live -= 1
        return self.p.__exit__(*exc)

    def advance(self, task, n=1):
        self.p.advance(task, n)

    def update(self, task, **k):
        self.p.update(task, **k)


def progress_bar(description: str, total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if _live:
        return _NoBar(), 0
    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    return _Bar(p), p.add_task(description, total=total)
