"""The model families. `build_model(config)` rebuilds any of them from its config alone."""

from __future__ import annotations

from torch import nn

from .config import (
    FAMILIES,
    KERNEL_FORMS,
    WIDTHS,
    KPNConfig,
    ModelConfig,
    PANConfig,
    config_from_dict,
    config_sha256,
    default_config,
)
from .kpn import KernelPredictionNet
from .pan import PixelAggregationNet

__all__ = [
    "FAMILIES",
    "KERNEL_FORMS",
    "WIDTHS",
    "KPNConfig",
    "PANConfig",
    "ModelConfig",
    "build_model",
    "config_from_dict",
    "config_sha256",
    "default_config",
    "count_parameters",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    if isinstance(cfg, KPNConfig):
        return KernelPredictionNet(cfg)
    if isinstance(cfg, PANConfig):
        return PixelAggregationNet(cfg)
    raise TypeError(f"not a model config: {cfg!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
