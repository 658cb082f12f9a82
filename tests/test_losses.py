"""The training losses against AME-KPN eq. 7-8 and ST-PAN eq. 9-11, computed independently with
Python loops over small tensors."""

import math

import pytest
import torch

from train.losses import AnnealedLoss, ame_kpn_basic, loss_for_family, st_pan_basic


def gamma(v: float) -> float:
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def img(t):  # [1,1,H,W] -> nested lists of gamma'd values
    return [[gamma(float(v)) for v in row] for row in t[0, 0]]


def eq7(pred, target, lam):
    p, g = img(pred), img(target)
    H, W = len(p), len(p[0])
    l2 = sum((p[y][x] - g[y][x]) ** 2 for y in range(H) for x in range(W)) / (H * W)
    gx = sum(abs((p[y][x + 1] - p[y][x]) - (g[y][x + 1] - g[y][x])) for y in range(H) for x in range(W - 1)) / (H * (W - 1))
    gy = sum(abs((p[y + 1][x] - p[y][x]) - (g[y + 1][x] - g[y][x])) for y in range(H - 1) for x in range(W)) / ((H - 1) * W)
    return l2 + lam * (gx + gy)


def eq9(pred, target):
    p, g = img(pred), img(target)
    H, W = len(p), len(p[0])
    return sum(abs(p[y][x] - g[y][x]) for y in range(H) for x in range(W)) / (H * W)


def sample(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 1.1 - 0.02  # a few negatives and > 1


def test_eq7_basic_loss():
    pred, target = sample(0, (1, 1, 5, 6)), sample(1, (1, 1, 5, 6))
    for lam in (0.0, 1.0, 2.5):
        assert float(ame_kpn_basic(pred, target, lam)) == pytest.approx(eq7(pred, target, lam), rel=1e-12)


def test_eq9_basic_loss():
    pred, target = sample(2, (1, 1, 4, 7)), sample(3, (1, 1, 4, 7))
    assert float(st_pan_basic(pred, target)) == pytest.approx(eq9(pred, target), rel=1e-12)


@pytest.mark.parametrize("step", [0, 1, 5000])
def test_eq8_annealed_total(step):
    target, pred = sample(4, (1, 1, 5, 5)), sample(5, (1, 1, 5, 5))
    aux = sample(6, (1, 3, 5, 5))
    loss = loss_for_family("ame-kpn")
    total, parts = loss(pred, aux, target, step)
    expect = eq7(pred, target, 1.0) + 100 * 0.9998**step * sum(eq7(aux[:, i : i + 1], target, 1.0) for i in range(3))
    assert float(total) == pytest.approx(expect, rel=1e-12)
    assert parts["anneal_weight"] == pytest.approx(100 * 0.9998**step)
    assert loss_for_family("kpn") == loss


@pytest.mark.parametrize("step", [0, 20000])
def test_eq11_annealed_total(step):
    target, pred = sample(7, (1, 1, 4, 5)), sample(8, (1, 1, 4, 5))
    aux = sample(9, (1, 3, 4, 5))
    total, _ = loss_for_family("st-pan")(pred, aux, target, step)
    expect = eq9(pred, target) + 100 * 0.9998**step * sum(eq9(aux[:, i : i + 1], target) for i in range(3))
    assert float(total) == pytest.approx(expect, rel=1e-12)
    assert loss_for_family("pan") == loss_for_family("st-pan")


def test_batch_mean_and_finite_gradients_at_zero_and_negative():
    t = sample(10, (2, 1, 4, 4))
    p = sample(11, (2, 1, 4, 4))
    p[0, 0, 0, 0] = 0.0
    p[1, 0, 1, 1] = -0.5
    p.requires_grad_(True)
    each = [eq7(p[i : i + 1].detach(), t[i : i + 1], 1.0) for i in range(2)]
    val = ame_kpn_basic(p, t, 1.0)
    assert float(val.detach()) == pytest.approx(sum(each) / 2, rel=1e-12)  # equal-size items: mean of means
    val.backward()
    assert torch.isfinite(p.grad).all()
    assert torch.autograd.gradcheck(lambda x: st_pan_basic(x, t), (p.detach().clone().requires_grad_(),))


def test_unknown_kind():
    with pytest.raises(ValueError):
        AnnealedLoss("nope").base(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError):
        loss_for_family("unet")


def test_anneal_decay_override_for_short_runs():
    """--anneal-decay replaces the papers' 0.9998 in both losses; the annealed weight is 100 x decay^t."""
    assert loss_for_family("kpn").weight(10_000) == pytest.approx(100 * 0.9998**10_000)
    short = loss_for_family("ame-kpn", 0.997)
    assert short.weight(0) == 100.0 and short.weight(2000) == pytest.approx(100 * 0.997**2000)
    assert loss_for_family("st-pan", 0.997).decay == 0.997
    with pytest.raises(ValueError, match="must be in"):
        loss_for_family("kpn", 1.5)


def test_anneal_decay_zero_is_the_base_loss_alone_from_step_0():
    """--anneal-decay 0 (runs from trained weights): no annealed term, not even at step 0 (0**0 = 1)."""
    off = loss_for_family("kpn", 0.0)
    assert off.weight(0) == 0.0 and off.weight(5) == 0.0
    target, pred, aux = sample(7, (1, 1, 4, 5)), sample(8, (1, 1, 4, 5)), sample(9, (1, 8, 4, 5))
    total, parts = off(pred, aux, target, 0)
    assert float(total) == pytest.approx(eq7(pred, target, 1.0), rel=1e-12) and parts["anneal_weight"] == 0.0
    assert loss_for_family("kpn", 0.0, floor=0.3).weight(0) == 0.3


def test_anneal_floor_holds_the_annealed_weight():
    """--anneal-floor F: weight max(100 x decay^t, F), in the total as eq. 11 with that weight."""
    held = loss_for_family("st-pan", 0.997, floor=0.3)
    assert held.weight(0) == 100.0 and held.weight(1000) == pytest.approx(100 * 0.997**1000)
    assert 100 * 0.997**3000 < 0.3 and held.weight(3000) == 0.3 and held.weight(12500) == 0.3
    target, pred, aux = sample(7, (1, 1, 4, 5)), sample(8, (1, 1, 4, 5)), sample(9, (1, 3, 4, 5))
    total, _ = held(pred, aux, target, 12500)
    expect = eq9(pred, target) + 0.3 * sum(eq9(aux[:, i : i + 1], target) for i in range(3))
    assert float(total) == pytest.approx(expect, rel=1e-12)
    with pytest.raises(ValueError, match="floor"):
        loss_for_family("kpn", 0.997, floor=-1)


@pytest.mark.parametrize("family,per_item", [("kpn", lambda p, t: eq7(p, t, 1.0)), ("st-pan", eq9)])
def test_log_loss_scale_is_the_batch_mean_of_each_bursts_log_loss(family, per_item):
    """--loss-scale log: every term is mean_b log l(Y_b, Ygt_b), the annealed ones included (weight as before)."""
    target, pred, aux = sample(12, (3, 1, 4, 5)), sample(13, (3, 1, 4, 5)), sample(14, (3, 2, 4, 5))
    loss = loss_for_family(family, 0.997, floor=0.2, scale="log")
    total, parts = loss(pred, aux, target, 100)

    def log_mean(p):
        return sum(math.log(per_item(p[b : b + 1], target[b : b + 1])) for b in range(3)) / 3

    w = 100 * 0.997**100
    expect = log_mean(pred) + w * sum(log_mean(aux[:, i : i + 1]) for i in range(2))
    assert float(total) == pytest.approx(expect, rel=1e-12)
    assert parts["base"] == pytest.approx(log_mean(pred), rel=1e-12)
    # the linear scale (the papers') is the mean of the same per-burst losses, not of their logs
    linear, _ = loss_for_family(family, 0.997, floor=0.2)(pred, aux, target, 100)
    assert float(linear) == pytest.approx(sum(per_item(pred[b : b + 1], target[b : b + 1]) for b in range(3)) / 3
                                          + w * sum(per_item(aux[b : b + 1, i : i + 1], target[b : b + 1])
                                                    for b in range(3) for i in range(2)) / 3, rel=1e-12)
    assert loss.to_dict()["scale"] == "log"
    with pytest.raises(ValueError, match="unknown loss scale 'db'"):
        loss_for_family(family, scale="db")


def test_log_loss_scale_weighs_a_burst_by_its_relative_error():
    """The log scale's gradient for a burst is the linear scale's divided by that burst's loss l_b: a
    burst with 10x less error is no longer 10x quieter."""
    target = sample(15, (2, 1, 4, 4))
    pred = target.clone()
    pred[0] += 0.001  # low-noise burst: small error
    pred[1] += 0.01  # high-noise burst: 10x the error
    grads = {}
    for scale in ("linear", "log"):
        p = pred.clone().requires_grad_(True)
        loss_for_family("st-pan", scale=scale).base(p, target).backward()
        grads[scale] = p.grad
    losses = [eq9(pred[b : b + 1], target[b : b + 1]) for b in range(2)]
    assert losses[1] / losses[0] > 5
    for b in range(2):
        assert torch.allclose(grads["log"][b], grads["linear"][b] / losses[b], rtol=1e-9, atol=0)


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_gradient_weight_is_lambda_of_eq7(scale):
    """kpn-train --gradient-weight: the KPN-family loss is eq. 7 with that lambda (0: the squared error alone)."""
    pred, target = sample(10, (2, 1, 5, 6)), sample(11, (2, 1, 5, 6))
    for lam in (0.0, 0.01, 1.0):
        loss = loss_for_family("kpn", decay=0.0, scale=scale, gradient_weight=lam)
        per_burst = [eq7(pred[b : b + 1], target[b : b + 1], lam) for b in range(2)]
        # log: the mean of each burst's log loss; linear: global means, the same as the two bursts' mean (equal sizes)
        expected = (sum(math.log(v) for v in per_burst) if scale == "log" else sum(per_burst)) / 2
        assert float(loss(pred, pred[:, :0], target, 0)[0]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="no gradient term"):
        loss_for_family("st-pan", gradient_weight=0.5)
    with pytest.raises(ValueError, match="must be in"):
        loss_for_family("kpn", gradient_weight=-1.0)
