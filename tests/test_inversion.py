"""The reversed-trigger score against first principles on a tiny hand-built backdoored net."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from defense import metrics
from defense.data import TensorData
from defense.neurons import neuron_map
from defense.scores import inversion

TRIGGER_PIXEL = (0, 0)


class TinyBackdoored(nn.Module):
    """1×4×4 images → hidden Linear(16, 3) → ReLU → out Linear(3, 3).

    Unit 0 votes for class 0 (the left half of the middle rows is bright), unit 1 for class 1 (the right
    half), unit 2 is the backdoor: it grows with the top-left pixel and votes for class 2, which no clean
    image has; on the clean images' faint background it stays far too weak to win.
    """

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(16, 3)
        self.out = nn.Linear(3, 3)
        left, right = torch.zeros(4, 4), torch.zeros(4, 4)
        left[1:3, 0:2], right[1:3, 2:4] = 1.0, 1.0
        trigger = torch.zeros(4, 4)
        trigger[TRIGGER_PIXEL] = 10.0  # ramps up from the faint clean background (no dead start)
        with torch.no_grad():
            self.hidden.weight.copy_(
                torch.stack([(left - right).flatten(), (right - left).flatten(), trigger.flatten()])
            )
            self.hidden.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
            self.out.weight.copy_(torch.diag(torch.tensor([2.0, 2.0, 4.0])))
            self.out.bias.copy_(torch.tensor([0.0, 0.0, -4.0]))

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def clean_images(n: int = 96, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 4, 4, generator=g) * 0.2
    bright = 0.8 + 0.2 * torch.rand(n, 2, 2, generator=g)
    x[y == 0, 0, 1:3, 0:2] = bright[y == 0]
    x[y == 1, 0, 1:3, 2:4] = bright[y == 1]
    return TensorData(x, y)


def test_the_tiny_net_is_backdoored_and_clean_images_are_right():
    net, clean = TinyBackdoored(), clean_images()
    assert metrics.accuracy(net, clean) == 1.0
    stamped = clean.x.clone()
    stamped[:, 0, TRIGGER_PIXEL[0], TRIGGER_PIXEL[1]] = 1.0
    assert (metrics.predict(net, stamped) == 2).all()


def test_the_backdoor_target_has_the_smallest_reversed_trigger_on_its_pixel():
    net, clean = TinyBackdoored(), clean_images()
    triggers = inversion.reverse_all(net, clean, num_classes=3)
    assert [t.target for t in triggers] == [0, 1, 2]
    chosen = inversion.suspected(triggers)
    assert chosen.target == 2 and chosen.flip_rate >= 0.9
    # the mask is strongest on the trigger pixel, with a bright pattern there
    assert int(chosen.mask[0].flatten().argmax()) == TRIGGER_PIXEL[0] * 4 + TRIGGER_PIXEL[1]
    assert chosen.pattern[0][TRIGGER_PIXEL] > 0.5
    assert chosen.size < min(t.size for t in triggers if t.target != 2)
    assert inversion.anomaly_index(triggers, chosen) > 0


def test_the_score_is_the_margin_fall_of_zeroing_each_unit_on_reversed_triggered_images():
    net, clean = TinyBackdoored(), clean_images()
    before = copy.deepcopy(net.state_dict())
    chosen = inversion.suspected(inversion.reverse_all(net, clean, num_classes=3))
    layers = neuron_map(net)
    scores = inversion.ablation_scores(net, layers, clean, chosen)["hidden"]
    assert int(scores.argmax()) == 2 and scores[2] > 0  # the backdoor unit carries the pull

    # first principles: zero each unit in a copy of the weights and measure the target margin directly
    x = chosen.apply(clean.x[clean.y != chosen.target])
    target = torch.full((len(x),), chosen.target)
    with torch.no_grad():
        base = metrics.target_margin(net(x), target)
        for unit in range(3):
            cut = copy.deepcopy(net)
            cut.hidden.weight[unit] = 0
            cut.hidden.bias[unit] = 0
            assert float(scores[unit]) == pytest.approx(float(base - metrics.target_margin(cut(x), target)), abs=1e-4)
    # the model is left as it was
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_registered_score_ranks_the_backdoor_unit_first():
    net, clean = TinyBackdoored(), clean_images()
    s = inversion.SCORES[inversion.NAME].compute(net, clean, neuron_map(net))
    assert s.metric == "inversion" and not s.low_is_suspect
    assert int(s.suspicion()["hidden"].argmax()) == 2


def test_fine_tuning_on_reversed_triggered_images_at_their_true_labels_unlearns_the_backdoor():
    from dataclasses import replace

    from defense.purify import Purification, PurifyConfig

    net, clean, test = TinyBackdoored(), clean_images(), clean_images(200, seed=1)
    stamped = test.x.clone()
    stamped[:, 0, TRIGGER_PIXEL[0], TRIGGER_PIXEL[1]] = 1.0
    triggered = TensorData(stamped, torch.full((len(test),), 2))
    base = PurifyConfig(metric="inversion", reg="none", steps=60, lr=0.05, batch_size=32, augment=False, distill=0.9)
    plain = Purification(net, clean, test, triggered, base)
    plain.run()
    unlearned = Purification(net, clean, test, triggered, replace(base, reversed_share=0.5))
    assert unlearned.reversed_trigger is not None and unlearned.reversed_trigger.target == 2
    unlearned.run()
    assert plain.history[-1]["asr"] > 0.9  # clean fine-tuning alone leaves the backdoor in
    assert unlearned.history[-1]["asr"] < 0.1 and unlearned.history[-1]["clean_acc"] == 1.0


def test_nc_ar_marks_a_tenth_and_unlearns_three_triggers_by_default_and_given_values_still_win():
    from dataclasses import replace

    from defense import baselines
    from defense.purify import PurifyConfig

    net, clean = TinyBackdoored(), clean_images()
    triggered = TensorData(clean.x.clone(), torch.full((len(clean),), 2))
    run = baselines.make("nc-ar", net, clean, clean, triggered, PurifyConfig())
    cfg = run.config
    assert (cfg.metric, cfg.reg, cfg.ratio, cfg.reversed_share, cfg.reversed_count, cfg.batch_size) == (
        "inversion",
        "ar",
        0.1,
        0.4,
        3,
        200,
    )
    assert run.reversed_trigger.target == 2  # the trigger it unlearns comes with the score
    # the three smallest reversed triggers in turn, the suspected one first (docs/METHOD.md)
    assert run.reversed_trigger.triggers == run.scores.details["candidates"][:3]
    one = baselines.make("nc-ar", net, clean, clean, triggered, replace(PurifyConfig(), reversed_count=2))
    assert one.reversed_trigger.triggers == one.scores.details["candidates"][:2]  # a given count still wins
    chosen = baselines.make("nc-ar", net, clean, clean, triggered, replace(PurifyConfig(), ratio=0.34))
    assert chosen.config.ratio == 0.34 and int(chosen.mask["hidden"].sum()) == 1


def test_candidates_are_the_triggers_that_flip_smallest_first_and_the_suspect_is_the_first():
    def made(target, size, flip):
        mask = torch.zeros(1, 4, 4)
        mask.view(-1)[:size] = 1.0
        return inversion.ReversedTrigger(mask, torch.ones(1, 4, 4), target=target, flip_rate=flip)

    found = [made(0, 5, 0.9), made(1, 2, 0.1), made(2, 3, 0.8), made(3, 4, 0.6)]
    assert [t.target for t in inversion.candidates(found)] == [2, 3, 0]  # label 1's tiny trigger flips nothing
    assert inversion.suspected(found).target == 2
    nothing_flips = [made(0, 5, 0.1), made(1, 2, 0.2)]
    assert [t.target for t in inversion.candidates(nothing_flips)] == [1, 0]


def test_a_trigger_mix_stamps_each_part_of_a_batch_with_one_trigger_in_turn():
    def corner(target, row):
        mask, pattern = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
        mask[0, row, 0], pattern[0, row, 0] = 1.0, 1.0
        return inversion.ReversedTrigger(mask, pattern, target=target)

    a, b = corner(2, 0), corner(0, 3)
    mix = inversion.TriggerMix([a, b])
    x = torch.full((5, 1, 4, 4), 0.5)
    out = mix.apply(x)
    assert mix.target == 2  # the first trigger's class: the suspected target
    assert torch.equal(out[:3], a.apply(x[:3])) and torch.equal(out[3:], b.apply(x[3:]))  # 3 + 2 rows
    assert torch.equal(x, torch.full((5, 1, 4, 4), 0.5))  # the batch itself is left as it was
    assert torch.equal(inversion.TriggerMix([a]).apply(x), a.apply(x))  # one trigger: the plain stamp
    assert inversion.TriggerMix([a, b]).apply(x[:1]).shape == (1, 1, 4, 4)  # fewer rows than triggers
