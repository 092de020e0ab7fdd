"""Helper processes for ``ipyllm.map(..., processes=N)``: litellm's own work spread over more than one core.

litellm spends 3-4 ms of CPU on every call (building the request, parsing and pricing the answer), all
of it under one GIL, so one process drives at most ~250-300 calls a second however many the provider allows.
A helper is a plain Python child running this module's ``serve`` with its own litellm: it receives one attempt's
arguments, runs ``litellm.acompletion`` and sends back the response (or the exception) over its pipes. It imports
this module and ``_litellm`` only, not the package's ``__init__`` and the API behind it (0.1-0.2 s a helper would
otherwise spend before its litellm import, while the first batch waits for it).

Everything else stays in the calling process: the retry policy, the rate-limit pause, budgets, the ledger,
the cache and the progress. A helper only makes single attempts, so one attempt is still one request, and
whether it ran here or there, the row is the same. Calls go where the fewest are in flight, so a busier
process gets fewer. Helpers start on first use, or early with the ``processes`` setting (``start_early``),
live as long as the session, and exit when its pipe closes.
Importing litellm takes seconds, here and in each helper, at once on a fresh kernel's cores: calls start with
whichever is ready first (a helper's litellm then tells this process the model's provider).

Not ``multiprocessing``: a spawned child would import the notebook's or script's ``__main__`` again.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import importlib
import itertools
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ipyllm._litellm import defer_tokenizers, learn_provider, litellm_loaded, load_litellm, provider_of, unlogged, warm_up

__all__ = ["Spread", "helpers", "start_early", "start_for", "stop_early"]

_HEADER = struct.Struct("!I")

#: A helper's main: ``ipyllm`` as a bare package of the given directory (its ``__init__`` not run), then ``serve``.
_BOOT = (
    "import sys, types; "
    "package = types.ModuleType('ipyllm'); package.__path__ = [sys.argv[1]]; sys.modules['ipyllm'] = package; "
    "from ipyllm._helpers import serve; serve()"
)
_helpers: list[Helper] = []
_helpers_lock = threading.Lock()


# -- the wire ----------------------------------------------------------------------------------------------


def _send(stream: Any, message: Any, lock: threading.Lock) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with lock:
        stream.write(_HEADER.pack(len(data)) + data)
        stream.flush()


def _receive(stream: Any) -> Any:
    """The next message, or None when the other end has closed its pipe."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = _HEADER.unpack(header)[0]
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None  # our own child, over its own pipe


def portable(exc: BaseException) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """What the parent needs to raise ``exc`` again: its class, its args and the attributes that pickle (status
    code, message, the response with its Retry-After header). litellm's exceptions cannot be pickled as they are:
    their ``__init__`` wants more than their ``args``."""
    state = {}
    for name, value in vars(exc).items():
        with contextlib.suppress(Exception):
            pickle.dumps(value)
            state[name] = value
    args = exc.args
    try:
        pickle.dumps(args)
    except Exception:
        args = (str(exc),)
    return type(exc).__module__, type(exc).__qualname__, args, state


def rebuilt(described: tuple[str, str, tuple[Any, ...], dict[str, Any]]) -> BaseException:
    module, name, args, state = described
    cls: Any = RuntimeError
    with contextlib.suppress(Exception):
        found = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
        if isinstance(found, type) and issubclass(found, Exception):
            cls = found
    exc = cls.__new__(cls)
    BaseException.__init__(exc, *args)
    with contextlib.suppress(Exception):
        exc.__dict__.update(state)
    return exc


# -- the helper process ----------------------------------------------------------------------------------


def serve() -> None:
    """A helper's main: attempts in, responses out, until its stdin closes."""
    reader, writer = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever litellm prints must not land between the frames
    lock = threading.Lock()
    litellm = load_litellm(count_tokens=False)
    import asyncio

    loop = asyncio.new_event_loop()
    tasks: dict[int, asyncio.Task[None]] = {}

    async def call(ident: int, kwargs: dict[str, Any]) -> None:
        try:
            with unlogged():
                response = await litellm.acompletion(**kwargs)
            message: Any = (ident, True, response)
        except asyncio.CancelledError:
            return  # the parent gave up on this attempt: it records the row
        except Exception as exc:
            message = (ident, False, portable(exc))
        try:
            _send(writer, message, lock)
        except Exception as exc:  # a response that does not pickle: the attempt fails, the helper goes on
            _send(writer, (ident, False, portable(RuntimeError(f"ipyllm's helper could not send the response back ({exc})"))), lock)

    def start(ident: int, kwargs: dict[str, Any]) -> None:
        task = tasks[ident] = loop.create_task(call(ident, kwargs))
        # Not a ``finally`` in ``call``: a task cancelled before its first step never runs its body.
        task.add_done_callback(lambda _: tasks.pop(ident, None))

    def cancel(ident: int, _: Any) -> None:
        task = tasks.get(ident)
        if task is not None:
            task.cancel()

    def count(ident: int, _: Any) -> None:
        _send(writer, (ident, True, len(tasks)), lock)

    def provider(ident: int, target: tuple[str, str | None]) -> None:
        _send(writer, (ident, True, provider_of(litellm, *target)), lock)

    actions: dict[str, Callable[[int, Any], None]] = {"call": start, "cancel": cancel, "count": count, "provider": provider}

    def read() -> None:
        while (message := _receive(reader)) is not None:
            kind, ident, kwargs = message
            loop.call_soon_threadsafe(actions[kind], ident, kwargs)
        loop.call_soon_threadsafe(loop.stop)

    _send(writer, ("ready", os.getpid(), None), lock)
    threading.Thread(target=read, name="ipyllm-helper-reader", daemon=True).start()
    loop.run_forever()


# -- the calling side ------------------------------------------------------------------------------------


class Helper:
    """One helper process, its pipes and the attempts it is running."""

    #: How long ``close`` waits for a ready helper to finish and exit (seconds) before it is killed.
    CLOSE_WAIT = 2.0

    def __init__(self) -> None:
        # The child imports this very ipyllm, wherever it was imported from here.
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.dirname(os.path.abspath(__file__))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.ready = threading.Event()
        self.alive = True
        self.pid: int | None = None
        self.sent = 0
        self.pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="ipyllm-helper", daemon=True).start()

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def usable(self) -> bool:
        return self.ready.is_set() and self.alive

    def _read(self) -> None:
        stdout = self.process.stdout
        while (message := _receive(stdout)) is not None:
            ident, ok, value = message
            if ident == "ready":
                self.pid = ok
                self.ready.set()
                continue
            future = self.pending.pop(ident, None)
            if future is None or future.done():
                continue  # cancelled meanwhile
            if ok:
                future.set_result(value)
            else:
                future.set_exception(rebuilt(value))
        self.alive = False
        if stdout is not None:
            with contextlib.suppress(OSError):
                stdout.close()
        for future in list(self.pending.values()):
            if not future.done():
                future.set_exception(ConnectionError("Connection error: ipyllm's helper process exited during the call"))
        self.pending.clear()

    def _ask(self, kind: str, kwargs: Any = None) -> tuple[int, concurrent.futures.Future[Any]]:
        """Send one request to the helper; its answer will settle the returned future."""
        ident = next(self._ids)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pending[ident] = future
        try:
            _send(self.process.stdin, (kind, ident, kwargs), self._lock)
        except (OSError, ValueError):
            self.pending.pop(ident, None)
            self.alive = False
            raise ConnectionError("Connection error: ipyllm's helper process has exited") from None
        return ident, future

    async def acompletion(self, **kwargs: Any) -> Any:
        """One attempt in the helper: ``litellm.acompletion(**kwargs)``'s response, or its exception raised here."""
        self.sent += 1
        ident, future = self._ask("call", kwargs)
        import asyncio

        answer = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({answer}, timeout=1.0)
                if done:
                    return answer.result()
                if self.process.poll() is not None and not answer.done():
                    # Exited, and its pipe has not said so yet (on a loaded machine the reader can lag): fail the attempt
                    # rather than wait for an answer that cannot come.
                    self.alive = False
                    self.pending.pop(ident, None)
                    answer.cancel()
                    raise ConnectionError("Connection error: ipyllm's helper process exited during the call")
        except asyncio.CancelledError:
            answer.cancel()
            if self.pending.pop(ident, None) is not None:
                with contextlib.suppress(OSError, ValueError):
                    _send(self.process.stdin, ("cancel", ident, None), self._lock)
            raise

    async def provider(self, model: str, base_url: str | None) -> str | None:
        """The provider the helper's litellm routes ``model`` to."""
        import asyncio

        return await asyncio.wrap_future(self._ask("provider", (model, base_url))[1])  # type: ignore[no-any-return]

    def running(self, timeout: float = 10) -> int:
        """How many attempts the helper process is running now (asked over its pipe)."""
        return int(self._ask("count")[1].result(timeout))

    def close(self) -> None:
        """Close the helper's pipe (it exits), then make sure it has; one still importing litellm has no call to
        finish and would read its pipe only seconds later, so it is stopped at once."""
        self.alive = False
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        if not self.ready.is_set():
            self.process.kill()
        try:
            self.process.wait(timeout=self.CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def helpers(count: int) -> list[Helper]:
    """At least ``count`` running helpers (started now if need be; they get ready in the background)."""
    with _helpers_lock:
        _helpers[:] = [helper for helper in _helpers if helper.alive]
        while len(_helpers) < count:
            if not _helpers:
                atexit.register(close_all)
            _helpers.append(Helper())
        return _helpers[:count]


def start_for(processes: int) -> None:
    """The helpers that ``processes`` processes need besides this one, started if need be (they get ready in the
    background)."""
    if processes > 1:
        helpers(processes - 1)


def _on_processes(change: Any) -> None:
    start_for(change["new"])


def start_early(config: Any) -> None:
    """The helpers the ``processes`` setting asks for, started now and whenever it is raised (``%load_ext``): each
    imports litellm, seconds of a core, while the notebook goes on, and the first map finds them ready."""
    config.observe(_on_processes, names="processes")
    start_for(config.processes)


def stop_early(config: Any) -> None:
    """No more helpers started when ``processes`` is raised (``%unload_ext``); those running stay for the session."""
    with contextlib.suppress(ValueError):
        config.unobserve(_on_processes, names="processes")


def close_all() -> None:
    with _helpers_lock:
        for helper in _helpers:
            helper.close()
        _helpers.clear()


def _pandas_after_litellm() -> None:
    load_litellm(count_tokens=False)  # waits for the import under way: the calls start first
    importlib.import_module("pandas")


class Spread:
    """``acompletion`` for a batch: each attempt runs here (``local``) or in a ready helper, wherever the fewest
    attempts are in flight.

    In a fresh kernel this process's litellm and the helpers' import at once (seconds each, one per core); calls
    start with whichever is ready first (``ready``), and go only to the helpers until this process's is.
    """

    #: How often ``ready`` looks whether litellm has finished importing, here or in a helper (seconds).
    POLL = 0.02

    def __init__(self, local: Callable[..., Awaitable[Any]], count: int) -> None:
        self.local = local
        self.helpers = helpers(count)
        self.in_flight = 0
        self.here = 0
        if not litellm_loaded():
            defer_tokenizers()  # not beside this batch's calls: a count loads them when first needed
            warm_up()  # this process's litellm imports meanwhile (a second thread only waits for one importing)
            if "pandas" not in sys.modules:
                # The result needs pandas (half a second to import): imported while the helpers send, not after the
                # last answer, when they would wait idle for it.
                threading.Thread(target=_pandas_after_litellm, name="ipyllm-pandas", daemon=True).start()

    async def ready(self, model: str, base_url: str | None) -> None:
        """Wait until calls can go out: this process's litellm is imported, or a helper is ready (whose litellm then
        resolves ``model``'s provider, so that the rows need none of this process's until it is)."""
        import asyncio

        while not litellm_loaded():
            helper = next((helper for helper in self.helpers if helper.usable()), None)
            if helper is not None:
                learn_provider(model, base_url, await helper.provider(model, base_url))
                return
            if not any(helper.alive for helper in self.helpers):
                return  # no helper will come: the calls wait for this process's litellm
            await asyncio.sleep(self.POLL)

    async def __call__(self, **kwargs: Any) -> Any:
        ready = [helper for helper in self.helpers if helper.usable()]
        helper = min(ready, key=lambda h: h.in_flight, default=None)
        if helper is not None and (helper.in_flight < self.in_flight or not litellm_loaded()):
            return await helper.acompletion(**kwargs)
        self.in_flight += 1
        self.here += 1
        try:
            return await self.local(**kwargs)
        finally:
            self.in_flight -= 1
