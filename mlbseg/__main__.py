"""``python -m mlbseg`` runs the command line."""

from mlbseg.cli import main

main()
