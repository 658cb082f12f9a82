"""The papers' training losses, on linear images compared after sRGB gamma (train.metrics).

AME-KPN (eq. 7, 8), also used for KPN (its own paper's loss):
    l(Y^, Y)  = mean (G(Y^) - G(Y))^2 + lambda * [ mean |dx G(Y^) - dx G(Y)| + mean |dy G(Y^) - dy G(Y)| ]
    L         = l(Y^, Y) + beta * alpha^t * sum_{i=1..N} l(Y^_i, Y)
  G is the sRGB gamma of ST-PAN eq. 8; dx, dy are forward differences over the valid region (no
  padding); the norms are means over pixels and the batch (the reference code's MSELoss/L1Loss), so
  the loss does not scale with the crop. The paper gives no lambda: the KPN/AME-KPN reference code
  adds the two terms with weight 1, the default here. beta = 100, alpha = 0.9998, t = the optimizer
  step (0 for the first update).

ST-PAN (eq. 9-11), also used for PAN:
    l(Y, Ygt) = mean |G(Y) - G(Ygt)|
    L         = l(Y, Ygt) + eta * gamma^m * sum_{i=1..s} l(Y_i, Ygt)
  with Y_i the group estimates of eq. 10, each normalised by its group's share of the softmax
  weights by the model (train/models/pan.py); eta = 100,
  gamma = 0.9998, m = the optimizer step.

Loss scale (kpn-train --loss-scale): "linear" is the papers' loss above. With "log" every term enters
as the batch mean of the logarithm of each burst's own loss, mean_b log l(Y_b, Ygt_b): a burst's share
of the gradient is then its relative error, not its absolute one. Why: the bar is the mean PSNR in dB
over gains 1-4, and with the papers' loss the low-noise bursts (gain 1: MSE ~1e-4) are drowned by the
high-noise ones (gain 4: ~5e-3); our KPN/AME-KPN ended under the noisy input at gain 1 (issue 8's
note). For a squared error, mean_b log MSE_b is -(ln 10 / 10) x the mean PSNR over the bursts.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .metrics import linear_to_srgb


def gradient_l1(a: Tensor, b: Tensor) -> Tensor:
    """mean |dx a - dx b| + mean |dy a - dy b| over [..., H, W] (forward differences, valid region)."""
    dxa, dxb = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    dya, dyb = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    return (dxa - dxb).abs().mean() + (dya - dyb).abs().mean()


# The per-burst forms below serve the log scale only: the linear scale keeps the global means of
# ame_kpn_basic/st_pan_basic (the same value, summed in another order), so that runs with the papers'
# loss stay bit for bit what earlier commits trained (the manifest's command lines).
def _burst_mean(x: Tensor) -> Tensor:
    """[B, ...] -> [B]: the mean over each burst's pixels."""
    return x.flatten(1).mean(dim=1)


def ame_kpn_per_burst(pred: Tensor, target: Tensor, lam: float = 1.0) -> Tensor:
    """Eq. 7 for each burst of [B, 1, H, W] linear images -> [B]."""
    gp, gt = linear_to_srgb(pred), linear_to_srgb(target)
    dx = (gp[..., :, 1:] - gp[..., :, :-1]) - (gt[..., :, 1:] - gt[..., :, :-1])
    dy = (gp[..., 1:, :] - gp[..., :-1, :]) - (gt[..., 1:, :] - gt[..., :-1, :])
    return _burst_mean((gp - gt) ** 2) + lam * (_burst_mean(dx.abs()) + _burst_mean(dy.abs()))


def st_pan_per_burst(pred: Tensor, target: Tensor) -> Tensor:
    """Eq. 9 for each burst of [B, 1, H, W] linear images -> [B]."""
    return _burst_mean((linear_to_srgb(pred) - linear_to_srgb(target)).abs())


def ame_kpn_basic(pred: Tensor, target: Tensor, lam: float = 1.0) -> Tensor:
    """Eq. 7 on [B, 1, H, W] linear images."""
    gp, gt = linear_to_srgb(pred), linear_to_srgb(target)
    return ((gp - gt) ** 2).mean() + lam * gradient_l1(gp, gt)


def st_pan_basic(pred: Tensor, target: Tensor) -> Tensor:
    """Eq. 9 on [B, 1, H, W] linear images."""
    return (linear_to_srgb(pred) - linear_to_srgb(target)).abs().mean()


@dataclass
class AnnealedLoss:
    """Base loss plus the annealed per-frame (KPN/AME-KPN) or per-group (ST-PAN/PAN) term.

    `__call__(denoised [B,1,H,W], aux [B,G,H,W], clean [B,1,H,W], step) -> (total, parts)` where parts
    holds the detached base loss, the annealed sum and its weight, for logging."""

    kind: str  # "ame-kpn" (eq. 7-8) or "st-pan" (eq. 9-11)
    coefficient: float = 100.0  # beta (AME-KPN) / eta (ST-PAN)
    decay: float = 0.9998  # alpha (AME-KPN) / gamma (ST-PAN)
    gradient_weight: float = 1.0  # lambda of eq. 7 (AME-KPN only)
    floor: float = 0.0  # the annealed term's weight never falls below this (kpn-train --anneal-floor)
    scale: str = "linear"  # LOSS_SCALES: "log" takes the batch mean of each burst's log loss (module doc)

    def base(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.scale == "log":
            per_burst = (ame_kpn_per_burst(pred, target, self.gradient_weight) if self.kind == "ame-kpn"
                         else st_pan_per_burst(pred, target))
            return per_burst.clamp_min(1e-12).log().mean()
        if self.kind == "ame-kpn":
            return ame_kpn_basic(pred, target, self.gradient_weight)
        if self.kind == "st-pan":
            return st_pan_basic(pred, target)
        raise ValueError(f"unknown loss kind {self.kind!r}")

    def weight(self, step: int) -> float:
        # decay 0: no annealed term at all (but the floor), not even at step 0, where 0**0 would be 1
        if self.decay == 0.0:
            return self.floor
        return max(self.coefficient * self.decay ** int(step), self.floor)

    def __call__(self, denoised: Tensor, aux: Tensor, clean: Tensor, step: int) -> tuple[Tensor, dict]:
        base = self.base(denoised, clean)
        w = self.weight(step)
        if w == 0.0:
            return base, {"base": float(base.detach()), "anneal": 0.0, "anneal_weight": 0.0}
        anneal = sum(self.base(aux[:, i : i + 1], clean) for i in range(aux.shape[1]))
        total = base + w * anneal
        return total, {"base": float(base.detach()), "anneal": float(anneal.detach()), "anneal_weight": w}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "coefficient": self.coefficient, "decay": self.decay,
                "gradient_weight": self.gradient_weight, "floor": self.floor, "scale": self.scale}


PAPER_DECAY = 0.9998  # alpha (AME-KPN) and gamma (ST-PAN)
LOSS_SCALES = ("linear", "log")


def loss_for_family(family: str, decay: float | None = None, floor: float = 0.0, scale: str = "linear",
                    gradient_weight: float = 1.0) -> AnnealedLoss:
    """KPN and AME-KPN train with AME-KPN's loss (eq. 7-8); ST-PAN and PAN with ST-PAN's (eq. 9-11).

    `decay` replaces the papers' 0.9998 for short runs: with it the annealed term (100 x 0.9998^t, summed
    over the N frames or s groups) still outweighs the output's own loss after 10k steps, so a run of a
    few thousand steps would fit the per-frame estimates, not the output. Decay 0: no annealed term, for
    a run that starts from trained weights (kpn-train --init-from): measured on the shipped KPN, a decay
    of 0.99 (the term over the output's loss for ~450 steps) took it from 28.95 to 24.75 dB in 250 steps.
    `floor` keeps the term's weight from falling below it: the per-frame/per-group estimates keep training every frame's kernels or
    offsets after the annealing, which a softmax that gives the reference nearly all the weight no
    longer does (issue 8's note). `scale`: one of LOSS_SCALES (module doc). `gradient_weight`: lambda of
    eq. 7, which the paper leaves open (a "regularizer"); the shipped KPN-family models trained with 1 up
    to kpn-small's step 58500 and with 0 from there on. On gamma-space images in [0, 1] the gradient term at 1 is 19-105x
    the squared error (the 58500-step kpn-small on the validation bursts, gain 4 to gain 1), so the loss
    is in effect an L1 loss on gradients, not the squared error that PSNR measures."""
    decay = PAPER_DECAY if decay is None else decay
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"annealing decay {decay} must be in [0, 1]")
    if not 0.0 <= floor <= 100.0:
        raise ValueError(f"annealing floor {floor} must be in [0, 100]")
    if scale not in LOSS_SCALES:
        raise ValueError(f"unknown loss scale {scale!r}; choose {' or '.join(LOSS_SCALES)}")
    if not 0.0 <= gradient_weight <= 100.0:
        raise ValueError(f"gradient weight {gradient_weight} must be in [0, 100]")
    if gradient_weight != 1.0 and family not in ("kpn", "ame-kpn"):
        raise ValueError(f"the gradient weight is lambda of AME-KPN's eq. 7; {family}'s loss (ST-PAN eq. 9) has no gradient term")
    if family in ("kpn", "ame-kpn"):
        return AnnealedLoss("ame-kpn", coefficient=100.0, decay=decay, gradient_weight=gradient_weight, floor=floor, scale=scale)
    if family in ("st-pan", "pan"):
        return AnnealedLoss("st-pan", coefficient=100.0, decay=decay, floor=floor, scale=scale)
    raise ValueError(f"unknown model family {family!r}")
