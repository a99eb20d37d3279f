"""Rebuild the fuzz corpus: small malformed bundles that defense.bundle.load_bundle must refuse.

    .venv/bin/python tests/fuzz_corpus/make_corpus.py          # rewrites tests/fuzz_corpus/*.zip

Every case starts from one tiny valid bundle (``valid.zip``: a small_cnn of width 1 on 1x8x8
images, 2 classes, a 2x2 BadNets patch; well under 1 KB of weights) and breaks exactly one
thing, so a case that loads means one protection is missing. Each file stays under a few KB.
The two pickle cases hold a payload that, if it were ever unpickled, would create the file
named by the environment variable BNL_CORPUS_MARKER (and do nothing when it is unset); the
tests set it and check the file is never created.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import torch  # noqa: E402
from safetensors.torch import save as save_safetensors  # noqa: E402

from defense import attacks, models  # noqa: E402

INPUT_SHAPE = [1, 8, 8]
ARCH_KWARGS = {"width": 1, "hidden": 2}
FIXED_TIME = (2024, 1, 1, 0, 0, 0)
PAYLOAD = (
    "import os\np = os.environ.get('BNL_CORPUS_MARKER')\nif p:\n    open(p, 'w').write('the pickle payload ran')\n"
)


def tiny_meta(**changes) -> dict:
    meta = {
        "format_version": 1,
        "name": "tiny",
        "architecture": "small_cnn",
        "arch_kwargs": dict(ARCH_KWARGS),
        "dataset": "imagefolder",
        "num_classes": 2,
        "input_shape": list(INPUT_SHAPE),
        "normalization": {"mean": [0.5], "std": [0.25]},
        "attack": {"kind": "badnets", "target_label": 0, "poison_rate": 0.1, "params": {"size": 2, "margin": 1}},
        "clean_acc": 0.5,
        "asr": 0.5,
        "seed": 0,
    }
    meta.update(changes)
    return meta


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = models.build("small_cnn", 2, INPUT_SHAPE, [0.5], [0.25], **ARCH_KWARGS)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def tiny_trigger() -> dict[str, torch.Tensor]:
    return attacks.badnets(INPUT_SHAPE, size=2, margin=1).tensors()


def tiny_files(meta: dict | None = None) -> dict[str, bytes]:
    """The files of the valid tiny bundle, by name."""
    return {
        "meta.json": json.dumps(meta if meta is not None else tiny_meta(), indent=1).encode(),
        "model.safetensors": save_safetensors(tiny_state()),
        "trigger.safetensors": save_safetensors(tiny_trigger()),
    }


def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A deterministic zip (fixed timestamps) of ``files``; names are written as given, '../' included."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = compression
            archive.writestr(info, data)
    return buf.getvalue()


class _Payload:
    """Unpickling this runs PAYLOAD (what a hostile 'checkpoint' does with __reduce__)."""

    def __reduce__(self):
        import builtins

        return (builtins.exec, (PAYLOAD,))


def pickle_payload(torch_format: bool = True) -> bytes:
    """A 'state dict' whose unpickling runs code: torch.save's zip format, or a bare pickle."""
    state = {"net.conv1.weight": _Payload()}
    if not torch_format:
        return pickle.dumps(state, protocol=2)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _patch_sizes(data: bytes, name: str, file_size: int) -> bytes:
    """Make the local and central headers of ``name`` claim an uncompressed size of ``file_size``."""
    raw = bytearray(data)
    encoded = name.encode()
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (i := raw.find(signature, start)) >= 0:
            if raw[i + name_offset : i + name_offset + len(encoded)] == encoded:
                struct.pack_into("<I", raw, i + size_offset, file_size)
            start = i + 4
    return bytes(raw)


def _set_header_field(
    data: bytes, local_offset: int, central_offset: int, value: int, fmt: str = "<H", combine=lambda old, new: new
) -> bytes:
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        start = 0
        while (i := raw.find(signature, start)) >= 0:
            old = struct.unpack_from(fmt, raw, i + offset)[0]
            struct.pack_into(fmt, raw, i + offset, combine(old, value))
            start = i + 4
    return bytes(raw)


def cases() -> dict[str, bytes]:
    """Case name (file stem) -> bytes of a .zip that must be refused with BundleError."""
    base = tiny_files()
    state, trigger = tiny_state(), tiny_trigger()
    meta = tiny_meta()

    def with_files(**replace) -> bytes:
        files = dict(base)
        for key, value in replace.items():
            name = key.replace("__", ".")
            if value is None:
                files.pop(name, None)
            else:
                files[name] = value
        return zip_bytes(files)

    def with_meta(m) -> bytes:
        text = m if isinstance(m, (str, bytes)) else json.dumps(m)
        return with_files(meta__json=text.encode() if isinstance(text, str) else text)

    def with_state(s) -> bytes:
        return with_files(model__safetensors=save_safetensors(s))

    def with_trigger(t) -> bytes:
        return with_files(trigger__safetensors=save_safetensors(t))

    out: dict[str, bytes] = {}
    # meta.json
    out["meta_not_json"] = with_meta("{'architecture': small_cnn,")
    out["meta_not_utf8"] = with_meta(b"\xff\xfe{\x00}\x00")
    out["meta_is_a_list"] = with_meta([meta])
    out["meta_deeply_nested"] = with_meta("[" * 50_000 + "]" * 50_000)
    out["meta_missing_fields"] = with_meta({k: v for k, v in meta.items() if k not in ("num_classes", "input_shape")})
    out["meta_wrong_types"] = with_meta({**meta, "num_classes": "2", "input_shape": "1x8x8"})
    out["meta_bool_as_int"] = with_meta({**meta, "num_classes": True})
    out["meta_unknown_architecture"] = with_meta({**meta, "architecture": "os.system"})
    out["meta_future_format"] = with_meta({**meta, "format_version": 99})
    out["meta_nan_normalization"] = with_meta(
        json.dumps({**meta, "normalization": {"mean": [0.5], "std": [0.25]}}).replace("0.25", "NaN")
    )
    out["meta_zero_std"] = with_meta({**meta, "normalization": {"mean": [0.5], "std": [0]}})
    out["meta_normalization_channels"] = with_meta(
        {**meta, "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25] * 3}}
    )
    out["meta_input_shape_2d"] = with_meta({**meta, "input_shape": [8, 8]})
    out["meta_input_shape_negative"] = with_meta({**meta, "input_shape": [1, -8, 8]})
    out["meta_input_shape_degenerate"] = with_meta({**meta, "input_shape": [1, 2, 2]})
    out["meta_huge_arch_kwargs"] = with_meta({**meta, "arch_kwargs": {"width": 10**9, "hidden": 10**9}})
    out["meta_unknown_arch_kwarg"] = with_meta({**meta, "arch_kwargs": {"width": 1, "hidden": 2, "__class__": "x"}})
    out["meta_attack_kind"] = with_meta({**meta, "attack": {**meta["attack"], "kind": "pickle"}})
    out["meta_target_out_of_range"] = with_meta({**meta, "attack": {**meta["attack"], "target_label": 2}})
    out["meta_poison_rate"] = with_meta({**meta, "attack": {**meta["attack"], "poison_rate": 1.5}})
    out["meta_asr_out_of_range"] = with_meta({**meta, "asr": 3})
    out["meta_name_not_string"] = with_meta({**meta, "name": ["a"]})
    out["meta_sig_params"] = with_meta(
        {**meta, "attack": {**meta["attack"], "kind": "sig", "params": {"frequency": "x"}}}
    )
    out["meta_wanet_without_flow"] = with_meta({**meta, "attack": {**meta["attack"], "kind": "wanet", "params": {}}})
    # weights
    full = base["model.safetensors"]
    out["weights_missing"] = with_files(model__safetensors=None)
    out["weights_empty"] = with_files(model__safetensors=b"")
    out["weights_truncated"] = with_files(model__safetensors=full[: len(full) // 2])
    out["weights_garbled_header"] = with_files(model__safetensors=full[:8] + b'{"a": [' + full[15:])
    out["weights_header_too_long"] = with_files(model__safetensors=struct.pack("<Q", 2**40) + full[8:])
    out["weights_random_bytes"] = with_files(model__safetensors=bytes(range(256)) * 2)
    out["weights_wrong_shape"] = with_state({**state, "net.fc1.weight": torch.zeros(2, 9)})
    out["weights_missing_key"] = with_state({k: v for k, v in state.items() if k != "net.fc2.bias"})
    out["weights_unexpected_key"] = with_state({**state, "net.extra": torch.zeros(1)})
    out["weights_nan"] = with_state({**state, "net.fc2.bias": torch.tensor([float("nan"), 0.0])})
    out["weights_inf"] = with_state({**state, "net.conv1.weight": torch.full((1, 1, 3, 3), float("inf"))})
    out["weights_integer_dtype"] = with_state(
        {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()}
    )
    out["weights_bool_dtype"] = with_state({k: v.bool() for k, v in state.items()})
    out["weights_pickle_pt"] = with_files(model__safetensors=None, model__pt=pickle_payload(True))
    out["weights_bare_pickle_pt"] = with_files(model__safetensors=None, model__pt=pickle_payload(False))
    out["weights_pickle_as_safetensors"] = with_files(model__safetensors=pickle_payload(True))
    out["weights_pt_not_a_dict"] = with_files(model__safetensors=None, model__pt=_torch_bytes([torch.zeros(1)]))
    # trigger
    out["trigger_missing"] = with_files(trigger__safetensors=None)
    out["trigger_truncated"] = with_files(trigger__safetensors=base["trigger.safetensors"][:40])
    out["trigger_wrong_shape"] = with_trigger({"mask": torch.zeros(1, 4, 4), "pattern": torch.zeros(1, 4, 4)})
    out["trigger_shapes_differ"] = with_trigger({"mask": trigger["mask"], "pattern": torch.zeros(1, 8, 7)})
    out["trigger_out_of_range"] = with_trigger({"mask": trigger["mask"], "pattern": trigger["pattern"] * 2})
    out["trigger_negative_mask"] = with_trigger({"mask": -trigger["mask"], "pattern": trigger["pattern"]})
    out["trigger_nan"] = with_trigger({"mask": trigger["mask"], "pattern": torch.full((1, 8, 8), float("nan"))})
    out["trigger_no_pattern"] = with_trigger({"mask": trigger["mask"]})
    out["trigger_integer_dtype"] = with_trigger(
        {"mask": trigger["mask"].to(torch.uint8), "pattern": trigger["pattern"]}
    )
    out["trigger_pickle"] = with_files(trigger__safetensors=pickle_payload(True))
    # archive
    out["zip_slip_parent"] = zip_bytes({f"../{n}": d for n, d in base.items()})
    out["zip_slip_nested"] = zip_bytes({f"bundle/../../{n}": d for n, d in base.items()})
    out["zip_slip_backslash"] = zip_bytes({f"..\\{n}": d for n, d in base.items()})
    out["zip_absolute_path"] = zip_bytes({f"/{n}": d for n, d in base.items()})
    out["zip_declares_huge_member"] = _patch_sizes(zip_bytes(base, zipfile.ZIP_STORED), "model.safetensors", 2**31)
    out["zip_too_many_entries"] = zip_bytes({**base, **{f"x{i}.txt": b"" for i in range(62)}})  # 65 entries, limit 64
    out["zip_duplicate_names"] = _duplicate_zip(base)
    out["zip_truncated"] = zip_bytes(base)[:-100]
    out["zip_encrypted_flag"] = _set_header_field(zip_bytes(base), 6, 8, 1, combine=lambda old, new: old | new)
    out["zip_unknown_compression"] = _set_header_field(zip_bytes(base), 8, 10, 99)
    out["zip_corrupt_deflate"] = _corrupt_deflate(zip_bytes(base))
    out["zip_empty_archive"] = zip_bytes({})
    out["not_a_zip"] = b"this is not a zip archive, nor a bundle folder\n"
    out["empty_file"] = b""
    return out


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _duplicate_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=FIXED_TIME), data)
        archive.writestr(zipfile.ZipInfo("copy/meta.json", date_time=FIXED_TIME), files["meta.json"])
    return buf.getvalue()


def _corrupt_deflate(data: bytes) -> bytes:
    """Overwrite the start of the compressed model.safetensors stream with junk (CRC and inflate fail)."""
    raw = bytearray(data)
    i = raw.find(b"PK\x03\x04")
    while i >= 0:
        name_len, extra_len = struct.unpack_from("<HH", raw, i + 26)
        name = bytes(raw[i + 30 : i + 30 + name_len])
        start = i + 30 + name_len + extra_len
        if name == b"model.safetensors":
            raw[start : start + 16] = b"\xff" * 16
            break
        i = raw.find(b"PK\x03\x04", start)
    return bytes(raw)


def write(directory: Path = HERE) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "valid.zip"]
    written[0].write_bytes(zip_bytes(tiny_files()))
    for name, data in cases().items():
        path = directory / f"{name}.zip"
        path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(f"{path.stat().st_size:6d}  {path.relative_to(HERE.parent.parent)}")
