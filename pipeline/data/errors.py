"""The data layer's one error type, in a module of its own so every data module can raise it without a circle."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with an input file; the message names the file."""
