"""Errors a user can act on: each message names the problem and the fix."""


class InputError(ValueError):
    """Bad input (file, image, mask, setting). The command line prints it as one line, exit code 2."""


class ModelError(InputError):
    """A model file that is missing, corrupt or from an incompatible format version."""


class Cancelled(RuntimeError):
    """Long work stopped because the user asked (Cancel button, Ctrl-C)."""
