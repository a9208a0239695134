"""CLI commands of the reporting feature: `tunesmith report RUN_DIR`, `tunesmith push RUN_DIR REPO_ID`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        run_dir: Annotated[Path, typer.Argument(help="a run directory, e.g. runs/demo", show_default=False)],
    ) -> None:
        """Write report.md and report.html (metrics, charts, side-by-side samples) for a run."""
        # imported here so `tunesmith --help` does not pay for matplotlib; a missing or invalid
        # run dir raises TunesmithError, which the CLI prints as one line (exit code 2)
        from tunesmith.reporting.report import write_report

        md_path, html_path = write_report(run_dir)
        typer.echo(str(md_path))
        typer.echo(str(html_path))

    @app.command("push")
    def push(
        run_dir: Annotated[Path, typer.Argument(help="a finished run directory, e.g. runs/sft-demo")],
        repo_id: Annotated[str, typer.Argument(help="hub repository, e.g. you/sft-demo")],
        merged: Annotated[
            bool, typer.Option("--merged", help="upload merged full weights instead of the adapter")
        ] = False,
        private: Annotated[bool, typer.Option("--private", help="create the repository as private")] = False,
        to_folder: Annotated[
            Path | None, typer.Option("--to-folder", help="write what would be uploaded here; no network")
        ] = None,
    ) -> None:
        """Upload a run's adapter (or --merged weights) with its model card to the Hugging Face Hub."""
        from tunesmith.reporting.model_card import push as do_push

        where = do_push(run_dir, repo_id, merged=merged, private=private, to_folder=to_folder)
        typer.echo(f"{'staged in' if to_folder else 'uploaded to'} {where}")
