"""`python -m tunesmith.cli` (what `accelerate launch -m tunesmith.cli` runs)."""

from tunesmith.cli.app import main

main()
