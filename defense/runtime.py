"""Where tensors live and how many CPU threads torch may use."""

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

StopCheck = Callable[[], bool] | None  # asked inside long loops: True means give up now


class Cancelled(Exception):  # noqa: N818 - it is an outcome, not a failure
    """Raised by a long computation whose ``should_stop`` said so."""


def check_stop(should_stop: StopCheck) -> None:
    """Raise Cancelled when ``should_stop()`` is true (a ``threading.Event``'s ``is_set`` works)."""
    if should_stop is not None and should_stop():
        raise Cancelled


_between_steps = threading.local()


@contextmanager
def between_steps(hook: Callable[[], None]) -> Iterator[None]:
    """Call ``hook`` at every ``step_done()`` of this thread while inside (it may raise ``Cancelled``).

    For long computations whose signature takes no ``should_stop`` (a registered score): the app's
    background worker cancels them, or runs a more urgent job in between, without threading a
    callback through every score. Nested uses restore the outer hook.
    """
    outer = getattr(_between_steps, "hook", None)
    _between_steps.hook = hook
    try:
        yield
    finally:
        _between_steps.hook = outer


def step_done() -> None:
    """One step of a long loop is done: the current ``between_steps`` hook runs (a no-op outside one)."""
    hook = getattr(_between_steps, "hook", None)
    if hook is not None:
        hook()


@contextmanager
def interrupt_at_step_boundary() -> Iterator[Callable[[], None]]:
    """Ctrl-C inside the block becomes a KeyboardInterrupt raised where the caller asks (``check()``, once per
    step) instead of wherever the signal lands: Python drops an exception raised inside a finalizer or a
    callback ("Exception ignored in ..."), and the run then went on. Main thread only; elsewhere a no-op."""
    import signal

    hit = threading.Event()

    def check() -> None:
        if hit.is_set():
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hit.set())
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
    check()  # a Ctrl-C after the last check still ends the command


def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads(share_with_server: bool = False) -> None:
    """Keep torch from oversubscribing a small machine.

    The CLI may use every core; the app leaves one to the web server.
    BNL_THREADS overrides both.
    """
    cores = os.cpu_count() or 1
    wanted = int(os.environ.get("BNL_THREADS", 0)) or (max(1, cores - 1) if share_with_server else cores)
    torch.set_num_threads(wanted)


def release_memory(collect: bool = False) -> None:
    """Hand freed memory back to the operating system (a long-running server, after a job or a run ends).

    glibc keeps what threads free in per-thread arenas; with a worker thread per session the server's
    resident size only grows. ``malloc_trim(0)`` returns the free pages of every arena. Elsewhere a no-op.
    ``collect`` runs a full garbage collection first (100-300 ms holding the GIL once torch is loaded).
    """
    import ctypes
    import ctypes.util
    import gc

    if collect:
        gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
