"""Backdoor Neuron Lab: page config, navigation over pages/, and the sidebar every page shares."""

import streamlit as st

st.set_page_config(page_title="Backdoor Neuron Lab", page_icon=":material/neurology:", layout="wide")

from defense.runtime import configure_threads  # noqa: E402
from ui import classroom, lab, state  # noqa: E402
from ui.report_download import sidebar_report  # noqa: E402
from ui.sidebar import sidebar  # noqa: E402

# torch's thread count is per thread, and every script run has a new thread: set it on each run
# (the app's worker threads do the same), leaving a core to the Streamlit server.
configure_threads(share_with_server=True)
state.init_state()
# the lesson's steps, numbered in the sidebar (Model → Salience → Threshold → Purify → Compare)
page = st.navigation(
    [st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(classroom.steps())]
)
classroom.apply_css()
current = lab.current_lab()
sidebar(current)
sidebar_report(current)
page.run()
lab.warm(current)  # then the slow measurements start in the background (after the page, to keep it quick)
