from mailfilter.cli import main

main()
