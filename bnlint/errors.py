"""Errors that end a command with a clear one-line message instead of a traceback.

Exit codes follow ruff: 0 clean, 1 findings at or above the fail level, 2 usage, config or load error.
"""

from __future__ import annotations

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2


class BnlintError(Exception):
    """A problem the user can act on; shown as one line, exit code 2."""

    exit_code = EXIT_ERROR


class LoadError(BnlintError):
    """A model file could not be read; the message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(BnlintError):
    """A configuration file or option is invalid."""
