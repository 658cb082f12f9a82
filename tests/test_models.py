"""The model families: shapes, sizes, the papers' reconstruction formulas, receptive field, configs."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from train.models import FAMILIES, build_model, config_from_dict, count_parameters, default_config


@pytest.mark.parametrize("family", FAMILIES)
def test_small_models_shapes_and_size(family):
    cfg = default_config(family, "small")
    model = build_model(cfg)
    assert count_parameters(model) <= 2_000_000
    burst = torch.rand(2, cfg.frames, 24, 40)
    denoised, aux = model.forward_train(burst, torch.full((2, 1, 24, 40), 0.02))
    groups = cfg.frames if family in ("kpn", "ame-kpn") else cfg.groups
    assert denoised.shape == (2, 1, 24, 40) and aux.shape == (2, groups, 24, 40)
    assert torch.isfinite(denoised).all()


def _zero_head(conv: torch.nn.Conv2d) -> None:
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)


def test_kpn_with_identity_kernels_averages_the_frames():
    cfg = replace(default_config("kpn"), kernels="raw")  # the papers' raw kernels
    model = build_model(cfg).eval()
    _zero_head(model.kernel_head)
    k2 = cfg.kernel_size**2
    with torch.no_grad():
        model.kernel_head.bias.view(cfg.frames, k2)[:, k2 // 2] = 1.0  # centre tap of every frame
    burst = torch.rand(1, cfg.frames, 16, 16)
    out = model(burst, torch.zeros(1, 1, 16, 16))
    torch.testing.assert_close(out, burst.mean(dim=1, keepdim=True))


def test_fresh_raw_kernel_kpn_starts_as_the_burst_mean():
    """The kernel head is initialised to identity kernels (not left to default init)."""
    torch.manual_seed(3)
    cfg = replace(default_config("kpn"), kernels="raw")
    model = build_model(cfg).eval()
    burst = torch.rand(1, cfg.frames, 16, 16)
    out = model(burst, torch.zeros(1, 1, 16, 16))
    torch.testing.assert_close(out, burst.mean(dim=1, keepdim=True))


def test_softmax_kernels_by_formula():
    """K = N * softmax over the N*K*K taps: a naive loop over taps with the head's logits."""
    torch.manual_seed(4)
    cfg = default_config("kpn")
    assert cfg.kernels == "softmax"
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.kernel_head.weight, std=0.05)  # logits that vary per pixel
    n, k = cfg.frames, cfg.kernel_size
    burst, nmap = torch.rand(1, n, 8, 8), torch.full((1, 1, 8, 8), 0.03)
    with torch.no_grad():
        logits = model.kernel_head(model.backbone(torch.cat([burst, nmap], 1)))[0]  # [N*K*K, 8, 8]
        out = model(burst, nmap)[0, 0]
    weights = torch.softmax(logits, dim=0).view(n, k, k, 8, 8)
    padded = F.pad(burst[0], (k // 2,) * 4)
    expect = torch.zeros(8, 8)
    for y in range(8):
        for x in range(8):
            expect[y, x] = (weights[:, :, :, y, x] * padded[:, y : y + k, x : x + k]).sum()
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    # a constant burst comes out unchanged away from the zero-padded borders
    flat = model(torch.full((1, n, 16, 16), 0.3), nmap.new_full((1, 1, 16, 16), 0.03))[0, 0, 2:-2, 2:-2]
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))


def test_projected_kernels_by_formula():
    """K = z + (N - sum z) / (N*K*K), z the head's raw output: a naive loop over taps; the taps of a pixel
    sum to N (a constant burst comes out unchanged) and a tap's gradient does not depend on its weight."""
    torch.manual_seed(5)
    cfg = replace(default_config("kpn"), kernels="projected")
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.kernel_head.weight, std=0.05)
    n, k = cfg.frames, cfg.kernel_size
    burst, nmap = torch.rand(1, n, 8, 8), torch.full((1, 1, 8, 8), 0.03)
    with torch.no_grad():
        raw = model.kernel_head(model.backbone(torch.cat([burst, nmap], 1)))[0]  # [N*K*K, 8, 8]
        out = model(burst, nmap)[0, 0]
    padded = F.pad(burst[0], (k // 2,) * 4)
    expect = torch.zeros(8, 8)
    for y in range(8):
        for x in range(8):
            z = raw[:, y, x]
            taps = (z + (n - z.sum()) / (n * k * k)).view(n, k, k)
            expect[y, x] = (taps * padded[:, y : y + k, x : x + k]).sum() / n
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    flat = model(torch.full((1, n, 16, 16), 0.3), nmap.new_full((1, 1, 16, 16), 0.03))[0, 0, 2:-2, 2:-2]
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))
    # gradient of the output at one pixel w.r.t. its raw taps: (x_tap - mean of the pixel's window) / N,
    # the same for a tap whose weight is large or near zero (a softmax scales it by the weight)
    z = raw[:, 4, 4].clone().requires_grad_(True)
    window = padded[:, 4 : 4 + k, 4 : 4 + k].reshape(-1)
    ((z + (n - z.sum()) / (n * k * k)) * window).sum().div(n).backward()
    torch.testing.assert_close(z.grad, (window - window.mean()) / n)


def test_fresh_projected_kpn_gives_the_reference_half_the_weight():
    cfg = replace(default_config("kpn"), kernels="projected")
    model = build_model(cfg).eval()
    burst = torch.rand(1, cfg.frames, 16, 16)
    out, estimates = model.forward_train(burst, torch.zeros(1, 1, 16, 16))
    torch.testing.assert_close(out, 0.5 * burst[:, :1] + 0.5 * burst[:, 1:].mean(dim=1, keepdim=True))
    # each frame's own estimate (its filtered frame over its share) is that frame
    torch.testing.assert_close(estimates, burst, atol=1e-6, rtol=1e-5)


def test_unknown_kernel_form_and_old_configs():
    with pytest.raises(ValueError, match="kernels"):
        replace(default_config("kpn"), kernels="sigmoid")
    legacy = default_config("kpn").to_dict()
    del legacy["kernels"]
    assert config_from_dict({**legacy, "softmax_kernels": True}).kernels == "softmax"
    assert config_from_dict({**legacy, "softmax_kernels": False}).kernels == "raw"


@pytest.mark.parametrize("weight_bias,expect", [(30.0, "filtered"), (-30.0, "residual")])
def test_ame_kpn_blends_kernels_and_residuals_by_eq4(weight_bias, expect):
    cfg = replace(default_config("ame-kpn"), kernels="raw")
    model = build_model(cfg).eval()
    n, k2 = cfg.frames, cfg.kernel_size**2
    _zero_head(model.kernel_residual_head)
    _zero_head(model.weight_head)
    with torch.no_grad():
        model.kernel_residual_head.bias[: n * k2].view(n, k2)[:, k2 // 2] = 1.0  # identity kernels
        model.kernel_residual_head.bias[n * k2 :] = 0.25  # residuals R_i = 0.25
        model.weight_head.bias.fill_(weight_bias)  # sigmoid(W) ~ 1 or ~ 0
    burst = torch.rand(1, n, 16, 16)
    out = model(burst, torch.zeros(1, 1, 16, 16))
    target = burst.mean(dim=1, keepdim=True) if expect == "filtered" else torch.full_like(out, 0.25)
    torch.testing.assert_close(out, target, atol=1e-6, rtol=1e-6)


def test_st_pan_with_zero_offsets_and_flat_weights_is_a_3d_box_filter():
    cfg = default_config("st-pan")
    model = build_model(cfg).eval()
    _zero_head(model.offset_head)
    _zero_head(model.weight_branch[-1])
    burst = torch.rand(1, cfg.frames, 16, 16)
    out = model(burst, torch.zeros(1, 1, 16, 16))
    box = F.avg_pool3d(burst.unsqueeze(1), 3, stride=1, padding=1, count_include_pad=True)
    torch.testing.assert_close(out, box[:, :, cfg.reference_index], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["kpn", "st-pan"])
def test_receptive_radius_bounds_what_a_pixel_sees(family):
    torch.manual_seed(0)
    cfg = default_config(family)
    model = build_model(cfg).eval()
    r = cfg.receptive_radius
    size = 2 * r + 2 * cfg.size_multiple
    size += -size % cfg.size_multiple
    burst = torch.rand(1, cfg.frames, size, size)
    noise = torch.full((1, 1, size, size), 0.05)
    with torch.no_grad():
        base = model(burst, noise)
        changed = burst.clone()
        changed[..., :, r + 1 :] = torch.rand_like(changed[..., :, r + 1 :])  # everything > r columns right
        after = model(changed, noise)
    assert torch.equal(base[..., 0], after[..., 0])  # column 0 sees at most r columns
    assert not torch.equal(base, after)


def test_config_round_trip_and_checkpoint_rebuilds_model(tmp_path):
    for family in FAMILIES:
        cfg = default_config(family)
        assert config_from_dict(cfg.to_dict()) == cfg
    cfg = default_config("ame-kpn")
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    save_checkpoint(tmp_path / "m.pt", model, cfg, step=7, metrics={"val": {}})
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["step"] == 7 and ckpt["config"]["family"] == "ame-kpn"
    burst, noise = torch.rand(1, 8, 16, 24), torch.full((1, 1, 16, 24), 0.03)
    with torch.no_grad():
        assert torch.equal(model(burst, noise), loaded(burst, noise))


def test_a_checkpoint_makes_its_folder(tmp_path):
    cfg = default_config("kpn")
    path = tmp_path / "runs" / "new" / "kpn.pt"
    save_checkpoint(path, build_model(cfg), cfg, step=3)
    assert load_checkpoint(path)[1]["step"] == 3


def test_bad_checkpoints_give_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a kpn-deploy checkpoint"):
        load_checkpoint(other)


def test_paper_widths_build_and_count():
    counts = {f: count_parameters(build_model(default_config(f, "paper"))) for f in FAMILIES}
    assert all(c > 10_000_000 for c in counts.values()), counts


@pytest.mark.parametrize("family", FAMILIES)
def test_medium_width_doubles_every_channel_of_small(family):
    small, medium = default_config(family, "small"), default_config(family, "medium")
    assert medium.widths == tuple(2 * w for w in small.widths)
    assert medium.convs_per_block == small.convs_per_block and medium.width == "medium"
    # Twice the channels of every layer: close to 4x the weights (first and last layers grow 2x).
    ratio = count_parameters(build_model(medium)) / count_parameters(build_model(small))
    assert 3.5 < ratio < 4.0, ratio
    burst = torch.rand(1, medium.frames, 16, 16)
    assert build_model(medium)(burst, torch.full((1, 1, 16, 16), 0.02)).shape == (1, 1, 16, 16)


def test_unknown_width_is_refused():
    with pytest.raises(ValueError, match="unknown width 'huge'"):
        default_config("kpn", "huge")


def test_channel_softmax_equals_torch_softmax():
    from train.models.blocks import channel_softmax

    x = torch.randn(2, 27, 5, 7) * 30  # large logits: the max subtraction keeps exp finite
    torch.testing.assert_close(channel_softmax(x), torch.softmax(x, dim=1), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("family", ["kpn", "ame-kpn"])
def test_kpn_per_frame_estimates_are_each_frames_own_average(family):
    """Softmax kernels: Y_i for the annealed term is frame i filtered by its kernel normalised to sum 1,
    so on frames of constant value c_i it is c_i, whatever share of the weight frame i gets; the output
    is the share-weighted mean. (AME-KPN: with the weight branch at 1, the same.)"""
    cfg = default_config(family)
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    head = model.kernel_residual_head if cfg.attention else model.kernel_head
    torch.nn.init.normal_(head.weight, std=0.5)  # shares that differ between frames and pixels
    if cfg.attention:
        _zero_head(model.weight_head)
        with torch.no_grad():
            model.weight_head.bias.fill_(60.0)  # sigmoid = 1: kernels only
    n, k = cfg.frames, cfg.kernel_size
    c = torch.linspace(0.1, 0.8, n).view(1, n, 1, 1)
    burst = c.expand(1, n, 24, 24).contiguous()
    with torch.no_grad():
        out, est = model.forward_train(burst, torch.full((1, 1, 24, 24), 0.02))
    inner = (slice(None), slice(None), slice(k // 2, -(k // 2)), slice(k // 2, -(k // 2)))
    torch.testing.assert_close(est[inner], c.expand_as(est)[inner], rtol=0, atol=1e-5)
    # the output is not the plain mean of the frames: the shares differ
    assert (out[inner] - c.mean()).abs().max() > 1e-3


def test_st_pan_group_estimates_are_normalised_by_their_share():
    cfg = default_config("st-pan")
    torch.manual_seed(5)
    model = build_model(cfg).eval()
    burst = torch.full((1, cfg.frames, 24, 24), 0.37)
    with torch.no_grad():
        out, groups = model.forward_train(burst, torch.full((1, 1, 24, 24), 0.02))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    # interior samples of a constant clip are the constant: each group estimate is too, though the
    # softmax gives the groups different shares (so scaling by the group count would not be)
    torch.testing.assert_close(groups[inner], torch.full_like(groups[inner], 0.37), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[inner], torch.full_like(out[inner], 0.37), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["kpn", "ame-kpn"])
def test_fresh_softmax_kpn_gives_the_reference_half_the_weight(family):
    """Fresh softmax kernels: the reference frame holds INITIAL_REFERENCE_SHARE of each pixel's weight
    and the other frames share the rest equally (AME-KPN: with its eq. 4 blend fixed at 1/2 and the
    residual branch at 0, so only the kernels show)."""
    torch.manual_seed(5)
    cfg = default_config(family)
    model = build_model(cfg).eval()
    n, k2 = cfg.frames, cfg.kernel_size**2
    blend = 1.0
    if cfg.attention:
        _zero_head(model.weight_head)  # sigmoid(0) = 1/2 everywhere
        with torch.no_grad():
            model.kernel_residual_head.weight[n * k2 :].zero_()
            model.kernel_residual_head.bias[n * k2 :].zero_()
        blend = 0.5
    values = torch.linspace(0.2, 0.9, n)  # frame i is constant values[i]; the reference is frame 0
    burst = values.view(1, n, 1, 1).expand(1, n, 16, 16).contiguous()
    out = model(burst, torch.full((1, 1, 16, 16), 0.03))[0, 0, 2:-2, 2:-2]
    share = model.INITIAL_REFERENCE_SHARE
    expect = blend * (share * values[0] + (1 - share) * values[1:].mean())
    torch.testing.assert_close(out, torch.full_like(out, float(expect)), atol=1e-5, rtol=1e-5)
