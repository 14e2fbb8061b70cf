"""``python -m axlstateless.bbsim`` runs the simulator's bbcmd-compatible command line."""

from axlstateless.bbsim.cli import main

main()
