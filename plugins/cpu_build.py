"""CPU build of the plugins' kernel arithmetic, for tests: the same `*_math.cuh` headers the CUDA
kernels include, compiled by g++ (with CUDA's headers for `__half`) into a small C ABI library
(`common/cpu_abi.cpp`) and loaded with ctypes. Numpy arrays in, numpy arrays out.

    lib = load_cpu_library()                 # compiles once per source hash, cached in the temp dir
    out = adaptive_conv(lib, frames, kernels, kernel_size)
    out = trilinear_sample(lib, video, offsets, reference_frame)
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from plugins.native_build import cached_build

PLUGINS_DIR = Path(__file__).resolve().parent
CPU_ABI_SOURCE = PLUGINS_DIR / "common" / "cpu_abi.cpp"
HEADERS = [
    PLUGINS_DIR / "common" / "kpn_common.h",
    PLUGINS_DIR / "adaptive_conv" / "adaptive_conv_math.cuh",
    PLUGINS_DIR / "trilinear_sample" / "trilinear_sample_math.cuh",
]
CXX_FLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror"]

# kpn::Status in common/kpn_common.h
STATUS_NAMES = {1: "invalid tensor shape", 2: "invalid attribute", 3: "unsupported data type", 4: "null pointer"}


class CpuBuildUnavailable(RuntimeError):
    """g++ or CUDA's headers (cuda_fp16.h) are missing: the CPU build cannot be made here."""


def find_cxx() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")


def find_cuda_include() -> Optional[Path]:
    """The folder holding cuda_fp16.h: $CUDA_HOME/$CUDA_PATH, then beside nvcc, then /usr/local/cuda."""
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates += [Path("/usr/local/cuda/include"), Path("/usr/include")]
    for c in candidates:
        if (c / "cuda_fp16.h").is_file():
            return c
    return None


def load_cpu_library(cache_dir: Optional[Path] = None) -> ctypes.CDLL:
    """Compile common/cpu_abi.cpp (once per content hash of the sources and flags) and load it."""
    cxx = find_cxx()
    if cxx is None:
        raise CpuBuildUnavailable("g++ not found (set $CXX)")
    cuda_include = find_cuda_include()
    if cuda_include is None:
        raise CpuBuildUnavailable("CUDA headers (cuda_fp16.h) not found: set $CUDA_HOME")
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "kpn-deploy-cpu-build"
    command = [cxx, *CXX_FLAGS, f"-I{cuda_include}", str(CPU_ABI_SOURCE)]
    library = cached_build(command, [CPU_ABI_SOURCE, *HEADERS], cache, "libkpn_cpu", "CPU")
    lib = ctypes.CDLL(str(library))
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    for name in ("kpn_adaptive_conv_cpu_f32", "kpn_adaptive_conv_cpu_f16"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, i32]
        fn.restype = i32
    for name in ("kpn_trilinear_sample_cpu_f32", "kpn_trilinear_sample_cpu_f16"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i32]
        fn.restype = i32
    return lib


def _suffix(a: np.ndarray, b: np.ndarray) -> str:
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float16):
        raise ValueError(f"float32 or float16 tensors of one dtype expected, got {a.dtype} and {b.dtype}")
    return "f32" if a.dtype == np.float32 else "f16"


def _check(status: int, op: str) -> None:
    if status != 0:
        raise ValueError(f"{op}: {STATUS_NAMES.get(status, f'status {status}')}")


def adaptive_conv(lib: ctypes.CDLL, frames: np.ndarray, kernels: np.ndarray, kernel_size: int) -> np.ndarray:
    """frames [B,N,C,H,W], kernels [B,N,K*K,H,W] -> [B,N,C,H,W] (docs/ops.md)."""
    suffix = _suffix(frames, kernels)
    frames, kernels = np.ascontiguousarray(frames), np.ascontiguousarray(kernels)
    b, n, c, h, w = frames.shape
    if kernels.shape != (b, n, kernel_size * kernel_size, h, w):
        raise ValueError(f"adaptive_conv: kernels {kernels.shape} do not match frames {frames.shape}, K={kernel_size}")
    out = np.empty_like(frames)
    status = getattr(lib, f"kpn_adaptive_conv_cpu_{suffix}")(
        frames.ctypes.data, kernels.ctypes.data, out.ctypes.data, b, n, c, h, w, kernel_size
    )
    _check(status, "adaptive_conv")
    return out


def trilinear_sample(lib: ctypes.CDLL, video: np.ndarray, offsets: np.ndarray, reference_frame: int) -> np.ndarray:
    """video [B,C,T,H,W], offsets [B,S,3,H,W] (dt,dy,dx relative) -> [B,C,S,H,W] (docs/ops.md)."""
    suffix = _suffix(video, offsets)
    video, offsets = np.ascontiguousarray(video), np.ascontiguousarray(offsets)
    b, c, t, h, w = video.shape
    s = offsets.shape[1]
    if offsets.shape != (b, s, 3, h, w):
        raise ValueError(f"trilinear_sample: offsets {offsets.shape} do not match video {video.shape}")
    out = np.empty((b, c, s, h, w), dtype=video.dtype)
    status = getattr(lib, f"kpn_trilinear_sample_cpu_{suffix}")(
        video.ctypes.data, offsets.ctypes.data, out.ctypes.data, b, c, t, h, w, s, reference_frame
    )
    _check(status, "trilinear_sample")
    return out
