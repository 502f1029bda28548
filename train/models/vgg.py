"""VGG (Simonyan & Zisserman 2015), the 2D baseline of S0, S2 and S3.

The head is torchvision's: the last feature map is average-pooled to 7x7, flattened and
fed to two 4096-wide FC layers. The pooling is ``StaticAdaptiveAvgPool`` (a matrix product
per axis built from the input size), so the model runs and exports to ONNX at any input
size (112x112 B-mode ROIs as in S3, 224x224 as in S2) with the same parameters: 138.36 M
at 1000 classes and 3 channels, whatever the size. At 224 the pooling is the identity;
at 112 it spreads a 3x3 map over 7x7, as torchvision's adaptive pooling would."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from hepascope.train.models.layers import StaticAdaptiveAvgPool
from hepascope.train.models.registry import register_model

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M")


class VGG(nn.Module):
    """Stacks of 3x3 convolutions (``cfg``: channels, "M" for a 2x2 max pool), optional
    BatchNorm after each; ``fc_dim``-wide MLP head on a ``pool_size``-square map."""

    input_kind: ClassVar[str] = "image"
    default_input_size: ClassVar[tuple[int, int]] = (224, 224)

    def __init__(self, cfg: tuple[int | str, ...] = VGG16, *, num_classes: int = 1000,
                 in_chans: int = 1, batch_norm: bool = False, fc_dim: int = 4096,
                 pool_size: int = 7, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        layers: list[nn.Module] = []
        cin = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            cout = int(v)
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = StaticAdaptiveAvgPool((pool_size, pool_size))
        self.pre_logits = nn.Sequential(
            nn.Linear(cin * pool_size * pool_size, fc_dim), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate), nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate))
        self.num_features = fc_dim
        self.fc = nn.Linear(fc_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
            if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def get_classifier(self) -> nn.Module:
        """The layer that makes the logits (timm's name): the trainer shifts its bias."""
        return self.fc

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def vgg16(**kwargs: object) -> VGG:
    """VGG-16 (configuration D): 138.36 M parameters at 1000 classes, 3 chans."""
    return VGG(VGG16, **kwargs)  # type: ignore[arg-type]


@register_model
def vgg16_bn(**kwargs: object) -> VGG:
    """VGG-16 with BatchNorm after every convolution (138.37 M at 1000 classes, 3 chans)."""
    return VGG(VGG16, **{"batch_norm": True, **kwargs})  # type: ignore[arg-type]
