"""sRGB gamma (ST-PAN eq. 8) and its inverse, and the quality metrics (PSNR, SSIM) in gamma space.

The models work on linear intensities; losses and metrics compare images after the sRGB transfer
function, as both papers do ("errors in darker regions are emphasised"). Every function takes numpy
arrays or torch tensors and returns the same kind.
"""

from __future__ import annotations

import numpy as np
import torch

# ST-PAN eq. 8: phi(Y) = 12.92 Y for Y <= 0.0031308, (1 + a) Y^(1/2.4) - a otherwise, a = 0.055.
SRGB_ALPHA = 0.055
SRGB_THRESHOLD = 0.0031308
# The inverse's threshold in the encoded domain: 12.92 * 0.0031308.
SRGB_THRESHOLD_ENCODED = 0.04045


def linear_to_srgb(y):
    """Gamma correction phi of ST-PAN eq. 8 (linear -> sRGB-encoded). Values <= threshold, negatives
    included, take the linear branch; the power branch is evaluated on a clamped copy so that its
    gradient is finite everywhere."""
    if isinstance(y, torch.Tensor):
        power = (1 + SRGB_ALPHA) * torch.clamp(y, min=SRGB_THRESHOLD) ** (1 / 2.4) - SRGB_ALPHA
        return torch.where(y <= SRGB_THRESHOLD, 12.92 * y, power)
    y = np.asarray(y)
    power = (1 + SRGB_ALPHA) * np.maximum(y, SRGB_THRESHOLD) ** (1 / 2.4) - SRGB_ALPHA
    return np.where(y <= SRGB_THRESHOLD, 12.92 * y, power).astype(np.result_type(y, np.float32), copy=False)


def srgb_to_linear(x):
    """Inverse of `linear_to_srgb` (sRGB-encoded -> linear intensities)."""
    if isinstance(x, torch.Tensor):
        power = ((torch.clamp(x, min=SRGB_THRESHOLD_ENCODED) + SRGB_ALPHA) / (1 + SRGB_ALPHA)) ** 2.4
        return torch.where(x <= SRGB_THRESHOLD_ENCODED, x / 12.92, power)
    x = np.asarray(x)
    power = ((np.maximum(x, SRGB_THRESHOLD_ENCODED) + SRGB_ALPHA) / (1 + SRGB_ALPHA)) ** 2.4
    return np.where(x <= SRGB_THRESHOLD_ENCODED, x / 12.92, power).astype(np.result_type(x, np.float32), copy=False)


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def psnr_gamma(pred_linear, target_linear) -> float:
    """PSNR in dB between two linear images after clipping to [0, 1] and sRGB gamma (peak 1)."""
    p = linear_to_srgb(np.clip(_to_numpy(pred_linear), 0.0, 1.0))
    t = linear_to_srgb(np.clip(_to_numpy(target_linear), 0.0, 1.0))
    mse = float(np.mean((p - t) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def ssim_gamma(pred_linear, target_linear) -> float:
    """SSIM (skimage, Wang et al. 2004 defaults, data range 1) of two single-channel linear images
    [H, W] (or [1, H, W]) after clipping to [0, 1] and sRGB gamma."""
    from skimage.metrics import structural_similarity

    p = linear_to_srgb(np.clip(_to_numpy(pred_linear), 0.0, 1.0)).squeeze()
    t = linear_to_srgb(np.clip(_to_numpy(target_linear), 0.0, 1.0)).squeeze()
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"ssim_gamma wants two single-channel images of one shape, got {p.shape} and {t.shape}")
    return float(structural_similarity(p, t, data_range=1.0))
