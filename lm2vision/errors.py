"""One error type for bad user input: the CLI prints its message on one line and exits non-zero."""


class Lm2vError(Exception):
    """Bad input or a refused action (missing dataset, existing run directory, k > blocks, ...)."""


class Lm2vWarning(UserWarning):
    """Something the user should know that did not stop the command (a skip, a stale lock removed)."""
