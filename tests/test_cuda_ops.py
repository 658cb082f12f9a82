"""The CUDA kernels through their C ABI (plugins/cuda_build.py): the shared library builds with nvcc
and exports `kpn_*_cuda` (needs nvcc); on a CUDA GPU, both ops match the PyTorch reference ops of
train/ops.py in float32 and float16 (needs torch with CUDA); and benchmarks/cuda_ops.py refuses to
run without a GPU with one line and exit status 2 (runs everywhere).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plugins import cuda_build
from train.ops import adaptive_conv as ref_adaptive_conv
from train.ops import trilinear_sample as ref_trilinear_sample

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}


def _nvcc() -> str:
    nvcc = cuda_build.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA build is made only where the CUDA toolkit is installed")
    return nvcc


# ------------------------------------------------------------------------------------------------
# (a) the library builds, links and exports the C ABI (no GPU needed)
# ------------------------------------------------------------------------------------------------
def test_cuda_library_builds_and_exports_the_c_abi(tmp_path):
    _nvcc()
    library = cuda_build.build_cuda_library(["80"], cache_dir=tmp_path)  # one architecture: fast
    assert library.is_file() and library.parent == tmp_path
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert set(cuda_build.EXPORTED) <= exported
    ours = sorted(s for s in exported if "kpn" in s.lower() and s not in cuda_build.EXPORTED)
    assert not ours, f"hidden visibility: unexpected exported symbols {ours}"
    # the cache: same sources and flags -> the same file, not rebuilt
    mtime = library.stat().st_mtime_ns
    assert cuda_build.build_cuda_library(["80"], cache_dir=tmp_path) == library and library.stat().st_mtime_ns == mtime

    # loads without a GPU (static CUDA runtime, libcuda opened lazily); the argument checks run on
    # the host before any CUDA call, so the declared ABI is exercised here for real
    lib = cuda_build.declare(ctypes.CDLL(str(library)))
    assert lib.kpn_adaptive_conv_cuda(0, 1, 1, 1, 1, 1, 1, 4, 4, 4, None) == 2  # even K: invalid attribute
    assert lib.kpn_adaptive_conv_cuda(0, None, None, None, 1, 1, 1, 4, 4, 3, None) == 4  # null pointers
    assert lib.kpn_adaptive_conv_cuda(7, 1, 1, 1, 1, 1, 1, 4, 4, 3, None) == 3  # unknown dtype
    assert lib.kpn_trilinear_sample_cuda(0, 1, 1, 1, 1, 1, 5, 4, 4, 27, 5, None) == 2  # t_ref outside [0, T)
    assert lib.kpn_trilinear_sample_cuda(1, None, None, None, 1, 1, 5, 4, 4, 27, 2, None) == 4
    assert lib.kpn_adaptive_conv_cuda(0, None, None, None, 1, 1, 1, 0, 4, 3, None) == 0  # empty: nothing to launch


def test_arch_flags_explicit_list():
    flags, key = cuda_build.arch_flags(["80", "sm_90"])
    assert flags == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    assert key == " ".join(flags)


# ------------------------------------------------------------------------------------------------
# (b) parity on a CUDA GPU
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_lib():
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA GPU (torch {torch.__version__}, torch.cuda.is_available() is False): GPU parity runs on a GPU host")
    _nvcc()
    return cuda_build.load_cuda_library()  # -arch=native


def _assert_close(ours: torch.Tensor, reference: torch.Tensor, dtype) -> None:
    assert ours.dtype == dtype and ours.shape == reference.shape and ours.is_cuda
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(ours.double(), reference.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("k", [3, 5, 7, 9])  # 3, 5, 7 compiled with K constant; 9 reads K from the shape
@pytest.mark.parametrize("shape", [(2, 3, 2, 37, 45), (1, 2, 1, 3, 2)], ids=["37x45", "3x2-smaller-than-K"])
def test_adaptive_conv_matches_reference_on_gpu(gpu_lib, dtype, k, shape):
    g = torch.Generator(device="cuda").manual_seed(k * 100 + shape[3])
    b, n, c, h, w = shape
    frames = (torch.rand(shape, generator=g, device="cuda") * 3 - 1).to(dtype)
    kernels = (torch.randn((b, n, k * k, h, w), generator=g, device="cuda") / k).to(dtype)
    ours = cuda_build.adaptive_conv(gpu_lib, frames, kernels, k)
    torch.cuda.synchronize()
    # the reference in float32 on the same (dtype-rounded) inputs, on the GPU
    _assert_close(ours, ref_adaptive_conv(frames.float(), kernels.float(), k), dtype)


def test_adaptive_conv_border_on_gpu(gpu_lib):
    frames = torch.ones((1, 1, 1, 4, 5), device="cuda")
    kernels = torch.ones((1, 1, 9, 4, 5), device="cuda")
    out = cuda_build.adaptive_conv(gpu_lib, frames, kernels, 3)[0, 0, 0].cpu()
    assert out[0, 0] == 4 and out[0, 2] == 6 and out[2, 2] == 9 and out[3, 4] == 4


def _offsets(g: torch.Generator, b: int, s: int, h: int, w: int, dtype) -> torch.Tensor:
    """Fractional offsets within and beyond the borders, plus integers, half pixels and far-out values."""
    off = torch.rand((b, s, 3, h, w), generator=g, device="cuda") * 7 - 3.5
    pick = torch.rand(off.shape, generator=g, device="cuda")
    off = torch.where(pick < 0.15, off.round(), off)
    off = torch.where((pick >= 0.15) & (pick < 0.25), off.round() + 0.5, off)
    far = 1e4 if dtype == torch.float16 else 1e30
    off = torch.where((pick >= 0.25) & (pick < 0.28), torch.full_like(off, far), off)
    off = torch.where((pick >= 0.28) & (pick < 0.31), torch.full_like(off, -far), off)
    return off.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("s", [1, 27])
def test_trilinear_sample_matches_reference_on_gpu(gpu_lib, dtype, t, s):
    g = torch.Generator(device="cuda").manual_seed(s * 10 + t)
    b, c, h, w = 2, 2, 29, 33
    video = (torch.rand((b, c, t, h, w), generator=g, device="cuda") * 3 - 1).to(dtype)
    offsets = _offsets(g, b, s, h, w, dtype)
    for reference_frame in sorted({0, t // 2, t - 1}):
        ours = cuda_build.trilinear_sample(gpu_lib, video, offsets, reference_frame)
        torch.cuda.synchronize()
        _assert_close(ours, ref_trilinear_sample(video.float(), offsets.float(), reference_frame), dtype)


def test_trilinear_sample_integer_offsets_copy_exactly_on_gpu(gpu_lib):
    video = torch.rand((1, 1, 5, 6, 7), device="cuda").half()
    offsets = torch.zeros((1, 2, 3, 6, 7), device="cuda", dtype=torch.float16)
    offsets[0, 1] = torch.tensor([-2.0, 1.0, -1.0], device="cuda").half().view(3, 1, 1)
    out = cuda_build.trilinear_sample(gpu_lib, video, offsets, 2).cpu()
    video = video.cpu()
    assert torch.equal(out[0, 0, 0], video[0, 0, 2])
    assert torch.equal(out[0, 0, 1, :5, 1:], video[0, 0, 0, 1:, :6])
    assert not out[0, 0, 1, 5, :].any() and not out[0, 0, 1, :, 0].any()


def test_wrappers_reject_bad_inputs_on_gpu(gpu_lib):
    frames = torch.zeros((1, 1, 1, 4, 4), device="cuda")
    with pytest.raises(ValueError, match="invalid attribute"):
        cuda_build.adaptive_conv(gpu_lib, frames, torch.zeros((1, 1, 16, 4, 4), device="cuda"), 4)
    with pytest.raises(ValueError, match="CUDA tensors"):
        cuda_build.adaptive_conv(gpu_lib, frames.cpu(), torch.zeros((1, 1, 9, 4, 4)), 3)
    with pytest.raises(ValueError, match="float32 or float16"):
        cuda_build.adaptive_conv(gpu_lib, frames.double(), torch.zeros((1, 1, 9, 4, 4), device="cuda").double(), 3)


# ------------------------------------------------------------------------------------------------
# (c) the benchmark without a GPU: one line, exit 2, nothing written (CUDA_VISIBLE_DEVICES="" hides
# any GPU, so this runs on GPU hosts too)
# ------------------------------------------------------------------------------------------------
def test_benchmark_without_gpu_exits_2_with_one_line(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        ["nice", sys.executable, "-m", "benchmarks.cuda_ops", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA GPU: "), lines
    assert not out.exists()
