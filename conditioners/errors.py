"""Errors a user can fix (a bad file, missing weights, a wrong name or option).

The command line prints the message of a `UserError` alone, on one line, and exits with status 2;
anything else is a bug and keeps its traceback. Each message names the file or option and the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class of the errors whose message is the whole story."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise print their message quoted
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownNameError(UserError, KeyError):
    """An unknown conditioner, captioner, source type or builder name."""


class OptionError(UserError, ValueError):
    """An option a conditioner (or other component) does not take, or a value it cannot use."""
