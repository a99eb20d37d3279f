"""Trigger algebra and poisoning (issue 2, item 9)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defense import attacks
from defense.attacks import MaskPatternTrigger, TriggerError
from defense.targets import Target

SHAPE = [1, 28, 28]


def images(n=8, shape=SHAPE, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- x' = (1 - mask)·x + mask·pattern


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9))
def test_mask_pattern_formula(seed, c, h, w):
    g = torch.Generator().manual_seed(seed)
    x, mask, pattern = (
        torch.rand(4, c, h, w, generator=g),
        torch.rand(c, h, w, generator=g),
        torch.rand(c, h, w, generator=g),
    )
    out = MaskPatternTrigger(mask, pattern).apply(x)
    assert out.shape == x.shape
    assert torch.allclose(out, (1 - mask) * x + mask * pattern)
    assert out.min() >= 0 and out.max() <= 1  # a convex combination of two images in [0, 1]


def test_mask_zero_is_identity_and_mask_one_is_the_pattern():
    x, pattern = images(), torch.rand(*SHAPE)
    assert torch.equal(MaskPatternTrigger(torch.zeros(*SHAPE), pattern).apply(x), x)
    assert torch.equal(MaskPatternTrigger(torch.ones(*SHAPE), pattern).apply(x), pattern.expand_as(x))


def test_badnets_changes_only_its_patch():
    trig = attacks.badnets(SHAPE, size=3, margin=1)
    x = images()
    changed = (trig.apply(x) != x).any(dim=0)[0]
    rows, cols = changed.nonzero().T
    assert rows.min() >= 28 - 1 - 3 and rows.max() < 28 - 1 and cols.min() >= 28 - 1 - 3 and cols.max() < 28 - 1
    assert int(trig.mask.sum()) == 9 and set(trig.pattern[trig.mask.bool()].tolist()) == {0.0, 1.0}


def test_blend_mixes_at_alpha():
    trig = attacks.blend(SHAPE, alpha=0.2, seed=3)
    x = images()
    assert torch.allclose(trig.apply(x), 0.8 * x + 0.2 * trig.pattern)
    assert torch.equal(attacks.blend(SHAPE, alpha=0.2, seed=3).pattern, trig.pattern)  # seeded


@pytest.mark.parametrize("shape", [[1, 28, 28], [3, 32, 32], [3, 17, 9]])
@pytest.mark.parametrize("kind", ["sig", "wanet"])
def test_sig_and_wanet_keep_shape_and_range(kind, shape):
    trig = attacks.make_trigger(kind, shape, seed=1)
    for x in (images(6, shape), torch.zeros(2, *shape), torch.ones(2, *shape)):
        out = trig.apply(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(trig.apply(images(6, shape)), images(6, shape))  # it does something


def test_sig_is_the_additive_sinusoid():
    trig = attacks.SigTrigger(delta=0.1, frequency=3)
    x = torch.full((1, 1, 4, 12), 0.5)
    wave = 0.1 * torch.sin(2 * torch.pi * torch.arange(12) * 3 / 12)
    assert torch.allclose(trig.apply(x)[0, 0], (0.5 + wave).expand(4, 12), atol=1e-6)


def test_wanet_at_zero_strength_is_the_identity():
    x = images()
    assert torch.allclose(attacks.wanet(SHAPE, strength=0.0).apply(x), x, atol=1e-5)


@pytest.mark.parametrize("kind", ["badnets", "blend", "sig", "wanet"])
def test_trigger_survives_params_and_tensors(kind):
    """What a bundle stores (params + tensors) rebuilds a trigger that acts identically."""
    trig = attacks.make_trigger(kind, SHAPE, seed=2)
    meta_attack = {"kind": trig.kind, "target_label": 0, "params": trig.params()}
    rebuilt = attacks.trigger_from_meta(meta_attack, trig.tensors(), SHAPE)
    x = images()
    assert torch.equal(rebuilt.apply(x), trig.apply(x))


# ---------------------------------------------------------------- poisoning


def _labels(n=200, seed=0):
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.5])
def test_poison_marks_exactly_the_poisoned_non_target_samples(rate):
    x, y = images(200), _labels()
    trig, target = attacks.badnets(SHAPE), 3
    px, py, poisoned = attacks.poison(x, y, trig, target, rate, seed=7)
    assert poisoned.dtype == torch.bool and poisoned.shape == y.shape
    assert int(poisoned.sum()) == round(rate * len(y))  # the rate is a share of the whole training set
    assert (y[poisoned] != target).all()  # only images of other classes are poisoned
    assert (py[poisoned] == target).all()
    assert torch.equal(px[poisoned], trig.apply(x[poisoned]))
    assert torch.equal(px[~poisoned], x[~poisoned]) and torch.equal(py[~poisoned], y[~poisoned])
    changed = (px != x).flatten(1).any(1)
    assert torch.equal(changed, poisoned)  # every marked image changed, no other did
    assert torch.equal(x, images(200)) and torch.equal(y, _labels())  # inputs untouched


def test_poison_is_seeded_and_caps_at_the_non_target_images():
    x, y = images(200), _labels()
    trig = attacks.blend(SHAPE)
    a, b, c = (attacks.poison(x, y, trig, 1, 0.1, seed=s)[2] for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    everything = attacks.poison(x, y, trig, 1, 1.0)[2]
    assert torch.equal(everything, y != 1)


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.5])
def test_clean_label_poison_stamps_only_the_target_class_and_keeps_every_label(rate):
    x, y = images(200), _labels()
    trig, target = attacks.badnets(SHAPE), 3
    px, py, poisoned = attacks.poison(x, y, trig, target, rate, seed=7, clean_label=True)
    assert torch.equal(py, y)  # no label changes: the images already belong to the target class
    assert (y[poisoned] == target).all()
    assert int(poisoned.sum()) == min(round(rate * len(y)), int((y == target).sum()))  # capped at the class
    assert torch.equal(px[poisoned], trig.apply(x[poisoned])) and torch.equal(px[~poisoned], x[~poisoned])
    with pytest.raises(ValueError, match="one target class"):
        attacks.poison(x, y, trig, Target(None, 10), rate, clean_label=True)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_poison_rejects_rates_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="poison rate"):
        attacks.poison(images(4), _labels(4), attacks.badnets(SHAPE), 0, rate)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kind, params, message",
    [
        ("badnets", {"size": 0}, "size"),
        ("badnets", {"size": 29}, "size"),
        ("badnets", {"size": 3, "margin": 26}, "margin"),
        ("badnets", {"size": 2.5}, "size"),
        ("badnets", {"colour": "red"}, "unknown parameter"),
        ("blend", {"alpha": 1.5}, "alpha"),
        ("blend", {"alpha": "0.2"}, "alpha"),
        ("sig", {"delta": float("inf")}, "delta"),
        ("sig", {"frequency": -1}, "frequency"),
        ("wanet", {"k": 1}, "'k'"),
        ("wanet", {"strength": True}, "strength"),
        ("file", {}, "--trigger-file"),
        ("nonsense", {}, "unknown attack"),
    ],
)
def test_make_trigger_refuses_bad_parameters(kind, params, message):
    with pytest.raises(TriggerError, match=message):
        attacks.make_trigger(kind, SHAPE, **params)


@pytest.mark.parametrize(
    "mask, pattern, message",
    [
        (torch.zeros(1, 28), torch.zeros(1, 28), r"\[C, H, W\]"),
        (torch.zeros(1, 28, 28), torch.zeros(1, 28, 27), "differ in shape"),
        (torch.full((1, 28, 28), 1.5), torch.zeros(1, 28, 28), r"mask values must lie in \[0, 1\]"),
        (torch.zeros(1, 28, 28), torch.full((1, 28, 28), -0.5), r"pattern values must lie in \[0, 1\]"),
        (torch.zeros(1, 28, 28), torch.full((1, 28, 28), float("nan")), "NaN"),
        (torch.zeros(1, 28, 28, dtype=torch.int64), torch.zeros(1, 28, 28), "float"),
        (torch.zeros(0, 28, 28), torch.zeros(0, 28, 28), "non-empty"),
    ],
)
def test_mask_pattern_validation(mask, pattern, message):
    with pytest.raises(TriggerError, match=message):
        attacks.validate_mask_pattern(mask, pattern, SHAPE)


def test_trigger_file_round_trip_and_refusals(tmp_path):
    from safetensors.torch import save_file

    mask = torch.zeros(*SHAPE)
    mask[:, 2:6, 2:6] = 1
    pattern = torch.rand(*SHAPE, generator=torch.Generator().manual_seed(0))
    save_file({"mask": mask, "pattern": pattern}, tmp_path / "t.safetensors")
    trig = attacks.load_trigger_file(tmp_path / "t.safetensors", SHAPE)
    assert trig.kind == "file" and torch.equal(trig.mask, mask) and torch.equal(trig.pattern, pattern)

    with pytest.raises(TriggerError, match="does not match the model's input"):
        attacks.load_trigger_file(tmp_path / "t.safetensors", [3, 28, 28])
    save_file({"mask": mask}, tmp_path / "no-pattern.safetensors")
    with pytest.raises(TriggerError, match="lacks tensor"):
        attacks.load_trigger_file(tmp_path / "no-pattern.safetensors", SHAPE)
    with pytest.raises(TriggerError, match="cannot read the trigger file"):
        attacks.load_trigger_file(tmp_path / "missing.safetensors", SHAPE)
