"""CLI commands of the reporting feature: `tunesmith report`."""

import typer


def register(app: typer.Typer) -> None:
    pass
