"""The `tunesmith` command line (typer): `app` holds every command, `main` is the entry point."""

from tunesmith.cli.app import app, main

__all__ = ["app", "main"]
