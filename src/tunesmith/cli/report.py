"""CLI commands of the reporting feature: `tunesmith report RUN_DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(run_dir: Annotated[Path, typer.Argument(help="a run directory, e.g. runs/demo",
                                                      show_default=False)]) -> None:
        """Write report.md and report.html (metrics, charts, side-by-side samples) for a run."""
        # imported here so `tunesmith --help` does not pay for matplotlib; a missing or invalid
        # run dir raises TunesmithError, which the CLI prints as one line (exit code 2)
        from tunesmith.reporting.report import write_report

        md_path, html_path = write_report(run_dir)
        typer.echo(str(md_path))
        typer.echo(str(html_path))
