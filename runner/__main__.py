"""`python -m runner` is the `pipeline` command."""

from runner.cli import main

main()
