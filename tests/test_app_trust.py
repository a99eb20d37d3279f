"""The app under hostile-but-realistic use (issue 14): honest cache keys, fair and cancellable jobs.

- Twin uploads (same name and weights; the trigger in the other corner; another normalization) in
  two AppTest sessions each show their own numbers (fails with a key of name + weights + attack).
- ui.jobs.JobBoard: a session's long job does not hold up another's (fails with one shared worker);
  a slow optional job gives way to the session's next request (fails without ``low``); a job stops when
  its sessions are gone, and not before; workers are daemon threads.
- An app message never names a command-line flag.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import time
import zipfile

import pytest
import torch
from conftest import MODELS
from safetensors.torch import save as save_safetensors
from streamlit.testing.v1 import AppTest
from test_app import APP

from defense import bundle as bundle_io
from defense import data, metrics
from defense.runtime import Cancelled
from ui.jobs import JobBoard


def twin_zip(flip: bool = False, mean: float | None = None, dataset: str | None = None) -> bytes:
    """mnist-badnets as a 'file'-trigger bundle named 'twin': optionally mirrored trigger or another mean."""
    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    meta = copy.deepcopy(b.meta)
    meta["name"] = "twin"
    meta["attack"] = {**meta["attack"], "kind": "file", "params": {}}
    if mean is not None:
        meta["normalization"]["mean"] = [mean]
    if dataset is not None:
        meta["dataset"] = dataset
    mask, pattern = b.trigger.mask, b.trigger.pattern
    if flip:
        mask, pattern = mask.flip(1, 2), pattern.flip(1, 2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("meta.json", json.dumps(meta))
        z.writestr("model.safetensors", (MODELS / "mnist-badnets" / "model.safetensors").read_bytes())
        z.writestr("trigger.safetensors", save_safetensors({"mask": mask.contiguous(), "pattern": pattern}))
    return buf.getvalue()


def expected(payload: bytes, tmp_path) -> tuple[str, str]:
    path = tmp_path / f"{hash(payload)}.zip"
    path.write_bytes(payload)
    b = bundle_io.load_bundle(path)
    scores = metrics.evaluate(b.model, data.load_dataset("mnist5k").test, b.trigger, b.target)
    return f"{scores['clean_acc']:.1%}", f"{scores['asr']:.1%}"


def upload(at: AppTest, payload: bytes) -> AppTest:
    at.file_uploader(key="w_upload").upload("twin.zip", payload, "application/zip").run()
    at.button(key="w_upload_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def sidebar_numbers(at: AppTest) -> tuple[str, str]:
    shown = {m.label: m.value for m in at.sidebar.metric}
    return shown["Clean accuracy"], shown["Attack success"]


def test_twin_uploads_in_two_sessions_see_their_own_numbers(tmp_path):
    twins = {"plain": twin_zip(), "moved": twin_zip(flip=True), "mean": twin_zip(mean=0.5)}
    want = {k: expected(v, tmp_path) for k, v in twins.items()}
    assert len(set(want.values())) == 3  # the twins really measure differently
    sessions = {k: AppTest.from_file(APP, default_timeout=180).run() for k in twins}
    for k, at in sessions.items():  # one after the other: each later one would hit the earlier one's cache
        assert sidebar_numbers(upload(at, twins[k])) == want[k], k
    # (rerunning an earlier AppTest now would trip over AppTest itself: it keeps one format_func per widget
    # for the whole process, the last session's, which does not know the earlier session's upload)
    assert len({at.session_state["model"] for at in sessions.values()}) == 3


def test_app_messages_name_no_command_line_flags():
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.file_uploader(key="w_upload").upload("cifar.zip", twin_zip(dataset="cifar10"), "application/zip").run()
    at.button(key="w_upload_go").click().run()
    shown = " ".join(e.value for e in at.error)
    assert "cifar10" in shown and "MNIST" in shown
    assert "neither the clean accuracy nor the attack success rate" in shown  # what it cannot measure, and why
    assert "--" not in shown


# ---------------------------------------------------------------- the job board


def waits_for(release: threading.Event):
    def job(should_stop=None):
        while not release.wait(0.02):
            if should_stop():
                raise Cancelled
        return "slow"

    return job


def quick(should_stop=None):
    return "quick"


def test_one_sessions_long_job_does_not_hold_up_another():
    jobs = JobBoard(alive=lambda s: True)
    release = threading.Event()
    try:
        slow = jobs.submit(("slow",), waits_for(release), session="a")
        fast = jobs.submit(("fast",), quick, session="b")
        assert fast.result(timeout=30) == "quick"  # with one shared worker this waits for the slow job
        assert not slow.done()
    finally:
        release.set()
    assert slow.result(timeout=30) == "slow"


def test_a_job_queued_behind_a_long_one_is_run_by_the_next_session_that_asks():
    jobs = JobBoard(alive=lambda s: True)
    release = threading.Event()
    try:
        jobs.submit(("slow",), waits_for(release), session="a")
        shared = jobs.submit(("curve",), quick, session="a")  # queued behind a's slow job
        again = jobs.submit(("curve",), quick, session="b")
        assert again is shared and again.result(timeout=30) == "quick"
    finally:
        release.set()


def test_a_job_stops_when_its_sessions_are_gone_and_not_before():
    here = {"a": True, "b": True}
    jobs = JobBoard(alive=lambda s: here[s])
    never = threading.Event()
    future = jobs.submit(("truth",), waits_for(never), session="a")
    assert jobs.submit(("truth",), waits_for(never), session="b") is future
    here["a"] = False
    with pytest.raises(TimeoutError):
        future.result(timeout=0.5)  # b still wants it
    here["b"] = False
    with pytest.raises(Cancelled):
        future.result(timeout=30)
    here["a"] = True  # asked again later: a fresh job
    assert jobs.submit(("truth",), quick, session="a").result(timeout=30) == "quick"


def stepping(release: threading.Event, steps: list):
    """A slow score's shape: no should_stop of its own, a ``runtime.step_done()`` after each step."""
    from defense.runtime import step_done

    def job(should_stop=None):
        while not release.wait(0.02):
            steps.append("low")
            step_done()
        return "low"

    return job


def test_a_low_job_gives_way_to_what_its_session_asks_for_next():
    jobs = JobBoard(alive=lambda s: True)
    release, steps = threading.Event(), []
    try:
        slow = jobs.submit(("anp",), stepping(release, steps), session="a", low=True)
        while not steps:  # the slow score is running
            time.sleep(0.01)
        truth = jobs.submit(("truth",), quick, session="a")  # the Salience page, opened meanwhile
        assert truth.result(timeout=30) == "quick"  # without giving way this waits for the release
        assert not slow.done()
    finally:
        release.set()
    assert slow.result(timeout=30) == "low"


def test_queued_low_jobs_come_after_the_urgent_ones_and_a_page_that_waits_makes_one_urgent():
    jobs = JobBoard(alive=lambda s: True)
    gate, order = threading.Event(), []

    def noted(name, should_stop=None):
        gate.wait(30)
        order.append(name)
        return name

    first = jobs.submit(("first",), noted, "first", session="a")  # holds the worker while the rest queue
    jobs.submit(("unlearn",), noted, "unlearn", session="a", low=True)
    rnp = jobs.submit(("rnp",), noted, "rnp", session="a", low=True)
    jobs.submit(("curve",), noted, "curve", session="a")
    jobs.submit(("rnp",), noted, "rnp", session="a")  # the page now waits for it: urgent
    gate.set()
    assert first.result(timeout=30) and rnp.result(timeout=30)
    jobs.submit(("unlearn",), noted, "unlearn", session="a", low=True).result(timeout=30)
    assert order == ["first", "rnp", "curve", "unlearn"]  # urgent ones in the order asked, then the low one


def test_a_low_job_stops_at_its_next_step_once_its_session_is_gone():
    here = {"a": True}
    jobs = JobBoard(alive=lambda s: here[s])
    never, steps = threading.Event(), []
    future = jobs.submit(("unlearn",), stepping(never, steps), session="a", low=True)
    while not steps:
        time.sleep(0.01)
    here["a"] = False
    with pytest.raises(Cancelled):  # it takes no should_stop: step_done ends it
        future.result(timeout=30)


def test_a_job_that_takes_progress_reports_it_on_its_future_and_others_report_none():
    from ui.jobs import progress_of

    jobs = JobBoard(alive=lambda s: True)
    half = threading.Event()
    go_on = threading.Event()

    def counting(n, should_stop=None, progress=None):
        for i in range(n):
            progress(i + 1, n)
            if i + 1 == n // 2:
                half.set()
                go_on.wait(30)
        return n

    future = jobs.submit(("count",), counting, 10, session="a")
    assert half.wait(30) and progress_of([future]) == (5, 10)
    plain = jobs.submit(("plain",), quick, session="b")
    plain.result(timeout=30)
    assert progress_of([plain]) is None and progress_of([future, plain]) == (5, 10)
    go_on.set()
    assert future.result(timeout=30) == 10 and progress_of([future]) == (10, 10)


def test_finished_jobs_are_kept_up_to_a_bound_and_the_oldest_measured_again(monkeypatch):
    from ui import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "MAX_FINISHED", 3)
    jobs = JobBoard(alive=lambda s: True)
    runs = []

    def counted(name, should_stop=None):
        runs.append(name)
        return name

    for i in range(5):
        assert jobs.submit((f"k{i}",), counted, f"k{i}", session="a").result(timeout=30) == f"k{i}"
    assert sorted(k for (k,) in jobs._jobs) == ["k2", "k3", "k4"]  # what 50 uploads leave behind is bounded
    assert all(j.args == () for j in jobs._jobs.values())  # and holds no model or images, only results
    assert jobs.submit(("k4",), counted, "k4", session="a").result(timeout=30) == "k4" and runs.count("k4") == 1
    assert jobs.submit(("k0",), counted, "k0", session="a").result(timeout=30) == "k0" and runs.count("k0") == 2


def test_workers_are_daemon_threads_and_stop_on_shutdown():
    jobs = JobBoard(alive=lambda s: True)
    never = threading.Event()
    future = jobs.submit(("long",), waits_for(never), session="a")
    time.sleep(0.2)
    workers = [t for t in threading.enumerate() if t.name.startswith("bnl-jobs-a")]
    assert workers and all(t.daemon for t in workers)
    jobs.stop()
    with pytest.raises(Cancelled):
        future.result(timeout=30)


def test_ground_truth_job_is_sampled_beyond_the_budget(monkeypatch):
    from defense import ablation
    from ui import lab

    monkeypatch.setattr(ablation, "NEURON_IMAGES", 30 * ablation.MIN_IMAGES)
    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    splits = data.load_dataset("mnist5k")
    gt = lab._ground_truth(b.model, splits.test, metrics.triggered_set(splits.test, b.trigger, b.target))
    assert int(torch.cat(list(gt["measured"].values())).sum()) == 30 and 0 < gt["sampled"] < 1


@pytest.mark.parametrize("name", ["anp", "rnp", "unlearn", "inversion"])
def test_every_slow_score_reports_its_steps_so_it_can_give_way_or_stop(name):
    from defense import models, salience
    from defense.neurons import neuron_map
    from defense.registry import SCORES
    from defense.runtime import between_steps

    assert SCORES[name].cost == "slow"
    torch.manual_seed(0)
    net = models.build("small_cnn", 10, (1, 8, 8), [0.5], [0.5], width=2, hidden=4)
    clean = data.TensorData(torch.rand(40, 1, 8, 8), torch.arange(40) % 10)
    steps = []
    with between_steps(lambda: steps.append(1)):
        salience.compute(name, net, clean, neuron_map(net))
    assert steps  # the background worker's hook ran between its steps

    def stop():
        raise Cancelled

    with between_steps(stop), pytest.raises(Cancelled):  # and stops it there
        salience.compute(name, net, clean, neuron_map(net))


def test_garbage_is_collected_once_after_sessions_are_dropped(monkeypatch):
    """The periodic trim collects reference cycles only when the server holds fewer sessions than before
    (an idle server's collector may never run otherwise; collecting every time would hold the GIL for nothing)."""
    import ui.jobs as jobs_module

    held = iter([3, 3, 2, 2, 5, 1])  # at start, then after each trim
    calls: list[bool] = []
    jobs = JobBoard(alive=lambda s: True)
    monkeypatch.setattr(jobs_module, "TRIM_EVERY_S", 0.01)
    monkeypatch.setattr(jobs_module, "_reap_closed_sessions", lambda: None)
    monkeypatch.setattr(jobs_module.time, "sleep", lambda s: None)
    monkeypatch.setattr(jobs_module, "_sessions_held", lambda: next(held))

    def record(collect: bool = False) -> None:
        calls.append(collect)
        if len(calls) == 5:
            jobs.stopping.set()

    monkeypatch.setattr(jobs_module, "release_memory", record)
    jobs_module._trim_periodically(jobs)
    assert calls == [False, True, False, False, True]


def test_a_queued_job_says_how_many_of_its_sessions_jobs_run_first():
    """What a page's waiting note says ("Queued: N earlier measurements ... first") follows the worker's order."""
    jobs = JobBoard(alive=lambda s: True)
    gate = threading.Event()

    def held(name, should_stop=None):
        gate.wait(30)
        return name

    try:
        first = jobs.submit(("first",), held, "first", session="a")
        while not jobs.running():  # the worker has taken it
            time.sleep(0.01)
        unlearn = jobs.submit(("unlearn",), held, "unlearn", session="a", low=True)
        rnp = jobs.submit(("rnp",), held, "rnp", session="a", low=True)
        curve = jobs.submit(("curve",), held, "curve", session="a")
        assert jobs.queued_ahead(first, "a") is None  # running
        assert jobs.queued_ahead(curve, "a") == 1  # only the running one: urgent goes before the low ones
        assert jobs.queued_ahead(unlearn, "a") == 2  # the running one and the urgent curve
        assert jobs.queued_ahead(rnp, "a") == 3
        assert jobs.queued_ahead(curve, "b") is None  # another session does not queue it
    finally:
        gate.set()
    assert curve.result(timeout=30) == "curve" and rnp.result(timeout=30) == "rnp"
    assert jobs.queued_ahead(rnp, "a") is None
