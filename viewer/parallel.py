"""Encoding one image on two cores.

One person scrolling a series keeps one request in flight, so the second core
idles while the first deflates or JPEG-encodes the slice. ISA-L and
libjpeg-turbo let go of the GIL while they work, so a helper thread can encode
one band of an image's rows while the request's own thread encodes another.

On a loaded server every core is already busy with some request, and handing
bands over only adds thread switches (measured before this check: ~8 % fewer
PNGs per second with four clients). So bands go to the helper only when the kernel counts fewer
runnable threads than we have cores, the request's own thread included
(``/proc/loadavg``, ~10 us to read). Bands are claimed, not assigned: whichever
thread is free takes the next one, so when the helper is late the request's
thread takes both and never waits on it. Either way the bytes are the same, as
the ETag (made from the request) promises.

An encoder can be handed a ``BandImage`` instead of an array: an image whose rows
are made on demand. Each band's thread then makes its own band's rows first (the
VOI window over them, ~0.2 ms of a 512x512 slice), so that step is shared too.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


CORES = _cores()
# On one core a helper thread could only take turns with the request's thread.
BANDS = 2 if CORES > 1 else 1
_MIN_SIZE = 128 * 1024  # a smaller image is encoded whole in well under 1 ms


def bands_for(size: int) -> int:
    """How many bands to cut an image of ``size`` bytes (PNG rows) or pixels (JPEG) into."""
    return BANDS if size >= _MIN_SIZE else 1


class BandImage:
    """An 8-bit image (H x W grey or H x W x 3) whose rows ``make(start, stop)`` gives on
    demand; ``make`` must be safe to call from two threads at once."""

    def __init__(self, shape: tuple[int, ...], make: Callable[[int, int], np.ndarray]) -> None:
        self.shape = shape
        self._make = make

    @classmethod
    def of(cls, image: np.ndarray | BandImage) -> BandImage:
        """``image`` as a BandImage (an array's rows are views of it)."""
        if isinstance(image, BandImage):
            return image
        return cls(image.shape, lambda start, stop: image[start:stop])

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self._make(start, stop)

    def whole(self) -> np.ndarray:
        return self._make(0, self.shape[0])


def a_core_is_idle() -> bool:
    """Whether fewer threads are runnable right now than we have cores."""
    try:
        fd = os.open("/proc/loadavg", os.O_RDONLY)
    except OSError:  # not Linux: assume so
        return True
    try:
        fields = os.read(fd, 128).split()
    finally:
        os.close(fd)
    return int(fields[3].partition(b"/")[0]) < CORES


class _Job(Generic[T]):
    """``work(0..count-1)``, each index claimed by whichever thread gets to it first."""

    def __init__(self, work: Callable[[int], T], count: int) -> None:
        self.work = work
        self.results: list[T | None] = [None] * count
        self.error: Exception | None = None
        self._claims = iter(range(count))
        self._finished = itertools.count(1)
        self._count = count
        self.done = threading.Lock()
        self.done.acquire()

    def run(self) -> None:
        """Do unclaimed bands until none is left; whoever finishes the last one says so."""
        for index in self._claims:
            try:
                self.results[index] = self.work(index)
            except Exception as exc:  # raised again in the request's thread
                self.error = exc
            finally:
                if next(self._finished) == self._count:
                    self.done.release()


class _Helper:
    """One daemon thread per process, started on first use."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._pid = 0
        self._lock = threading.Lock()

    def offer(self, job: _Job) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # A forked worker inherits this object, but not the thread.
                    self._jobs = queue.SimpleQueue()
                    threading.Thread(
                        target=self._serve, args=(self._jobs,), name="encode-helper", daemon=True
                    ).start()
                    self._pid = os.getpid()
        self._jobs.put(job)

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            jobs.get().run()


_helper = _Helper()


def map_bands(work: Callable[[int], T], count: int) -> list[T]:
    """``[work(0), ..., work(count - 1)]``, shared with the helper thread when a core is idle.

    ``work`` must be safe to run in another thread, and should spend its time in
    code that releases the GIL; an exception from any band is raised here.
    """
    if count == 1:
        return [work(0)]
    job = _Job(work, count)
    if a_core_is_idle():
        _helper.offer(job)
    job.run()
    job.done.acquire()
    if job.error is not None:
        raise job.error
    return job.results  # type: ignore[return-value]
