"""Backbones: any Hugging Face language model as a vision backbone, and freezing by named groups."""
from .arch import (ARCH, IMAGE_ARCH, TINY_CONFIGS, TINY_IMAGE_CONFIGS, ArchSpec, ImageSpec, arch_for,
                   image_arch_for, tiny_config)
from .backbone import ModelConfig, PatchEmbed, VisionBackbone, check_model_config
from .factory import (DEFAULT_MODEL, create_backbone, embedded_minilm_path, export_model_section, exported_config,
                      load_lm_config, model_preprocessing)
from .freeze import TrainableSpec, apply_trainable, parse_blocks, select_parameters, trainable_summary
from .image import ImageBackbone, Preprocessing
from .hub import HubBackbone, HubImageBackbone, HubMixin, create_model, preprocessing, to_hub

__all__ = [
    "ARCH", "TINY_CONFIGS", "ArchSpec", "arch_for", "ModelConfig", "PatchEmbed", "VisionBackbone",
    "check_model_config", "DEFAULT_MODEL", "create_backbone", "embedded_minilm_path", "export_model_section",
    "exported_config", "load_lm_config", "TrainableSpec", "apply_trainable", "parse_blocks", "select_parameters",
    "trainable_summary", "HubBackbone", "HubImageBackbone", "HubMixin", "create_model", "preprocessing", "to_hub",
    # image models
    "IMAGE_ARCH", "TINY_IMAGE_CONFIGS", "tiny_config", "ImageSpec", "image_arch_for", "ImageBackbone", "Preprocessing", "model_preprocessing",
]
