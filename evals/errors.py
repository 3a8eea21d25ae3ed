"""Errors raised by the evaluation suite.

One base class with narrow subclasses; the CLI turns each into a one-line message and a non-zero exit.
"""

from __future__ import annotations


class EvalError(Exception):
    """Base class for every error raised by the evals package."""


class DatasetNotFoundError(EvalError):
    """A dataset folder or one of its required files does not exist."""


class DatasetFormatError(EvalError):
    """A dataset file is malformed.

    Attributes:
        path: The file.
        line: 1-based line number, when the problem has one.
        reason: What is wrong.
    """

    def __init__(self, path: object, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class SuiteError(EvalError):
    """A suite file or a ``--set`` override is invalid."""


class RunNotFoundError(EvalError):
    """A run folder or its ``results.json`` cannot be found or read."""


class GateError(EvalError):
    """A gate rule cannot be parsed."""
