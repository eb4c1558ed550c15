"""`python -m pipeline` is the `digits` command."""

from .cli import main

main()
