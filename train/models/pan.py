"""ST-PAN (spatio-temporal pixel aggregation, Xu et al.) and PAN, its single-frame case."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from ..ops import trilinear_sample
from .blocks import UNet, channel_softmax, conv_stack
from .config import PANConfig


class PixelAggregationNet(nn.Module):
    """Offset network (U-Net) -> S residual 3-D offsets around a regular grid (tanh-scaled);
    trilinear sampling through kpn::trilinear_sample; a three-convolution weight branch fed with the
    samples, the input and the offset network's features; Y = sum_i X(p + v_i) F_i (eq. 6).

    The weights are a softmax over the S samples (the paper leaves them unnormalised); this keeps
    the output on the image's scale from the first step, which short CPU trainings need.
    """

    def __init__(self, cfg: PANConfig):
        super().__init__()
        self.cfg = cfg
        t, s = cfg.frames, cfg.samples
        self.backbone = UNet(t + 1, cfg.widths, cfg.convs_per_block)
        f = cfg.widths[0]
        self.offset_head = nn.Conv2d(f, 3 * s, 3, padding=1)
        ww = cfg.weight_width
        self.weight_branch = nn.Sequential(
            conv_stack(s + t + 1 + f, ww, 2), nn.Conv2d(ww, s, 3, padding=1)
        )
        gt, gy, gx = cfg.grid
        grid = [
            (dt - gt // 2, dy - gy // 2, dx - gx // 2)
            for dt, dy, dx in itertools.product(range(gt), range(gy), range(gx))
        ]
        self.register_buffer("regular_grid", torch.tensor(grid, dtype=torch.float32).view(1, s, 3, 1, 1), persistent=False)
        # Temporal offsets reach the clip's ends from the reference; spatial ones offset_scale pixels.
        temporal = float((t - 1) / 2)
        self.register_buffer(
            "offset_scale",
            torch.tensor([temporal, cfg.offset_scale, cfg.offset_scale], dtype=torch.float32).view(1, 1, 3, 1, 1),
            persistent=False,
        )

    def forward_train(self, burst: Tensor, noise_map: Tensor) -> tuple[Tensor, Tensor]:
        """-> (denoised [B,1,H,W], group estimates Y_i of eq. 10 [B,groups,H,W])."""
        return self._run(burst, noise_map, with_estimates=True)

    def forward(self, burst: Tensor, noise_map: Tensor) -> Tensor:
        # inference (and export) skips the group estimates, which only the annealed loss term uses
        return self._run(burst, noise_map, with_estimates=False)[0]

    def _run(self, burst: Tensor, noise_map: Tensor, with_estimates: bool) -> tuple[Tensor, Tensor | None]:
        b, t, h, w = burst.shape
        s, g = self.cfg.samples, self.cfg.groups
        x = torch.cat([burst, noise_map], dim=1)
        features = self.backbone(x)
        residual = torch.tanh(self.offset_head(features)).view(b, s, 3, h, w)
        offsets = residual * self.offset_scale.to(burst.dtype) + self.regular_grid.to(burst.dtype)
        samples = trilinear_sample(burst.unsqueeze(1), offsets, self.cfg.reference_index).squeeze(1)  # [B,S,H,W]
        weights = channel_softmax(self.weight_branch(torch.cat([samples, x, features], dim=1)))
        weighted = samples * weights
        # Group estimates (eq. 10) for the annealed term: each group's weighted sum divided by the
        # group's own share of the softmax weight, so that a group is an estimate by itself whatever
        # share the output gives it (the papers' unnormalised weights make no such distinction;
        # multiplying by g instead pinned every share at 1/g while the term was large).
        groups = None
        if with_estimates:
            shares = weights.view(b, g, s // g, h, w).sum(dim=2).clamp_min(1e-20)
            groups = weighted.view(b, g, s // g, h, w).sum(dim=2) / shares
        return weighted.sum(dim=1, keepdim=True), groups
