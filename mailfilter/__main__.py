"""`python -m mailfilter`: the same command line as `mailfilter`."""

from mailfilter.cli import main

main()
