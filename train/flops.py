"""Model size and cost: parameters, and FLOPs counted by PyTorch's own ``FlopCounterMode``.

FLOPs here are floating-point operations of the matrix products and convolutions (a
multiply-add counts 2), not MACs: GMACs = FLOPs / 2 / 1e9, the figure most papers quote
as "GFLOPs" (S1's 5.3 GFLOPs, torchvision's 1.8 for ResNet-18 at 224). Elementwise ops,
normalisation and pooling are not counted (a few percent at most for these models)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass of ``model`` (in eval mode, restored after) on ``inputs``.
    Works on the meta device too: shapes are all it needs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
