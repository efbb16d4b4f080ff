"""The project's one error family: every error a command reports is a ProjectError.

A ProjectError's message is one line that says what went wrong and what to do; `exit_code` is what the command
exits with (2: bad input or an unusable environment; 1: an expected negative outcome, e.g. an accuracy budget
missed). `client.cli.run` prints it as the single `error: ...` line. Subclasses name the concern (weights,
checkpoint, image, runner, calibration ...), so callers catch what they can handle and let the rest reach the
wrapper.
"""
from __future__ import annotations


class ProjectError(Exception):
    """An error a user can act on: one line naming the fix; `exit_code` for the command that stops on it."""

    exit_code = 2
    label = "error"  # the word before the colon on the one line printed

    def line(self) -> str:
        return first_line(self)


class OutcomeError(ProjectError):
    """An expected negative outcome rather than bad input (a budget missed, a gate failed): exit 1."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
