"""Uploaded models: a bundle (.zip) or bare weights (.safetensors/.pt) with an architecture."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from defense import attacks, data
from defense import bundle as bundle_io
from defense.targets import Target
from ui.lab import bundled, model_key, splits_for
from ui.owndata import data_root

ALL_TO_ALL_LABEL = "All-to-all"
ALL_TO_ALL_HELP = (
    "the backdoor sends each label y to the next one, y + 1 (BackdoorBench's all2all), instead of every "
    "triggered image to one target label"
)


def read_upload(
    filename: str,
    payload: bytes,
    arch: str | None = None,
    like: str | None = None,
    attack: tuple[str, int] | None = None,
    backdoorbench: tuple[str, str, int] | None = None,
) -> tuple[str, bundle_io.Bundle]:
    """(key, Bundle) from an uploaded bundle (.zip) or a bare state dict (.safetensors/.pt).

    A bare state dict needs an architecture and the meta of a bundled model of the same
    dataset (``like``); with ``attack`` = (kind, target) its trigger is rebuilt by
    make_trigger instead of taken from that model. Raises ui.lab.LOAD_ERRORS with plain messages.
    The file is data: safetensors, or torch.load(weights_only=True), never unpickled.
    With ``backdoorbench`` = (dataset, attack kind, target) the file is a BackdoorBench attack_result.pt /
    defense_result.pt (defense/backdoorbench.py), measured on that dataset.
    """
    stem = Path(filename).stem or "upload"
    if backdoorbench is not None:
        from defense.backdoorbench import import_bundle

        dataset, kind, target = backdoorbench
        with tempfile.TemporaryDirectory(prefix="bnl-upload-") as tmp:
            path = Path(tmp) / "checkpoint.pt"
            path.write_bytes(payload)
            b = import_bundle(path, dataset, data_root() if dataset != "mnist5k" else None, kind, target)
        b.meta["name"] = stem
    elif filename.lower().endswith(".zip"):
        with tempfile.TemporaryDirectory(prefix="bnl-upload-") as tmp:  # private, removed afterwards
            path = Path(tmp) / "upload.zip"
            path.write_bytes(payload)
            b = bundle_io.load_bundle(path)
        b.meta["name"] = b.meta.get("name") if b.meta.get("name") not in (None, "upload") else stem
    elif filename.lower().endswith((".safetensors", ".pt", ".pth")):
        if arch is None or like is None:
            raise ValueError("a bare state dict needs an architecture and a model whose dataset and trigger it shares")
        _, base = bundled(like)
        state = bundle_io.read_state_dict(
            payload, "model.safetensors" if filename.lower().endswith(".safetensors") else filename
        )
        meta = {k: v for k, v in copy.deepcopy(base.meta).items() if k not in ("clean_acc", "asr", "training", "seed")}
        meta.update(architecture=arch, arch_kwargs={}, name=stem)
        trigger = base.trigger
        if attack is not None:
            kind, target = attack
            meta["attack"] = {
                "kind": kind,
                "target_label": Target.parse(target, base.meta["num_classes"]).meta_value(),
                "poison_rate": base.meta["attack"].get("poison_rate", 0.1),
                "params": {},
            }
            trigger = attacks.make_trigger(kind, meta["input_shape"])
            meta["attack"]["params"] = trigger.params()
        bundle_io.validate_meta(meta)
        model = bundle_io.build_model(meta)
        bundle_io.load_weights(model, state)
        b = bundle_io.Bundle(model.eval(), meta, trigger)
    else:
        raise ValueError(f"{filename}: expected a bundle (.zip) or a state dict (.safetensors, .pt)")
    if b.meta["dataset"] != "mnist5k" and data_root() is None:  # said in the app's words, not the CLI's
        raise ValueError(
            f"this model was made for the '{b.meta['dataset']}' data set, and this app was started without a "
            "folder of it, so it has no test images of that kind: without them neither the clean accuracy nor "
            "the attack success rate (the trigger stamped on test images) can be measured, nor the infected "
            "neurons found. Only models of the built-in MNIST digits open here; whoever runs the app can name "
            "a data set folder when starting it (make run DATA=/path)"
        )
    splits_for(b.meta, data.CLEAN_FRACTION, 0)  # the app holds this dataset, in this shape
    return "upload:" + model_key(b), b
