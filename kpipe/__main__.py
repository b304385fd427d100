"""`python -m kpipe ...`: the same entry point as the `kpipe` console script."""

from kpipe.cli import main

main()
