"""Backdoor Neuron Lab: page config, navigation over pages/, and the sidebar every page shares."""

import streamlit as st

st.set_page_config(page_title="Backdoor Neuron Lab", page_icon=":material/neurology:", layout="wide")

from defense.runtime import configure_threads  # noqa: E402
from ui import lab, state  # noqa: E402
from ui.report_download import sidebar_report  # noqa: E402
from ui.sidebar import sidebar  # noqa: E402

# torch's thread count is per thread, and every script run has a new thread: set it on each run
# (the app's worker threads do the same), leaving a core to the Streamlit server.
configure_threads(share_with_server=True)
state.init_state()
page = st.navigation(
    [
        st.Page("pages/model.py", title="Model", icon=":material/biotech:", default=True),
        st.Page("pages/salience.py", title="Neuron salience", icon=":material/grid_view:"),
        st.Page("pages/threshold.py", title="Threshold", icon=":material/tune:"),
        st.Page("pages/purify.py", title="Purify", icon=":material/cleaning_services:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:"),
    ]
)
current = lab.current_lab()
sidebar(current)
sidebar_report(current)
page.run()
lab.warm(current)  # then the slow measurements start in the background (after the page, to keep it quick)
