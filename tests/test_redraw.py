"""ui.redraw: a page whose full run was cut short after its live fragment still gets its results drawn.

Each step below stands for one run of the page (a full run, or the fragment's own polling run); the
session state and ``st.rerun`` are stand-ins, so the handshake is checked without a server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ui import redraw


class Rerun(Exception):
    pass


@pytest.fixture
def page(monkeypatch):
    fake = SimpleNamespace(session_state={}, fragment=False)

    def rerun():
        raise Rerun

    monkeypatch.setattr(redraw, "st", SimpleNamespace(session_state=fake.session_state, rerun=rerun))
    monkeypatch.setattr(redraw, "in_fragment_run", lambda: fake.fragment)
    return fake


def full_run(page, busy: bool, ended, reaches_end: bool = True) -> bool:
    """The page's full run: whether its fragment polls; ``reaches_end`` False: cut short after the fragment."""
    page.fragment = False
    poll = redraw.polling("p", busy, ended)
    if not busy:
        redraw.ask_if_needed("p", ended)  # the fragment drawn inline: never a rerun
    if reaches_end:
        redraw.drawn("p", ended)
    return poll


def fragment_asks(page, ended) -> bool:
    page.fragment = True
    try:
        redraw.ask_if_needed("p", ended)
    except Rerun:
        return True
    return False


def test_a_first_visit_does_not_poll(page):
    assert full_run(page, busy=False, ended=()) is False


def test_after_the_work_ends_one_full_run_draws_it_and_one_more_stops_the_polling(page):
    full_run(page, busy=False, ended=())
    assert full_run(page, busy=True, ended=()) is True
    assert fragment_asks(page, ("run 1",))  # it ended: the results need a full run
    assert full_run(page, busy=False, ended=("run 1",)) is True  # drawn, but still polling from here
    assert fragment_asks(page, ("run 1",))  # so one more full run ...
    assert full_run(page, busy=False, ended=("run 1",)) is False  # ... switches the polling off
    assert not fragment_asks(page, ("run 1",))


def test_a_full_run_cut_short_is_asked_for_again(page):
    full_run(page, busy=True, ended=())
    assert fragment_asks(page, ("run 1",))
    full_run(page, busy=False, ended=("run 1",), reaches_end=False)  # cut short after the fragment
    assert fragment_asks(page, ("run 1",)) and fragment_asks(page, ("run 1",))  # asked again at every poll
    full_run(page, busy=False, ended=("run 1",))
    assert full_run(page, busy=False, ended=("run 1",)) is False


def test_the_fragment_drawn_by_a_full_run_never_restarts_it(page):
    full_run(page, busy=True, ended=())
    page.fragment = False
    redraw.ask_if_needed("p", ("run 1",))  # no Rerun raised, although the results are not drawn yet
