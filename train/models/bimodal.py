"""The fused bimodal ResNet18 of S1, designed for streaming.

Two per-frame encoders: B-mode (ResNet18 with parallel residual blocks and SimAM) and CEUS
(the same with coordinate attention). Their pooled features are what the live pipeline
caches, so each new frame costs one pass of each encoder; a small fusion head then reads
the B-mode feature of the newest frame and the CEUS features of a window of recent frames
(T frames, a fixed time apart). S1 does not specify its fusion; here it is a temporal 1-D
convolution over the CEUS window, mean and max over time, concatenated with the B-mode
feature, and a two-layer classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hepascope.train.models.layers import BasicBlock, CoordAttention, ParallelBlock, SimAM
from hepascope.train.models.registry import register_model
from hepascope.train.models.resnet import ResNet


class BimodalResNet(nn.Module):
    """B-mode frame + CEUS window -> class logits.

    ``bmode``: (B, 1, H, W); ``ceus``: (B, T, 1, h, w), oldest first. Attention layers are
    passed as types (None disables); ``parallel=False`` uses plain basic blocks."""

    def __init__(self, num_classes: int = 6, *, width: int = 64, ceus_width: int | None = None,
                 window: int = 6, parallel: bool = True,
                 bmode_attn: type[nn.Module] | None = SimAM,
                 ceus_attn: type[nn.Module] | None = CoordAttention,
                 hidden: int = 256, drop_rate: float = 0.2,
                 bmode_size: tuple[int, int] = (112, 112),
                 ceus_size: tuple[int, int] = (64, 64)) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        block = ParallelBlock if parallel else BasicBlock
        self.bmode = ResNet(num_classes=0, in_chans=1, width=width, block=block,
                            attn_layer=bmode_attn)
        self.ceus = ResNet(num_classes=0, in_chans=1, width=ceus_width or width, block=block,
                           attn_layer=ceus_attn)
        self.window = window
        self.bmode_size, self.ceus_size = tuple(bmode_size), tuple(ceus_size)
        self.num_classes = num_classes
        cb, cc = self.bmode.num_features, self.ceus.num_features
        self.bmode_dim, self.ceus_dim = cb, cc
        self.temporal = nn.Conv1d(cc, cc, 3, padding=1)
        self.classifier = nn.Sequential(nn.Linear(cb + 2 * cc, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(drop_rate), nn.Linear(hidden, num_classes))

    def encode_bmode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, bmode_dim): what the pipeline computes once per frame."""
        return self.bmode.forward_head(self.bmode.forward_features(x), pre_logits=True)

    def encode_ceus(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) -> (B, ceus_dim): cached per frame by the pipeline."""
        return self.ceus.forward_head(self.ceus.forward_features(x), pre_logits=True)

    def forward_features(self, bmode: torch.Tensor,
                         ceus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = ceus.shape[:2]
        fc = self.encode_ceus(ceus.flatten(0, 1)).view(b, t, -1)
        return self.encode_bmode(bmode), fc

    def forward_head(self, fb: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
        """(B, bmode_dim), (B, T, ceus_dim) -> logits (B, num_classes)."""
        z = F.relu(self.temporal(fc.transpose(1, 2)))
        return self.classifier(torch.cat([fb, z.mean(dim=2), z.amax(dim=2)], dim=1))

    def forward(self, bmode: torch.Tensor, ceus: torch.Tensor) -> torch.Tensor:
        return self.forward_head(*self.forward_features(bmode, ceus))


@register_model
def bimodal_resnet18(**kwargs: object) -> BimodalResNet:
    """S1's model at ResNet-18's widths (64..512 per branch)."""
    return BimodalResNet(**{"width": 64, **kwargs})  # type: ignore[arg-type]


@register_model
def bimodal_resnet18_lite(**kwargs: object) -> BimodalResNet:
    """The same architecture at half width (B-mode 32..256, CEUS 16..128): what trains in
    minutes and runs live with room to spare on a 2-core laptop CPU; the demo's model."""
    return BimodalResNet(**{"width": 32, "ceus_width": 16, **kwargs})  # type: ignore[arg-type]
