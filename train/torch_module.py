"""A graph's PyTorch module prepared for inference, as the export step writes it into the
``torch.export`` programs the torch engine runs (``programs.py``).

BatchNorm is folded into the convolution before it (as ONNX Runtime and TensorRT do) and
the pooling matrices of ``StaticAdaptiveAvgPool`` stay on the device. fp16 keeps two
things in fp32: SimAM (its squared deviations overflow fp16 once an activation is 256 from
its channel's mean) and the fusion head (the engine's choice: a few small matrix products,
fp16 saves nothing there)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hepascope.train.models.layers import SimAM, StaticAdaptiveAvgPool, pool_matrix


class _Fp32(nn.Module):
    """Runs ``inner`` in fp32 inside a half-precision model, returning the input's dtype."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)


class _DevicePool(nn.Module):
    """``StaticAdaptiveAvgPool`` (same bins, same products) with its averaging matrices
    kept on the activations' device. The layer builds them on the CPU and copies them over
    on every call: a blocking host copy each frame, which a CUDA graph cannot capture.
    Here they are made during warm-up and reused."""

    def __init__(self, pool: StaticAdaptiveAvgPool) -> None:
        super().__init__()
        self.output_size: tuple[int, ...] = pool.output_size
        self._mats: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}

    def _matrix(self, n_in: int, n_out: int, x: torch.Tensor) -> torch.Tensor:
        key = (n_in, n_out, x.device, x.dtype)
        if key not in self._mats:
            self._mats[key] = pool_matrix(n_in, n_out).to(x.device, x.dtype).t().contiguous()
        return self._mats[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last, k = x.dim() - 1, len(self.output_size)
        for i, n_out in enumerate(self.output_size):
            d = last - k + 1 + i
            n_in = int(x.shape[d])
            if n_in != n_out:
                x = torch.matmul(x.transpose(d, last), self._matrix(n_in, n_out, x)
                                 ).transpose(d, last)
        return x


def _replace(module: nn.Module, kind: type[nn.Module], make: Any) -> None:
    """Every ``kind`` child anywhere in ``module`` replaced by ``make(child)``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, make(child))


def _channels_last(module: nn.Module) -> None:
    """NHWC (NDHWC) weights for every 2-D (3-D) convolution: what cuDNN's tensor-core
    kernels read. ``Module.to(memory_format=...)`` refuses models with both ranks."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d):
            fmt = torch.channels_last if isinstance(m, nn.Conv2d) else torch.channels_last_3d
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold each BatchNorm that directly follows a convolution in a ``Sequential`` into
    that convolution's weights (eval mode), as ONNX Runtime and TensorRT do: the same
    function, one kernel and one pass over the activations fewer. Returns how many."""
    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if (isinstance(conv, nn.Conv2d | nn.Conv3d)
                    and isinstance(bn, nn.BatchNorm2d | nn.BatchNorm3d)
                    and bn.track_running_stats):
                seq[i] = nn.utils.fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


def prepare_module(module: nn.Module, *, device: str, fp16: bool,
                   channels_last: bool) -> nn.Module:
    """``module`` in eval mode on ``device``, BatchNorm folded, pooling matrices kept on
    the device; with ``fp16``, in half precision except SimAM, which stays fp32 (see the
    module doc)."""
    module = module.eval()
    fold_batchnorm(module)
    _replace(module, StaticAdaptiveAvgPool, _DevicePool)
    module = module.to(device)
    if fp16:
        module.half()
        _replace(module, SimAM, _Fp32)
    if channels_last:
        _channels_last(module)
    return module
