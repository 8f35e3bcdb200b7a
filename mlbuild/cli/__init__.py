"""The ``mlbuild`` command line (click). Each command maps its arguments to one library call."""

from .main import main

__all__ = ["main"]
