"""Size and kind checks that run *before* anything is allocated (docs/TRUST.md, "Limits").

- ``regular_file``: a FIFO or a device given as a file would block ``open`` or never end.
- ``zip_directory``: a zip's entry count and central-directory size, read from its end
  record (EOCD, and the zip64 one) before ``zipfile`` parses millions of entries.
- ``dense_tensors``: a ``.pt`` state dict may hold stride-0 or overlapping views that declare
  huge shapes over a few stored bytes; anything that touches them (``.to``, ``copy_``) would
  allocate the full size. Refused unless every tensor is backed by its own bytes.
- ``parameter_count``: the parameters and buffers of a model built on the ``meta`` device
  (no memory), capped by ``max_params()`` before the real model exists.
- ``safetensors_shapes``: tensor names, dtypes and shapes from a safetensors header, without
  reading the data.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import torch
from torch import nn

MAX_MEMBER_BYTES = 256 * 2**20  # one file of a bundle, or a trigger file; a ResNet-18 state dict is ~45 MB
DEFAULT_MAX_PARAMS = 50_000_000  # a ResNet-18 has 11 M; BNL_MAX_PARAMS raises or lowers the cap
MAX_ZIP_DIRECTORY_BYTES = 4 * 2**20  # 64 entries with the longest names and extras fit in ~8 MiB; real ones in KBs
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"


class LimitError(ValueError):
    """Input refused before allocation; the message is one sentence."""


def max_params() -> int:
    """The operator's cap on a model's parameters and buffers (env ``BNL_MAX_PARAMS``)."""
    text = os.environ.get("BNL_MAX_PARAMS", "")
    try:
        value = int(float(text)) if text else DEFAULT_MAX_PARAMS
    except ValueError:
        value = DEFAULT_MAX_PARAMS
    return value if value > 0 else DEFAULT_MAX_PARAMS


def regular_file(path: str | Path, what: str = "file") -> os.stat_result:
    """``stat`` of ``path`` if it is a regular file (symlinks followed); refuse FIFOs, devices, sockets, folders."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise LimitError(f"cannot read the {what} {path} ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, device or socket)"
        raise LimitError(f"the {what} {path} is {kind}; refused")
    return st


def zip_directory(path: str | Path, max_entries: int, max_directory_bytes: int = MAX_ZIP_DIRECTORY_BYTES) -> None:
    """Refuse a zip whose end record declares more entries, or a bigger central directory, than allowed.

    Reads at most the last 64 KiB (+ the zip64 record): the EOCD is 22 bytes plus a comment of at most
    65,535. With the zip64 locator present, the zip64 EOCD's counts replace the 16-bit ones (as in zipfile).
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_len = min(size, 22 + 65535 + 20)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < 22:
            return  # not a zip: zipfile refuses it next
        _, disk, _, n_disk, n_total, cd_size, cd_offset, _ = struct.unpack("<4sHHHHIIH", tail[at : at + 22])
        entries, directory = max(n_disk, n_total), cd_size
        loc = at - 20
        if loc >= 0 and tail[loc : loc + 4] == _EOCD64_LOCATOR:
            (_, _, eocd64_offset, _) = struct.unpack("<4sIQI", tail[loc : loc + 20])
            if 0 <= eocd64_offset <= size - 56:
                f.seek(eocd64_offset)
                rec = f.read(56)
                if rec[:4] == _EOCD64:
                    n_disk64, n_total64, cd_size64 = struct.unpack("<QQQ", rec[24:48])
                    entries, directory = max(n_disk64, n_total64), cd_size64  # what zipfile then uses
    if entries > max_entries:
        raise LimitError(f"the archive declares {entries:,} entries; a bundle has at most {max_entries}")
    if directory > max_directory_bytes:
        raise LimitError(
            f"the archive's directory declares {directory / 2**20:.1f} MiB; "
            f"the limit is {max_directory_bytes / 2**20:g} MiB"
        )


def dense_tensors(state: dict[str, torch.Tensor], filename: str) -> None:
    """Refuse tensors that claim more elements than the bytes behind them (stride 0, overlapping views).

    Checked on strides and storage sizes only: nothing is copied. Tensors may share one storage only
    if their bytes add up within it, so the whole state dict is bounded by the bytes stored in the file.
    """
    storages: dict[int, int] = {}
    claimed = 0
    for key, t in state.items():
        if t.layout != torch.strided:
            continue  # check_weights refuses sparse layouts
        span = t.numel() * t.element_size()
        storage = t.untyped_storage()
        available = storage.nbytes() - t.storage_offset() * t.element_size()
        zero_stride = any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape, strict=True))
        if zero_stride or span > available or not _non_overlapping(t):
            raise LimitError(
                f"{filename}: tensor '{key}' declares {list(t.shape)} over {max(available, 0):,} stored bytes "
                "(a stride-0 or overlapping view); refused"
            )
        storages[storage.data_ptr()] = storage.nbytes()
        claimed += span
    if claimed > sum(storages.values()):
        raise LimitError(
            f"{filename}: its tensors declare {claimed:,} bytes over {sum(storages.values()):,} stored "
            "(views sharing storage); refused"
        )


def _non_overlapping(t: torch.Tensor) -> bool:
    """True when no two elements of ``t`` share an address (strides sorted, each beyond the span of the rest)."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n > 1)
    reach = 1
    for s, n in dims:
        if s < reach:
            return False
        reach = s * n
    return True


def parameter_count(model: nn.Module) -> int:
    """Parameters and buffers of ``model`` (works on the ``meta`` device, where nothing is allocated)."""
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def check_parameter_count(model: nn.Module, what: str = "the model") -> int:
    count = parameter_count(model)
    cap = max_params()
    if count > cap:
        raise LimitError(
            f"{what} has {count:,} parameters; the limit is {cap:,} (the operator can raise it with BNL_MAX_PARAMS)"
        )
    return count


def safetensors_shapes(path: str | Path) -> dict[str, tuple[str, list[int]]]:
    """{name: (dtype, shape)} from a safetensors file's header; the tensors themselves are not read."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            sl = f.get_slice(name)
            out[name] = (sl.get_dtype(), list(sl.get_shape()))
    return out
