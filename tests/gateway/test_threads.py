"""gateway.threads: helper threads become SCHED_BATCH, the event loop thread does not."""

from __future__ import annotations

import os
import threading

import pytest

from gateway.threads import demote_helper_threads

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")


def test_every_other_thread_is_demoted_and_the_loop_thread_is_not() -> None:
    started, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def helper() -> None:
        tid.append(threading.get_native_id())
        started.set()
        done.wait(5)

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    started.wait(5)
    try:
        assert demote_helper_threads() >= 1
        assert os.sched_getscheduler(tid[0]) == os.SCHED_BATCH
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    finally:
        done.set()
        thread.join()
