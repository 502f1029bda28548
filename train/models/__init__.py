"""Models, the timm way: ``forward_features`` / ``forward_head``, attention passed in as a
layer type, variants as short registered constructors (``create_model(name)``)."""

from hepascope.train.models import bimodal, clip3d, inception, resnet, vgg  # noqa: F401
from hepascope.train.models.registry import (
    create_model,
    example_inputs,
    list_models,
    model_kind,
    register_model,
)

__all__ = ["create_model", "example_inputs", "list_models", "model_kind", "register_model"]
