"""User-facing errors of the attack core.

Every error a user can cause (a bad file, an unknown name, a parameter out of range, weights that cannot be
had offline) is raised as a :class:`UAPError` subclass with a message that says what was wrong and what is
allowed. The CLI prints the message on one line and exits non-zero; the UI shows it in the page.
"""

from __future__ import annotations


class UAPError(Exception):
    """Base class of every error whose message is meant for the user."""


class ParameterError(UAPError, ValueError):
    """A parameter is missing, malformed or outside its allowed range."""


class ModelUnavailableError(UAPError):
    """A model is unknown, or its package or weights cannot be had (e.g. offline)."""


class ImageSourceError(UAPError):
    """An image source (folder, .npz, upload) holds no usable images or is malformed."""


class ArtifactError(UAPError):
    """A saved perturbation or its metadata is missing, malformed, unsafe or of the wrong shape."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when the message is empty), at most ``limit``
    characters: what a one-line error message quotes of an underlying library error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
