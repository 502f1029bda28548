"""Models, the timm way: ``forward_features`` / ``forward_head``, attention passed in as a
layer type, variants as short registered constructors (``create_model(name)``)."""

from hepascope.train.models import bimodal, resnet  # noqa: F401  (registers the variants)
from hepascope.train.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
