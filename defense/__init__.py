"""Backdoor Neuron Lab's library: data, models, attacks, bundles, salience, purification.

No Streamlit here: everything the app shows can be reproduced from ``python -m defense``.
"""
