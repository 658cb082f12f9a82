"""Estimating the noise parameters (sigma_r, sigma_s) of a burst: var(x) = sigma_r^2 + sigma_s * y.

Method (after Foi et al. 2008, "Practical Poissonian-Gaussian noise modeling", simplified):
  1. per frame, a high-pass residual with Immerkaer's 3x3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] / 6,
     which cancels constant, linear and quadratic-ish local signal and, for independent noise of
     local variance v, has variance v (the kernel's squared norm is 36);
  2. the local intensity of each residual sample: the 3x3 mean of the same frame;
  3. samples binned by intensity (equal-count bins); per bin a robust variance
     (1.4826 * median |r|)^2, which ignores the minority of samples on edges and texture;
  4. a weighted least-squares line var = a + b * mean over the bins (weights 1/var^2: each bin's
     relative error is about the same), refit twice without bins more than 3 robust deviations off.
sigma_r = sqrt(a), sigma_s = b, each floored at a tiny positive value.
Every frame contributes (more samples than the reference alone); samples near clipped values of
integer images are left out. Big frames are subsampled to a fixed budget, so the cost is bounded.
"""

from __future__ import annotations

import numpy as np

MIN_SIGMA_R = 1e-4
MIN_SIGMA_S = 1e-6
MAX_SAMPLES = 1_000_000
FLAT_FRACTION = 0.15  # per intensity bin, the samples of lowest signal activity used


def _box(f: np.ndarray, k: int) -> np.ndarray:
    """k x k mean, 'same' size (edge-padded), via cumulative sums."""
    p = k // 2
    g = np.pad(f, p, mode="edge")
    c = np.cumsum(np.cumsum(g, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    H, W = f.shape
    return (c[k : k + H, k : k + W] - c[:H, k : k + W] - c[k : k + H, :W] + c[:H, :W]) / (k * k)


def _highpass(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> residual, local mean, local min, local max (3x3 'valid'), local signal activity."""
    f = frame.astype(np.float64, copy=False)
    H, W = f.shape
    s = lambda dy, dx: f[1 + dy : H - 1 + dy, 1 + dx : W - 1 + dx]  # noqa: E731
    corners = s(-1, -1) + s(-1, 1) + s(1, -1) + s(1, 1)
    edges = s(-1, 0) + s(1, 0) + s(0, -1) + s(0, 1)
    centre = s(0, 0)
    residual = (corners - 2 * edges + 4 * centre) / 6.0
    mean = (corners + edges + centre) / 9.0
    stack = np.stack([s(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    # signal activity: gradient of a 5x5 mean (noise shrinks 5x, edges and texture stay), pooled 5x5
    sm = _box(f, 5)
    gy, gx = np.gradient(sm)
    act = _box(np.hypot(gy, gx), 5)[1:-1, 1:-1]
    return residual, mean, stack.min(0), stack.max(0), act


def estimate_noise(frames: np.ndarray, clip_low: float | None = 0.0, clip_high: float | None = 1.0,
                   bins: int = 24, seed: int = 0) -> tuple[float, float]:
    """frames [N, H, W] linear intensities (one channel) -> (sigma_r, sigma_s)."""
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    n, H, W = frames.shape
    if H < 8 or W < 8:
        raise ValueError("frames too small to estimate noise")
    # bounded cost: a centred crop per frame so that all frames together stay within MAX_SAMPLES
    per_frame = max(MAX_SAMPLES // n, 64 * 64)
    side = int(np.sqrt(per_frame))
    ch, cw = min(H, side), min(W, side)
    y0, x0 = (H - ch) // 2, (W - cw) // 2
    rs, ms, acts = [], [], []
    for f in frames:
        r, m, lo, hi, act = _highpass(f[y0 : y0 + ch, x0 : x0 + cw])
        keep = np.ones_like(r, dtype=bool)
        if clip_low is not None:
            keep &= lo > clip_low
        if clip_high is not None:
            keep &= hi < clip_high
        rs.append(r[keep].astype(np.float32))
        ms.append(m[keep].astype(np.float32))
        acts.append(act[keep].astype(np.float32))
    r = np.concatenate(rs)
    m = np.concatenate(ms)
    act = np.concatenate(acts)
    if r.size < 1000:
        raise ValueError("too few unclipped pixels to estimate noise")
    order = np.argsort(m, kind="stable")
    r, m, act = r[order], m[order], act[order]
    edges = np.linspace(0, r.size, bins + 1).astype(int)
    means, variances = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a < 100:
            continue
        flat = act[a:b] <= np.quantile(act[a:b], FLAT_FRACTION)  # the flattest part of the bin
        means.append(m[a:b][flat].mean())
        variances.append((np.median(np.abs(r[a:b][flat])) / 0.6744897501960817) ** 2)
    x, v = np.asarray(means), np.asarray(variances)
    keep = np.ones(x.size, dtype=bool)
    a_hat, b_hat = float(np.median(v)), 0.0
    for _ in range(3):
        w = 1.0 / np.maximum(v[keep], 1e-20)
        A = np.stack([np.ones(keep.sum()), x[keep]], 1) * w[:, None]
        coef, *_ = np.linalg.lstsq(A, v[keep] * w, rcond=None)
        a_hat, b_hat = float(coef[0]), float(coef[1])
        rel = (v - (a_hat + b_hat * x)) / np.maximum(v, 1e-20)
        mad = 1.4826 * np.median(np.abs(rel[keep] - np.median(rel[keep]))) + 1e-12
        new = np.abs(rel - np.median(rel[keep])) <= 3 * mad
        if new.sum() < 4 or (new == keep).all():
            break
        keep = new
    if b_hat < 0:  # no signal dependence visible: all variance is read noise
        a_hat, b_hat = float(np.average(v[keep])), 0.0
    sigma_r = float(np.sqrt(max(a_hat, MIN_SIGMA_R**2)))
    sigma_s = float(max(b_hat, MIN_SIGMA_S))
    return sigma_r, sigma_s
