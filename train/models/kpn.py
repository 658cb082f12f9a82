"""KPN (Mildenhall et al. 2018) and AME-KPN (attention, residual and weight branches, eq. 1-4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops import adaptive_conv
from .blocks import UNet, channel_softmax
from .config import KPNConfig


class KernelPredictionNet(nn.Module):
    """Predicts N per-pixel KxK kernels from the N frames and the noise map.

    KPN:     Y_i = X_i (*) K_i;                                   Y = mean_i Y_i
    AME-KPN: Y_i = sigmoid(W_i) * (X_i (*) K_i) + (1 - sigmoid(W_i)) * R_i   (eq. 4)
    cfg.kernels: K = N * softmax of the head's output z over all N*K*K taps of a pixel ("softmax"), z
    projected onto sum(K) = N ("projected"), or z itself ("raw", the papers'); see KPNConfig.
    """

    def __init__(self, cfg: KPNConfig):
        super().__init__()
        self.cfg = cfg
        n, k = cfg.frames, cfg.kernel_size
        self.backbone = UNet(n + 1, cfg.widths, cfg.convs_per_block, attention=cfg.attention)
        f = cfg.widths[0]
        if cfg.attention:
            self.kernel_residual_head = nn.Conv2d(f, n * k * k + n, 3, padding=1)  # M_kr: [K, R]
            self.weight_head = nn.Conv2d(f, n, 3, padding=1)  # M_w
        else:
            self.kernel_head = nn.Conv2d(f, n * k * k, 3, padding=1)
        self._init_identity_kernels()

    # Initial softmax kernels: each frame's weight sits 69% on its centre pixel (logit 4 against 0 for
    # the other K*K-1 taps, for K = 5), and the reference frame holds half of the pixel's weight. So an
    # untrained net outputs (about) half the noisy reference plus half the mean of the other frames.
    # Why not the burst mean (equal shares, as before): our bursts are misaligned by up to 16 px, their
    # mean is a blur at 19 dB, where KPN sat for 1000+ CPU steps. Measured (issue 8, same run otherwise):
    # 21.37 dB at step 1000 with this init against 21.01 with equal shares, a small head start.
    SOFTMAX_CENTRE_LOGIT = 4.0
    INITIAL_REFERENCE_SHARE = 0.5
    PROJECTED_SHARE_FLOOR = 0.05  # divisor floor of a projected-kernel frame's estimate (below: _run)

    def _init_identity_kernels(self) -> None:
        """Start every predicted kernel as (close to) the identity, so that the untrained net outputs a
        sensible image: with default init the raw kernels' sums are far from 1 and the first losses are
        ~1000x the noise level, which costs thousands of CPU steps.
        Raw kernels (the papers'): zero weights, centre-tap bias 1, the same for every frame (exactly the
        burst mean). Softmax kernels: zero weights, centre logits as above, the reference's raised so it
        holds INITIAL_REFERENCE_SHARE of the weight. Projected kernels: zero weights, centre-tap biases
        that give the reference the same share and the other frames equal shares (they sum to N, so the
        projection leaves them as they are)."""
        n, k2 = self.cfg.frames, self.cfg.kernel_size**2
        head = self.kernel_residual_head if self.cfg.attention else self.kernel_head
        with torch.no_grad():
            head.weight[: n * k2].zero_()
            head.bias[: n * k2].zero_()
            centres = head.bias[: n * k2].view(n, k2)[:, k2 // 2]
            if self.cfg.kernels == "softmax":
                centres.fill_(self.SOFTMAX_CENTRE_LOGIT)
                centres[self.cfg.reference_index] = self.reference_centre_logit(n, k2)
            elif self.cfg.kernels == "projected":
                share = self.INITIAL_REFERENCE_SHARE
                centres.fill_(n * (1.0 - share) / (n - 1))
                centres[self.cfg.reference_index] = n * share
            else:
                centres.fill_(1.0)

    @classmethod
    def reference_centre_logit(cls, frames: int, taps: int) -> float:
        """Centre logit c_r giving the reference frame INITIAL_REFERENCE_SHARE of the softmax weight:
        its frame sums to e^c_r + taps - 1, each other frame to e^c + taps - 1 (c = SOFTMAX_CENTRE_LOGIT)."""
        share = cls.INITIAL_REFERENCE_SHARE
        other = math.exp(cls.SOFTMAX_CENTRE_LOGIT) + taps - 1
        reference = share * (frames - 1) * other / (1.0 - share)
        return math.log(reference - (taps - 1))

    def forward_train(self, burst: Tensor, noise_map: Tensor) -> tuple[Tensor, Tensor]:
        """-> (denoised [B,1,H,W], per-frame estimates Y_i [B,N,H,W] for the annealed loss term)."""
        return self._run(burst, noise_map, with_estimates=True)

    def forward(self, burst: Tensor, noise_map: Tensor) -> Tensor:
        # inference (and export) skips the estimates: a reduction over every kernel tap it does not need
        return self._run(burst, noise_map, with_estimates=False)[0]

    def _run(self, burst: Tensor, noise_map: Tensor, with_estimates: bool) -> tuple[Tensor, Tensor | None]:
        b, n, h, w = burst.shape
        k2 = self.cfg.kernel_size**2
        features = self.backbone(torch.cat([burst, noise_map], dim=1))
        if self.cfg.attention:
            kr = self.kernel_residual_head(features)
            kernels, residuals = kr[:, : n * k2], kr[:, n * k2 :]
        else:
            kernels = self.kernel_head(features)
        if self.cfg.kernels == "softmax":
            kernels = channel_softmax(kernels) * n
        elif self.cfg.kernels == "projected":
            kernels = kernels + (n - kernels.sum(dim=1, keepdim=True)) / (n * k2)
        kernels = kernels.reshape(b, n, k2, h, w)
        filtered = adaptive_conv(burst.unsqueeze(2), kernels, self.cfg.kernel_size).squeeze(2)
        # Per-frame estimates for the annealed loss term: with normalised kernels a frame's kernel sums to
        # its share of the pixel's weight (the shares sum to N), so X_i (*) K_i alone is that share
        # times an estimate. Dividing by the share makes Y_i frame i's own estimate; without it, the
        # annealed term pinned every share at 1 and held the output at the burst mean until it faded
        # (measured: 1750 steps at 19 dB with decay 0.997). Projected kernels' shares may approach 0 or
        # go negative; the floor keeps such a frame's estimate finite. Raw kernels are the papers' Y_i.
        estimates = None
        if with_estimates:
            if self.cfg.kernels == "raw":
                estimates = filtered
            else:
                floor = self.PROJECTED_SHARE_FLOOR if self.cfg.kernels == "projected" else 1e-20
                estimates = filtered / kernels.sum(dim=2).clamp_min(floor)
        if self.cfg.attention:
            weights = torch.sigmoid(self.weight_head(features))
            filtered = weights * filtered + (1.0 - weights) * residuals
            if with_estimates:
                estimates = weights * estimates + (1.0 - weights) * residuals
        return filtered.mean(dim=1, keepdim=True), estimates
