"""The plugins' kernel arithmetic (plugins/*/*_math.cuh), compiled for the CPU by g++ through
plugins/cpu_build.py, against the PyTorch reference ops of train/ops.py (docs/ops.md).

The CPU build includes the very headers the CUDA kernels include, so these tests check the GPU's
arithmetic everywhere g++ and CUDA's headers (cuda_fp16.h, for __half) are present; the CUDA
launch code itself is checked on a GPU only.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from train.ops import adaptive_conv as ref_adaptive_conv
from train.ops import trilinear_sample as ref_trilinear_sample

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {np.float32: 1e-5, np.float16: 1e-2}


def _cpu_build_module():
    spec = importlib.util.spec_from_file_location("kpn_cpu_build", ROOT / "plugins" / "cpu_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_build = _cpu_build_module()


@pytest.fixture(scope="module")
def lib():
    try:
        return cpu_build.load_cpu_library()
    except cpu_build.CpuBuildUnavailable as exc:
        pytest.skip(f"CPU build of the plugin math unavailable: {exc}")


def _assert_close(ours: np.ndarray, reference: torch.Tensor, dtype) -> None:
    assert ours.dtype == dtype and ours.shape == tuple(reference.shape)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(ours.astype(np.float64), reference.double().numpy(), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------
# AdaptiveConv
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])  # 3, 5, 7 compiled with K constant; 1, 9 read K from the shape
@pytest.mark.parametrize("shape", [(2, 3, 2, 13, 10), (1, 2, 1, 3, 2)], ids=["13x10", "3x2-smaller-than-K"])
def test_adaptive_conv_matches_reference(lib, dtype, k, shape):
    rng = np.random.default_rng(k * 100 + shape[3])
    b, n, c, h, w = shape
    frames = rng.uniform(-1, 2, size=shape).astype(dtype)
    kernels = (rng.normal(size=(b, n, k * k, h, w)) / k).astype(dtype)
    ours = cpu_build.adaptive_conv(lib, frames, kernels, k)
    reference = ref_adaptive_conv(torch.from_numpy(frames), torch.from_numpy(kernels), k)
    _assert_close(ours, reference, dtype)


def test_adaptive_conv_border_is_zero_padded(lib):
    # all-ones kernels sum the neighbours that exist: 4 at a corner, 6 on an edge, 9 inside (K=3)
    frames = np.ones((1, 1, 1, 4, 5), np.float32)
    kernels = np.ones((1, 1, 9, 4, 5), np.float32)
    out = cpu_build.adaptive_conv(lib, frames, kernels, 3)[0, 0, 0]
    assert out[0, 0] == 4 and out[0, 2] == 6 and out[2, 2] == 9 and out[3, 4] == 4


def test_adaptive_conv_tap_order_is_row_major(lib):
    # tap i*K+j reads frames[y+i-K//2, x+j-K//2]: the one-hot tap 5 (i=1, j=2) shifts left by one
    frames = np.arange(20, dtype=np.float32).reshape(1, 1, 1, 4, 5)
    kernels = np.zeros((1, 1, 9, 4, 5), np.float32)
    kernels[:, :, 5] = 1
    out = cpu_build.adaptive_conv(lib, frames, kernels, 3)[0, 0, 0]
    np.testing.assert_array_equal(out[:, :4], frames[0, 0, 0, :, 1:])
    np.testing.assert_array_equal(out[:, 4], 0)


def test_adaptive_conv_rejects_even_kernel_size(lib):
    frames = np.zeros((1, 1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="invalid attribute"):
        cpu_build.adaptive_conv(lib, frames, np.zeros((1, 1, 16, 4, 4), np.float32), 4)


# ------------------------------------------------------------------------------------------------
# TrilinearSample
# ------------------------------------------------------------------------------------------------
def _offsets(rng: np.random.Generator, b: int, s: int, h: int, w: int, dtype) -> np.ndarray:
    """Fractional offsets within and beyond the borders, plus integers, half pixels and far-out values."""
    off = rng.uniform(-3.5, 3.5, size=(b, s, 3, h, w))
    pick = rng.uniform(size=off.shape)
    off[pick < 0.15] = np.round(off[pick < 0.15])  # integer displacements
    off[(pick >= 0.15) & (pick < 0.25)] = np.round(off[(pick >= 0.15) & (pick < 0.25)]) + 0.5
    far = 1e4 if dtype == np.float16 else 1e30
    off[(pick >= 0.25) & (pick < 0.28)] = far
    off[(pick >= 0.28) & (pick < 0.31)] = -far
    return off.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("s", [1, 9, 27])
def test_trilinear_sample_matches_reference(lib, dtype, t, s):
    rng = np.random.default_rng(s * 10 + t)
    b, c, h, w = 2, 2, 9, 11
    video = rng.uniform(-1, 2, size=(b, c, t, h, w)).astype(dtype)
    offsets = _offsets(rng, b, s, h, w, dtype)
    for reference_frame in sorted({0, t // 2, t - 1}):
        ours = cpu_build.trilinear_sample(lib, video, offsets, reference_frame)
        reference = ref_trilinear_sample(torch.from_numpy(video), torch.from_numpy(offsets), reference_frame)
        _assert_close(ours, reference, dtype)


def test_trilinear_sample_integer_offsets_copy_exactly(lib):
    rng = np.random.default_rng(0)
    video = rng.uniform(size=(1, 1, 5, 6, 7)).astype(np.float16)
    offsets = np.zeros((1, 2, 3, 6, 7), np.float16)
    offsets[0, 1] = np.array([-2, 1, -1], np.float16).reshape(3, 1, 1)  # frame 0, one down, one left
    out = cpu_build.trilinear_sample(lib, video, offsets, 2)
    np.testing.assert_array_equal(out[0, 0, 0], video[0, 0, 2])
    np.testing.assert_array_equal(out[0, 0, 1, :5, 1:], video[0, 0, 0, 1:, :6])
    np.testing.assert_array_equal(out[0, 0, 1, 5, :], 0)  # row below the clip
    np.testing.assert_array_equal(out[0, 0, 1, :, 0], 0)  # column left of the clip


def test_trilinear_sample_half_pixel_outside_gives_half_the_border(lib):
    video = np.full((1, 1, 1, 3, 3), 4.0, np.float32)
    offsets = np.zeros((1, 3, 3, 3, 3), np.float32)
    offsets[0, 0, 2] = -0.5  # dx: the left column samples x = -0.5
    offsets[0, 1, 0] = 0.25  # dt with T = 1: weight 0.75
    offsets[0, 2, 1] = 1.0  # dy: the bottom row samples y = 3, outside
    out = cpu_build.trilinear_sample(lib, video, offsets, 0)[0, 0]
    assert out[0, 1, 0] == 2.0 and out[0, 1, 1] == 4.0
    np.testing.assert_array_equal(out[1], 3.0)
    assert out[2, 2, 1] == 0.0 and out[2, 1, 1] == 4.0


def test_trilinear_sample_fp16_far_from_the_origin(lib):
    # relative offsets are added to the integer position in float32: at x = 2000 an fp16 absolute
    # coordinate would be quantised to 1 pixel, the relative one keeps 0.3 exact enough
    w = 2048
    video = np.linspace(0, 1, w, dtype=np.float32).astype(np.float16).reshape(1, 1, 1, 1, w)
    offsets = np.zeros((1, 1, 3, 1, w), np.float16)
    offsets[0, 0, 2] = 0.3
    ours = cpu_build.trilinear_sample(lib, video, offsets, 0)
    reference = ref_trilinear_sample(torch.from_numpy(video), torch.from_numpy(offsets), 0)
    _assert_close(ours, reference, np.float16)
    expected = video[0, 0, 0, 0, :-1].astype(np.float32) * 0.7 + video[0, 0, 0, 0, 1:].astype(np.float32) * 0.3
    np.testing.assert_allclose(ours[0, 0, 0, 0, :-1].astype(np.float32), expected, atol=1e-3)


def test_trilinear_sample_rejects_reference_frame_outside_clip(lib):
    video = np.zeros((1, 1, 5, 4, 4), np.float32)
    with pytest.raises(ValueError, match="invalid attribute"):
        cpu_build.trilinear_sample(lib, video, np.zeros((1, 1, 3, 4, 4), np.float32), 5)


# ------------------------------------------------------------------------------------------------
# One source of the arithmetic
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kernel_file, math_header, store_function",
    [
        ("adaptive_conv/adaptive_conv_kernel.cu", "adaptive_conv_math.cuh", "adaptiveConvStore"),
        ("trilinear_sample/trilinear_sample_kernel.cu", "trilinear_sample_math.cuh", "trilinearSampleStore"),
    ],
)
def test_cuda_kernel_and_cpu_build_share_the_math(kernel_file, math_header, store_function):
    kernel = (ROOT / "plugins" / kernel_file).read_text()
    cpu_abi = (ROOT / "plugins" / "common" / "cpu_abi.cpp").read_text()
    assert re.search(rf'#include "{math_header}"', kernel)
    assert math_header in cpu_abi
    assert store_function in kernel and store_function in cpu_abi
    # the kernel file holds no arithmetic of its own on tensor values
    assert "toFloat(" not in kernel and "fromFloat" not in kernel
