"""The error a video file that cannot be segmented raises: one line that names the file."""

from __future__ import annotations

from pipeline.data.errors import DataError


class VideoError(DataError):
    """A video (or audio) file that cannot be read as asked; the message names the file and what to do."""
