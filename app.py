"""Backdoor Neuron Lab: page config and navigation."""
import streamlit as st

st.set_page_config(page_title="Backdoor Neuron Lab", page_icon="🧠", layout="wide")

from defense.bundle import load_bundle  # noqa: E402
from defense.cli import MODELS_DIR  # noqa: E402

b = load_bundle(MODELS_DIR / "mnist-badnets")
st.title("Backdoor Neuron Lab")
st.metric("Model", b.name)
st.metric("Clean accuracy", f"{b.meta['clean_acc']:.1%}")
st.metric("Attack success rate", f"{b.meta['asr']:.1%}")
