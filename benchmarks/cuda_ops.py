"""The two CUDA kernels on a GPU, against the PyTorch reference ops (train/ops.py) on the same GPU.

    python -m benchmarks.cuda_ops --out benchmarks/results/<gpu-name>

Builds the kernels with nvcc (plugins/cuda_build.py, `-arch=native`), then for AdaptiveConv
(B=1, N=8, C=1, K=5, 1024x1024) and TrilinearSample (B=1, C=1, T=5, S=27, 1024x1024; dt in [-1, 1],
dy/dx ~ N(0, 3)) in float32 and float16:
- max abs error of the kernel's output vs train.ops run on the GPU in float32 on the same
  (dtype-rounded) inputs;
- median latency of the kernel and of PyTorch eager (train.ops on the same dtype inputs, the way a
  model calls it), CUDA events, after warm-up; the speed-up;
- achieved GB/s = minimum traffic (every input read once + the output written once) / kernel time,
  and its ratio to the GPU's copy bandwidth measured in the same run (device-to-device
  `Tensor.copy_` of a 1 GiB buffer, read + write counted).
Writes OUT/cuda_ops.json (every figure, GPU, driver, CUDA, torch, nvcc) and OUT/cuda_ops.md.
Without a CUDA GPU (or without nvcc): one line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

GOAL_SPEEDUP = 5.0  # x PyTorch eager
GOAL_BANDWIDTH = 0.5  # of the measured copy bandwidth
TOLERANCE = {"float32": 1e-5, "float16": 1e-2}  # as tests/test_cuda_ops.py: |ours - ref| <= tol * (1 + |ref|)
COPY_BYTES = 1 << 30


def _exit_unavailable(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------------
# Timing


def time_cuda(fn, warmup: int, repeat: int, inner: int) -> list[float]:
    """Seconds per call of `fn` on the current stream: `repeat` samples, each `inner` back-to-back
    calls between two CUDA events (amortises the launch gap of the first call), after `warmup` calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / inner)
    return samples


def copy_bandwidth(warmup: int, repeat: int) -> dict:
    """Device-to-device copy of a COPY_BYTES buffer: GB/s counting the read and the write."""
    import torch

    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    seconds = statistics.median(time_cuda(lambda: dst.copy_(src), warmup, repeat, inner=5))
    return {"buffer_bytes": COPY_BYTES, "bytes_moved": 2 * COPY_BYTES, "median_s": seconds, "gb_per_s": 2 * COPY_BYTES / seconds / 1e9}


# ----------------------------------------------------------------------------------------------------
# Inputs


def adaptive_conv_inputs(size: int, dtype, generator):
    import torch

    b, n, c, k = 1, 8, 1, 5
    frames = torch.rand((b, n, c, size, size), generator=generator, device="cuda")
    kernels = torch.rand((b, n, k * k, size, size), generator=generator, device="cuda") * (2.0 / (k * k))
    return {"frames": frames.to(dtype), "kernels": kernels.to(dtype)}, k, {"B": b, "N": n, "C": c, "K": k, "H": size, "W": size}


def trilinear_sample_inputs(size: int, dtype, generator):
    import torch

    b, c, t, s = 1, 1, 5, 27
    video = torch.rand((b, c, t, size, size), generator=generator, device="cuda")
    offsets = torch.empty((b, s, 3, size, size), device="cuda")
    offsets[:, :, 0].uniform_(-1.0, 1.0, generator=generator)  # dt
    offsets[:, :, 1:].normal_(0.0, 3.0, generator=generator)  # dy, dx
    shape = {"B": b, "C": c, "T": t, "S": s, "H": size, "W": size, "reference_frame": t // 2}
    return {"video": video.to(dtype), "offsets": offsets.to(dtype)}, t // 2, shape


# ----------------------------------------------------------------------------------------------------
# One op x dtype


def measure(op: str, dtype_name: str, size: int, lib, warmup: int, repeat: int, inner: int, copy_gbps: float) -> dict:
    import torch

    from train import ops
    from plugins import cuda_build

    torch.cuda.empty_cache()
    dtype = {"float32": torch.float32, "float16": torch.float16}[dtype_name]
    generator = torch.Generator(device="cuda").manual_seed(0)
    if op == "AdaptiveConv":
        inputs, attr, shape = adaptive_conv_inputs(size, dtype, generator)
        a, b = inputs["frames"], inputs["kernels"]
        out = torch.empty_like(a)
        ours = lambda: cuda_build.adaptive_conv(lib, a, b, attr, out=out)  # noqa: E731
        eager = lambda: ops.adaptive_conv(a, b, attr)  # noqa: E731
        reference = lambda: ops.adaptive_conv(a.float(), b.float(), attr)  # noqa: E731
    else:
        inputs, attr, shape = trilinear_sample_inputs(size, dtype, generator)
        a, b = inputs["video"], inputs["offsets"]
        out = torch.empty((a.shape[0], a.shape[1], b.shape[1], a.shape[3], a.shape[4]), dtype=dtype, device="cuda")
        ours = lambda: cuda_build.trilinear_sample(lib, a, b, attr, out=out)  # noqa: E731
        eager = lambda: ops.trilinear_sample(a, b, attr)  # noqa: E731
        reference = lambda: ops.trilinear_sample(a.float(), b.float(), attr)  # noqa: E731

    with torch.inference_mode():
        ours()
        torch.cuda.synchronize()
        ref = reference()
        error = (out.float() - ref).abs()
        max_abs_error = error.max().item()
        ref_max_abs = ref.abs().max().item()
        within = bool((error <= TOLERANCE[dtype_name] * (1.0 + ref.abs())).all().item())
        del ref, error
        kernel_times = time_cuda(ours, warmup, repeat, inner)
        eager_times = time_cuda(eager, warmup, max(3, repeat // 2), 1)

    bytes_moved = a.numel() * a.element_size() + b.numel() * b.element_size() + out.numel() * out.element_size()
    kernel_s, eager_s = statistics.median(kernel_times), statistics.median(eager_times)
    gbps = bytes_moved / kernel_s / 1e9
    row = {
        "op": op,
        "dtype": dtype_name,
        "shape": shape,
        "max_abs_error": max_abs_error,
        "reference_max_abs": ref_max_abs,
        "tolerance": TOLERANCE[dtype_name],
        "within_tolerance": within,
        "kernel_median_s": kernel_s,
        "kernel_min_s": min(kernel_times),
        "eager_median_s": eager_s,
        "eager_min_s": min(eager_times),
        "speedup": eager_s / kernel_s,
        "bytes_moved": bytes_moved,
        "achieved_gb_per_s": gbps,
        "fraction_of_copy_bandwidth": gbps / copy_gbps,
    }
    row["goal_speedup_met"] = row["speedup"] >= GOAL_SPEEDUP
    row["goal_bandwidth_met"] = row["fraction_of_copy_bandwidth"] >= GOAL_BANDWIDTH
    return row


# ----------------------------------------------------------------------------------------------------
# Machine


def driver_info() -> dict:
    info = {"driver_version": None, "driver_cuda_version": None}
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        if result.returncode == 0 and result.stdout.strip():
            info["driver_version"] = result.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        version = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0:
            info["driver_cuda_version"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
    except OSError:
        pass
    return info


def machine(lib_path: str, nvcc: str) -> dict:
    import torch

    from plugins import cuda_build

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": props.total_memory,
        **driver_info(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "nvcc": cuda_build.nvcc_version(nvcc),
        "library": lib_path,
        "python": platform.python_version(),
        "host": platform.node(),
    }


# ----------------------------------------------------------------------------------------------------
# Report


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def write_markdown(result: dict, path: Path) -> None:
    m, copy = result["machine"], result["copy_bandwidth"]
    lines = [
        "# CUDA kernels vs PyTorch eager on one GPU",
        "",
        f"GPU: {m['gpu']} (sm {m['compute_capability']}), driver {m['driver_version']} (CUDA {m['driver_cuda_version']}), "
        f"torch {m['torch']} (CUDA {m['torch_cuda']}), nvcc `{m['nvcc']}`.",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Copy bandwidth (device-to-device `copy_` of {copy['buffer_bytes'] >> 20} MiB, read + write counted): "
        f"**{copy['gb_per_s']:.0f} GB/s**.",
        "",
        "| op | dtype | shape | max abs err vs fp32 ref | kernel ms | eager ms | speed-up | MB moved | GB/s | of copy bw | goals |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        goals = ("speed-up ok" if r["goal_speedup_met"] else "speed-up MISSED") + ", " + (
            "bandwidth ok" if r["goal_bandwidth_met"] else "bandwidth MISSED"
        )
        error = f"{r['max_abs_error']:.2e}" + ("" if r["within_tolerance"] else " (OUT OF TOLERANCE)")
        lines.append(
            f"| {r['op']} | {r['dtype']} | {shape} | {error} | {_fmt_ms(r['kernel_median_s'])} | {_fmt_ms(r['eager_median_s'])} "
            f"| {r['speedup']:.1f}x | {r['bytes_moved'] / 1e6:.0f} | {r['achieved_gb_per_s']:.0f} "
            f"| {100 * r['fraction_of_copy_bandwidth']:.0f}% | {goals} |"
        )
    met = all(r["goal_speedup_met"] and r["goal_bandwidth_met"] and r["within_tolerance"] for r in result["rows"])
    lines += [
        "",
        f"Goals: >= {GOAL_SPEEDUP:g}x PyTorch eager and >= {100 * GOAL_BANDWIDTH:.0f}% of copy bandwidth, output within "
        f"tolerance (|err| <= tol * (1 + |ref|), tol fp32 {TOLERANCE['float32']:g}, fp16 {TOLERANCE['float16']:g}): "
        f"**{'all met' if met else 'NOT all met'}**.",
        "",
        "Latency: median over CUDA-event samples after warm-up (kernel: each sample "
        f"{result['settings']['inner']} back-to-back launches; eager: one call of `train.ops` per sample, on the same dtype "
        "inputs). MB moved = every input read once + the output written once (the minimum traffic); GB/s = that / kernel "
        "median. The error is against `train.ops` in float32 on the same (dtype-rounded) inputs.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="results folder, e.g. benchmarks/results/h100")
    parser.add_argument("--size", type=int, default=1024, help="H = W (1024 is the issue's size)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--inner", type=int, default=5, help="kernel launches per timed sample")
    parser.add_argument("--arch", default=None, help="comma-separated architectures (e.g. 90); default -arch=native")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError as exc:
        _exit_unavailable(f"no CUDA GPU: torch is not importable ({exc})")
    if not torch.cuda.is_available():
        _exit_unavailable(
            f"no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
        )
    from plugins import cuda_build

    nvcc = cuda_build.find_nvcc()
    if nvcc is None:
        _exit_unavailable("no nvcc: the CUDA kernels cannot be built (set $NVCC or $CUDA_HOME)")
    architectures = args.arch.split(",") if args.arch else None
    lib = cuda_build.load_cuda_library(architectures)

    copy = copy_bandwidth(args.warmup, args.repeat)
    print(f"copy bandwidth: {copy['gb_per_s']:.0f} GB/s", flush=True)
    rows = []
    for op in ("AdaptiveConv", "TrilinearSample"):
        for dtype_name in ("float32", "float16"):
            row = measure(op, dtype_name, args.size, lib, args.warmup, args.repeat, args.inner, copy["gb_per_s"])
            print(
                f"{op:16s} {dtype_name}: err {row['max_abs_error']:.2e}  kernel {_fmt_ms(row['kernel_median_s'])} ms  "
                f"eager {_fmt_ms(row['eager_median_s'])} ms  {row['speedup']:.1f}x  {row['achieved_gb_per_s']:.0f} GB/s "
                f"({100 * row['fraction_of_copy_bandwidth']:.0f}% of copy)",
                flush=True,
            )
            rows.append(row)

    result = {
        "command": "python -m benchmarks.cuda_ops " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(lib._name, nvcc),
        "settings": {"size": args.size, "warmup": args.warmup, "repeat": args.repeat, "inner": args.inner, "arch": args.arch or "native"},
        "goals": {"speedup": GOAL_SPEEDUP, "fraction_of_copy_bandwidth": GOAL_BANDWIDTH},
        "copy_bandwidth": copy,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_ops.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "cuda_ops.md")
    print(f"wrote {args.out / 'cuda_ops.json'} and {args.out / 'cuda_ops.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
