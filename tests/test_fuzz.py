"""Property-based fuzzing of what reads untrusted files, and the corpus of malformed bundles.

The contract: whatever the input, ``validate_meta``/``load_bundle``/``read_state_dict`` return or raise
BundleError, and the trigger loaders return a valid trigger or raise TriggerError; nothing else.
"""

from __future__ import annotations

import copy
import io
import json
import math
import tempfile
import zipfile
from pathlib import Path

import make_corpus
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

from defense import attacks, models
from defense import bundle as bundle_io
from defense.attacks import TriggerError
from defense.bundle import BundleError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORPUS = Path(make_corpus.__file__).parent

# ---------------------------------------------------------------- JSON-ish values

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from([0, 1, 2, -1, 0.5, 1e308, "small_cnn", "badnets", "file", "wanet", "sig", [], {}])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)


def valid_meta_strategy():
    def build(arch, num_classes, c, h, w, mean, std, kind, target_frac, rate, acc, extra):
        meta = {
            "format_version": 1,
            "architecture": arch,
            "dataset": "mnist5k",
            "num_classes": num_classes,
            "input_shape": [c, h, w],
            "normalization": {"mean": [mean] * c, "std": [std] * c},
            "attack": {
                "kind": kind,
                "target_label": min(int(target_frac * num_classes), num_classes - 1),
                "poison_rate": rate,
                "params": {},
            },
            "clean_acc": acc,
            "asr": acc,
        }
        meta.update(extra)
        return meta

    finite = st.floats(-10, 10, allow_nan=False)
    return st.builds(
        build,
        st.sampled_from(models.architectures()),
        st.integers(2, 10_000),
        st.integers(1, 4),
        st.integers(1, 1024),
        st.integers(1, 1024),
        finite,
        st.floats(1e-3, 10),
        st.sampled_from(attacks.ATTACKS.names()),
        st.floats(0, 1, exclude_max=True),
        st.floats(0, 1),
        st.none() | st.floats(0, 1),
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.text(max_size=20),
                "seed": st.integers(0, 100),
                "arch_kwargs": st.just({}),
                "training": json_values,
            },
        ),
    )


@FUZZ
@given(value=json_values)
def test_validate_meta_never_raises_anything_but_bundle_error(value):
    try:
        bundle_io.validate_meta(value)
    except BundleError:
        pass


@FUZZ
@given(meta=valid_meta_strategy())
def test_valid_metas_pass(meta):
    assert bundle_io.validate_meta(copy.deepcopy(meta)) == meta


FIELDS = [
    ("format_version",),
    ("architecture",),
    ("arch_kwargs",),
    ("num_classes",),
    ("input_shape",),
    ("normalization",),
    ("normalization", "mean"),
    ("normalization", "std"),
    ("attack",),
    ("attack", "kind"),
    ("attack", "target_label"),
    ("attack", "poison_rate"),
    ("attack", "params"),
    ("clean_acc",),
    ("asr",),
    ("name",),
    ("input_shape", 0),
    ("input_shape", 1),
]


def _mutate(meta: dict, path: tuple, value, delete: bool) -> dict:
    meta = copy.deepcopy(meta)
    holder = meta
    for key in path[:-1]:
        holder = holder[key]
    if delete and isinstance(holder, dict):
        holder.pop(path[-1], None)
    else:
        holder[path[-1]] = value
    return meta


@FUZZ
@given(meta=valid_meta_strategy(), path=st.sampled_from(FIELDS), value=json_values, delete=st.booleans())
def test_validate_meta_with_one_field_broken(meta, path, value, delete):
    try:
        bundle_io.validate_meta(_mutate(meta, path, value, delete))
    except BundleError:
        pass


def _load_files(files: dict[str, bytes]):
    """load_bundle on these files as a folder; returns the bundle or None when refused with BundleError."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            return bundle_io.load_bundle(tmp)
        except BundleError:
            return None


@SLOW_FUZZ
@given(path=st.sampled_from(FIELDS), value=json_values, delete=st.booleans())
def test_load_bundle_with_a_broken_meta(path, value, delete):
    meta = _mutate(make_corpus.tiny_meta(), path, value, delete)
    files = {**make_corpus.tiny_files(), "meta.json": json.dumps(meta).encode()}
    b = _load_files(files)
    if b is not None:  # accepted: then it is usable
        with torch.no_grad():
            out = b.model(b.trigger.apply(torch.rand(2, *b.meta["input_shape"])))
        assert out.shape == (2, b.meta["num_classes"]) and torch.isfinite(out).all()


# ---------------------------------------------------------------- raw bytes

TINY = make_corpus.tiny_files()


@FUZZ
@given(data=st.binary(max_size=600), name=st.sampled_from(["model.safetensors", "model.pt", "trigger.safetensors"]))
def test_read_state_dict_on_random_bytes(data, name):
    try:
        state = bundle_io.read_state_dict(data, name)
    except BundleError:
        return
    assert isinstance(state, dict)


def _flip(data: bytes, edits) -> bytes:
    raw = bytearray(data)
    for position, value in edits:
        raw[position % len(raw)] = value
    return bytes(raw)


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 2000),
    name=st.sampled_from(["model.safetensors", "trigger.safetensors"]),
)
def test_read_state_dict_on_damaged_safetensors(edits, cut, name):
    data = _flip(TINY[name], edits)[:cut]
    try:
        bundle_io.read_state_dict(data, name)
    except BundleError:
        pass


@SLOW_FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.none() | st.integers(0, 1500),
)
def test_load_bundle_on_damaged_zips(edits, cut):
    data = _flip(make_corpus.zip_bytes(TINY), edits)[:cut]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.zip"
        path.write_bytes(data)
        try:
            bundle_io.load_bundle(path)
        except BundleError:
            pass
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["fuzzed.zip"]  # nothing extracted


@SLOW_FUZZ
@given(
    name=st.sampled_from(["model.safetensors", "trigger.safetensors"]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_load_bundle_with_damaged_tensors(name, edits):
    b = _load_files({**TINY, name: _flip(TINY[name], edits)})
    if b is not None:
        assert all(torch.isfinite(v).all() for v in b.model.state_dict().values() if v.is_floating_point())


# ---------------------------------------------------------------- triggers

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.int8,
    torch.bool,
]
values = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, 1.0, 0.5, -0.0])


@st.composite
def tensors(draw, shapes=None):
    shape = draw(
        shapes
        if shapes is not None
        else st.lists(st.integers(0, 4), max_size=4) | st.sampled_from([[1, 4, 4], [3, 4, 4], [4, 4, 2], [1, 4, 5]])
    )
    n = math.prod(shape)
    if draw(st.booleans()):  # mostly sensible values in [0, 1]
        data = torch.rand(n, generator=torch.Generator().manual_seed(draw(st.integers(0, 1000))))
    else:
        data = torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float64)
    dtype = draw(st.sampled_from(DTYPES))
    with torch.no_grad():
        data = data.reshape(shape)
        return data.to(dtype) if dtype.is_floating_point else data.nan_to_num(0).to(dtype)


trigger_dicts = st.dictionaries(st.sampled_from(["mask", "pattern", "flow", "extra"]), tensors(), max_size=3)
INPUT_SHAPES = [[1, 4, 4], [3, 4, 4], [1, 4, 5]]


def _check_trigger(trigger: attacks.Trigger, input_shape):
    x = torch.rand(3, *input_shape)
    out = trigger.apply(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@FUZZ
@given(found=trigger_dicts, input_shape=st.none() | st.sampled_from(INPUT_SHAPES))
def test_load_trigger_file(found, input_shape):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.safetensors"
        path.write_bytes(save_safetensors({k: v.contiguous() for k, v in found.items()}))
        try:
            trigger = attacks.load_trigger_file(path, input_shape)
        except TriggerError:
            return
    _check_trigger(trigger, input_shape or list(trigger.mask.shape))


@FUZZ
@given(
    kind=st.sampled_from([*attacks.ATTACKS.names(), "other", None, 3]),
    params=json_values,
    found=trigger_dicts,
    input_shape=st.sampled_from(INPUT_SHAPES),
)
def test_trigger_from_meta(kind, params, found, input_shape):
    try:
        trigger = attacks.trigger_from_meta({"kind": kind, "params": params}, found, input_shape)
    except TriggerError:
        return
    _check_trigger(trigger, input_shape)


@FUZZ
@given(
    kind=st.sampled_from(attacks.ATTACKS.names()[:4]),
    params=st.dictionaries(
        st.sampled_from(["size", "margin", "alpha", "delta", "frequency", "k", "strength", "other"]),
        scalars,
        max_size=3,
    ),
    input_shape=st.sampled_from(INPUT_SHAPES),
)
def test_make_trigger_with_random_parameters(kind, params, input_shape):
    try:
        trigger = attacks.make_trigger(kind, input_shape, **params)
    except TriggerError:
        return
    _check_trigger(trigger, input_shape)


# ---------------------------------------------------------------- the corpus

CASES = sorted(p.name for p in CORPUS.glob("*.zip") if p.name != "valid.zip")


def test_corpus_is_small_and_complete():
    assert (CORPUS / "valid.zip").exists() and len(CASES) >= 40
    assert sorted(f"{name}.zip" for name in make_corpus.cases()) == CASES  # make_corpus.py rebuilds exactly these
    assert all((CORPUS / name).stat().st_size < 8 * 1024 for name in CASES)


def test_corpus_base_is_valid():
    b = bundle_io.load_bundle(CORPUS / "valid.zip")
    _check_trigger(b.trigger, b.meta["input_shape"])


@pytest.mark.parametrize("case", CASES)
def test_corpus_case_is_refused(case, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("BNL_CORPUS_MARKER", str(marker))
    with pytest.raises(BundleError) as err:
        bundle_io.load_bundle(CORPUS / case)
    message = str(err.value)
    assert message and "\n" not in message and "Traceback" not in message
    assert not marker.exists()


def test_corpus_pickle_payload_is_live(tmp_path, monkeypatch):
    """Control: the corpus payload does create the marker when unpickled without protection."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv("BNL_CORPUS_MARKER", str(marker))
    with zipfile.ZipFile(CORPUS / "weights_pickle_pt.zip") as archive:
        torch.load(io.BytesIO(archive.read("model.pt")), weights_only=False)
    assert marker.exists()
