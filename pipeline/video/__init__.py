"""Any video file in: streaming decode (PyAV), frame/audio pairing, the head's masks, an overlay video out."""

from pipeline.video.errors import VideoError

__all__ = ["VideoError"]
