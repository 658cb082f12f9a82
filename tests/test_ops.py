"""The reference custom ops against naive loops written straight from the definitions in docs/ops.md."""

import math

import numpy as np
import pytest
import torch

from train.ops import adaptive_conv, trilinear_sample


def naive_adaptive_conv(frames: np.ndarray, kernels: np.ndarray, k: int) -> np.ndarray:
    b_, n_, c_, h_, w_ = frames.shape
    out = np.zeros_like(frames, dtype=np.float64)
    for b in range(b_):
        for n in range(n_):
            for c in range(c_):
                for y in range(h_):
                    for x in range(w_):
                        acc = 0.0
                        for i in range(k):
                            for j in range(k):
                                yy, xx = y + i - k // 2, x + j - k // 2
                                if 0 <= yy < h_ and 0 <= xx < w_:
                                    acc += kernels[b, n, i * k + j, y, x] * frames[b, n, c, yy, xx]
                        out[b, n, c, y, x] = acc
    return out


def naive_trilinear_sample(video: np.ndarray, offsets: np.ndarray, t_ref: int) -> np.ndarray:
    """Eq. 7 of the ST-PAN paper: sum over voxels of video * prod(max(0, 1 - |pos - voxel|))."""
    b_, c_, t_, h_, w_ = video.shape
    s_ = offsets.shape[1]
    out = np.zeros((b_, c_, s_, h_, w_))
    for b in range(b_):
        for s in range(s_):
            for y in range(h_):
                for x in range(w_):
                    pt = t_ref + offsets[b, s, 0, y, x]
                    py = y + offsets[b, s, 1, y, x]
                    px = x + offsets[b, s, 2, y, x]
                    for q in range(math.floor(pt), math.floor(pt) + 2):
                        for u in range(math.floor(py), math.floor(py) + 2):
                            for v in range(math.floor(px), math.floor(px) + 2):
                                if not (0 <= q < t_ and 0 <= u < h_ and 0 <= v < w_):
                                    continue
                                wgt = max(0, 1 - abs(pt - q)) * max(0, 1 - abs(py - u)) * max(0, 1 - abs(px - v))
                                out[b, :, s, y, x] += wgt * video[b, :, q, u, v]
    return out


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_adaptive_conv_matches_naive_loop(k, dtype, tol):
    g = torch.Generator().manual_seed(k)
    frames = torch.randn(2, 2, 2, 6, 7, generator=g, dtype=dtype)
    kernels = torch.randn(2, 2, k * k, 6, 7, generator=g, dtype=dtype)
    out = adaptive_conv(frames, kernels, k)
    assert out.shape == frames.shape and out.dtype == dtype
    ref = naive_adaptive_conv(frames.double().numpy(), kernels.double().numpy(), k)
    np.testing.assert_allclose(out.double().numpy(), ref, atol=tol * 10, rtol=tol)


def test_adaptive_conv_zero_outside_image_and_identity_kernel():
    k = 5
    frames = torch.rand(1, 1, 1, 4, 4)
    # A kernel that picks the neighbour 2 pixels left: the first 2 columns have nothing there -> 0.
    kernels = torch.zeros(1, 1, k * k, 4, 4)
    kernels[:, :, 2 * k + 0] = 1.0
    out = adaptive_conv(frames, kernels, k)
    assert torch.all(out[..., :2] == 0)
    assert torch.equal(out[..., 2:], frames[..., :2])
    centre = torch.zeros(1, 1, k * k, 4, 4)
    centre[:, :, (k * k) // 2] = 1.0
    assert torch.equal(adaptive_conv(frames, centre, k), frames)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("t,s", [(1, 1), (1, 9), (3, 9), (5, 27), (3, 27)])
def test_trilinear_sample_matches_naive_loop(t, s, dtype, tol):
    g = torch.Generator().manual_seed(10 * t + s)
    video = torch.randn(2, 2, t, 5, 6, generator=g, dtype=dtype)
    # fractional offsets, many reaching outside the clip in every axis
    offsets = torch.empty(2, s, 3, 5, 6, dtype=dtype)
    offsets[:, :, 0].uniform_(-t, t, generator=g)
    offsets[:, :, 1:].uniform_(-7, 7, generator=g)
    out = trilinear_sample(video, offsets, t // 2)
    assert out.shape == (2, 2, s, 5, 6) and out.dtype == dtype
    ref = naive_trilinear_sample(video.double().numpy(), offsets.double().numpy(), t // 2)
    np.testing.assert_allclose(out.double().numpy(), ref, atol=tol * 10, rtol=tol)


def test_trilinear_sample_integer_offsets_copy_exactly():
    video = torch.rand(1, 3, 5, 6, 7)
    offsets = torch.zeros(1, 2, 3, 6, 7)
    offsets[:, 1, 0] = -2.0  # first frame
    offsets[:, 1, 1] = 1.0  # one row down
    offsets[:, 1, 2] = -3.0  # three columns left
    out = trilinear_sample(video, offsets)  # reference_frame defaults to T // 2 = 2
    assert torch.equal(out[:, :, 0], video[:, :, 2])
    assert torch.equal(out[:, :, 1, :5, 3:], video[:, :, 0, 1:, :4])
    assert torch.all(out[:, :, 1, 5:, :] == 0) and torch.all(out[:, :, 1, :, :3] == 0)


def test_trilinear_sample_far_outside_is_zero_and_half_outside_is_half():
    video = torch.ones(1, 1, 1, 4, 4)
    offsets = torch.zeros(1, 3, 3, 4, 4)
    offsets[:, 0, 0] = 1.0  # a whole frame after the only frame: outside
    offsets[:, 1, 2] = 100.0  # far right
    offsets[:, 2, 0] = 0.5  # halfway to a missing frame: half the value
    out = trilinear_sample(video, offsets, 0)
    assert torch.all(out[:, :, 0] == 0) and torch.all(out[:, :, 1] == 0)
    torch.testing.assert_close(out[:, :, 2], torch.full((1, 1, 4, 4), 0.5))


def test_fp16_inputs_accumulate_in_fp32():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(1, 2, 1, 8, 8, generator=g)
    kernels = torch.rand(1, 2, 25, 8, 8, generator=g) / 25
    out16 = adaptive_conv(frames.half(), kernels.half(), 5)
    ref = adaptive_conv(frames.half().float(), kernels.half().float(), 5)
    assert out16.dtype == torch.float16
    torch.testing.assert_close(out16.float(), ref, atol=1e-3, rtol=1e-3)


def test_gradcheck_fp64():
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(1, 2, 1, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    kernels = torch.randn(1, 2, 9, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, k: adaptive_conv(f, k, 3), (frames, kernels))
    video = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    # keep offsets away from integers, where trilinear weights have kinks
    offsets = (torch.randint(-3, 3, (1, 4, 3, 4, 5), generator=g) + 0.25 + 0.5 * torch.rand(1, 4, 3, 4, 5, generator=g)).double()
    offsets.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, o: trilinear_sample(v, o, 1), (video, offsets))


def test_opcheck_registrations():
    frames, kernels = torch.rand(1, 2, 1, 4, 5), torch.rand(1, 2, 9, 4, 5)
    torch.library.opcheck(torch.ops.kpn.adaptive_conv.default, (frames, kernels, 3))
    video, offsets = torch.rand(1, 1, 3, 4, 5), torch.rand(1, 9, 3, 4, 5) * 2 - 1
    torch.library.opcheck(torch.ops.kpn.trilinear_sample.default, (video, offsets, 1))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="kernel_size"):
        adaptive_conv(torch.rand(1, 1, 1, 4, 4), torch.rand(1, 1, 16, 4, 4), 4)
    with pytest.raises(ValueError, match="kernels must have shape"):
        adaptive_conv(torch.rand(1, 1, 1, 4, 4), torch.rand(1, 1, 9, 4, 4), 5)
    with pytest.raises(ValueError, match="reference_frame"):
        trilinear_sample(torch.rand(1, 1, 3, 4, 4), torch.rand(1, 1, 3, 4, 4), 3)
