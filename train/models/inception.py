"""SE-Inception-ResNet-v2 with multi-level feature fusion (S4).

The backbone is Inception-ResNet-v2 (Szegedy et al. 2016, as in timm: 55.84 M parameters
at 1000 classes, 299x299, 3 chans, with valid-padded stem and reductions, so inputs must
be at least 75x75). S4 adds two things, both switchable here:

* squeeze-excitation (reduction 16) in the Inception-ResNet-B and -C blocks. S4 puts it
  "in the branches with convolutions"; here it weights the residual branch after its 1x1
  projection and before the scaled sum, as SENet's own SE-Inception-ResNet-v2 does.
  ``attn_layer=None`` removes it; ``attn_blocks`` picks the block types that get it.
* multi-level fusion: the outputs of the A, B and C stages are each globally averaged and
  concatenated (320 + 1088 + 1536 channels) before the classifier, so shallow texture
  features reach it directly. ``fusion=False`` classifies the last stage only.

With both, the full model has 65.66 M parameters at 1000 classes and 3 chans (62.73 M at
5 classes, 1 chan; see the models card).
``width`` scales every channel count and ``depths`` the number of A/B/C blocks, for the
CPU-sized variant."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from hepascope.train.models.layers import SEModule
from hepascope.train.models.registry import register_model


def conv(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1,
         padding: int | tuple[int, int] = 0) -> nn.Sequential:
    """Conv (no bias) + BN (eps 1e-3, as the TF original) + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU(inplace=True))


class Concat(nn.Module):
    """Parallel branches, concatenated along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class InceptionResBlock(nn.Module):
    """``relu(x + scale * attn(up(concat(branches(x)))))``; the last block of the network
    has no ReLU and scale 1."""

    def __init__(self, ch: int, branches: Concat, mid: int, scale: float,
                 attn_layer: type[nn.Module] | None, relu: bool = True) -> None:
        super().__init__()
        self.branches, self.scale = branches, scale
        self.up = nn.Conv2d(mid, ch, 1)
        self.attn = attn_layer(ch) if attn_layer else nn.Identity()
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.scale * self.attn(self.up(self.branches(x))))


class InceptionResNetV2(nn.Module):
    input_kind: ClassVar[str] = "image"
    default_input_size: ClassVar[tuple[int, int]] = (299, 299)
    min_input_size: ClassVar[tuple[int, int]] = (75, 75)

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 1, width: float = 1.0,
                 depths: tuple[int, int, int] = (10, 20, 10),
                 attn_layer: type[nn.Module] | None = SEModule,
                 attn_blocks: Sequence[str] = ("b", "c"), fusion: bool = True,
                 drop_rate: float = 0.2) -> None:
        super().__init__()
        if width <= 0 or min(depths) < 1:
            raise ValueError(f"width must be > 0 and depths >= 1, got {width}, {depths}")
        self.in_chans, self.num_classes, self.fusion = in_chans, num_classes, fusion

        def s(n: int) -> int:
            return max(8, round(n * width))

        def attn(block: str) -> type[nn.Module] | None:
            return attn_layer if block in attn_blocks else None

        self.stem = nn.Sequential(
            conv(in_chans, s(32), 3, 2), conv(s(32), s(32), 3), conv(s(32), s(64), 3, padding=1),
            nn.MaxPool2d(3, 2), conv(s(64), s(80), 1), conv(s(80), s(192), 3), nn.MaxPool2d(3, 2),
            Concat(conv(s(192), s(96), 1),
                   nn.Sequential(conv(s(192), s(48), 1), conv(s(48), s(64), 5, padding=2)),
                   nn.Sequential(conv(s(192), s(64), 1), conv(s(64), s(96), 3, padding=1),
                                 conv(s(96), s(96), 3, padding=1)),
                   nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                 conv(s(192), s(64), 1))))
        ca = s(96) + s(64) + s(96) + s(64)  # 320
        self.stage_a = nn.Sequential(*[self._block_a(ca, s, attn("a")) for _ in range(depths[0])])
        self.reduce_a = Concat(
            conv(ca, s(384), 3, 2),
            nn.Sequential(conv(ca, s(256), 1), conv(s(256), s(256), 3, padding=1),
                          conv(s(256), s(384), 3, 2)),
            nn.MaxPool2d(3, 2))
        cb = s(384) * 2 + ca  # 1088
        self.stage_b = nn.Sequential(*[self._block_b(cb, s, attn("b")) for _ in range(depths[1])])
        self.reduce_b = Concat(
            nn.Sequential(conv(cb, s(256), 1), conv(s(256), s(384), 3, 2)),
            nn.Sequential(conv(cb, s(256), 1), conv(s(256), s(288), 3, 2)),
            nn.Sequential(conv(cb, s(256), 1), conv(s(256), s(288), 3, padding=1),
                          conv(s(288), s(320), 3, 2)),
            nn.MaxPool2d(3, 2))
        cc = s(384) + s(288) + s(320) + cb  # 2080
        self.stage_c = nn.Sequential(
            *[self._block_c(cc, s, attn("c"), last=i == depths[2] - 1) for i in range(depths[2])],
            conv(cc, s(1536), 1))
        dims = (ca, cb, s(1536)) if fusion else (s(1536),)
        self.num_features = sum(dims)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)

    @staticmethod
    def _block_a(ch: int, s: Callable[[int], int], attn: type[nn.Module] | None) -> nn.Module:
        br = Concat(conv(ch, s(32), 1),
                    nn.Sequential(conv(ch, s(32), 1), conv(s(32), s(32), 3, padding=1)),
                    nn.Sequential(conv(ch, s(32), 1), conv(s(32), s(48), 3, padding=1),
                                  conv(s(48), s(64), 3, padding=1)))
        return InceptionResBlock(ch, br, s(32) * 2 + s(64), 0.17, attn)

    @staticmethod
    def _block_b(ch: int, s: Callable[[int], int], attn: type[nn.Module] | None) -> nn.Module:
        br = Concat(conv(ch, s(192), 1),
                    nn.Sequential(conv(ch, s(128), 1), conv(s(128), s(160), (1, 7), padding=(0, 3)),
                                  conv(s(160), s(192), (7, 1), padding=(3, 0))))
        return InceptionResBlock(ch, br, s(192) * 2, 0.10, attn)

    @staticmethod
    def _block_c(ch: int, s: Callable[[int], int], attn: type[nn.Module] | None,
                 last: bool) -> nn.Module:
        br = Concat(conv(ch, s(192), 1),
                    nn.Sequential(conv(ch, s(192), 1), conv(s(192), s(224), (1, 3), padding=(0, 1)),
                                  conv(s(224), s(256), (3, 1), padding=(1, 0))))
        return InceptionResBlock(ch, br, s(192) + s(256), 1.0 if last else 0.20, attn,
                                 relu=not last)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The A, B and C stages' output maps (only C's without fusion)."""
        a = self.stage_a(self.stem(x))
        b = self.stage_b(self.reduce_a(a))
        c = self.stage_c(self.reduce_b(b))
        return [a, b, c] if self.fusion else [c]

    def get_classifier(self) -> nn.Module:
        """The layer that makes the logits (timm's name): the trainer shifts its bias."""
        return self.fc

    def forward_head(self, x: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        z = torch.cat([f.mean(dim=(2, 3)) for f in x], dim=1)
        return z if pre_logits else self.fc(self.drop(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def se_inception_resnet_v2(**kwargs: object) -> InceptionResNetV2:
    """S4's model: Inception-ResNet-v2 + SE in the B/C blocks + A/B/C feature fusion."""
    return InceptionResNetV2(**kwargs)  # type: ignore[arg-type]


@register_model
def se_inception_resnet_v2_small(**kwargs: object) -> InceptionResNetV2:
    """The same design at a quarter of the channels and (3, 5, 3) blocks: trains on CPU."""
    kw: dict[str, object] = {"width": 0.25, "depths": (3, 5, 3), **kwargs}
    return InceptionResNetV2(**kw)  # type: ignore[arg-type]
