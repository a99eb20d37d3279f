"""PreAct-ResNet-18 (BackdoorBench's, module for module), VGG-11, and neurons defined by data flow."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from defense import models, neurons, salience
from defense.dataflow import batchnorm_pairs


# BackdoorBench's models/preact_resnet.py, verbatim apart from formatting: the reference the
# state dicts come from (the import and the neuron tests check our module against it).
class BBPreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


class BBPreActResNet(nn.Module):
    def __init__(self, block=BBPreActBlock, num_blocks=(2, 2, 2, 2), num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = self.avgpool(out)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh ones are identities)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.3)
    return model.eval()


def test_backdoorbench_state_dict_loads_strict_and_computes_the_same():
    torch.manual_seed(0)
    reference = randomize_bn(BBPreActResNet())
    ours = models.build("preactresnet18", 10, (3, 32, 32), [0.0] * 3, [1.0] * 3, width=64).eval()
    assert list(ours.net.state_dict()) == list(reference.state_dict())  # same names, same order
    ours.net.load_state_dict(reference.state_dict(), strict=True)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_width_and_in_channels():
    net = models.build("preactresnet18", 10, (1, 28, 28), [0.1], [0.3], width=16)
    layers = salience.neuron_map(net)
    assert len(layers) == 20 and sum(nl.size for nl in layers.values()) == 1200
    assert net.net.conv1.in_channels == 1 and net.net.linear.in_features == 128
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="in_channels"):
        models.build("preactresnet18", 10, (1, 28, 28), [0.1], [0.3], in_channels=3)
    with pytest.raises(ValueError, match="width"):
        models.build("preactresnet18", 10, (1, 28, 28), [0.1], [0.3], width=0)


def test_preact_pairs_conv1_with_bn2_and_leaves_conv2_and_shortcuts_unpaired():
    net = models.build("preactresnet18", 10, (1, 28, 28), [0.1], [0.3], width=4)
    pairs = batchnorm_pairs(net)
    for name, bn in pairs.items():
        if name.endswith(".conv1") and "layer" in name:
            assert bn == name[: -len("conv1")] + "bn2", name
        else:  # the stem and every conv2/shortcut feed the residual sum; the next bn1 reads the sum
            assert bn is None, (name, bn)
    assert pairs["net.layer1.0.conv2"] is None  # the module order would put layer1.1.bn1 close by


def test_a_batchnorm_defined_after_a_conv_but_applied_before_it_is_not_paired():
    class PreNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)  # defined next to the conv, applied to its input
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.conv(torch.relu(self.bn(x))).mean(dim=(2, 3)))

    assert batchnorm_pairs(PreNorm()) == {"conv": None, "head": None}


def test_untraceable_model_gets_no_pairs_rather_than_wrong_ones():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if y.sum() > 0 else -y  # control flow on a value: torch.fx cannot trace it

    assert batchnorm_pairs(DataDependent()) == {"conv": None}


@pytest.mark.parametrize("arch", ["preactresnet18", "vgg11", "small_cnn"])
def test_zeroing_a_neuron_by_hook_equals_zeroing_it_in_the_weights_for_every_layer(arch):
    torch.manual_seed(1)
    kwargs = {"width": 4} if arch != "small_cnn" else {}
    model = randomize_bn(models.build(arch, 10, (1, 28, 28), [0.1], [0.3], **kwargs))
    layers = salience.neuron_map(model)
    pruned = copy.deepcopy(model)
    pruned_layers = salience.neuron_map(pruned)
    original = copy.deepcopy(pruned.state_dict())
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        plain = model(x)
    for name, nl in layers.items():
        mask = {name: torch.zeros(nl.size, dtype=torch.bool)}
        mask[name][[0, nl.size - 1]] = True
        with torch.no_grad(), neurons.neuron_masking(layers, mask):
            hooked = model(x)
        pruned.load_state_dict(original)
        neurons.prune(pruned_layers, mask)
        with torch.no_grad():
            direct = pruned(x)
        assert torch.allclose(hooked, direct, atol=1e-5), name
        assert not torch.equal(hooked, plain), f"{name}: zeroing two neurons changed nothing"


def test_clp_scales_by_the_batchnorm_that_reads_the_conv():
    model = randomize_bn(models.build("preactresnet18", 10, (1, 28, 28), [0.1], [0.3], width=4))
    scores = salience.compute("clp", model).layers
    block = model.net.layer1[0]
    scale = (block.bn2.weight / (block.bn2.running_var + block.bn2.eps).sqrt()).abs()
    w1 = block.conv1.weight.detach() * scale.view(-1, 1, 1, 1)
    assert torch.allclose(scores["net.layer1.0.conv1"], torch.linalg.matrix_norm(w1.flatten(2), ord=2))
    w2 = block.conv2.weight.detach()  # no BatchNorm reads conv2 alone: the raw kernel
    assert torch.allclose(scores["net.layer1.0.conv2"], torch.linalg.matrix_norm(w2.flatten(2), ord=2))


def test_benign_salience_of_unpaired_convs_uses_their_own_weights():
    """Per neuron, BS sums −g·w over the parameters producing its output; for a conv2 that is its kernel."""
    from defense.data import TensorData

    torch.manual_seed(2)
    model = randomize_bn(models.build("preactresnet18", 10, (1, 28, 28), [0.1], [0.3], width=4))
    clean = TensorData(torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    layers = salience.neuron_map(model)
    scores, _ = salience.benign_salience(model, clean, batch_size=16, layers=layers)
    model.zero_grad()
    F.cross_entropy(model(clean.x), clean.y).backward()
    w = model.net.layer2[0].conv2.weight
    expected = -(w.grad * w).flatten(1).sum(1)
    assert torch.allclose(scores.layers["net.layer2.0.conv2"], expected, atol=1e-6)
    bn = model.net.layer2[0].bn2
    expected_bn = -(bn.weight.grad * bn.weight + bn.bias.grad * bn.bias)
    assert torch.allclose(scores.layers["net.layer2.0.conv1"], expected_bn, atol=1e-6)


def test_tracing_while_another_thread_runs_a_model():
    """torch.fx patches nn.Module.__call__ process-wide while tracing; the app's worker thread runs models then."""
    import threading

    other = models.build("small_cnn", 10, (1, 28, 28), [0.1], [0.3]).eval()
    stop, errors = threading.Event(), []

    def run():
        while not stop.is_set():
            try:
                with torch.no_grad():
                    other(torch.rand(2, 1, 28, 28))
            except Exception as err:  # noqa: BLE001 - collected for the assertion
                errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        for _ in range(10):
            net = models.build("preactresnet18", 10, (1, 28, 28), [0.1], [0.3], width=2)
            assert sum(nl.bn is not None for nl in salience.neuron_map(net).values()) == 8
    finally:
        stop.set()
        worker.join()
    assert errors == []
