"""`python -m LiverTumorSegLib ...` is the same as the `livertumorseg` command."""

import sys

from .cli import main

sys.exit(main())
