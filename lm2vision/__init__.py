"""lm2vision: language-pretrained transformers as vision backbones.

``lm2vision.create_model(name_or_path, pretrained=True, num_classes=None, **model_kwargs)`` builds one,
timm-style (see :func:`lm2vision.models.hub.create_model`). Importing the package itself stays light
(the ``lm2v`` command imports torch only inside its main); the models load on first use.
"""
from __future__ import annotations

__all__ = ["create_model", "HubBackbone", "VisionBackbone", "ModelConfig"]


def __getattr__(name: str):
    if name in __all__:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'lm2vision' has no attribute {name!r}")
