"""Reading and writing model bundles (docs/bundle-format.md).

A bundle is a directory, or a .zip of one, holding ``meta.json``, ``model.safetensors``
(or a ``model.pt`` state dict) and, for triggers that need tensors, ``trigger.safetensors``.

Everything read here is treated as hostile data: weights come from safetensors or from
``torch.load(..., weights_only=True)``, never from arbitrary unpickling; zip members are
read into memory by name, never extracted, and their sizes are capped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from . import attacks, guards, models
from .meta import FORMAT_VERSION, BundleError, validate_meta  # noqa: F401 - part of this module's interface
from .targets import Target

MAX_MEMBER_BYTES = guards.MAX_MEMBER_BYTES  # a ResNet-18 state dict is ~45 MB
MAX_TOTAL_BYTES = 512 * 2**20  # all members of an archive together, unpacked
MAX_META_BYTES = 2**20  # meta.json is a few hundred bytes
MAX_ARCHIVE_MEMBERS = 64
MAX_COMPRESSION_RATIO = 200  # weights barely compress; a higher ratio is a zip bomb
RATIO_CHECK_BYTES = 16 * 2**20  # small members (a mostly-zero trigger mask) may compress far better, harmlessly
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class Bundle:
    model: nn.Module
    meta: dict
    trigger: attacks.Trigger

    @property
    def name(self) -> str:
        return self.meta.get("name", "unnamed")

    @property
    def target(self) -> Target:
        return Target.parse(self.meta["attack"]["target_label"], int(self.meta["num_classes"]))

    def describe_attack(self) -> str:
        rate = self.meta["attack"].get("poison_rate", 0)
        how = " (clean-label: target-class images, labels kept)" if self.meta["attack"].get("clean_label") else ""
        return f"{self.trigger.describe()}; target {self.target}, {rate:.0%} of training images poisoned{how}"


def fingerprint(bundle: Bundle) -> str:
    """A content hash of everything that changes a result: meta.json (architecture, arch_kwargs, normalization,
    attack and its parameters, ...), every weight (name, dtype, shape, bytes) and the trigger (kind, parameters,
    tensors). Two bundles with equal fingerprints give equal numbers on equal data; the clean-data choice is
    not part of a bundle, so callers add it to their own keys.
    """
    h = hashlib.sha256()

    def tensors(prefix: str, items: dict[str, torch.Tensor]) -> None:
        for k in sorted(items):
            v = items[k].detach().cpu().contiguous()
            h.update(f"{prefix}:{k}:{v.dtype}:{list(v.shape)}\n".encode())
            h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")

    h.update(json.dumps(bundle.meta, sort_keys=True, default=str).encode())
    tensors("weight", bundle.model.state_dict())
    trig = bundle.trigger
    h.update(f"trigger:{trig.kind}:{json.dumps(trig.params(), sort_keys=True, default=str)}\n".encode())
    tensors("trigger", trig.tensors())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------- weights


def read_state_dict(data: bytes, filename: str) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes, or from a .pt state dict loaded with weights_only=True."""
    if filename.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as err:
            raise BundleError(f"{filename} is not a valid safetensors file ({err})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler refuses anything but tensors and plain containers
        text = str(err).strip()
        # torch's message opens with advice to retry with weights_only=False: quote only the reason
        reason = re.search(r"WeightsUnpickler error: ([^\n]*?)(?:\.\s|\.?$)", text, re.MULTILINE)
        detail = reason.group(1) if reason else (text.splitlines()[0] if text else type(err).__name__)
        raise BundleError(
            f"{filename} was refused: it is not a plain state dict of tensors ({detail}); nothing in it was run"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BundleError(f"{filename} does not hold a state dict (a mapping of names to tensors)")
    try:
        guards.dense_tensors(state, filename)  # before anything copies a stride-0 view to its full size
    except guards.LimitError as err:
        raise BundleError(str(err)) from None
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict strictly; any mismatch lists the offending keys and shapes."""
    expected = model.state_dict()
    check_weights(expected, state)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def check_weights(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Raise BundleError unless ``state`` has exactly the keys, shapes and kinds of ``expected`` and finite values."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append("missing keys " + ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else ""))
    if unexpected:
        problems.append("unexpected keys " + ", ".join(unexpected[:12]) + (" ..." if len(unexpected) > 12 else ""))
    if wrong:
        problems.append("shape mismatches " + "; ".join(wrong[:12]) + (" ..." if len(wrong) > 12 else ""))
    if problems:
        raise BundleError("the weights do not fit the architecture in meta.json: " + " | ".join(problems))
    odd = [
        f"{k} ({v.dtype}, {v.layout})"
        for k, v in sorted(state.items())
        if v.layout != torch.strided
        or (v.dtype in WEIGHT_DTYPES) != expected[k].is_floating_point()
        or (not expected[k].is_floating_point() and v.dtype != expected[k].dtype)
    ]
    if odd:
        raise BundleError(
            "the weights have the wrong kind of tensor (expected dense float16/bfloat16/float32/float64 "
            "weights and int64 counters) in " + ", ".join(odd[:12])
        )
    bad = [k for k, v in sorted(state.items()) if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BundleError("the weights hold NaN or infinite values in " + ", ".join(bad[:12]))


def build_model(meta: dict) -> nn.Module:
    norm = meta["normalization"]
    return models.build(
        meta["architecture"],
        meta["num_classes"],
        meta["input_shape"],
        norm["mean"],
        norm["std"],
        **meta.get("arch_kwargs", {}),
    )


def _skeleton(meta: dict) -> nn.Module:
    """The architecture meta.json describes, on torch's 'meta' device: shapes only, no memory, no arithmetic.

    Building it and pushing one dummy image through it checks arch_kwargs and input_shape before any real
    allocation (a hostile meta.json could ask for a layer of 10^15 weights); its parameter count is capped
    (guards.max_params), and the real model is built only once the file's weights have been found to fit.
    """
    c, h, w = meta["input_shape"]
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(meta).eval()
            guards.check_parameter_count(model, f"the '{meta['architecture']}' that meta.json describes")
            with torch.no_grad():
                out = model(torch.zeros(1, c, h, w))
    except guards.LimitError as err:
        raise BundleError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - arch_kwargs and shapes come from the file
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BundleError(
            f"meta.json describes a '{meta['architecture']}' that cannot be built for input {meta['input_shape']} "
            f"with arch_kwargs {meta.get('arch_kwargs', {})} ({first_line})"
        ) from None
    if list(out.shape) != [1, meta["num_classes"]]:
        raise BundleError(
            f"meta.json describes a model whose output has shape {list(out.shape)[1:]}, "
            f"not the {meta['num_classes']} classes it declares"
        )
    return model


# ---------------------------------------------------------------- files


class _Source:
    """Named files of a bundle, from a directory or from a zip read in memory."""

    def __init__(self, path: Path):
        self.path = path
        self.files: dict[str, bytes | Path] = {}
        if path.is_dir():
            try:
                for child in path.iterdir():
                    if child.is_file() and not child.is_symlink():
                        self.files[child.name] = child
            except OSError as err:
                raise BundleError(f"cannot read the bundle folder {path} ({err.strerror or err})") from None
        elif path.exists() and not path.is_file():
            raise BundleError(f"{path} is not a regular file or folder (a pipe, device or socket); refused")
        elif zipfile.is_zipfile(path):
            self._read_zip(path)
        elif path.exists():
            raise BundleError(f"{path} is neither a bundle directory nor a .zip archive")
        else:
            raise BundleError(f"no bundle at {path}")

    def _read_zip(self, path: Path) -> None:
        try:
            guards.zip_directory(path, MAX_ARCHIVE_MEMBERS)  # from the end record, before zipfile parses entries
        except guards.LimitError as err:
            raise BundleError(str(err)) from None
        except OSError as err:
            raise BundleError(f"cannot read {path.name} ({err.strerror or err})") from None
        try:
            with zipfile.ZipFile(path) as archive:
                entries = archive.infolist()
                if len(entries) > MAX_ARCHIVE_MEMBERS:
                    raise BundleError(
                        f"the archive holds {len(entries)} entries; a bundle has at most {MAX_ARCHIVE_MEMBERS}"
                    )
                total = 0
                for info in entries:
                    name = PurePosixPath(info.filename.replace("\\", "/"))
                    if name.is_absolute() or ".." in name.parts:
                        raise BundleError(f"the archive entry '{info.filename}' points outside the bundle; refused")
                    if info.is_dir():
                        continue
                    if len(name.parts) > 2:
                        continue  # a bundle is flat, or inside one top-level folder
                    if info.file_size > MAX_MEMBER_BYTES:
                        raise BundleError(
                            f"the archive entry '{info.filename}' would unpack to {info.file_size / 2**20:.0f} MiB; "
                            f"the limit is {MAX_MEMBER_BYTES // 2**20} MiB"
                        )
                    total += info.file_size
                    if total > MAX_TOTAL_BYTES:
                        raise BundleError(
                            f"the archive would unpack to more than {MAX_TOTAL_BYTES // 2**20} MiB; refused"
                        )
                    if info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(
                        info.compress_size, 1
                    ):
                        raise BundleError(
                            f"the archive entry '{info.filename}' is compressed "
                            f"{info.file_size // max(info.compress_size, 1)}:1, "
                            "which looks like a zip bomb; refused"
                        )
                    if name.name in self.files:
                        raise BundleError(f"the archive holds more than one '{name.name}'")
                    with archive.open(info) as member:
                        data = member.read(MAX_MEMBER_BYTES + 1)
                    if len(data) > MAX_MEMBER_BYTES:
                        raise BundleError(f"the archive entry '{info.filename}' is larger than it claims; refused")
                    self.files[name.name] = data
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            NotImplementedError,
            RuntimeError,
            ValueError,
            OSError,
        ) as err:
            # corrupt data, truncated members, unsupported compression, encrypted entries
            if isinstance(err, BundleError):
                raise
            raise BundleError(f"{path.name} is not a readable zip archive ({err})") from None

    def has(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str, limit: int | None = None) -> bytes:
        limit = MAX_MEMBER_BYTES if limit is None else limit
        item = self.files[name]
        if isinstance(item, Path):
            try:
                if not item.is_file():
                    raise BundleError(f"{name} is not a regular file; refused")
                if item.stat().st_size > limit:
                    raise BundleError(f"{name} is larger than {limit / 2**20:g} MiB; refused")
                with item.open("rb") as f:
                    data = f.read(limit + 1)  # the size may change between stat and read
            except OSError as err:
                raise BundleError(f"cannot read {name} ({err.strerror or err})") from None
        else:
            data = item
        if len(data) > limit:
            raise BundleError(f"{name} is larger than {limit / 2**20:g} MiB; refused")
        return data


def load_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle directory or .zip; raises BundleError with a plain message."""
    path = Path(path)
    source = _Source(path)
    if not source.has("meta.json"):
        raise BundleError(f"{path.name} has no meta.json")
    try:
        meta = json.loads(source.read("meta.json", MAX_META_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise BundleError(f"meta.json is not valid JSON ({reason})") from None
    validate_meta(meta)
    meta.setdefault("name", path.stem if path.suffix == ".zip" else path.name)
    weights_name = next((n for n in ("model.safetensors", "model.pt", "model.pth") if source.has(n)), None)
    if weights_name is None:
        raise BundleError(f"{path.name} has no model.safetensors (or model.pt state dict)")
    skeleton = _skeleton(meta)
    state = read_state_dict(source.read(weights_name), weights_name)
    check_weights(skeleton.state_dict(), state)  # keys, shapes, dtypes, finiteness: before any real allocation
    model = build_model(meta)
    load_weights(model, state)
    model.eval()
    trigger_tensors = (
        read_state_dict(source.read("trigger.safetensors"), "trigger.safetensors")
        if source.has("trigger.safetensors")
        else {}
    )
    try:
        trigger = attacks.trigger_from_meta(meta["attack"], trigger_tensors, meta["input_shape"])
    except attacks.TriggerError as err:
        raise BundleError(f"trigger: {err}") from None
    return Bundle(model, meta, trigger)


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write a bundle as a directory, or as a .zip when ``path`` ends in .zip."""
    from safetensors.torch import save as save_safetensors

    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, **{k: v for k, v in bundle.meta.items() if k != "format_version"}}
    meta["name"] = meta.get("name") or path.stem
    files = {
        "meta.json": json.dumps(meta, indent=2).encode(),
        "model.safetensors": save_safetensors(
            {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
        ),
    }
    if bundle.trigger.tensors():
        files["trigger.safetensors"] = save_safetensors(
            {k: v.detach().cpu().contiguous() for k, v in bundle.trigger.tensors().items()}
        )
    # written under a temporary name beside the target, then renamed: an interrupted or failed write
    # leaves the target as it was (absent, or the previous bundle), never half-written
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
            partial.replace(path)
        else:
            partial.mkdir()
            for name, data in files.items():
                (partial / name).write_bytes(data)
            if path.is_dir():  # the previous bundle folder is swapped out whole, then removed
                path.rename(old)
            partial.rename(path)
    finally:
        if old.exists() and not path.exists():  # interrupted between the two renames: put the old one back
            old.rename(path)
        for leftover in (partial, old):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return path


def bundle_bytes(bundle: Bundle, name: str = "bundle") -> bytes:
    """The bundle as .zip bytes (for downloads)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return save_bundle(bundle, Path(tmp) / f"{name}.zip").read_bytes()
