"""``python -m mlbuild.cli``."""

from .main import main

main()
