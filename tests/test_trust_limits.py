"""Trust under load (issue 14): bounded before allocation, honest cache keys, no work lost.

Every hostile file is made here. Each test fails when its protection is removed: where two
checks would both refuse a file, the test matches the message of the one it is about.
"""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import MODELS, REPO, assert_clean_error, run_cli, tree

from defense import attacks, data, guards, masking, metrics, purify, salience
from defense import bundle as bundle_io
from defense.bundle import BundleError
from defense.runtime import Cancelled


def bundle_files(name: str = "mnist-badnets") -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in (MODELS / name).iterdir()}


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, blob in files.items():
            archive.writestr(name, blob)
    return path


def meta_with(**changes) -> bytes:
    meta = json.loads((MODELS / "mnist-badnets" / "meta.json").read_text())
    meta.update(changes)
    return json.dumps(meta).encode()


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_sees_every_input_of_a_result():
    """Twins of the same name and weights: trigger in the other corner, another normalization, other kwargs."""
    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    base = bundle_io.fingerprint(b)
    assert base == bundle_io.fingerprint(bundle_io.load_bundle(MODELS / "mnist-badnets"))  # content, not identity

    moved = copy.deepcopy(b)
    moved.trigger = attacks.MaskPatternTrigger(b.trigger.mask.flip(1, 2), b.trigger.pattern.flip(1, 2), kind="badnets")
    moved.trigger.extra = dict(b.trigger.extra)
    assert moved.trigger.params() == b.trigger.params()  # only the tensors differ
    other_norm = copy.deepcopy(b)
    other_norm.meta["normalization"]["mean"] = [0.5]
    other_target = copy.deepcopy(b)
    other_target.meta["attack"]["target_label"] = 3
    nudged = copy.deepcopy(b)
    with torch.no_grad():
        next(nudged.model.parameters()).view(-1)[0] += 1e-3
    prints = [bundle_io.fingerprint(x) for x in (moved, other_norm, other_target, nudged)]
    assert len({base, *prints}) == 5


def test_twin_bundles_measure_differently():
    """The twins of issue 14 do give different numbers: a key that merges them shows wrong ones."""
    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    splits = data.load_dataset("mnist5k")
    moved = attacks.MaskPatternTrigger(b.trigger.mask.flip(1, 2), b.trigger.pattern.flip(1, 2), kind="file")
    asr = metrics.evaluate(b.model, splits.test, b.trigger, b.target)["asr"]
    asr_moved = metrics.evaluate(b.model, splits.test, moved, b.target)["asr"]
    assert asr > 0.9 and asr_moved < 0.2


# ---------------------------------------------------------------- .pt tensors and parameter counts


def stride0_pt(hidden: int) -> bytes:
    """A small_cnn state dict with ``hidden`` units whose tensors are expand()ed single values: a few KB on disk."""
    skeleton = bundle_io._skeleton(json.loads(meta_with(arch_kwargs={"hidden": hidden})))
    state = {}
    for k, v in skeleton.state_dict().items():
        one = torch.ones((1,) * max(v.dim(), 1), dtype=v.dtype if v.is_floating_point() else torch.int64)
        state[k] = one.expand(v.shape) if v.dim() else torch.tensor(0)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_stride0_pt_is_refused_before_any_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("BNL_MAX_PARAMS", str(10**9))  # only the density check stands in the way
    blob = stride0_pt(100_000)
    assert len(blob) < 20_000  # declares 157 M weights (627 MB)
    files = {**bundle_files(), "meta.json": meta_with(arch_kwargs={"hidden": 100_000}), "model.pt": blob}
    del files["model.safetensors"]
    path = write_zip(tmp_path / "tiny.zip", files)
    assert path.stat().st_size < 20_000
    with pytest.raises(BundleError, match=r"model\.pt: tensor '.*' declares \[.*stride-0 or overlapping view"):
        bundle_io.load_bundle(path)


@pytest.mark.parametrize("how", ["overlap", "shared"])
def test_overlapping_views_are_refused(how):
    base = torch.zeros(100)
    if how == "overlap":
        state = {"w": base.as_strided((50, 10), (1, 1))}  # 500 elements over 59 stored
    else:
        state = {f"w{i}": base.view(10, 10) for i in range(5)}  # five tensors over one storage
    buf = io.BytesIO()
    torch.save(state, buf)
    with pytest.raises(BundleError, match="overlapping|sharing storage"):
        bundle_io.read_state_dict(buf.getvalue(), "model.pt")


def test_a_transposed_pt_tensor_is_fine():
    buf = io.BytesIO()
    torch.save({"w": torch.arange(12.0).view(3, 4).t()}, buf)
    assert bundle_io.read_state_dict(buf.getvalue(), "model.pt")["w"].shape == (4, 3)


def test_parameter_cap_is_checked_before_the_weights(badnets_copy):
    """hidden=100000 asks for 157 M parameters; the file's weights are never read."""
    (badnets_copy / "meta.json").write_bytes(meta_with(arch_kwargs={"hidden": 100_000}))
    with pytest.raises(BundleError, match=r"has 157,\d{3},\d{3} parameters; the limit is 50,000,000"):
        bundle_io.load_bundle(badnets_copy)


def test_parameter_cap_is_the_operators(monkeypatch):
    monkeypatch.setenv("BNL_MAX_PARAMS", "1000")
    with pytest.raises(BundleError, match="the limit is 1,000 .*BNL_MAX_PARAMS"):
        bundle_io.load_bundle(MODELS / "mnist-badnets")
    monkeypatch.setenv("BNL_MAX_PARAMS", "2e6")
    assert bundle_io.load_bundle(MODELS / "mnist-badnets").name == "mnist-badnets"


# ---------------------------------------------------------------- zip end records


def zip64_claiming(path: Path, entries: int, directory_bytes: int | None = None) -> Path:
    """Rewrite a valid zip's end record as zip64 claiming ``entries`` entries (they are not written)."""
    blob = path.read_bytes()
    at = blob.rfind(b"PK\x05\x06")
    _, disk, cd_disk, _, _, cd_size, cd_offset, comment = struct.unpack("<4sHHHHIIH", blob[at : at + 22])
    size = cd_size if directory_bytes is None else directory_bytes
    eocd64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, at, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(blob[:at] + eocd64 + locator + eocd)
    return path


def test_zip_claiming_millions_of_entries_is_refused_from_its_end_record(tmp_path):
    path = zip64_claiming(write_zip(tmp_path / "many.zip", bundle_files()), 3_600_000)
    with zipfile.ZipFile(path) as z:  # zipfile itself reads it: the 3 real entries, the claim unchecked
        assert len(z.infolist()) == 3
    with pytest.raises(BundleError, match="declares 3,600,000 entries; a bundle has at most 64"):
        bundle_io.load_bundle(path)


def test_zip_claiming_a_huge_directory_is_refused(tmp_path):
    path = write_zip(tmp_path / "dir.zip", bundle_files())
    zip64_claiming(path, 3, directory_bytes=2**31)
    with pytest.raises(BundleError, match="directory declares 2048.0 MiB; the limit is 4 MiB"):
        bundle_io.load_bundle(path)


# ---------------------------------------------------------------- trigger files


def sparse_safetensors(path: Path, shape: list[int]) -> Path:
    """A safetensors header declaring float32 mask and pattern of ``shape``, the data a hole (sparse file)."""
    n = 4 * int(torch.tensor(shape).prod())
    header = {
        "mask": {"dtype": "F32", "shape": shape, "data_offsets": [0, n]},
        "pattern": {"dtype": "F32", "shape": shape, "data_offsets": [n, 2 * n]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + 2 * n)
    return path


def test_sparse_trigger_file_over_the_byte_cap_is_refused(tmp_path):
    path = sparse_safetensors(tmp_path / "t.safetensors", [1, 16384, 32768])
    assert path.stat().st_size > 4 * 2**30 and os.stat(path).st_blocks * 512 < 2**20
    with pytest.raises(attacks.TriggerError, match="larger than 256 MiB; refused"):
        attacks.load_trigger_file(path, [1, 28, 28])


def test_trigger_file_shapes_are_read_from_the_header(tmp_path):
    """244 MiB declared (under the cap): refused from its header, before the tensors are read."""
    path = sparse_safetensors(tmp_path / "t.safetensors", [1, 5600, 5600])
    assert path.stat().st_size < guards.MAX_MEMBER_BYTES
    with pytest.raises(attacks.TriggerError, match=r"trigger shape \[1, 5600, 5600\] .*no tensor was loaded"):
        attacks.load_trigger_file(path, [1, 28, 28])


# ---------------------------------------------------------------- files that are not files


@pytest.mark.parametrize("flag", ["--bundle", "--trigger-file"])
def test_fifo_is_refused_not_waited_on(tmp_path, flag):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    if flag == "--bundle":
        args = ["evaluate", "--bundle", fifo]
    else:
        args = ["train", "--attack", "file", "--trigger-file", fifo, "--epochs", "1", "--out", tmp_path / "o"]
    result = run_cli(*args, timeout=120)  # without the check, open() blocks forever: TimeoutExpired
    assert "not a regular file" in assert_clean_error(result.returncode, result.stderr)


def test_fifo_inside_a_bundle_folder_is_not_opened(badnets_copy):
    (badnets_copy / "trigger.safetensors").unlink(missing_ok=True)
    os.mkfifo(badnets_copy / "model.pt")  # beside model.safetensors, which is read instead
    (badnets_copy / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="has no model.safetensors"):
        bundle_io.load_bundle(badnets_copy)


# ---------------------------------------------------------------- the CLI loses no work


@pytest.mark.parametrize("command", ["purify", "salience", "train"])
def test_out_is_checked_before_any_work(cli, tmp_path, monkeypatch, command):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "out"

    def no_work(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(bundle_io, "load_bundle", no_work)
    monkeypatch.setattr(data, "load_dataset", no_work)
    args = ["--bundle", MODELS / "mnist-badnets"] if command != "train" else ["--attack", "badnets"]
    code, _, err = cli(command, *args, "--out", out)
    assert "cannot be written" in assert_clean_error(code, err)


def test_purify_writes_no_nonfinite_weights(cli, tmp_path):
    out = tmp_path / "x"
    code, out_text, err = cli(
        "purify", "--bundle", MODELS / "mnist-badnets", "--steps", "1", "--lam", "1e300", "--out", out, "--quiet"
    )
    assert "NaN or infinite" in assert_clean_error(code, err)
    assert not out.exists() and out_text == ""


def test_purification_refuses_to_end_with_nonfinite_weights():
    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    splits = data.load_dataset("mnist5k")
    cfg = purify.PurifyConfig(steps=1, lam=1e300)
    run = purify.Purification(b.model, splits.clean, splits.test, metrics.triggered_set(splits.test, b.trigger, 0), cfg)
    with pytest.raises(FloatingPointError, match="weights hold NaN or infinite values after step 1"):
        run.run()


@pytest.mark.parametrize(
    "args, message",
    [
        (["purify", "--steps", "1000000000"], "--steps: at most 20,000 steps are allowed"),
        (["purify", "--clean-fraction", "0.0001"], "leaves the defender 1 of 4000 training images; at least 20"),
        (["salience", "--clean-fraction", "0.004", "--out", "{tmp}/s.csv"], "leaves the defender 16 of 4000"),
    ],
)
def test_runs_out_of_bounds_are_refused(cli, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = cli(args[0], "--bundle", MODELS / "mnist-badnets", *args[1:])
    assert message in assert_clean_error(code, err)
    assert out == "" and tree(tmp_path) == set()


def test_train_epochs_are_capped(cli, tmp_path):
    code, _, err = cli("train", "--attack", "badnets", "--epochs", "100000", "--out", tmp_path / "o")
    assert "at most 200 epochs" in assert_clean_error(code, err)


def test_an_interrupted_save_leaves_nothing_partial(tmp_path, monkeypatch):
    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    previous = bundle_io.save_bundle(b, tmp_path / "kept")
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    real = Path.write_bytes
    calls = []

    def interrupted(self, blob):
        calls.append(self.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, blob)

    monkeypatch.setattr(Path, "write_bytes", interrupted)
    for target in (tmp_path / "new", tmp_path / "kept"):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            bundle_io.save_bundle(b, target)
    monkeypatch.undo()
    assert tree(tmp_path) == {"kept", *(f"kept/{n}" for n in before)}  # no 'new', no temporary leftovers
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before


def test_ctrl_c_ends_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "defense", "purify", "--bundle", MODELS / "mnist-badnets", "--steps", "20000"]
        + ["--out", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"},
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    # wait until training runs (tqdm has drawn its bar), then press Ctrl-C
    seen = ""
    while "step" not in seen and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    lines = [line for line in (seen + rest).replace("\r", "\n").splitlines() if line.strip()]
    assert proc.returncode == 130
    assert lines[-1] == "interrupted; nothing was written" and "Traceback" not in seen + rest
    assert tree(tmp_path) == set()


# ---------------------------------------------------------------- cancellation and budgets


def test_ground_truth_stops_when_asked_and_samples_beyond_a_budget():
    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    splits = data.load_dataset("mnist5k")
    layers = salience.neuron_map(b.model)
    trig = metrics.triggered_set(splits.test, b.trigger, b.target)
    asked = []
    with pytest.raises(Cancelled):
        metrics.backdoor_ground_truth(
            b.model, layers, splits.test, trig, max_images=32, should_stop=lambda: asked.append(1) or len(asked) > 3
        )
    assert len(asked) == 4  # asked before each neuron, and stopped at once
    gt = metrics.backdoor_ground_truth(b.model, layers, splits.test, trig, max_images=32, max_neurons=20)
    measured = torch.cat(list(gt["measured"].values()))
    assert int(measured.sum()) == 20 and gt["sampled"] == pytest.approx(20 / len(measured))
    effect = torch.cat(list(gt["backdoor_effect"].values()))
    assert torch.isfinite(effect[measured]).all() and torch.isnan(effect[~measured]).all()
    assert not torch.cat(list(gt["infected"].values()))[~measured].any()


def test_pruning_curve_stops_when_asked():
    b = bundle_io.load_bundle(MODELS / "mnist-badnets")
    splits = data.load_dataset("mnist5k")
    layers = salience.neuron_map(b.model)
    scores = salience.compute("magnitude", b.model, None, layers)
    trig = metrics.triggered_set(splits.test, b.trigger, b.target)
    with pytest.raises(Cancelled):
        masking.pruning_curve(b.model, layers, [scores], splits.test, trig, should_stop=lambda: True)


def test_ctrl_c_during_a_run_is_raised_at_the_next_step_not_where_it_lands():
    """A KeyboardInterrupt raised inside a finalizer is dropped by Python and the run went on (a purify that
    ignored Ctrl-C under load): inside the block the signal only sets a flag that each step checks."""
    from defense.runtime import interrupt_at_step_boundary

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupt_at_step_boundary() as check:
        check()  # nothing yet
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # delivered here, raised nowhere
        steps_after_signal = 1
        check()
        steps_after_signal += 1  # not reached
    assert steps_after_signal == 1
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), interrupt_at_step_boundary():
        os.kill(os.getpid(), signal.SIGINT)  # after the last check: raised as the block ends
        time.sleep(0.1)
