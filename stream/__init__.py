"""hepascope.stream: the live path from frame grabber to overlay.

Imports and runs without torch: an inference box needs no training stack.
"""

from hepascope.core.errors import (
    ConfigError,
    HepascopeError,
    ModelError,
    ModelInputError,
    SourceError,
    SourceNotFoundError,
    SourceTimeoutError,
)
from hepascope.core.frame import Frame

__all__ = [
    "ConfigError",
    "Frame",
    "HepascopeError",
    "ModelError",
    "ModelInputError",
    "SourceError",
    "SourceNotFoundError",
    "SourceTimeoutError",
]
