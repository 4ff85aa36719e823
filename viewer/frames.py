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

MAX_FAILURES = 1024  # remembered undecodable frames; forgotten all at once past this


class FrameLoader:
    """Decodes frames on demand and caches them by (file hash, frame number)."""

    def __init__(self, store: ObjectStore, cache_bytes: int) -> None:
        self.store = store
        self.cache: ByteLRU[DecodedFrame] = ByteLRU(
            cache_bytes - cache_bytes // 4, lambda frame: frame.nbytes
        )
        self.files: ByteLRU[tuple[Dataset, int]] = ByteLRU(cache_bytes // 4, lambda item: item[1])
        # Frames that did not decode, and why: stored bytes never change (they are named by
        # their hash), so a viewer retrying or prefetching a broken frame costs no decoding
        # (nor another warning in the log).
        self.failures: dict[tuple[str, int], str] = {}

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
        key = (file_hash, number)
        frame = self.cache.get(key)
        if frame is None:
            failure = self.failures.get(key)
            if failure is not None:
                raise RenderError(failure)
            ds = self._read(file_hash)
            try:
                frame = decode_frame(ds, number - 1)
            except RenderError as exc:
                if len(self.failures) >= MAX_FAILURES:
                    self.failures.clear()
                self.failures[key] = str(exc)
                raise
            self.cache.put(key, frame)
        return frame
