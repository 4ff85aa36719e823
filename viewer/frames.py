"""Decoded frames of stored instances, through the frame cache.

The one place that turns an index row into pixels: it opens the stored file
(by content hash), decodes the frame and keeps it in the bounded cache.
"""

from __future__ import annotations

import pydicom

from viewer.cache import ByteLRU
from viewer.render import DecodedFrame, RenderError, decode_frame
from viewer.storage import ObjectStore


class FrameLoader:
    """Decodes frames on demand and caches them by (file hash, frame number)."""

    def __init__(self, store: ObjectStore, cache_bytes: int) -> None:
        self.store = store
        self.cache: ByteLRU[DecodedFrame] = ByteLRU(cache_bytes, lambda frame: frame.nbytes)

    def load(self, file_hash: str, number: int) -> DecodedFrame:
        """Frame ``number`` (1-based) of the stored file ``file_hash``."""
        key = (file_hash, number)
        frame = self.cache.get(key)
        if frame is None:
            path = self.store.path(file_hash)
            try:
                ds = pydicom.dcmread(path)
            except FileNotFoundError:
                raise RenderError("the stored file is missing") from None
            except Exception as exc:
                raise RenderError(f"cannot read the stored file: {exc}") from exc
            frame = decode_frame(ds, number - 1)
            self.cache.put(key, frame)
        return frame
