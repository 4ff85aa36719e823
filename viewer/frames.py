"""Decoded frames of stored instances, through the frame cache.

The one place that turns an index row into pixels: it opens the stored file
(by content hash, or by key through the PACS cache), decodes the frame and
keeps it in the bounded cache. Parsed multi-frame files are kept too (in a
quarter of the budget), so scrolling through one decodes each frame without
parsing the whole file again.
"""

from __future__ import annotations

import os

from pydicom.dataset import Dataset

from viewer.cache import ByteLRU
from viewer.fastheader import read_dataset
from viewer.headers import number_of_frames
from viewer.render import DecodedFrame, RenderError, decode_frame
from viewer.storage import ObjectStore


class FrameLoader:
    """Decodes frames on demand and caches them by (file hash, frame number)."""

    def __init__(self, store: ObjectStore, cache_bytes: int) -> None:
        self.store = store
        self.cache: ByteLRU[DecodedFrame] = ByteLRU(
            cache_bytes - cache_bytes // 4, lambda frame: frame.nbytes
        )
        self.files: ByteLRU[tuple[Dataset, int]] = ByteLRU(cache_bytes // 4, lambda item: item[1])

    def _read(self, file_hash: str) -> Dataset:
        cached = self.files.get(file_hash)
        if cached is not None:
            return cached[0]
        for attempt in range(2):
            # A second try: a cached copy of a PACS instance may be evicted between
            # ``path`` and ``open``; asking again fetches it again.
            path = self.store.path(file_hash)
            try:
                with path.open("rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    ds = read_dataset(handle, size, keep_pixels=True)
                break
            except FileNotFoundError:
                if attempt:
                    raise RenderError("the stored file is missing") from None
            except Exception as exc:
                raise RenderError(f"cannot read the stored file: {exc}") from exc
        if number_of_frames(ds) > 1:
            self.files.put(file_hash, (ds, size))
        return ds

    def load(self, file_hash: str, number: int) -> DecodedFrame:
        """Frame ``number`` (1-based) of the stored file ``file_hash``."""
        frame = self.cache.get((file_hash, number))
        if frame is None:
            frame = decode_frame(self._read(file_hash), number - 1)
            self.cache.put((file_hash, number), frame)
        return frame
