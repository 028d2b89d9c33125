"""Errors a user can cause.

Every one of them carries a message that names the thing at fault and, where there is one, the fix.
The CLI prints ``str(error)`` as one line on stderr and exits 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class CovidnetError(Exception):
    """Base class of every error a user can cause (bad input, bad option, missing file)."""

    exit_code = 1


class UnknownModelError(CovidnetError, KeyError):
    """An architecture name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would repr() the message; we want it as written
        return str(self.args[0]) if self.args else ""


class ConfigError(CovidnetError, ValueError):
    """An option or argument that cannot be honoured (e.g. ``in_channels=4``)."""


class UsageError(CovidnetError):
    """Arguments that do not go together; the CLI exits 2, as for any usage error."""

    exit_code = 2


class SourceError(CovidnetError):
    """A data source that cannot be read at all (missing folder or metadata file): the build stops."""


class ImageReadError(CovidnetError):
    """An image file that cannot be read: missing, empty, truncated, corrupt, or not a format we read."""


class ImageTooLargeError(ImageReadError):
    """An image whose pixel count exceeds the limit set for it (a decompression bomb, or just too big)."""


class UnsafeCheckpointError(CovidnetError):
    """A checkpoint that names Python objects other than tensors and plain containers: refused unread,
    since unpickling them could run code (``covidnet.checkpoint.read_checkpoint``)."""
