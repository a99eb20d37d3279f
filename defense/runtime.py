"""Where tensors live and how many CPU threads torch may use."""

import os
from collections.abc import Callable

import torch

StopCheck = Callable[[], bool] | None  # asked inside long loops: True means give up now


class Cancelled(Exception):  # noqa: N818 - it is an outcome, not a failure
    """Raised by a long computation whose ``should_stop`` said so."""


def check_stop(should_stop: StopCheck) -> None:
    """Raise Cancelled when ``should_stop()`` is true (a ``threading.Event``'s ``is_set`` works)."""
    if should_stop is not None and should_stop():
        raise Cancelled


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
