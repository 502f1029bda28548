"""Layers the models share: attention (SimAM, coordinate attention, squeeze-excitation),
ResNet's blocks with the parallel residual block of the seed paper (S1), and adaptive
pooling that exports.

Attentions are written with means over axes (no adaptive pooling) so they export to ONNX
as ReduceMean and stay in TensorRT's supported-op set."""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

import torch
from torch import nn


class SimAM(nn.Module):
    """Parameter-free attention (Yang et al., ICML 2021): weights each activation by an
    energy that is low for neurons unlike their neighbours in the same channel.

    The variance is computed as a *mean* of squared deviations, not a sum, so fp16 cannot
    overflow on large feature maps (the reference sums over H*W)."""

    def __init__(self, channels: int | None = None, e_lambda: float = 1e-4) -> None:
        super().__init__()
        del channels  # parameter-free; accepted so all attention layers share a signature
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3]
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        v = d.mean(dim=(2, 3), keepdim=True) * (n / max(n - 1, 1))
        e_inv = d / (4 * (v + self.e_lambda)) + 0.5
        return x * torch.sigmoid(e_inv)


class HSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x + 3, 0, 6) / 6


class CoordAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021): channel attention factorised along
    height and width, so it keeps where along each axis a feature is (a lesion's position
    and its enhancing rim in the CEUS view)."""

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mip = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = HSwish()
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x_h = x.mean(dim=3, keepdim=True)                      # B, C, H, 1
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)      # B, C, W, 1
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(y_h))                  # B, C, H, 1
        a_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))  # B, C, 1, W
        return x * a_h * a_w


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1,
            groups: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation, groups, bias=False),
                         nn.BatchNorm2d(cout))


class SEModule(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018): per-channel weights from the globally
    averaged map through a bottleneck of ``channels // reduction``. The squeeze is a mean
    (ReduceMean in ONNX) and the two FC layers are 1x1 convolutions, so no reshapes."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        mid = max(4, channels // reduction)
        self.fc1 = nn.Conv2d(channels, mid, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


@lru_cache(maxsize=64)
def pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) averaging matrix with ``adaptive_avg_pool``'s bins:
    [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out))."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class StaticAdaptiveAvgPool(nn.Module):
    """Adaptive average pooling to ``output_size`` over the last ``len(output_size)`` axes,
    as one small matrix product per axis built from the input's (fixed) size.

    Same result as ``adaptive_avg_pool{2,3}d``, but it exports to ONNX at any input size
    (the legacy exporter refuses adaptive pooling whose output does not divide the input)
    and it also upsamples (a 2x2 map to 7x7), so a flattening head keeps its parameter
    count whatever the input size. An axis already at its output size is left alone."""

    def __init__(self, output_size: tuple[int, ...]) -> None:
        super().__init__()
        if not output_size or min(output_size) < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        self.output_size = tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last, k = x.dim() - 1, len(self.output_size)
        for i, n_out in enumerate(self.output_size):
            d = last - k + 1 + i  # non-negative axes: the exporter mangles negative ones
            n_in = int(x.shape[d])  # a constant in the exported graph: sizes are fixed there
            if n_in != n_out:
                p = pool_matrix(n_in, n_out).to(x.device, x.dtype)
                x = torch.matmul(x.transpose(d, last), p.t()).transpose(d, last)
        return x


class ResidualBlock(nn.Module):
    """``act(attn(residual(x)) + shortcut(x))``: what ResNet's blocks share. Subclasses build
    their convolutions, then call ``_finish`` (registration order kept as before, so
    parameter order, and with it saved optimizer state, is unchanged)."""

    expansion: ClassVar[int] = 1

    def _finish(self, cin: int, cout: int, stride: int,
                attn_layer: type[nn.Module] | None) -> None:
        self.attn = attn_layer(cout) if attn_layer else nn.Identity()
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else conv_bn(cin, cout, 1, stride))
        self.act = nn.ReLU(inplace=True)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.attn(self.residual(x)) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """ResNet's basic block (two 3x3 convolutions), with optional attention before the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1,
                 attn_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self._finish(cin, cout, stride, attn_layer)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


class Bottleneck(ResidualBlock):
    """ResNet-50's block: 1x1 down to ``cout / 4``, 3x3 (carrying the stride, as in
    torchvision's "v1.5"), 1x1 back up; optional attention before the sum."""

    expansion: ClassVar[int] = 4

    def __init__(self, cin: int, cout: int, stride: int = 1,
                 attn_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        mid = cout // self.expansion
        self.conv1 = conv_bn(cin, mid, 1)
        self.conv2 = conv_bn(mid, mid, 3, stride)
        self.conv3 = conv_bn(mid, cout, 1)
        self._finish(cin, cout, stride, attn_layer)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class ParallelBlock(BasicBlock):
    """The parallel residual block. S1 names it without defining it; here it is a basic
    block with a second residual path in parallel: a dilated (d=2) depthwise 3x3 followed
    by a pointwise 1x1, summed with the 3x3-3x3 path before attention and the shortcut.
    The second path sees a 2x wider context (a lesion's halo, rim or posterior
    enhancement) at about a ninth of the first path's cost."""

    def __init__(self, cin: int, cout: int, stride: int = 1,
                 attn_layer: type[nn.Module] | None = None) -> None:
        super().__init__(cin, cout, stride, attn_layer)
        self.wide = nn.Sequential(conv_bn(cin, cin, 3, stride, dilation=2, groups=cin),
                                  nn.ReLU(inplace=True), conv_bn(cin, cout, 1))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return super().residual(x) + self.wide(x)


def init_conv_bn(model: nn.Module) -> None:
    """He (fan-out) init of every 2-D/3-D convolution, BatchNorm to identity: ResNet's
    scheme, shared by the 2-D and 3-D backbones."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
