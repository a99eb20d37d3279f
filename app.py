"""Backdoor Neuron Lab: page config, navigation over pages/, and the sidebar every page shares."""

import streamlit as st

st.set_page_config(page_title="Backdoor Neuron Lab", page_icon=":material/neurology:", layout="wide")

import appkit  # noqa: E402
from defense.runtime import configure_threads  # noqa: E402

# torch's thread count is per thread, and every script run has a new thread: set it on each run
# (appkit's worker threads do the same), leaving a core to the Streamlit server.
configure_threads(share_with_server=True)
appkit.init_state()
page = st.navigation(
    [
        st.Page("pages/model.py", title="Model", icon=":material/biotech:", default=True),
        st.Page("pages/salience.py", title="Neuron salience", icon=":material/grid_view:"),
        st.Page("pages/threshold.py", title="Threshold", icon=":material/tune:"),
        st.Page("pages/purify.py", title="Purify", icon=":material/cleaning_services:"),
    ]
)
lab = appkit.lab()
appkit.sidebar(lab)
appkit.app_ran()
page.run()
appkit.warm(lab)  # then the slow measurements start in the background (after the page, to keep it quick)
