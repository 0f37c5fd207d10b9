"""PyTorch modules with the structure and state-dict names of the release.

An independent PyTorch rendering of the authors' `embed_net` (two-stream
AGW ResNet) and of their `Discriminator_ModalityClassifier`, written from
the published architecture rather than from our Flax code. The tests check
the release-format mapping and whole training steps against it; the
benchmarks time it (`benchmarks.torch_release`).

Names are the release's: `visible_module.visible.*` and
`thermal_module.thermal.*` are full torchvision-layout ResNets of which only
conv1/bn1 run; `base_resnet.base.*` is a third one of which only
layer1..layer4 run; `NL_1..NL_4` hold the non-local blocks; `bottleneck`
(BNNeck, BatchNorm1d with a frozen zero bias) and `classifier` (Linear, no
bias) are the heads. Tiny networks: `width_multiplier` scales every channel
count like `mclnet_jax.models.resnet.scaled_width`.

Needs torch: importing it raises ImportError when torch is missing (tests
call `pytest.importorskip("torch")` first).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from mclnet_jax.models import resnet as jax_resnet

IMAGENET_CLASSES = 1000


def _width(channels, width_multiplier):
    return jax_resnet.scaled_width(channels, width_multiplier)


def _downsample(in_channels, out, stride):
    """torchvision's shortcut projection (1x1 conv + BN), or None when the
    block keeps its input's shape."""
    if stride == 1 and in_channels == out:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out, 1, stride, bias=False),
        nn.BatchNorm2d(out),
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet-18/34 block."""

    expansion = 1

    def __init__(self, in_channels, width, stride):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(in_channels, out, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50/101 block (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, in_channels, width, stride):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _downsample(in_channels, out, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ResNet(nn.Module):
    """torchvision's ResNet module tree (conv1, bn1, layer1..4, fc)."""

    def __init__(self, depth, width_multiplier, last_stride):
        super().__init__()
        block = Bottleneck if depth >= 50 else BasicBlock
        stem = _width(64, width_multiplier)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = stem
        strides = (1, 2, 2, last_stride)
        for k, (blocks, base, stride) in enumerate(
            zip(
                jax_resnet.BLOCKS_PER_STAGE[depth],
                (64, 128, 256, 512),
                strides,
                strict=True,
            )
        ):
            width = _width(base, width_multiplier)
            layer = []
            for i in range(blocks):
                layer.append(block(in_channels, width, stride if i == 0 else 1))
                in_channels = width * block.expansion
            setattr(self, f"layer{k + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, IMAGENET_CLASSES)
        self.out_channels = in_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode="fan_out", nonlinearity="relu"
                )


class NonLocal(nn.Module):
    """AGW's non-local block: embedded dot product divided by H*W.

    g = Sequential(1x1 conv), theta, phi = 1x1 convs, all C -> inter with
    bias; W = Sequential(1x1 conv inter -> C, BatchNorm2d(C)) with the BN's
    weight and bias at zero, so the block starts as the identity.
    """

    def __init__(self, channels, inter):
        super().__init__()
        self.inter = inter
        self.g = nn.Sequential(nn.Conv2d(channels, inter, 1))
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.W = nn.Sequential(
            nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels)
        )
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x):
        b, _, h, w = x.shape
        g = self.g(x).reshape(b, self.inter, h * w).transpose(1, 2)
        theta = self.theta(x).reshape(b, self.inter, h * w).transpose(1, 2)
        phi = self.phi(x).reshape(b, self.inter, h * w)
        affinity = torch.matmul(theta, phi) / (h * w)  # [b, P, P]
        y = torch.matmul(affinity, g)  # [b, P, inter]
        y = y.transpose(1, 2).reshape(b, self.inter, h, w)
        return x + self.W(y)


class _Stem(nn.Module):
    """`visible_module` / `thermal_module`: a whole ResNet, conv1 used."""

    def __init__(self, attr, resnet):
        super().__init__()
        self.attr = attr
        setattr(self, attr, resnet)

    def forward(self, x):
        net = getattr(self, self.attr)
        return net.maxpool(net.relu(net.bn1(net.conv1(x))))


class _Base(nn.Module):
    """`base_resnet`: a whole ResNet of which layer1..layer4 are used."""

    def __init__(self, resnet):
        super().__init__()
        self.base = resnet


class EmbedNet(nn.Module):
    """The release's embed_net (see the module docstring)."""

    def __init__(
        self,
        *,
        num_classes,
        depth,
        width_multiplier,
        non_local_counts,
        non_local_inter,
        pooling,
        last_stride,
    ):
        super().__init__()
        if pooling not in ("gem", "avg"):
            raise ValueError(
                f"pooling must be 'gem' or 'avg', got {pooling!r}."
            )
        blocks = jax_resnet.BLOCKS_PER_STAGE[depth]
        if len(non_local_counts) != 4 or any(
            not 0 <= c <= b
            for c, b in zip(non_local_counts, blocks, strict=True)
        ):
            raise ValueError(
                f"non_local_counts {non_local_counts!r} do not "
                f"fit the stages {blocks}."
            )
        self.pooling = pooling

        def make():
            return ResNet(depth, width_multiplier, last_stride)

        self.visible_module = _Stem("visible", make())
        self.thermal_module = _Stem("thermal", make())
        self.base_resnet = _Base(make())
        base = self.base_resnet.base
        self.nl_after = []
        for k, count in enumerate(non_local_counts):
            layer = getattr(base, f"layer{k + 1}")
            channels = layer[-1].bn1.num_features * type(layer[-1]).expansion
            inter = (
                max(1, channels // 2)
                if non_local_inter is None
                else non_local_inter
            )
            setattr(
                self,
                f"NL_{k + 1}",
                nn.ModuleList(
                    [NonLocal(channels, inter) for _ in range(count)]
                ),
            )
            # After the last `count` blocks, in order.
            self.nl_after.append(list(range(len(layer) - count, len(layer))))
        dim = base.out_channels
        self.bottleneck = nn.BatchNorm1d(dim)
        self.bottleneck.bias.requires_grad_(False)
        nn.init.normal_(self.bottleneck.weight, 1.0, 0.01)
        nn.init.zeros_(self.bottleneck.bias)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, 0.0, 0.001)

    def forward(self, visible=None, infrared=None):
        """NCHW images -> {"pool", "bn", "logits"} (rows [visible; ir])."""
        parts = []
        if visible is not None:
            parts.append(self.visible_module(visible))
        if infrared is not None:
            parts.append(self.thermal_module(infrared))
        if not parts:
            raise ValueError("Give visible and/or infrared images.")
        x = torch.cat(parts, 0)
        base = self.base_resnet.base
        for k in range(4):
            non_local = getattr(self, f"NL_{k + 1}")
            after = self.nl_after[k]
            for i, block in enumerate(getattr(base, f"layer{k + 1}")):
                x = block(x)
                if i in after:
                    x = non_local[after.index(i)](x)
        flat = x.flatten(2)
        if self.pooling == "gem":
            pool = (flat.pow(3).mean(-1) + 1e-12).pow(1.0 / 3.0)
        else:
            pool = flat.mean(-1)
        bn = self.bottleneck(pool)
        return {"pool": pool, "bn": bn, "logits": self.classifier(bn)}


class ModalityClassifier(nn.Module):
    """The release's Discriminator_ModalityClassifier (map2 unused)."""

    def __init__(self, feature_dim, hidden):
        super().__init__()
        self.map1 = nn.Linear(feature_dim, hidden)
        self.map2 = nn.Linear(hidden, hidden)
        self.map3 = nn.Linear(hidden, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.map3(self.map1(x)))


def make_embed_net(
    *,
    num_classes,
    depth=50,
    width_multiplier=1.0,
    non_local_counts=(0, 2, 3, 0),
    non_local_inter=1,
    pooling="gem",
    last_stride=1,
):
    """The release's embed_net at the given size (see `EmbedNet`)."""
    return EmbedNet(
        num_classes=num_classes,
        depth=depth,
        width_multiplier=width_multiplier,
        non_local_counts=tuple(non_local_counts),
        non_local_inter=non_local_inter,
        pooling=pooling,
        last_stride=last_stride,
    )


def make_modality_classifier(*, feature_dim, hidden=128):
    """The release's modality classifier for `feature_dim` features."""
    return ModalityClassifier(feature_dim, hidden)


@torch.no_grad()
def randomize_(module, seed=0):
    """Random, well-scaled values in every parameter and BN statistic.

    Non-trivial everywhere (non-local W BatchNorms included, which start at
    zero) so that a mapping error cannot hide behind an identity; scales
    keep a deep residual stack bounded. BNNeck's bias stays zero.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = math.prod(m.weight.shape[1:])
            m.weight.copy_(
                torch.randn(m.weight.shape, generator=gen)
                * math.sqrt(1.0 / fan_in)
            )
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=gen))
            if name != "bottleneck":
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
            m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return module
