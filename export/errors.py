"""Errors a user can cause while exporting: each carries one line naming the file and the problem."""

from __future__ import annotations


class ExportError(Exception):
    """A user-facing export failure (bad checkpoint, bad output path, failed verification, ...).

    ``str(err)`` is one line meant for stderr; the CLI prints it and exits with status 2.
    """


class VerificationError(ExportError):
    """The exported model disagrees with PyTorch beyond tolerance (the file is not kept)."""
