"""Clip models of S3: CEUS clips (B, C, T, H, W), by default 30 frames at 64x64 (one frame
per 2 s for the first minute, then one per 30 s), classified whole so that wash-in and
wash-out timing is learnt.

* ``c3d``: S3's "3D-CNN" (after Tran et al. 2015 and Pan et al. 2019): 3x3x3 convolution,
  3x3x3 max pooling, channels doubling, repeated; flattened into an FC layer and the
  classifier. Sized for 30x64x64 (4 stages, 32..256 channels, 5.4 M parameters), not
  C3D's 78 M; BatchNorm added for training from scratch on small sets. The flatten keeps
  *when* in the clip a feature fires; a ``StaticAdaptiveAvgPool`` to (2, 4, 4) before it
  keeps the parameter count and ONNX export independent of the clip size.
* ``res3d_18``: 3D ResNet-18 as in Hara et al. 2018 (7x7x7 stem, max pool, basic blocks
  [2, 2, 2, 2], parameter-free zero-padding shortcuts, "type A"): 33.2 M parameters at
  400 classes, 3 chans. ``shortcut="conv"`` gives 1x1x1 projection shortcuts instead.
* ``dense3d``: a small 3D DenseNet (Huang et al. 2017, the 2D design with 3D kernels, as
  S3 describes its Dense3D): growth 16, blocks (4, 4, 4), compression 0.5."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hepascope.train.models.layers import StaticAdaptiveAvgPool, init_conv_bn
from hepascope.train.models.registry import register_model

CLIP_SIZE = (30, 64, 64)


def conv3_bn(cin: int, cout: int, k: int | tuple[int, int, int] = 3,
             stride: int | tuple[int, int, int] = 1, relu: bool = True) -> nn.Sequential:
    ks = (k, k, k) if isinstance(k, int) else k
    pad = (ks[0] // 2, ks[1] // 2, ks[2] // 2)
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, ks, stride, pad, bias=False),
                               nn.BatchNorm3d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Clip3D(nn.Module):
    """What the clip models share: kind, default size, global-average head."""

    input_kind: ClassVar[str] = "clip"
    default_input_size: ClassVar[tuple[int, int, int]] = CLIP_SIZE
    fc: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        """The layer that makes the logits (timm's name): the trainer shifts its bias."""
        return self.fc

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3, 4))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class C3D(Clip3D):
    def __init__(self, *, num_classes: int = 2, in_chans: int = 1,
                 channels: tuple[int, ...] = (32, 64, 128, 256), hidden: int = 512,
                 pool_size: tuple[int, int, int] = (2, 4, 4), drop_rate: float = 0.5) -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        layers: list[nn.Module] = []
        cin = in_chans
        for c in channels:
            layers += [conv3_bn(cin, c), nn.MaxPool3d(3, 2, 1)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = StaticAdaptiveAvgPool(pool_size)
        n_flat = cin * pool_size[0] * pool_size[1] * pool_size[2]
        self.pre_logits = nn.Sequential(nn.Linear(n_flat, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(drop_rate))
        self.num_features = hidden
        self.fc = nn.Linear(hidden, num_classes)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.pool(x).flatten(1))
        return x if pre_logits else self.fc(x)


class BasicBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = conv3_bn(cin, cout, 3, stride)
        self.conv2 = conv3_bn(cout, cout, 3, relu=False)
        self.stride, self.pad_chans = stride, cout - cin
        self.proj = (conv3_bn(cin, cout, 1, stride, relu=False)
                     if shortcut == "conv" and (stride != 1 or cin != cout) else None)
        self.act = nn.ReLU(inplace=True)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(x)
        if self.stride != 1:  # every stride-th voxel, as Hara et al.'s type A
            x = F.avg_pool3d(x, 1, self.stride)
        if self.pad_chans:  # type A: the new channels are zeros (batch axis kept dynamic)
            zeros = torch.zeros_like(x[:, :1]).expand(-1, self.pad_chans, -1, -1, -1)
            x = torch.cat([x, zeros], dim=1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet3D(Clip3D):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), *, num_classes: int = 400,
                 in_chans: int = 1, width: int = 64, shortcut: str = "pad") -> None:
        super().__init__()
        if shortcut not in ("pad", "conv"):
            raise ValueError(f"shortcut must be 'pad' or 'conv', got {shortcut!r}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.stem = nn.Sequential(
            nn.Conv3d(in_chans, width, 7, (1, 2, 2), 3, bias=False), nn.BatchNorm3d(width),
            nn.ReLU(inplace=True), nn.MaxPool3d(3, 2, 1))
        stages: list[nn.Module] = []
        cin = width
        for i, n in enumerate(layers):
            cout = width * 2**i
            stages.append(nn.Sequential(*[
                BasicBlock3d(cin if j == 0 else cout, cout, 2 if i > 0 and j == 0 else 1,
                             shortcut) for j in range(n)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class DenseLayer3d(nn.Module):
    """BN-ReLU-1x1x1 (to ``bn_size * growth``)-BN-ReLU-3x3x3 (to ``growth``), appended."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        mid = bn_size * growth
        self.body = nn.Sequential(
            nn.BatchNorm3d(cin), nn.ReLU(inplace=True), nn.Conv3d(cin, mid, 1, bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNet3D(Clip3D):
    def __init__(self, blocks: tuple[int, ...] = (4, 4, 4), *, num_classes: int = 2,
                 in_chans: int = 1, growth: int = 16, init_chans: int = 32, bn_size: int = 4,
                 compression: float = 0.5) -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        layers: list[nn.Module] = [
            nn.Conv3d(in_chans, init_chans, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
            nn.BatchNorm3d(init_chans), nn.ReLU(inplace=True), nn.MaxPool3d(3, 2, 1)]
        c = init_chans
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer3d(c, growth, bn_size))
                c += growth
            if i < len(blocks) - 1:  # transition: compress channels, halve T, H and W
                cout = int(c * compression)
                layers += [nn.BatchNorm3d(c), nn.ReLU(inplace=True),
                           nn.Conv3d(c, cout, 1, bias=False), nn.AvgPool3d(2, 2)]
                c = cout
        layers += [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def c3d(**kwargs: object) -> C3D:
    """S3's 3D-CNN (its best model), sized for 30x64x64 CEUS clips."""
    return C3D(**kwargs)  # type: ignore[arg-type]


@register_model
def res3d_18(**kwargs: object) -> ResNet3D:
    """3D ResNet-18 (Hara et al. 2018; S3's Res3D): 33.2 M parameters at 400 classes."""
    return ResNet3D((2, 2, 2, 2), **kwargs)  # type: ignore[arg-type]


@register_model
def dense3d(**kwargs: object) -> DenseNet3D:
    """A small 3D DenseNet (S3's Dense3D)."""
    return DenseNet3D(**kwargs)  # type: ignore[arg-type]
