"""Background jobs: slow, one-off measurements run here so that no page waits on them.

Fair and cancellable (docs/TRUST.md, "Limits"):
- Each session has its own queue and its own worker thread, so one session's big model never holds
  up another session's measurements. A job is known by its key (a content hash plus what else changes
  the result) and runs once: a session asking for a key that is already queued elsewhere queues the
  same job too, and whichever worker reaches it first runs it; everyone shares its future.
- A job stops when no session that asked for it is left (a closed tab, after ``ABSENT_S``) or when the
  server shuts down: job functions take ``should_stop`` and ask it inside their long loops
  (``defense.runtime.Cancelled`` ends them). Workers are daemon threads, and a shutdown hook sets the
  stop flag, so SIGTERM is not held up by a running measurement.
- A slow optional job (``low=True``: ANP, RNP, unlearning, minutes on a big model) gives way: the worker
  takes it only when the session has nothing else queued, and between its steps (``runtime.step_done``)
  runs whatever the session asked for since, so a page's ground truth never waits minutes behind it.
- Jobs are bounded too: the ablation ground truth fits a budget of neurons x images
  (``defense.ablation.plan``: fewer images for a big model, then a random sample of neurons, shown as such).
A page that needs a result shows a note and polls until it is ready (``wait_note``).
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import streamlit as st

from defense.runtime import Cancelled, between_steps, check_stop, release_memory

ABSENT_S = 10.0  # a session's jobs stop once it has been gone this long
MAX_FINISHED = 128  # finished jobs kept for sessions to come (bundled models' truths and curves); oldest go first
log = logging.getLogger(__name__)


class Job:
    def __init__(self, key: tuple, fn: Callable[..., Any], args: tuple, low: bool = False):
        self.key, self.fn, self.args, self.low = key, fn, args, low
        self.future: Future = Future()
        self.owners: set[str] = set()
        self.claimed = False


class JobBoard:
    """Per-session queues of shared jobs. ``alive(session) -> bool`` says whether a session is still there."""

    def __init__(self, alive: Callable[[str], bool] | None = None):
        self._lock = threading.Lock()
        self._jobs: dict[tuple, Job] = {}
        self._queues: dict[str, deque[Job]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._seen: dict[str, float] = {}
        self._gone_since: dict[str, float] = {}
        self._finished: deque[Job] = deque()  # finished jobs, oldest first
        self._alive = alive or self._session_alive
        self.stopping = threading.Event()

    # ------------------------------------------------------------ asking

    def submit(
        self, key: tuple, fn: Callable[..., Any], *args: Any, session: str = "default", low: bool = False
    ) -> Future:
        """The shared future of ``fn(*args, should_stop=...)``, queued for ``session``; ``fn`` never calls st.*.

        ``low``: a slow, optional job that gives way to the session's other jobs (see the module's notes)."""
        with self._lock:
            self._seen[session] = time.monotonic()
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = Job(key, fn, args, low)
            job.low = job.low and low  # asked for urgently by anyone: urgent
            job.owners.add(session)
            queue = self._queues.setdefault(session, deque())
            if not job.claimed and job not in queue:
                queue.append(job)
            if session not in self._workers and queue:
                worker = threading.Thread(target=self._work, args=(session,), name=f"bnl-jobs-{session[:8]}")
                worker.daemon = True  # never holds up the interpreter's exit
                self._workers[session] = worker
                worker.start()
            return job.future

    def seen(self, session: str) -> None:
        """A page of ``session`` was drawn (the heartbeat where Streamlit's runtime cannot tell)."""
        self._seen[session] = time.monotonic()

    def stop(self) -> None:
        """Ask every running job to give up (server shutdown)."""
        self.stopping.set()

    # ------------------------------------------------------------ working

    def _work(self, session: str) -> None:
        from defense.runtime import configure_threads

        configure_threads(share_with_server=True)  # per thread in torch: a new thread would take every core
        while not self.stopping.is_set():
            with self._lock:
                job = self._take(session, urgent_only=False)
                if job is None:
                    self._workers.pop(session, None)
                    self._queues.pop(session, None)
                    break
            self._run(job, session)
        else:
            with self._lock:
                self._workers.pop(session, None)
        release_memory()  # the worker's arena keeps what its jobs freed otherwise

    def _take(self, session: str, urgent_only: bool) -> Job | None:
        """Claim the session's next job (under the lock): the first urgent one, else (unless ``urgent_only``)
        the first low one."""
        queue = self._queues.get(session, deque())
        for claimed in [j for j in queue if j.claimed]:
            queue.remove(claimed)
        job = next((j for j in queue if not j.low), None)
        if job is None and not urgent_only:
            job = next(iter(queue), None)
        if job is not None:
            queue.remove(job)
            job.claimed = True
        return job

    def _give_way(self, session: str) -> None:
        """Run, here and now, the urgent jobs the session queued while a low one is between two steps."""
        while not self.stopping.is_set():
            with self._lock:
                job = self._take(session, urgent_only=True)
            if job is None:
                return
            self._run(job, session)

    def _forget_finished(self, job: Job) -> None:
        """Remember ``job`` as finished; past MAX_FINISHED, drop the oldest (a later request measures it again)."""
        with self._lock:
            self._finished.append(job)
            while len(self._finished) > MAX_FINISHED:
                old = self._finished.popleft()
                if self._jobs.get(old.key) is old:
                    del self._jobs[old.key]

    def _run(self, job: Job, session: str) -> None:
        extra = {}
        if "progress" in inspect.signature(job.fn).parameters:  # (done, total), read by wait_note's bar

            def progress(done: int, total: int) -> None:
                job.future.progress = (done, total)

            extra["progress"] = progress

        def should_stop() -> bool:
            return self._should_stop(job)

        def between() -> None:  # inside a long loop that takes no should_stop (a registered score)
            if job.low:
                self._give_way(session)
            check_stop(should_stop)

        try:
            if should_stop():
                raise Cancelled
            with between_steps(between):
                result = job.fn(*job.args, should_stop=should_stop, **extra)
        except Cancelled as err:
            with self._lock:  # forgotten, so that a later request starts it afresh
                if self._jobs.get(job.key) is job:
                    del self._jobs[job.key]
            log.warning(
                "bnl: background job %s stopped: %s",
                job.key[0],
                "shutdown" if self.stopping.is_set() else "its sessions went away",
            )
            job.future.set_exception(err)
        except Exception as err:  # noqa: BLE001 - shown on the page that waits for it
            job.future.set_exception(err)
            self._forget_finished(job)
        else:
            job.future.set_result(result)
            self._forget_finished(job)
        finally:
            job.args = ()  # a kept job holds its result only, not the model and images it was measured on

    def _should_stop(self, job: Job) -> bool:
        return self.stopping.is_set() or not any(self._alive(s) for s in list(job.owners))

    def _session_alive(self, session: str) -> bool:
        """Streamlit's runtime knows at once when a tab closes; without one (AppTest), the page heartbeat."""
        from streamlit import runtime

        now = time.monotonic()
        if runtime.exists() and session != "default":
            if runtime.get_instance().is_active_session(session):
                self._gone_since.pop(session, None)
                return True
            gone = self._gone_since.setdefault(session, now)
            return now - gone < ABSENT_S
        return now - self._seen.get(session, now) < ABSENT_S

    def queued_ahead(self, future: Future, session: str) -> int | None:
        """How many of ``session``'s jobs run before the job of ``future`` (the one running now included);
        None once it runs or is done, or where the session does not queue it."""
        with self._lock:
            queue = self._queues.get(session, deque())
            job = next((j for j in queue if j.future is future and not j.claimed), None)
            if job is None:
                return None
            waiting = [j for j in queue if not j.claimed]
            before = waiting[: waiting.index(job)]
            # the worker takes the first urgent job, and a low one only when no urgent one is left
            urgent = waiting if job.low else before
            ahead = sum(not j.low for j in urgent) + (sum(j.low for j in before) if job.low else 0)
            running = any(j.claimed and not j.future.done() and session in j.owners for j in self._jobs.values())
            return ahead + int(running)

    def running(self) -> list[tuple]:
        """Keys of the jobs claimed and not yet finished (for tests and the load bench)."""
        with self._lock:
            return [j.key for j in self._jobs.values() if j.claimed and not j.future.done()]


EXIT_GRACE_S = 2.0  # at shutdown, running jobs get this long to notice the stop flag
TRIM_EVERY_S = 30.0  # closed sessions are dropped by Streamlit's own thread: their memory is returned from here


def _reap_closed_sessions() -> None:
    """Have Streamlit drop the closed sessions whose time is up (``server.disconnectedSessionTTL``).

    Its session storage is a TTL cache that removes an expired session only on its next write: on a server
    that goes quiet, the last closed sessions (their models, runs and uploads) would stay in memory. There is
    no public call for it, so this reaches into the runtime and does nothing if Streamlit changes shape; the
    cache is not thread-safe, so the reaping runs on Streamlit's own event loop.
    """
    from streamlit import runtime

    if not runtime.exists():
        return
    rt = runtime.get_instance()
    cache = getattr(getattr(getattr(rt, "_session_mgr", None), "_session_storage", None), "_cache", None)
    try:
        loop = rt._get_async_objs().eventloop
    except Exception:  # noqa: BLE001 - not started, or another Streamlit: nothing to reap
        return
    if callable(getattr(cache, "expire", None)) and not loop.is_closed():
        loop.call_soon_threadsafe(cache.expire)


def _sessions_held() -> int | None:
    """How many sessions (open, or closed and not yet dropped) the server holds; None outside ``streamlit run``."""
    from streamlit import runtime

    if not runtime.exists():
        return None
    try:
        return len(runtime.get_instance()._session_mgr.list_sessions())
    except Exception:  # noqa: BLE001 - another Streamlit: no count, so no collection either
        return None


def _trim_periodically(jobs: JobBoard) -> None:
    held = _sessions_held()
    while not jobs.stopping.wait(TRIM_EVERY_S):
        _reap_closed_sessions()
        time.sleep(1.0)  # the sessions go on the event loop's next turn
        now = _sessions_held()
        # a dropped session's objects sit in reference cycles (models with hooks, Streamlit's own session
        # objects) that an idle server's garbage collector may never reach: collect once after sessions go
        release_memory(collect=now is not None and held is not None and now < held)
        held = now


@st.cache_resource(show_spinner=False)
def board() -> JobBoard:
    jobs = JobBoard()
    threading.Thread(target=_trim_periodically, args=(jobs,), name="bnl-trim", daemon=True).start()
    register = getattr(threading, "_register_atexit", None)  # runs before the interpreter joins threads
    if register is not None:
        register(lambda: _on_exit(jobs))
    return jobs


def _on_exit(jobs: JobBoard) -> None:
    """Server shutdown (SIGTERM, SIGINT): stop the jobs, then leave without waiting for busy threads.

    Streamlit has stopped serving by now, but a script run busy in torch (a big model's scores or attribution)
    is a non-daemon thread the interpreter would wait for, and torch's own threads can abort a slow exit.
    In tests (AppTest, no runtime) the jobs are waited for (they stop at their next check) and the process
    ends as usual; only under ``streamlit run`` does it leave at once.
    """
    from streamlit import runtime

    jobs.stop()
    deadline = time.monotonic() + EXIT_GRACE_S  # a job in torch when the interpreter ends would abort it
    while time.monotonic() < deadline and any(t.name.startswith("bnl-jobs") for t in threading.enumerate()):
        time.sleep(0.05)
    if not runtime.exists():
        return
    log.warning("bnl: server stopping; background jobs stopped")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "default"


def background(key: tuple, fn: Callable[..., Any], *args: Any, low: bool = False) -> Future:
    """The shared future of ``fn(*args, should_stop=...)``, run in this session's background worker.

    A job that was cancelled (every session that asked for it went away) is started again on request.
    ``low``: a slow optional job that gives way to the others (``JobBoard.submit``).
    """
    jobs = board()
    future = jobs.submit(key, fn, *args, session=session_id(), low=low)
    if future.done() and isinstance(future.exception(), Cancelled):
        future = jobs.submit(key, fn, *args, session=session_id(), low=low)
    return future


def rerun_when_any_done(futures: list[Future], every: float = 2.0) -> None:
    """Draw the page again as soon as any of ``futures`` is done (one slow score landing), not after all of them.

    Pass the futures that were still running when the page read its results: one that ended while the page was
    drawn is done already here, and the first poll draws the page again with it.
    """
    if not futures:
        return

    @st.fragment(run_every=every)
    def _poll() -> None:
        if any(f.done() for f in futures):
            st.rerun()

    _poll()


def queued_ahead(future: Future) -> int | None:
    """How many of this session's background jobs run before ``future``'s; None once it has started."""
    return board().queued_ahead(future, session_id())


def progress_of(futures: list[Future]) -> tuple[int, int] | None:
    """(done, total) summed over the jobs that report progress (``fn(..., progress=...)``), or None."""
    known = [getattr(f, "progress", None) for f in futures]
    known = [p for p in known if p is not None]
    if not known:
        return None
    return sum(d for d, _ in known), sum(t for _, t in known)


def wait_note(futures: list[Future], message: str, unit: str = "steps") -> bool:
    """True when all are done; else a note with a progress bar where the jobs report one, and the page
    reruns by itself once they are done."""
    if all(f.done() for f in futures):
        return True
    st.info(message, icon=":material/hourglass_top:")

    @st.fragment(run_every=1.0)
    def _poll() -> None:
        if all(f.done() for f in futures):
            st.rerun()
        counts = progress_of(futures)
        if counts is not None:
            done, total = counts
            st.progress(min(done / max(total, 1), 1.0), text=f"{done:,} of {total:,} {unit} done")
        ahead = [queued_ahead(f) for f in futures if not f.done()]
        if ahead and all(a is not None for a in ahead):  # none of them has started: say what it waits for
            n = min(ahead)
            st.caption(
                f"Queued: {n} earlier measurement{'s' if n != 1 else ''} of this session run{'s' if n == 1 else ''} "
                "first."
            )

    _poll()
    return False
