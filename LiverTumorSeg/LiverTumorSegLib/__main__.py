"""`python -m LiverTumorSegLib ...` is the same as the `livertumorseg` command."""

from .cli import run

run()
