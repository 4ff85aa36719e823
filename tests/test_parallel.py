"""``viewer.parallel``: bands of one image's work shared with a helper thread."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading

import pytest

from viewer import parallel
from viewer.parallel import a_core_is_idle, map_bands


@pytest.fixture
def idle_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of the hand-off must not depend on what else the machine is running."""
    monkeypatch.setattr(parallel, "a_core_is_idle", lambda: True)


def test_results_come_back_in_band_order() -> None:
    assert map_bands(lambda band: band * 10, 1) == [0]
    assert map_bands(lambda band: band * 10, 2) == [0, 10]
    assert map_bands(str, 5) == ["0", "1", "2", "3", "4"]


@pytest.mark.usefixtures("idle_core")
def test_the_helper_thread_takes_a_band_at_the_same_time() -> None:
    # Each band waits for the other to start: this passes only if two threads run them.
    both_started = threading.Barrier(2, timeout=10)
    threads: list[int] = []

    def work(band: int) -> int:
        threads.append(threading.get_ident())
        both_started.wait()
        return band

    assert map_bands(work, 2) == [0, 1]
    assert len(set(threads)) == 2
    assert threading.get_ident() in threads


@pytest.mark.usefixtures("idle_core")
def test_an_error_in_a_band_is_raised_to_the_caller_and_the_helper_survives() -> None:
    both_started = threading.Barrier(2, timeout=10)

    def work(band: int) -> int:
        both_started.wait()
        if band == 1:
            raise ValueError("band 1 failed")
        return band

    for _ in range(3):  # the helper's band fails; it must still serve the next call
        both_started.reset()
        with pytest.raises(ValueError, match="band 1 failed"):
            map_bands(work, 2)
    assert map_bands(lambda band: band, 2) == [0, 1]


def _in_child(queue: multiprocessing.Queue) -> None:
    both_started = threading.Barrier(2, timeout=10)

    def work(band: int) -> int:
        both_started.wait()
        return os.getpid()

    queue.put(map_bands(work, 2))


@pytest.mark.usefixtures("idle_core")
def test_a_forked_worker_starts_its_own_helper() -> None:
    map_bands(lambda band: band, 2)  # the parent's helper exists before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_in_child, args=(queue,))
    child.start()
    try:
        pids = queue.get(timeout=20)
    finally:
        child.join(timeout=20)
    assert pids == [child.pid, child.pid]
    assert child.exitcode == 0


def _bands_with_cores(cores: set[int]) -> int:
    code = (
        f"import os; os.sched_setaffinity(0, {cores!r}); "
        "from viewer import parallel; print(parallel.BANDS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_one_core_means_one_band() -> None:
    assert _bands_with_cores({0}) == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_two_cores_mean_two_bands() -> None:
    assert _bands_with_cores(set(sorted(os.sched_getaffinity(0))[:2])) == 2


def test_busy_cores_keep_the_work_in_the_requests_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "CORES", 10_000)
    assert a_core_is_idle()
    monkeypatch.setattr(parallel, "CORES", 1)  # the reading thread itself is running
    assert not a_core_is_idle()
    monkeypatch.undo()
    spin = "import sys\nprint(flush=True)\nwhile True: pass"
    spinners = [
        subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE)
        for _ in range(parallel.CORES)
    ]
    try:
        for spinner in spinners:
            assert spinner.stdout is not None
            spinner.stdout.readline()  # spinning from now on
        assert not a_core_is_idle()
        threads: set[int] = set()
        map_bands(lambda band: threads.add(threading.get_ident()), 2)
        assert threads == {threading.get_ident()}
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
