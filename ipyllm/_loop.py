"""ipyllm's own event loop, in a daemon thread: every asynchronous litellm call of the process runs there.

litellm keeps state bound to the loop that first used it (its async HTTP clients, its logging worker's
queue), and complains loudly when a process calls it from several loops; and a notebook's own loop is busy
running the cell. So ``map`` (from synchronous code) and ``acomplete`` / ``amap`` (from any loop) hand their
coroutines to this one loop as ``Job``s, and wait for them without blocking their own thread or loop.
"""

from __future__ import annotations

import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

# asyncio is imported when a loop is first needed: ``import ipyllm`` stays fast.
if TYPE_CHECKING:
    import asyncio

__all__ = ["Job", "submit"]

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use (a daemon thread, so it never keeps the process alive)."""
    import asyncio

    global _loop
    with _lock:
        if _loop is None:
            new = asyncio.new_event_loop()
            threading.Thread(target=new.run_forever, name="ipyllm-loop", daemon=True).start()
            _loop = new
        return _loop


class Job:
    """A coroutine running on the shared loop: ``finished`` (a ``threading.Event``), ``cancel()``, ``result()``,
    and ``await job.wait(timeout)`` from another loop."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.finished = threading.Event()
        self._task: asyncio.Task[Any] | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()
        self._loop = loop()
        self._loop.call_soon_threadsafe(self._start, coroutine)

    def _start(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self._task = self._loop.create_task(coroutine)
        self._task.add_done_callback(self._done)

    def _done(self, _: object) -> None:
        with self._lock:
            self.finished.set()
            waiters, self._waiters = self._waiters, []
        for caller, event in waiters:
            caller.call_soon_threadsafe(event.set)

    def cancel(self) -> None:
        """Cancel the coroutine (it has been started: calls are run in order); ``finished`` is set once it has unwound."""
        self._loop.call_soon_threadsafe(lambda: self._task.cancel() if self._task is not None else None)

    def result(self) -> Any:
        """The coroutine's value, or its exception raised (``CancelledError`` if it was cancelled)."""
        assert self._task is not None and self.finished.is_set()
        return self._task.result()

    async def wait(self, timeout: float | None = None) -> bool:
        """From another loop: True once finished, False after ``timeout`` seconds."""
        import asyncio

        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            if self.finished.is_set():
                return True
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)


def submit(coroutine: Coroutine[Any, Any, Any]) -> Job:
    """Run ``coroutine`` on the shared loop."""
    return Job(coroutine)


async def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Await ``coroutine`` on the shared loop from any other loop; cancelling the caller cancels it."""
    job = submit(coroutine)
    try:
        await job.wait()
    except BaseException:
        job.cancel()
        raise
    return job.result()
