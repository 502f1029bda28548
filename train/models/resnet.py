"""ResNet backbones written out (no torchvision here), timm-style."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from hepascope.train.models.layers import BasicBlock, Bottleneck, ResidualBlock, init_conv_bn
from hepascope.train.models.registry import register_model

STEM_STRIDES = (1, 2, 4)


class ResNet(nn.Module):
    """ResNet (He et al. 2016). ``width`` is the first stage's bottleneck channels (64 in the
    paper), doubling per stage (times ``block.expansion`` at the stage's output); ``block``
    and ``attn_layer`` are passed in as types. ``in_chans`` defaults to 1 (grey
    ultrasound); the published parameter counts are at ``in_chans=3, num_classes=1000``.
    ``stem_stride``: 4 is the paper's ImageNet stem (7x7/2 conv, 3x3/2 max pool); 2 or 1 a
    3x3 conv of that stride and no pool, as He et al. did for 32x32 images (CIFAR), so a
    small input (a region of interest) keeps maps the stages can still read."""

    input_kind: ClassVar[str] = "image"
    default_input_size: ClassVar[tuple[int, int]] = (224, 224)

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), *, num_classes: int = 1000,
                 in_chans: int = 1, width: int = 64, block: type[ResidualBlock] = BasicBlock,
                 attn_layer: type[nn.Module] | None = None, drop_rate: float = 0.0,
                 stem_stride: int = 4) -> None:
        super().__init__()
        if stem_stride not in STEM_STRIDES:
            raise ValueError(f"stem_stride must be one of {STEM_STRIDES}, got {stem_stride}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)) if stem_stride == 4 else nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        cin = width
        for i, n in enumerate(layers):
            cout = width * 2**i * block.expansion
            blocks = [block(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1,
                            attn_layer) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def get_classifier(self) -> nn.Module:
        """The layer that makes the logits (timm's name): the trainer shifts its bias."""
        return self.fc

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # global average pool as a ReduceMean: exports cleanly
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (He et al. 2016; S0, S2, S3): 11.69 M parameters at 1000 classes, 3 chans."""
    return ResNet((2, 2, 2, 2), **kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (He et al. 2016; S2's model): bottleneck blocks [3, 4, 6, 3], 25.56 M
    parameters at 1000 classes, 3 chans."""
    return ResNet((3, 4, 6, 3), **{"block": Bottleneck, **kwargs})
