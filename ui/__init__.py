"""The Streamlit app's own package: everything the pages share, one concern per module.

- ``state``: session-state defaults, widgets whose values survive page switches, running a page inside app.py.
- ``lab``: the current model (shared and cached, never mutated), this session's copy of it, its data and its
  cached measurements.
- ``upload``: reading an uploaded bundle or bare state dict.
- ``jobs``: the background worker of the slow, one-off measurements, and the note a page shows while they run.
- ``runs``: purification runs, one thread each, owned by the session that started it.
- ``charts``: neuron heatmaps and image grids; ``curves``: the line charts (pruning, ROC, live runs).
- ``sidebar``: the current model and the defender's clean data, on every page.

The pages (``pages/*.py``) are widgets, layout and calls into here; the method itself lives in ``defense/``,
which never imports Streamlit.
"""
