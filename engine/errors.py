"""The root of the errors meant for the user (torch-free, imports nothing).

A ``DepthScopeError`` carries one sentence that says what went wrong and what to do; the CLI prints it
(exit 2) and pages show it, without a traceback. Any other exception is a bug: the CLI and pages let it
surface with its traceback in the log. Subclasses keep their older base too (``ValueError``,
``FileNotFoundError`` ...), so code that catches those still does.
"""

from __future__ import annotations


class DepthScopeError(Exception):
    """Something the user can fix; the message says how."""


class UserInputError(DepthScopeError, ValueError):
    """A value given by the user (an option, a name, a label) that cannot be used."""


def user_message(exc: BaseException) -> str | None:
    """The sentence to show for ``exc``, or None when it is a bug (show it with its traceback)."""
    return (str(exc) or type(exc).__name__) if isinstance(exc, DepthScopeError) else None
