"""Errors a user can cause. The CLI prints `str(error)` as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, bad model, missing backend: one clear line naming the thing and the fix."""

    def __init__(self, message: str) -> None:
        # one line, always: the CLI prints it as is
        super().__init__(" ".join(str(message).split()))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
