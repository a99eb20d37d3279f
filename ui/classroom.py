"""The guided lesson: numbered steps, "Next →" links, presenter mode, a confirm before clearing, and a reset.

The steps are the pages in lesson order (``STEPS``); app.py titles the navigation with their numbers and
every page ends with ``next_step``. Presenter mode scales the app's root font (Streamlit sizes its text in
rem) and every chart (``ui.theme``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

# (page file, title, icon) in lesson order; a page that does not exist yet (Compare) is left out
STEPS = (
    ("pages/model.py", "Model", ":material/biotech:"),
    ("pages/salience.py", "Neuron salience", ":material/grid_view:"),
    ("pages/threshold.py", "Threshold", ":material/tune:"),
    ("pages/purify.py", "Purify", ":material/cleaning_services:"),
    ("pages/compare.py", "Compare", ":material/compare:"),
)
ROOT = Path(__file__).resolve().parent.parent


def steps() -> list[tuple[str, str, str]]:
    """The lesson's steps whose page exists, numbered: (page file, "1. Model", icon)."""
    present = [s for s in STEPS if (ROOT / s[0]).is_file()]
    return [(path, f"{i}. {title}", icon) for i, (path, title, icon) in enumerate(present, start=1)]


def has_page(path: str) -> bool:
    return (ROOT / path).is_file()


CSS = """
<style>
/* the page starts under the header, not 6rem below it, and uses the width: each step's key figure fits 1280x720 */
[data-testid="stMainBlockContainer"] { padding: 3rem 1.6rem 2rem 1.6rem; max-width: none; }
[data-testid="stSidebarUserContent"] { padding-top: 0.5rem; }
section[data-testid="stSidebar"][data-collapsed="false"] { width: 16rem !important; min-width: 16rem !important; }
h1 { font-size: 2.2rem !important; padding-top: 0.1rem !important; padding-bottom: 0.25rem !important; }
[data-testid="stMetricValue"] { font-size: 1.7rem; }
/* metric labels wrap onto a second line instead of ending in "…" */
[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] *, [data-testid="stMetricValue"] * {
  white-space: normal !important; overflow: visible !important;
}
/* narrow windows (a zoomed browser): columns too narrow for their content go under each other */
@media (max-width: 1000px) {
  [data-testid="stHorizontalBlock"] { flex-wrap: wrap; }
  [data-testid="stColumn"] { min-width: min(15rem, 100%); }
}
</style>
"""
PRESENTER_CSS = """
<style>
html { font-size: 20px; }
[data-testid="stMetricValue"] { font-size: 2rem; }
</style>
"""


def apply_css() -> None:
    st.html(CSS + (PRESENTER_CSS if st.session_state.get("presenter") else ""))


def presenter_toggle() -> None:
    """The sidebar switch for presenter mode (larger text and charts, for the back row)."""
    ss = st.session_state
    ss["w_presenter"] = bool(ss.get("presenter", False))

    def save():
        ss["presenter"] = ss["w_presenter"]

    st.toggle(
        "Presenter mode",
        key="w_presenter",
        on_change=save,
        help="larger text and charts, for a projector",
    )


def next_step(sentence: str, page: str | None) -> None:
    """The page's closing line: what to look at next, and a link to the next step."""
    st.divider()
    st.markdown(sentence)
    if page is None:
        return
    numbered = {path: title for path, title, _ in steps()}
    if page in numbered:
        st.page_link(page, label=f"Next → {numbered[page]}", icon=":material/arrow_forward:")


def next_page(current: str) -> str | None:
    """The step after ``current`` (a page file), or None at the end."""
    paths = [p for p, _, _ in steps()]
    i = paths.index(current) if current in paths else -1
    return paths[i + 1] if 0 <= i < len(paths) - 1 else None


def confirm_button(label: str, key: str, action: Callable[[], None], question: str, disabled: bool = False) -> None:
    """A button that asks before it acts: the first press shows ``question`` with Yes / Cancel."""
    ss = st.session_state
    flag = f"_confirm_{key}"

    def ask():
        ss[flag] = True

    def yes():
        ss[flag] = False
        action()

    def no():
        ss[flag] = False

    if not ss.get(flag):
        st.button(label, key=key, disabled=disabled, on_click=ask)
        return
    st.warning(question, icon=":material/help:")
    c1, c2 = st.columns(2)
    c1.button("Yes, " + label[0].lower() + label[1:], key=f"{key}_yes", type="primary", on_click=yes)
    c2.button("Cancel", key=f"{key}_no", on_click=no)


def reset_session(keep: tuple[str, ...] = ()) -> None:
    """Every choice back to its default: runs stopped and forgotten, every setting and widget cleared.

    The app's ``init_state`` writes the defaults again on the next run (a reset page reruns at once).
    """
    ss = st.session_state
    for run in ss.get("runs", []):
        if getattr(run, "active", False):
            run.stop()
    for key in list(ss.keys()):
        if key not in keep:
            del ss[key]
