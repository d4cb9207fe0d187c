"""`python -m migfuse`: the same command line as `migfuse`."""
from migfuse.cli import main

main()
