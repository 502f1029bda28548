"""The fused bimodal ResNet18 of S1, designed for streaming.

Two per-frame encoders: B-mode (ResNet18 with parallel residual blocks and SimAM) and CEUS
(the same with coordinate attention). Their pooled features are what the live pipeline
caches, so each new frame costs one pass of each encoder; a small fusion head then reads
the B-mode feature of the newest frame and the CEUS features of a window of recent frames
(T frames, a fixed time apart). S1 does not specify its fusion; here it is a temporal 1-D
convolution over the CEUS window, mean and max over time, concatenated with the B-mode
feature, and a two-layer classifier.

Ablations (the study of which part earns its keep) are registered variants: plain basic
blocks, no SimAM, no coordinate attention, and either branch alone, at both widths."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hepascope.core.errors import ConfigError, ModelError
from hepascope.train.models.layers import BasicBlock, CoordAttention, ParallelBlock, SimAM
from hepascope.train.models.registry import register_model
from hepascope.train.models.resnet import ResNet


class BimodalResNet(nn.Module):
    """B-mode frame + CEUS window -> class logits.

    ``bmode``: (B, C, H, W); ``ceus``: (B, T, C, h, w), oldest first. Attention layers are
    passed as types (None disables); ``parallel=False`` uses plain basic blocks.
    ``branches`` picks the encoders built: both, or one alone for the ablations; a
    single-branch model keeps ``forward(bmode, ceus)`` (the trainer stays uniform) and
    ignores the other input, and its head reads only its branch's features."""

    input_kind: ClassVar[str] = "bimodal"
    default_input_size: ClassVar[tuple[tuple[int, int], tuple[int, int, int]]] = (
        (112, 112), (6, 64, 64))

    def __init__(self, num_classes: int = 6, *, in_chans: int = 1, width: int = 64,
                 ceus_width: int | None = None, window: int = 6, parallel: bool = True,
                 bmode_attn: type[nn.Module] | None = SimAM,
                 ceus_attn: type[nn.Module] | None = CoordAttention,
                 branches: tuple[str, ...] = ("bmode", "ceus"),
                 hidden: int = 256, drop_rate: float = 0.2,
                 bmode_size: tuple[int, int] = (112, 112),
                 ceus_size: tuple[int, int] = (64, 64)) -> None:
        super().__init__()
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        branches = tuple(branches)
        if not branches or len(set(branches)) != len(branches) or not set(branches) <= {
                "bmode", "ceus"}:
            raise ConfigError(f"branches must be 'bmode' and/or 'ceus', got {branches}")
        block = ParallelBlock if parallel else BasicBlock
        self.branches = branches
        self.bmode: ResNet | None = None
        self.ceus: ResNet | None = None
        if "bmode" in branches:
            self.bmode = ResNet(num_classes=0, in_chans=in_chans, width=width, block=block,
                                attn_layer=bmode_attn)
        if "ceus" in branches:
            self.ceus = ResNet(num_classes=0, in_chans=in_chans, width=ceus_width or width,
                               block=block, attn_layer=ceus_attn)
        self.in_chans, self.window, self.num_classes = in_chans, window, num_classes
        self.bmode_size, self.ceus_size = tuple(bmode_size), tuple(ceus_size)
        cb = self.bmode.num_features if self.bmode is not None else 0
        cc = self.ceus.num_features if self.ceus is not None else 0
        self.bmode_dim, self.ceus_dim = cb, cc
        self.temporal = nn.Conv1d(cc, cc, 3, padding=1) if cc else None
        self.classifier = nn.Sequential(nn.Linear(cb + 2 * cc, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(drop_rate), nn.Linear(hidden, num_classes))

    def get_classifier(self) -> nn.Module:
        """The layer that makes the logits (timm's name): the trainer shifts its bias."""
        return self.classifier[-1]

    def _branch(self, name: str) -> ResNet:
        enc = self.bmode if name == "bmode" else self.ceus
        if enc is None:
            raise ModelError(f"this model has no {name} branch (branches: {self.branches})")
        return enc

    def encode_bmode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, bmode_dim): what the pipeline computes once per frame."""
        enc = self._branch("bmode")
        return enc.forward_head(enc.forward_features(x), pre_logits=True)

    def encode_ceus(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, ceus_dim): cached per frame by the pipeline."""
        enc = self._branch("ceus")
        return enc.forward_head(enc.forward_features(x), pre_logits=True)

    def encode_window(self, ceus: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, T, ceus_dim): every frame of the window at once."""
        return self.encode_ceus(ceus.flatten(0, 1)).unflatten(0, (-1, ceus.shape[1]))

    def forward_features(self, bmode: torch.Tensor, ceus: torch.Tensor
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        fb = self.encode_bmode(bmode) if self.bmode is not None else None
        fc = self.encode_window(ceus) if self.ceus is not None else None
        return fb, fc

    def forward_head(self, fb: torch.Tensor | None, fc: torch.Tensor | None) -> torch.Tensor:
        """(B, bmode_dim), (B, T, ceus_dim) -> logits (B, num_classes); a single-branch
        model reads only its own (the other may be None)."""
        parts: list[torch.Tensor] = []
        if self.bmode is not None:
            if fb is None:
                raise ModelError("B-mode features missing")
            parts.append(fb)
        if self.temporal is not None:
            if fc is None:
                raise ModelError("CEUS features missing")
            z = F.relu(self.temporal(fc.transpose(1, 2)))
            parts += [z.mean(dim=2), z.amax(dim=2)]
        return self.classifier(torch.cat(parts, dim=1))

    def forward(self, bmode: torch.Tensor, ceus: torch.Tensor) -> torch.Tensor:
        return self.forward_head(*self.forward_features(bmode, ceus))


FULL: dict[str, object] = {"width": 64}
LITE: dict[str, object] = {"width": 32, "ceus_width": 16}


def _make(base: dict[str, object], kwargs: dict[str, object], **ablation: object
          ) -> BimodalResNet:
    return BimodalResNet(**{**base, **ablation, **kwargs})  # type: ignore[arg-type]


@register_model
def bimodal_resnet18(**kwargs: object) -> BimodalResNet:
    """S1's model at ResNet-18's widths (64..512 per branch)."""
    return _make(FULL, kwargs)


@register_model
def bimodal_resnet18_no_prb(**kwargs: object) -> BimodalResNet:
    """Ablation: plain basic blocks instead of parallel residual blocks."""
    return _make(FULL, kwargs, parallel=False)


@register_model
def bimodal_resnet18_no_simam(**kwargs: object) -> BimodalResNet:
    """Ablation: no SimAM in the B-mode branch."""
    return _make(FULL, kwargs, bmode_attn=None)


@register_model
def bimodal_resnet18_no_ca(**kwargs: object) -> BimodalResNet:
    """Ablation: no coordinate attention in the CEUS branch."""
    return _make(FULL, kwargs, ceus_attn=None)


@register_model
def bimodal_resnet18_bmode_only(**kwargs: object) -> BimodalResNet:
    """Ablation: the B-mode branch alone (the CEUS input is ignored)."""
    return _make(FULL, kwargs, branches=("bmode",))


@register_model
def bimodal_resnet18_ceus_only(**kwargs: object) -> BimodalResNet:
    """Ablation: the CEUS branch alone (the B-mode input is ignored)."""
    return _make(FULL, kwargs, branches=("ceus",))


@register_model
def bimodal_resnet18_lite(**kwargs: object) -> BimodalResNet:
    """The same architecture at half width (B-mode 32..256, CEUS 16..128): what trains in
    minutes and runs live with room to spare on a 2-core laptop CPU; the demo's model."""
    return _make(LITE, kwargs)


@register_model
def bimodal_resnet18_lite_no_prb(**kwargs: object) -> BimodalResNet:
    """Lite ablation: plain basic blocks."""
    return _make(LITE, kwargs, parallel=False)


@register_model
def bimodal_resnet18_lite_no_simam(**kwargs: object) -> BimodalResNet:
    """Lite ablation: no SimAM."""
    return _make(LITE, kwargs, bmode_attn=None)


@register_model
def bimodal_resnet18_lite_no_ca(**kwargs: object) -> BimodalResNet:
    """Lite ablation: no coordinate attention."""
    return _make(LITE, kwargs, ceus_attn=None)


@register_model
def bimodal_resnet18_lite_bmode_only(**kwargs: object) -> BimodalResNet:
    """Lite ablation: the B-mode branch alone."""
    return _make(LITE, kwargs, branches=("bmode",))


@register_model
def bimodal_resnet18_lite_ceus_only(**kwargs: object) -> BimodalResNet:
    """Lite ablation: the CEUS branch alone."""
    return _make(LITE, kwargs, branches=("ceus",))
