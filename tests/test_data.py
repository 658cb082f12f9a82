"""Synthetic bursts (AME-KPN 3.1), image sources, the sRGB gamma and the gamma-space metrics, against
naive references and the stated distributions."""

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from train import data as D
from train.metrics import linear_to_srgb, psnr_gamma, srgb_to_linear, ssim_gamma


def naive_box(img, f):
    h, w = img.shape[0] // f, img.shape[1] // f
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            s = 0.0
            for i in range(f):
                for j in range(f):
                    s += img[y * f + i, x * f + j]
            out[y, x] = s / (f * f)
    return out


def test_box_downsample_matches_naive_loops():
    img = np.random.default_rng(0).random((24, 36))
    np.testing.assert_allclose(D.box_downsample(img, 4), naive_box(img, 4), rtol=0, atol=1e-12)
    np.testing.assert_allclose(D.box_downsample(img, 3), naive_box(img, 3), rtol=0, atol=1e-12)


@pytest.mark.parametrize("frames,ref", [(8, 0), (5, 2)])
def test_noiseless_burst_is_shifted_box_downsampled_windows(frames, ref):
    img = np.random.default_rng(1).random((4 * 10 + 128 + 20, 4 * 12 + 128 + 8))
    rng = np.random.default_rng(2)
    noisy, nmap, clean = D.make_burst(img, frames, 0.0, 0.0, rng, reference_index=ref, crop=(10, 12))
    assert noisy.shape == (frames, 10, 12) and nmap.shape == (1, 10, 12) and clean.shape == (1, 10, 12)
    # recover the draws: same rng sequence (offsets, then position)
    rng = np.random.default_rng(2)
    offsets = D.sample_offsets(rng, frames, ref)
    y0 = int(rng.integers(64, img.shape[0] - 64 - 40 + 1))
    x0 = int(rng.integers(64, img.shape[1] - 64 - 48 + 1))
    assert (offsets[ref] == 0).all()
    for i, (dy, dx) in enumerate(offsets):
        window = img[y0 + dy : y0 + dy + 40, x0 + dx : x0 + dx + 48]
        np.testing.assert_allclose(noisy[i], naive_box(window, 4), rtol=0, atol=1e-6)
    np.testing.assert_allclose(clean[0], naive_box(img[y0 : y0 + 40, x0 : x0 + 48], 4), atol=1e-6)
    np.testing.assert_array_equal(noisy[ref], clean[0])  # the reference is the clean frame's position


def test_noise_variance_and_noise_map_on_flat_image():
    y, sr, ss = 0.25, 0.02, 0.01
    img = np.full((4 * 64 + 128, 4 * 64 + 128), y)
    noisy, nmap, clean = D.make_burst(img, 8, sr, ss, np.random.default_rng(3), crop=64)
    resid = noisy.astype(np.float64) - y
    expected = sr**2 + ss * y
    n = resid.size  # 32768 samples: std of the variance estimate is sqrt(2/n) = 0.8%
    assert abs(resid.mean()) < 4 * math.sqrt(expected / n)
    assert abs(resid.var() / expected - 1) < 4 * math.sqrt(2 / n)
    np.testing.assert_allclose(nmap[0], np.sqrt(sr**2 + ss * np.maximum(noisy[0], 0)), rtol=1e-6)
    np.testing.assert_allclose(clean, y)


def test_noise_variance_grows_with_signal_as_shot_noise():
    sr, ss = 1e-3, 1e-2
    for y in (0.05, 0.8):
        img = np.full((4 * 64 + 128,) * 2, y)
        noisy, _, _ = D.make_burst(img, 8, sr, ss, np.random.default_rng(4), crop=64)
        assert abs(noisy.var() / (sr**2 + ss * y) - 1) < 0.035


def test_offsets_ranges_and_big_jitter_probability():
    rng = np.random.default_rng(5)
    N, bursts = 8, 4000
    offs = np.stack([D.sample_offsets(rng, N, 0) for _ in range(bursts)])
    assert (offs[:, 0] == 0).all()
    others = offs[:, 1:].reshape(-1, 2)
    assert others.min() == -64 and others.max() == 64  # inclusive integer range
    assert offs.dtype.kind == "i"
    big = (np.abs(others) > 8).any(axis=1)
    # P(offset drawn from [-64,64]) = E[min(n/N, 1)], n ~ Poisson(1.5); such a draw lands in [-8,8]^2
    # with probability (17/129)^2.
    p_big = sum(math.exp(-1.5) * 1.5**n / math.factorial(n) * min(n / N, 1) for n in range(60))
    p = p_big * (1 - (17 / 129) ** 2)
    sd = math.sqrt(p * (1 - p) / len(others)) * 3  # offsets of a burst are correlated: widen
    assert abs(big.mean() - p) < 4 * sd
    small_only = others[~big]
    assert np.abs(small_only).max() == 8


def test_clip_offsets_reference_in_the_middle_and_walk_stays_in_range():
    rng = np.random.default_rng(6)
    for motion in ("paper", "walk"):
        offs = np.stack([D.sample_offsets(rng, 5, 2, motion) for _ in range(500)])
        assert (offs[:, 2] == 0).all() and (offs[:, [0, 1, 3, 4]] != 0).any()
        assert np.abs(offs).max() <= 64
    assert (D.sample_offsets(rng, 1, 0) == 0).all()


def test_noise_parameters_log_uniform_in_paper_ranges():
    rng = np.random.default_rng(7)
    p = np.array([D.sample_noise_params(rng) for _ in range(4000)])
    lr, ls = np.log10(p[:, 0]), np.log10(p[:, 1])
    assert lr.min() >= -3 and lr.max() <= -1.5 and ls.min() >= -4 and ls.max() <= -2
    assert abs(lr.mean() - (-2.25)) < 0.03 and abs(ls.mean() - (-3.0)) < 0.03  # uniform in log


def test_wide_noise_range_covers_all_table1_gains():
    rng = np.random.default_rng(8)
    p = np.array([D.sample_noise_params(rng, "wide") for _ in range(4000)])
    lr, ls = np.log10(p[:, 0]), np.log10(p[:, 1])
    assert lr.min() >= -3 and lr.max() <= -1 and ls.min() >= -4 and ls.max() <= -1.5
    assert abs(lr.mean() - (-2.0)) < 0.03 and abs(ls.mean() - (-2.75)) < 0.03
    (r_lo, r_hi), (s_lo, s_hi) = D.NOISE_RANGES["wide"]
    for sigma_r, sigma_s in D.VALIDATION_GAINS.values():
        assert r_lo <= sigma_r <= r_hi and s_lo <= sigma_s <= s_hi
    # the papers' range leaves gains 3 and 4 outside (AME-KPN 3.3: "far beyond the training range")
    (_, pr_hi), _ = D.NOISE_RANGES["paper"]
    assert [name for name, (r, _) in D.VALIDATION_GAINS.items() if r > pr_hi] == ["gain3", "gain4"]
    with pytest.raises(ValueError, match="unknown noise range 'huge'"):
        D.sample_noise_params(rng, "huge")


def test_sampler_draws_its_noise_range():
    train, _ = D.load_source("builtin")
    stds = {}
    for name in ("paper", "wide"):
        s = D.BurstSampler(train[:2], 2, 0, 8, noise_range=name)
        # the noise map's minimum over a burst is ~sigma_r: compare medians over many bursts
        stds[name] = np.median([s.sample(np.random.default_rng([3, 0, t]))[1].min() for t in range(300)])
    assert stds["wide"] > 1.5 * stds["paper"]


def test_sampler_is_deterministic_with_seed_and_torch_in_torch_out():
    train, _ = D.load_source("builtin")
    s = D.BurstSampler(train[:3], 8, 0, 16)
    a = s.batch(np.random.default_rng([1, 0, 5]), 2)
    b = s.batch(np.random.default_rng([1, 0, 5]), 2)
    c = s.batch(np.random.default_rng([1, 0, 6]), 2)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (2, 8, 16, 16) and a[0].dtype == torch.float32
    out = D.make_burst(torch.rand(200, 200), 3, 0.01, 0.001, np.random.default_rng(0), crop=8)
    assert all(isinstance(t, torch.Tensor) for t in out)


def test_builtin_split_is_disjoint_and_complete():
    train, val = D.load_source("builtin")
    tn, vn = {i.name for i in train}, {i.name for i in val}
    assert not tn & vn and vn == {"builtin:astronaut", "builtin:coins", "builtin:brick"}
    assert tn | vn == {f"builtin:{n}" for n in D.BUILTIN_IMAGES}
    train2, val2 = D.load_source("builtin")
    assert [i.name for i in val2] == [i.name for i in val]


def test_builtin_plus_folder_trains_on_both_and_validates_on_the_builtin_images(tmp_path):
    rng = np.random.default_rng(3)
    for n in ("b.png", "sub/a.jpg"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        iio.imwrite(tmp_path / n, (rng.random((40, 50, 3)) * 255).astype(np.uint8))
    builtin_train, builtin_val = D.load_source("builtin")
    train, val = D.load_source(f"builtin+{tmp_path}")
    assert [i.name for i in val] == [i.name for i in builtin_val]
    assert [i.name for i in train] == [i.name for i in builtin_train] + [str(tmp_path / "b.png"), str(tmp_path / "sub/a.jpg")]
    assert np.array_equal(train[-2].pixels, iio.imread(tmp_path / "b.png"))


def test_builtin_plus_folder_refuses_a_validation_photograph(tmp_path):
    import skimage.data

    iio.imwrite(tmp_path / "copy.png", skimage.data.coins())
    with pytest.raises(D.DataError, match=r"copy\.png: the same pixels as validation image builtin:coins"):
        D.load_source(f"builtin+{tmp_path}")
    with pytest.raises(D.DataError, match="no such data folder"):
        D.load_source(f"builtin+{tmp_path / 'missing'}")


def test_folder_source_recursive_split_stable(tmp_path):
    rng = np.random.default_rng(8)
    (tmp_path / "a" / "b").mkdir(parents=True)
    names = ["x.png", "a/y.jpg", "a/b/z.tif", "a/b/w.PNG", "v.tiff"]
    for n in names:
        arr = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
        iio.imwrite(tmp_path / n, arr, extension=".png" if n.lower().endswith("png") else None)
    (tmp_path / "notes.txt").write_text("not an image")
    train, val = D.load_source(str(tmp_path), val_fraction=0.4)
    got = sorted(i.name for i in train + val)
    assert got == sorted(str(tmp_path / n) for n in names) and 1 <= len(val) <= 4
    assert not {i.name for i in train} & {i.name for i in val}
    # adding images never moves existing ones across the split
    many = [f"img{i:03d}.png" for i in range(60)]
    t1, v1 = D.split_names(many, 0.25)
    t2, v2 = D.split_names(many + ["new1.png", "new2.jpg"], 0.25)
    assert {i for i in v1} == {i for i in v2 if i < 60} and 5 < len(v1) < 25
    assert D.split_names(many, 0.25, seed=1) != (t1, v1)


def test_image_formats_are_scaled_and_linearised(tmp_path):
    g16 = np.full((8, 8), 32768, np.uint16)
    iio.imwrite(tmp_path / "a.png", g16)
    im = D.load_image(tmp_path / "a.png")
    assert im.pixels.shape == (8, 8, 1) and im.pixels.dtype == np.uint16
    np.testing.assert_allclose(im.linear(0), srgb_to_linear(32768 / 65535), rtol=1e-12)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 1] = 255
    iio.imwrite(tmp_path / "b.png", rgba)
    im = D.load_image(tmp_path / "b.png")
    assert im.pixels.shape == (8, 8, 3) and im.linear(1).min() == 1.0
    f = np.full((8, 8), 0.5, np.float32)
    iio.imwrite(tmp_path / "c.tif", f)
    np.testing.assert_allclose(D.load_image(tmp_path / "c.tif").linear(0), srgb_to_linear(0.5), rtol=1e-6)


def test_bad_sources_name_the_file(tmp_path):
    with pytest.raises(D.DataError, match="no images"):
        D.list_images(tmp_path)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(D.DataError, match=r"broken\.jpg: unreadable image"):
        D.load_image(bad)
    with pytest.raises(D.DataError, match="no such data folder"):
        D.list_images(tmp_path / "missing")


def test_small_images_are_enlarged_to_fit_the_window():
    im = D.SourceImage("s", (np.random.default_rng(0).random((100, 150, 3)) * 255).astype(np.uint8))
    s = D.BurstSampler([im], 4, 0, 32)
    assert min(s.images[0].pixels.shape[:2]) >= 4 * 32 + 128 and s.images[0].pixels.dtype == np.uint8
    burst, nmap, clean = s.batch(np.random.default_rng(0), 2)
    assert burst.shape == (2, 4, 32, 32) and torch.isfinite(burst).all()


def test_validation_set_four_gains_same_clean_frames():
    _, val = D.load_source("builtin")
    v = D.validation_set(val, 5, 2, 32, per_image=2, seed=0)
    assert list(v) == ["gain1", "gain2", "gain3", "gain4"]
    cleans = [v[g][2] for g in v]
    for c in cleans[1:]:
        assert torch.equal(c, cleans[0])
    resid = [float((v[g][0][:, 2:3] - v[g][2]).var()) for g in v]
    assert resid == sorted(resid)  # noisier at higher gain
    sr, ss = D.VALIDATION_GAINS["gain3"]
    expect = sr**2 + ss * float(v["gain3"][2].mean())
    assert abs(resid[2] / expect - 1) < 0.1
    assert torch.equal(D.validation_set(val, 5, 2, 32, per_image=2, seed=0)["gain2"][0], v["gain2"][0])


def test_srgb_gamma_values_and_inverse():
    x = np.array([-0.01, 0.0, 0.0031308, 0.01, 0.18, 0.5, 1.0])
    ref = np.array([12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055 for v in x])
    np.testing.assert_allclose(linear_to_srgb(x), ref, rtol=1e-12)
    np.testing.assert_allclose(linear_to_srgb(torch.tensor(x)).numpy(), ref, rtol=1e-12)
    assert abs(linear_to_srgb(1.0) - 1.0) < 1e-12 and abs(linear_to_srgb(0.5) - 0.735356983) < 1e-8
    grid = np.linspace(-0.01, 1.2, 1001)
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(grid)), grid, atol=1e-12)
    np.testing.assert_allclose(srgb_to_linear(torch.tensor(grid)).numpy(), srgb_to_linear(grid), rtol=1e-12)


def test_psnr_and_ssim_in_gamma_space():
    rng = np.random.default_rng(9)
    t = rng.random((16, 16)) * 0.8
    p = t + rng.normal(0, 0.01, t.shape)
    gp = [1.055 * v ** (1 / 2.4) - 0.055 if v > 0.0031308 else 12.92 * v for v in np.clip(p, 0, 1).ravel()]
    gt = [1.055 * v ** (1 / 2.4) - 0.055 if v > 0.0031308 else 12.92 * v for v in np.clip(t, 0, 1).ravel()]
    mse = sum((a - b) ** 2 for a, b in zip(gp, gt)) / len(gp)
    assert abs(psnr_gamma(p, t) - 10 * math.log10(1 / mse)) < 1e-9
    assert psnr_gamma(torch.tensor(p), torch.tensor(t)) == pytest.approx(psnr_gamma(p, t), abs=1e-9)
    assert ssim_gamma(t, t) == pytest.approx(1.0)
    assert 0 < ssim_gamma(p, t) < 1


def test_large_motion_draws_every_frame_from_the_big_range():
    rng = np.random.default_rng(0)
    big = [np.abs(D.sample_offsets(rng, 8, 0, "large")[1:]).max(axis=1) for _ in range(50)]
    paper = [np.abs(D.sample_offsets(rng, 8, 0, "paper")[1:]).max(axis=1) for _ in range(50)]
    frac = lambda draws: float(np.mean(np.concatenate(draws) > D.SMALL_JITTER))
    # uniform on [-64, 64]^2: both |dy|, |dx| <= 8 with probability (17/129)^2 < 2%
    assert frac(big) > 0.9 and frac(paper) < 0.5
    assert all(np.concatenate(big) <= D.BIG_JITTER)


def test_still_motion_aligns_every_frame_so_the_burst_mean_gains_ten_log_n():
    rng = np.random.default_rng(0)
    assert not D.sample_offsets(rng, 8, 3, "still").any()
    clean = np.random.default_rng(1).uniform(0.1, 0.9, (256, 256))
    burst, _, target = D.make_burst(clean, 8, 5e-3, 1e-3, np.random.default_rng(2), 0, 32, motion="still")
    def psnr(x):  # linear space: the noise is independent per frame, so the mean of 8 frames has 1/8 its power
        return 10 * np.log10(1.0 / np.mean((x - target[0]) ** 2))
    assert abs(psnr(burst.mean(axis=0)) - psnr(burst[0]) - 10 * np.log10(8)) < 0.3
    with pytest.raises(ValueError, match="unknown motion model 'teleport'"):
        D.sample_offsets(rng, 8, 0, "teleport")


def test_still_fraction_is_the_share_of_bursts_without_motion():
    rng = np.random.default_rng(0)
    draws = [D.sample_offsets(rng, 8, 0, "paper", still_fraction=0.5) for _ in range(400)]
    still = np.mean([not d.any() for d in draws])
    assert 0.42 < still < 0.58  # binomial(400, 0.5): sd 0.025
    assert np.mean([not D.sample_offsets(rng, 8, 0, "paper").any() for _ in range(400)]) < 0.01
    # without it the random stream is the one runs before the option drew
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(D.sample_offsets(a, 8, 0, "paper", still_fraction=0.0), D.sample_offsets(b, 8, 0, "paper"))


def test_dihedral_gives_the_eight_symmetries_of_the_square():
    img = np.arange(9.0).reshape(3, 3)  # 0 1 2 / 3 4 5 / 6 7 8
    # naive: quarter turn counter-clockwise maps (y, x) -> (n-1-x, y), i.e. out[y, x] = img[x, n-1-y]
    n = 3
    turn = np.array([[img[x, n - 1 - y] for x in range(n)] for y in range(n)])
    assert np.array_equal(D.dihedral(img, 1), turn)
    assert np.array_equal(D.dihedral(img, 4), img.T)
    variants = {D.dihedral(img, k).tobytes() for k in range(8)}
    assert len(variants) == 8  # all distinct: the whole group


def test_dihedral_augmentation_turns_the_training_window_before_the_burst_is_made():
    train, _ = D.load_source("builtin")
    s = D.BurstSampler(train[:2], 3, 0, 16, downsample=2, augment="dihedral")
    plain = D.BurstSampler(train[:2], 3, 0, 16, downsample=2)
    seen = set()
    for t in range(24):
        burst, nmap, clean = s.sample(np.random.default_rng([7, t]))
        # replay the same draws by hand: image, channel, window, symmetry, then the burst
        rng = np.random.default_rng([7, t])
        image = plain.images[int(rng.integers(2))]
        channel = int(rng.integers(image.pixels.shape[2]))
        h, w = image.pixels.shape[:2]
        y, x = int(rng.integers(h - plain.window + 1)), int(rng.integers(w - plain.window + 1))
        window = image.linear(channel, (slice(y, y + plain.window), slice(x, x + plain.window)))
        k = int(rng.integers(8))
        seen.add(k)
        expected = D.make_burst(D.dihedral(window, k), 3, None, None, rng, 0, 16, 2)
        for got, want in zip((burst, nmap, clean), expected):
            assert np.array_equal(got, want)
    assert len(seen) >= 6
    with pytest.raises(ValueError, match="unknown augmentation"):
        D.BurstSampler(train[:2], 3, 0, 16, augment="mirror")
