"""ResNet backbones written out (no torchvision here), timm-style."""

from __future__ import annotations

import torch
from torch import nn

from hepascope.train.models.layers import BasicBlock
from hepascope.train.models.registry import register_model


class ResNet(nn.Module):
    """ResNet with basic blocks. ``width`` is the first stage's channels (64 in the paper),
    doubling per stage; ``block`` and ``attn_layer`` are passed in as types."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), *, num_classes: int = 1000,
                 in_chans: int = 3, width: int = 64, block: type[BasicBlock] = BasicBlock,
                 attn_layer: type[nn.Module] | None = None, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        cin = width
        for i, n in enumerate(layers):
            cout = width * 2**i
            blocks = [block(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1,
                            attn_layer) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # global average pool as a ReduceMean: exports cleanly
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def resnet18(**kwargs: object) -> ResNet:
    """ResNet-18 (He et al. 2016): 11.7 M parameters at 1000 classes, 3 channels."""
    return ResNet((2, 2, 2, 2), **kwargs)  # type: ignore[arg-type]
