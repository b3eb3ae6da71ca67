"""LiverTumorSeg in a web browser: a second front end, beside the Slicer module, on trame-slicer.

`livertumorseg web` starts it (see app.py). Like the Slicer widget, it only binds the page to
`LiverTumorSegLogic` calls: no engine or MRML code of its own. Nothing in LiverTumorSegLib or
the Slicer module imports this package, and importing this file needs no trame.
"""

REQUIRED_MODULES = ("trame", "trame_slicer", "trame_vuetify", "trame_rca")


def missing_modules() -> list[str]:
    """The web front end's Python packages that are not installed ([] when it can start)."""
    import importlib.util

    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
