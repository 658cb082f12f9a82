"""CUDA build of the two kernels, for harnesses on a GPU host: `adaptive_conv_kernel.cu` and
`trilinear_sample_kernel.cu` compiled by nvcc into one small shared library (no TensorRT), loaded
with ctypes, and called through their C ABI over device pointers (`kpn_*_cuda`). Torch CUDA tensors
in, torch CUDA tensors out, enqueued on torch's current stream.

    lib = load_cuda_library()                # compiles once per source hash, cached in the temp dir
    out = adaptive_conv(lib, frames, kernels, kernel_size)
    out = trilinear_sample(lib, video, offsets, reference_frame)

Architectures: `-arch=native` when torch sees a CUDA GPU, else DEFAULT_ARCHITECTURES (or pass
`architectures=["80"]`). The CUDA runtime is linked statically (nvcc's default), so the library needs
no libcudart on the library path; it shares the process's primary context (and torch's streams).
This module imports torch only inside the functions that need it: building needs nvcc only.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from plugins.native_build import cached_build

PLUGINS_DIR = Path(__file__).resolve().parent
KERNEL_SOURCES = [
    PLUGINS_DIR / "adaptive_conv" / "adaptive_conv_kernel.cu",
    PLUGINS_DIR / "trilinear_sample" / "trilinear_sample_kernel.cu",
]
HEADERS = [
    PLUGINS_DIR / "common" / "kpn_common.h",
    PLUGINS_DIR / "common" / "elementwise_launch.cuh",
    PLUGINS_DIR / "adaptive_conv" / "adaptive_conv_kernel.h",
    PLUGINS_DIR / "adaptive_conv" / "adaptive_conv_math.cuh",
    PLUGINS_DIR / "trilinear_sample" / "trilinear_sample_kernel.h",
    PLUGINS_DIR / "trilinear_sample" / "trilinear_sample_math.cuh",
]
# Turing .. Hopper (as plugins/CMakeLists.txt, less Jetson's 87), used when no GPU is visible
DEFAULT_ARCHITECTURES = ("75", "80", "86", "89", "90")
NVCC_FLAGS = ["-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden"]
EXPORTED = ("kpn_adaptive_conv_cuda", "kpn_trilinear_sample_cuda")

# kpn::DType and kpn::Status in common/kpn_common.h
DTYPE_CODES = {"float32": 0, "float16": 1}
STATUS_NAMES = {
    1: "invalid tensor shape",
    2: "invalid attribute",
    3: "unsupported data type",
    4: "null pointer",
    5: "CUDA error at launch (no kernel image for this GPU, or a driver older than nvcc's CUDA: check the "
    "architectures and `nvcc --version` against `nvidia-smi`)",
}


class CudaBuildUnavailable(RuntimeError):
    """nvcc is missing: the CUDA build cannot be made here."""


def find_nvcc() -> Optional[str]:
    """$NVCC, then $CUDA_HOME/bin / $CUDA_PATH/bin, then PATH, then /usr/local/cuda/bin."""
    candidates = [os.environ.get("NVCC", "")]
    candidates += [str(Path(os.environ[v]) / "bin" / "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def nvcc_version(nvcc: str) -> str:
    """The last line of `nvcc --version` (e.g. 'Build cuda_13.0.r13.0/compiler.36424714_0')."""
    result = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else "?"


def _visible_gpu_capability() -> Optional[str]:
    """'sm_90' for torch's current CUDA device, None without torch or a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def arch_flags(architectures: Optional[Sequence[str]]) -> tuple[list[str], str]:
    """nvcc flags and a cache-key text: `-arch=native` (keyed by the GPU's capability) when
    `architectures` is None and a GPU is visible, else one -gencode per architecture (SASS + PTX of
    the highest, so newer GPUs JIT it)."""
    if architectures is None:
        capability = _visible_gpu_capability()
        if capability is not None:
            return ["-arch=native"], f"native:{capability}"
        architectures = DEFAULT_ARCHITECTURES
    archs = [str(a).removeprefix("sm_") for a in architectures]
    if not archs:
        raise ValueError("architectures: empty list")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags, " ".join(flags)


def build_cuda_library(architectures: Optional[Sequence[str]] = None, cache_dir: Optional[Path] = None) -> Path:
    """Compile the two kernels into libkpn_cuda_<hash>.so (once per content hash of the sources,
    flags, architectures and nvcc version) and return its path."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise CudaBuildUnavailable("nvcc not found (set $NVCC or $CUDA_HOME)")
    archs, arch_key = arch_flags(architectures)
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "kpn-deploy-cuda-build"
    command = [nvcc, *NVCC_FLAGS, *archs, *map(str, KERNEL_SOURCES)]
    library = cached_build(command, [*KERNEL_SOURCES, *HEADERS], cache, "libkpn_cuda", "CUDA",
                           key=f"{nvcc_version(nvcc)} {arch_key}")
    return library


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the argtypes/restype of the kpn_*_cuda functions (kernel headers' C ABI)."""
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    # (dtype, frames, kernels, out, B, N, C, H, W, K, stream)
    lib.kpn_adaptive_conv_cuda.argtypes = [i32, ptr, ptr, ptr, i64, i64, i64, i64, i64, i32, ptr]
    lib.kpn_adaptive_conv_cuda.restype = i32
    # (dtype, video, offsets, out, B, C, T, H, W, S, reference_frame, stream)
    lib.kpn_trilinear_sample_cuda.argtypes = [i32, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i32, ptr]
    lib.kpn_trilinear_sample_cuda.restype = i32
    return lib


def load_cuda_library(architectures: Optional[Sequence[str]] = None, cache_dir: Optional[Path] = None) -> ctypes.CDLL:
    """Build (or reuse) the library and load it with its functions declared."""
    return declare(ctypes.CDLL(str(build_cuda_library(architectures, cache_dir))))


def _check(status: int, op: str) -> None:
    if status != 0:
        raise ValueError(f"{op}: {STATUS_NAMES.get(status, f'status {status}')}")


def _dtype_code(a, b, op: str) -> int:
    import torch

    if not (a.is_cuda and b.is_cuda) or a.device != b.device:
        raise ValueError(f"{op}: CUDA tensors on one device expected, got {a.device} and {b.device}")
    names = {torch.float32: "float32", torch.float16: "float16"}
    if a.dtype != b.dtype or a.dtype not in names:
        raise ValueError(f"{op}: float32 or float16 tensors of one dtype expected, got {a.dtype} and {b.dtype}")
    return DTYPE_CODES[names[a.dtype]]


def adaptive_conv(lib: ctypes.CDLL, frames, kernels, kernel_size: int, out=None):
    """frames [B,N,C,H,W], kernels [B,N,K*K,H,W] (torch CUDA tensors) -> [B,N,C,H,W] (docs/ops.md).
    Enqueued on torch's current stream of the tensors' device; `out` may be given (reused)."""
    import torch

    dtype = _dtype_code(frames, kernels, "adaptive_conv")
    frames, kernels = frames.contiguous(), kernels.contiguous()
    b, n, c, h, w = frames.shape
    if tuple(kernels.shape) != (b, n, kernel_size * kernel_size, h, w):
        raise ValueError(f"adaptive_conv: kernels {tuple(kernels.shape)} do not match frames {tuple(frames.shape)}, K={kernel_size}")
    if out is None:
        out = torch.empty_like(frames)
    elif out.shape != frames.shape or out.dtype != frames.dtype or out.device != frames.device or not out.is_contiguous():
        raise ValueError("adaptive_conv: out must be a contiguous tensor like frames")
    with torch.cuda.device(frames.device):
        stream = torch.cuda.current_stream(frames.device).cuda_stream
        status = lib.kpn_adaptive_conv_cuda(
            dtype, frames.data_ptr(), kernels.data_ptr(), out.data_ptr(), b, n, c, h, w, kernel_size, stream
        )
    _check(status, "adaptive_conv")
    return out


def trilinear_sample(lib: ctypes.CDLL, video, offsets, reference_frame: int, out=None):
    """video [B,C,T,H,W], offsets [B,S,3,H,W] (dt,dy,dx relative; torch CUDA tensors) -> [B,C,S,H,W]
    (docs/ops.md). Enqueued on torch's current stream of the tensors' device; `out` may be given."""
    import torch

    dtype = _dtype_code(video, offsets, "trilinear_sample")
    video, offsets = video.contiguous(), offsets.contiguous()
    b, c, t, h, w = video.shape
    s = offsets.shape[1]
    if tuple(offsets.shape) != (b, s, 3, h, w):
        raise ValueError(f"trilinear_sample: offsets {tuple(offsets.shape)} do not match video {tuple(video.shape)}")
    shape = (b, c, s, h, w)
    if out is None:
        out = torch.empty(shape, dtype=video.dtype, device=video.device)
    elif tuple(out.shape) != shape or out.dtype != video.dtype or out.device != video.device or not out.is_contiguous():
        raise ValueError(f"trilinear_sample: out must be a contiguous {video.dtype} tensor of shape {shape}")
    with torch.cuda.device(video.device):
        stream = torch.cuda.current_stream(video.device).cuda_stream
        status = lib.kpn_trilinear_sample_cuda(
            dtype, video.data_ptr(), offsets.data_ptr(), out.data_ptr(), b, c, t, h, w, s, reference_frame, stream
        )
    _check(status, "trilinear_sample")
    return out
