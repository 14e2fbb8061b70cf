"""``python -m axlstateless`` runs the command line."""

from axlstateless.cli import main

main()
