"""Importing BackdoorBench checkpoints (``attack_result.pt``, ``defense_result.pt``) as bundles.

The files are torch.save'd dicts: ``model_name``, ``num_classes``, ``model`` (a state dict,
possibly ``module.``-prefixed), and in attack results ``img_size``, ``clean_data``,
``data_path`` and ``bd_train`` / ``bd_test`` holding numpy arrays (index and poison
indicator arrays; the poisoned images themselves are PNG files elsewhere, so the trigger
must come from the user). They are read with ``torch.load(weights_only=True)`` and only
the numpy globals that plain numeric arrays need allowed: no pickled code runs, and a
file that asks for anything else is refused.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from . import models
from .bundle import Bundle, BundleError, check_weights
from .targets import Target

MAX_CHECKPOINT_BYTES = 512 * 2**20  # a width-64 PreAct-ResNet-18 is ~45 MB; the rest is index arrays

# BackdoorBench's normalization per data set (utils/aggregate_block/dataset_and_transform_generate.py)
NORMALIZATION = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "mnist": ([0.5], [0.5]),
    "gtsrb": ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),
    "tiny": ([0.4802, 0.4481, 0.3975], [0.2302, 0.2265, 0.2262]),
}
DATASET_ALIAS = {"mnist5k": "mnist"}  # our data set name -> BackdoorBench's, for the normalization
# BackdoorBench model_name -> our architecture
ARCHITECTURE = {"preactresnet18": "preactresnet18"}


def _numpy_globals() -> list:
    """What a pickled numeric numpy array references, under numpy 1.x and 2.x module names.

    Measured with torch.serialization.get_unsafe_globals_in_checkpoint on arrays and scalars of
    every numeric dtype saved by numpy 2.4: _reconstruct, ndarray, dtype, scalar. numpy 1.x
    files (BackdoorBench's) name the same functions under ``numpy.core``.
    """
    from numpy._core import multiarray

    allowed = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    # numpy 2 pickles a dtype by its class in some protocols (numpy.dtypes.Float32DType ...)
    allowed += [type(np.dtype(t)) for t in ("b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8")]
    return allowed


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, read without running pickled code; BundleError on anything else."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise BundleError(f"cannot read {path} ({err.strerror})") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise BundleError(
            f"{path.name} is {size / 2**20:.0f} MiB; checkpoints over {MAX_CHECKPOINT_BYTES >> 20} MiB are refused"
        )
    data = path.read_bytes()
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_globals()):
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the restricted unpickler's refusals and damaged files
        text = str(err)
        reason = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if reason:
            detail = f"it asks for '{reason.group(1)}', which a checkpoint of tensors and numeric arrays never needs"
        else:
            detail = (text.strip().splitlines() or [type(err).__name__])[0][:200]
        raise BundleError(f"{path.name} was refused: {detail}; nothing in it was run") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise BundleError(f"{path.name} is not a BackdoorBench result: expected a dict with a 'model' state dict")
    return obj


def state_dict_of(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model's state dict with DataParallel's ``module.`` prefix removed."""
    state = checkpoint["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise BundleError("the checkpoint's 'model' is not a state dict (names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def describe(checkpoint: dict, dataset: str) -> dict:
    """Architecture, its options, classes, input shape and normalization, from the checkpoint and the data set name."""
    name = checkpoint.get("model_name")
    if name not in ARCHITECTURE:
        raise BundleError(
            f"model_name {name!r} is not supported (supported: {', '.join(ARCHITECTURE)}); "
            "other BackdoorBench architectures need a matching entry in the architecture registry"
        )
    state = state_dict_of(checkpoint)
    stem = state.get("conv1.weight")
    head = state.get("linear.weight")
    if stem is None or head is None or stem.dim() != 4 or head.dim() != 2:
        raise BundleError("the state dict has no conv1.weight / linear.weight of a PreAct-ResNet-18")
    width, channels = int(stem.shape[0]), int(stem.shape[1])
    num_classes = checkpoint.get("num_classes", int(head.shape[0]))
    if not isinstance(num_classes, int) or num_classes != head.shape[0]:
        raise BundleError(f"num_classes {num_classes!r} does not match the classifier's {head.shape[0]} outputs")
    img_size = checkpoint.get("img_size")
    if img_size is not None:
        if not (
            isinstance(img_size, (list, tuple)) and len(img_size) == 3 and all(isinstance(v, int) for v in img_size)
        ):
            raise BundleError(f"img_size should be (height, width, channels), found {img_size!r}")
        h, w, c = img_size
        if c != channels:
            raise BundleError(f"img_size says {c} channel(s) but the first conv takes {channels}")
        input_shape = [c, h, w]
    else:
        input_shape = None
    clean_data = checkpoint.get("clean_data")
    key = clean_data if clean_data in NORMALIZATION else DATASET_ALIAS.get(dataset, dataset)
    if key not in NORMALIZATION:
        raise BundleError(
            f"no BackdoorBench normalization is known for clean_data {clean_data!r} / dataset {dataset!r} "
            f"(known: {', '.join(NORMALIZATION)})"
        )
    mean, std = NORMALIZATION[key]
    if len(mean) != channels:
        raise BundleError(f"{key}'s normalization has {len(mean)} channel(s) but the model takes {channels}")
    return {
        "architecture": ARCHITECTURE[name],
        "arch_kwargs": {"width": width},
        "num_classes": num_classes,
        "input_shape": input_shape,
        "normalization": {"mean": list(mean), "std": list(std)},
        "source": {"format": "backdoorbench", "model_name": name, "clean_data": clean_data},
        "poison_rate": _poison_rate(checkpoint),
    }


def _poison_rate(checkpoint: dict) -> float | None:
    train = checkpoint.get("bd_train")
    indicator = train.get("poison_indicator") if isinstance(train, dict) else None
    if isinstance(indicator, np.ndarray) and indicator.size and np.issubdtype(indicator.dtype, np.number):
        return round(float(np.mean(indicator > 0)), 4)
    return None


def build_model(info: dict, checkpoint: dict, input_shape) -> torch.nn.Module:
    """Our module with the checkpoint's weights, checked key by key and loaded strictly into ``.net``."""
    model = models.build(
        info["architecture"],
        info["num_classes"],
        input_shape,
        info["normalization"]["mean"],
        info["normalization"]["std"],
        **info["arch_kwargs"],
    )
    state = state_dict_of(checkpoint)
    check_weights(model.net.state_dict(), state)
    model.net.load_state_dict(state, strict=True)
    return model.eval()


def import_bundle(
    path: str | Path,
    dataset: str,
    data_root: str | Path | None,
    attack: str,
    target: int | str,
    params: dict | None = None,
    trigger_file: str | Path | None = None,
    seed: int = 0,
) -> Bundle:
    """A bundle from a BackdoorBench checkpoint, its clean accuracy and ASR measured on ``dataset``'s test split.

    The weights are checked before any data is read; BundleError / DataError / TriggerError / ValueError
    with one plain sentence on anything unfit.
    """
    from . import attacks, data
    from .metrics import evaluate

    checkpoint = read_checkpoint(path)
    info = describe(checkpoint, dataset)
    model = build_model(info, checkpoint, info["input_shape"]) if info["input_shape"] else None
    splits = data.load_dataset(dataset, data_root)
    shape = info["input_shape"] or splits.input_shape
    if list(shape) != list(splits.input_shape):
        raise ValueError(f"the checkpoint takes images {shape}, but dataset '{dataset}' holds {splits.input_shape}")
    if splits.num_classes > info["num_classes"]:
        raise ValueError(f"the model has {info['num_classes']} classes, but '{dataset}' has {splits.num_classes}")
    try:
        target = Target.parse(target, info["num_classes"])
    except ValueError:
        raise ValueError(
            f"target {target} is out of range: the model has classes 0..{info['num_classes'] - 1} (or 'all-to-all')"
        ) from None
    trigger = attacks.make_trigger(attack, shape, seed=seed, trigger_file=trigger_file, **(params or {}))
    model = model if model is not None else build_model(info, checkpoint, shape)
    scores = evaluate(model, splits.test, trigger, target)
    meta = {
        "name": Path(path).stem,
        "architecture": info["architecture"],
        "arch_kwargs": info["arch_kwargs"],
        "dataset": dataset,
        "num_classes": info["num_classes"],
        "input_shape": list(shape),
        "normalization": info["normalization"],
        "attack": {
            "kind": trigger.kind,
            "target_label": target.meta_value(),
            "poison_rate": info["poison_rate"] if info["poison_rate"] is not None else 0.0,
            "params": trigger.params(),
        },
        "clean_acc": round(scores["clean_acc"], 4),
        "asr": round(scores["asr"], 4),
        "seed": seed,
        "imported_from": {**info["source"], "file": Path(path).name},
    }
    return Bundle(model, meta, trigger)
