"""The defender's own data: a data set folder named at launch, and clean images uploaded in the browser.

- At launch: ``make run DATA=/path`` (or ``BNL_DATA=/path streamlit run app.py``, or
  ``streamlit run app.py -- --data /path``) names a folder holding CIFAR-10 in torchvision's python layout
  (``cifar-10-batches-py`` inside) or an ImageFolder (one sub-folder per class). Models whose meta.json names
  ``cifar10`` or ``imagefolder`` are then measured on it; the embedded digits need nothing.
- In the browser: a .zip in ImageFolder layout or an .npz with ``x`` and ``y`` replaces the clean subset
  (what salience, the scores and purification learn from) for this session; test images still come from
  the model's data set, since ASR needs test images and the trigger.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import streamlit as st

from defense import data
from defense.cleandata import read_clean_upload


def data_root() -> str | None:
    """The folder named at launch, if any."""
    if "--data" in sys.argv[:-1]:
        return sys.argv[sys.argv.index("--data") + 1]
    return os.environ.get("BNL_DATA") or None


def launch_dataset() -> str | None:
    """'cifar10' or 'imagefolder' for the folder named at launch, else None."""
    root = data_root()
    if root is None or not Path(root).is_dir():
        return None
    return "cifar10" if (Path(root) / "cifar-10-batches-py").is_dir() else "imagefolder"


def datasets() -> list[str]:
    """The data sets this app can measure a model on."""
    extra = launch_dataset()
    return ["mnist5k"] + ([extra] if extra else [])


def clean_override(meta: dict) -> tuple[str, data.TensorData] | None:
    """(digest, images) of this session's uploaded clean images, if they fit the model described by ``meta``."""
    upload = st.session_state.get("clean_upload")
    if not upload:
        return None
    if upload["shape"] != list(meta["input_shape"]) or upload["num_classes"] > meta["num_classes"]:
        return None
    return upload["digest"], upload["data"]


def clean_upload_section(meta: dict) -> None:
    """The Model page's uploader for the defender's own clean images."""
    ss = st.session_state
    with st.expander("Use your own clean images"):
        st.caption(
            "A .zip of class folders (ImageFolder layout; folders named 0, 1, ... keep those labels) or an .npz "
            f"with `x` [N, {', '.join(map(str, meta['input_shape']))}] (uint8 or floats in [0, 1]) and integer "
            "labels `y`. They replace the clean subset for this session; test images still come from the "
            "model's data set (ASR needs test images and the trigger)."
        )
        upload = st.file_uploader("Clean images", type=["zip", "npz"], key="w_clean_upload")
        if upload is not None:
            st.button("Use these clean images", key="w_clean_go", on_click=_use_upload, args=(meta,))
        if ss.get("clean_upload_error"):
            st.error(f"These images cannot be used: {ss.pop('clean_upload_error')}")
        current = ss.get("clean_upload")
        if current:
            counts = current["data"].y.bincount().tolist()
            st.success(
                f"Clean subset: {len(current['data'])} images from {current['name']} "
                f"({sum(1 for c in counts if c)} classes)."
            )
            st.button(
                "Back to the data set's clean subset",
                key="w_clean_reset",
                on_click=lambda: ss.pop("clean_upload", None),
            )


def _use_upload(meta: dict) -> None:
    """The button's callback: runs before the script, so the whole page already sees the new clean subset."""
    ss = st.session_state
    upload = ss.get("w_clean_upload")
    if upload is None:
        return
    payload = upload.getvalue()
    try:
        images = read_clean_upload(upload.name, payload, meta["input_shape"], meta["num_classes"])
    except data.DataError as err:
        ss["clean_upload_error"] = str(err)
        return
    ss["clean_upload"] = {
        "name": upload.name,
        "digest": hashlib.sha1(payload).hexdigest()[:12],
        "data": images,
        "shape": list(meta["input_shape"]),
        "num_classes": int(images.y.max()) + 1,
    }
