"""CLI commands of the chat feature: `tunesmith chat | serve | redteam`."""

import typer


def register(app: typer.Typer) -> None:
    pass
