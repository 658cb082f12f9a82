"""`kpn-bench latency`: every model x backend x size in ONE process and one run, so ratios are fair.

Per configuration: `warmup` untimed calls, then `repeat` timed calls of one batch-1 inference on the
whole frame (no tiling) -> median, p90 and min latency, output megapixels per second at the median,
nanoseconds per output pixel, and the peak resident memory of the process during those calls (the
Linux VmHWM counter, reset before each configuration; on GPU backends the device memory in use after
the calls as well). A backend that cannot run here is listed with the reason, never dropped.

Backends: `torch` (PyTorch eager on the CPU, `torch.inference_mode`), `torch-cuda` / `torch-cuda-fp16`
(PyTorch eager on GPU 0, float32 / float16, host copies included), `ort-cpu` / `ort-cuda` (ONNX
Runtime through `runtime.backends.open_backend`, the kpn ops as their standard-op function bodies),
`trt-fp32` / `trt-fp16` (an engine built with `export.trt.build_engine`, run by the runtime's
TensorRT backend with the plugin library).

The op-level part calls `benchmarks.onnx_vs_torch.bench_ops` (PyTorch reference op vs the ONNX
function body in ONNX Runtime, and the CPU build of the plugin kernel math when g++ and the CUDA headers are present).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .common import (
    BenchError,
    ModelSpec,
    ensure_onnx,
    machine_info,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    save_figure,
    summarize,
    time_calls,
    write_json,
    write_text,
)

BACKENDS = ("torch", "torch-cuda", "torch-cuda-fp16", "ort-cpu", "ort-cuda", "trt-fp32", "trt-fp16")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:240] if text else type(exc).__name__


def _device_mem_used_mb() -> Optional[float]:
    """Memory in use on GPU 0 (whole device), from the CUDA runtime when cuda-python is installed."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    try:
        err, free, total = cudart.cudaMemGetInfo()
        if int(err) != 0:
            return None
        return (total - free) / 2**20
    except Exception:
        return None


class _Runner:
    """One opened backend for one model: `prepare(burst, nmap)` -> a zero-argument callable."""

    def __init__(self, name: str, prepare: Callable[[np.ndarray, np.ndarray], Callable[[], object]],
                 close: Callable[[], None] = lambda: None, gpu: bool = False, note: str = "") -> None:
        self.name, self.prepare, self.close, self.gpu, self.note = name, prepare, close, gpu, note


def _open_torch(spec: ModelSpec, threads: int, backend: str = "torch") -> _Runner:
    """PyTorch eager: `torch` on the CPU; `torch-cuda` / `torch-cuda-fp16` on GPU 0 (the model and its
    inputs in float32 / float16). A GPU call includes the host-to-device copy of the inputs and the copy
    of the output back, as the runtime's backends do, so every backend is timed numpy in, numpy out."""
    if spec.checkpoint is None:
        raise BenchError("no PyTorch checkpoint for this model (ONNX only)")
    import torch

    from train.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(spec.checkpoint)
    if backend == "torch":
        def prepare(burst: np.ndarray, nmap: np.ndarray):
            b, m = torch.from_numpy(burst), torch.from_numpy(nmap)

            def call():
                with torch.inference_mode():
                    return model(b, m)

            return call

        return _Runner("torch", prepare, note=f"PyTorch {torch.__version__} eager, CPU, {threads} threads")

    if not torch.cuda.is_available():
        raise BenchError(f"no CUDA GPU visible to PyTorch {torch.__version__} (torch.cuda.is_available() is False)")
    dtype = torch.float16 if backend == "torch-cuda-fp16" else torch.float32
    model = model.to(device="cuda", dtype=dtype)

    def prepare_cuda(burst: np.ndarray, nmap: np.ndarray):
        b, m = torch.from_numpy(burst).pin_memory(), torch.from_numpy(nmap).pin_memory()

        def call():
            with torch.inference_mode():
                out = model(b.to("cuda", non_blocking=True).to(dtype), m.to("cuda", non_blocking=True).to(dtype))
                return out.float().cpu().numpy()  # the copy back synchronises

        return call

    name = torch.cuda.get_device_name(0)
    return _Runner(backend, prepare_cuda, gpu=True,
                   note=f"PyTorch {torch.__version__} eager, {name}, {str(dtype).removeprefix('torch.')}")


def _open_runtime(path: Path, backend: str, threads: int, gpu: bool) -> _Runner:
    from runtime.backends import open_backend
    from runtime.errors import UserError

    try:
        be, note = open_backend(path, backend, threads=threads)
    except UserError as exc:
        raise BenchError(str(exc)) from None

    def prepare(burst: np.ndarray, nmap: np.ndarray):
        return lambda: be.run(burst, nmap)

    return _Runner(backend, prepare, close=be.close, gpu=gpu, note=f"runtime backend {be.name} ({note})")


def _open_trt(spec: ModelSpec, onnx_path: Path, fp16: bool, sizes: list[int], workdir: Path) -> _Runner:
    try:
        from export import trt as trt_builder  # type: ignore[attr-defined]
    except ImportError as exc:
        raise BenchError(f"TensorRT engine builder unavailable ({_first_line(exc)}); on a GPU host: pip install 'kpn-deploy[gpu]'") from None
    n = spec.frames
    lo, hi = min(sizes), max(sizes)
    opt = 512 if lo <= 512 <= hi else hi
    engine = workdir / f"{onnx_path.stem}.{'fp16' if fp16 else 'fp32'}.engine"
    engine.parent.mkdir(parents=True, exist_ok=True)
    try:
        built = trt_builder.build_engine(
            onnx_path, output_path=engine, fp16=fp16,
            min_shape=(1, n, lo, lo), opt_shape=(1, n, opt, opt), max_shape=(1, n, hi, hi),
        )
    except Exception as exc:  # ExportError, TrtBuildError, TensorRT's own
        raise BenchError(f"engine build failed: {_first_line(exc)}") from None
    runner = _open_runtime(Path(built), "trt", 0, gpu=True)
    runner.name = "trt-fp16" if fp16 else "trt-fp32"
    return runner


def open_runner(spec: ModelSpec, backend: str, threads: int, sizes: list[int], workdir: Path) -> _Runner:
    if backend in ("torch", "torch-cuda", "torch-cuda-fp16"):
        return _open_torch(spec, threads, backend)
    onnx_path = ensure_onnx(spec, workdir / "onnx")
    if backend in ("ort-cpu", "ort-cuda"):
        return _open_runtime(onnx_path, backend, threads, gpu=backend == "ort-cuda")
    if backend in ("trt-fp32", "trt-fp16"):
        return _open_trt(spec, onnx_path, backend == "trt-fp16", sizes, workdir / "engines")
    raise BenchError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _inputs(spec: ModelSpec, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, size])
    burst = rng.random((1, spec.frames, size, size), dtype=np.float32)
    ref = burst[:, spec.reference_index : spec.reference_index + 1]
    nmap = np.sqrt(np.float32(1e-4) + np.float32(1e-2) * ref).astype(np.float32)
    return burst, nmap


def bench_models(specs: list[ModelSpec], backends: list[str], sizes: list[int], threads: int, warmup: int,
                 repeat: int, workdir: Path, log: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    rows: list[dict] = []
    unavailable: list[dict] = []
    for spec in specs:
        for backend in backends:
            t0 = time.perf_counter()
            try:
                runner = open_runner(spec, backend, threads, sizes, workdir)
            except BenchError as exc:
                unavailable.append({"model": spec.name, "backend": backend, "reason": str(exc)})
                log(f"{spec.name:24s} {backend:9s} not available: {exc}")
                continue
            open_s = time.perf_counter() - t0
            for size in sizes:
                base = {"model": spec.name, "family": spec.family, "backend": backend, "size": size,
                        "height": size, "width": size, "pixels": size * size, "frames": spec.frames}
                if size % spec.size_multiple:
                    unavailable.append({**base, "reason": f"{size} is not a multiple of {spec.size_multiple}"})
                    continue
                burst, nmap = _inputs(spec, size)
                try:
                    fn = runner.prepare(burst, nmap)
                    rss_before = rss_mb()
                    reset_peak_rss()
                    times = time_calls(fn, warmup, repeat)
                    peak = peak_rss_mb()
                except (MemoryError, RuntimeError, BenchError, Exception) as exc:  # noqa: B014 - any backend error
                    unavailable.append({**base, "reason": f"failed: {_first_line(exc)}"})
                    log(f"{spec.name:24s} {backend:9s} {size:5d}: failed: {_first_line(exc)}")
                    continue
                row = {**base, **summarize(times, size * size), "peak_rss_mb": peak, "rss_before_mb": rss_before,
                       "open_s": open_s, "note": runner.note}
                if runner.gpu:
                    row["device_mem_used_mb"] = _device_mem_used_mb()
                rows.append(row)
                log(f"{spec.name:24s} {backend:9s} {size:5d}: median {row['median_ms']:9.2f} ms  p90 {row['p90_ms']:9.2f} ms  "
                    f"{row['mp_per_s']:7.3f} MP/s  peak RSS {peak or float('nan'):7.0f} MB")
            runner.close()
    return rows, unavailable


# ----------------------------------------------------------------------------------------------------
# Op level


def bench_ops(sizes: list[int], threads: int, warmup: int, repeat: int) -> tuple[list[dict], list[dict]]:
    """PyTorch reference ops vs ONNX Runtime function bodies (benchmarks/onnx_vs_torch.py), plus the
    status of the plugin-math faces."""
    from . import onnx_vs_torch

    rows = onnx_vs_torch.bench_ops([(s, s) for s in sizes], threads, warmup, repeat)
    unavailable = []
    _, why = onnx_vs_torch.plugin_cpu_library()
    if why:
        unavailable.append({"face": "plugin math, CPU build (ctypes)", "reason": why})
    unavailable.append({"face": "CUDA kernels", "reason": "timed by python -m benchmarks.cuda_ops (a GPU and nvcc), and inside the trt-* model backends"})
    return rows, unavailable


# ----------------------------------------------------------------------------------------------------
# Reports


def scaling(rows: list[dict]) -> list[dict]:
    """Per model x backend: per-pixel time at each size relative to the largest size, and whether all
    stay within 20% of linear scaling."""
    out = []
    keys = sorted({(r["model"], r["backend"]) for r in rows})
    for model, backend in keys:
        rs = sorted((r for r in rows if r["model"] == model and r["backend"] == backend), key=lambda r: r["pixels"])
        if len(rs) < 2:
            continue
        ref = rs[-1]["ns_per_pixel"]
        rel = {str(r["size"]): r["ns_per_pixel"] / ref for r in rs}
        spread = max(r["ns_per_pixel"] for r in rs) / min(r["ns_per_pixel"] for r in rs) - 1.0
        out.append({"model": model, "backend": backend, "ns_per_pixel_relative_to_largest": rel,
                    "max_spread": spread, "linear_within_20pct": spread <= 0.2})
    return out


def markdown(result: dict) -> str:
    env, cfg = result["machine"], result["config"]
    lines = [
        "# kpn-bench latency",
        "",
        f"Command: `{cfg['command']}`",
        "",
        f"{env['cpu']} ({env['cpu_count']} CPUs), {env['memory_gb']} GB; GPUs: {', '.join(env['gpus']) or 'none'}; "
        f"{cfg['threads']} threads; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        "",
        f"Batch 1, whole frame (no tiling), random inputs; {cfg['warmup']} warm-up + {cfg['repeat']} timed runs per row. "
        "MP/s = output pixels / median. Speed-up = PyTorch eager median / this median (same model, same size). "
        "Peak RSS = peak resident memory of the whole benchmark process during the row's runs (includes the "
        "Python interpreter, torch and every loaded model).",
        "",
        "| model | backend | size | median ms | p90 ms | MP/s | ns/px | speed-up vs torch | peak RSS MB | device MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    torch_ms = {(r["model"], r["size"]): r["median_ms"] for r in result["models"] if r["backend"] == "torch"}
    for r in result["models"]:
        t = torch_ms.get((r["model"], r["size"]))
        sp = f"{t / r['median_ms']:.2f}" if t else "-"
        dev = r.get("device_mem_used_mb")
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        dev_s = "-" if dev is None else f"{dev:.0f}"
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['size']}x{r['size']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['mp_per_s']:.3f} | {r['ns_per_pixel']:.0f} | {sp} | "
            f"{rss} | {dev_s} |"
        )
    if result["unavailable"]:
        lines += ["", "## Not available", "", "| model | backend | size | reason |", "|---|---|---|---|"]
        for u in result["unavailable"]:
            size = f"{u['size']}x{u['size']}" if "size" in u else "all"
            lines.append(f"| {u['model']} | {u['backend']} | {size} | not available: {u['reason']} |")
    if result["scaling"]:
        lines += ["", "## Scaling (time per pixel relative to the largest size; linear = 1.00)", "",
                  "| model | backend | per-pixel time by size | spread | within 20% of linear |", "|---|---|---|---:|---|"]
        for s in result["scaling"]:
            rel = ", ".join(f"{k}: {v:.2f}" for k, v in s["ns_per_pixel_relative_to_largest"].items())
            lines.append(f"| {s['model']} | {s['backend']} | {rel} | {s['max_spread']:.0%} | {'yes' if s['linear_within_20pct'] else 'no'} |")
    if result.get("ops") is not None:
        lines += ["", "## Ops: PyTorch reference vs ONNX Runtime function body (benchmarks/onnx_vs_torch.py)", "",
                  "| op | case | size | PyTorch ms | ORT ms | speed-up | max abs diff | plugin math, CPU build ms | its max abs diff |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["ops"]:
            plugin = ("| n/a | n/a |" if r.get("plugin_cpu_ms") is None else
                      f"| {r['plugin_cpu_ms']:.2f} | {r['plugin_cpu_max_abs_diff']:.1e} |")
            lines.append(f"| {r['op']} | {r['case']} | {r['size']} | {r['torch_ms']:.2f} | {r['ort_ms']:.2f} | "
                         f"{r['speedup']:.2f} | {r['max_abs_diff']:.1e} " + plugin)
        for u in result.get("ops_unavailable", []):
            lines.append(f"\n- {u['face']}: not available: {u['reason']}")
    models = result.get("model_info", [])
    if models:
        lines += ["", "## Models", ""]
        for m in models:
            lines.append(f"- {m['name']}: {m['family']}, {m['frames']} frames, "
                         f"{'random weights' if m['random_weights'] else 'training step ' + str(m.get('training_step'))}; checkpoint {m['checkpoint']}, ONNX {m['onnx']}")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in result["models"])) or ["(no rows)"]
    cols = min(len(models), 4)
    nrows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        rs = [r for r in result["models"] if r["model"] == model]
        for backend in dict.fromkeys(r["backend"] for r in rs):
            pts = sorted((r["pixels"], r["median_ms"], r["p90_ms"]) for r in rs if r["backend"] == backend)
            px = np.array([p[0] for p in pts], dtype=float)
            ms = np.array([p[1] for p in pts])
            p90 = np.array([p[2] for p in pts])
            ax.errorbar(px, ms, yerr=[np.zeros_like(ms), p90 - ms], marker="o", capsize=2, label=backend)
        if rs:
            # a linear-scaling guide through the smallest size of the first backend
            first = sorted((r["pixels"], r["median_ms"]) for r in rs if r["backend"] == rs[0]["backend"])
            px = np.array([p[0] for p in first], dtype=float)
            ax.plot(px, first[0][1] * px / px[0], "k:", lw=1, label="linear")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("output pixels")
        ax.set_ylabel("latency ms (median, bar to p90)")
        ax.set_title(model, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(f"kpn-bench latency, {result['machine']['cpu']}, {result['config']['threads']} threads", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def run(specs: list[ModelSpec], models_note: str, backends: list[str], sizes: list[int], threads: int, warmup: int,
        repeat: int, out: Path, workdir: Path, ops: bool, op_sizes: list[int], command: str,
        log: Callable[[str], None] = print) -> dict:
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise BenchError(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if any(s <= 0 for s in sizes) or warmup < 0 or repeat < 1 or threads < 1:
        raise BenchError("--sizes must be positive, --repeat >= 1, --warmup >= 0, --threads >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    rows, unavailable = bench_models(specs, backends, sizes, threads, warmup, repeat, workdir, log)
    result = {
        "machine": machine_info(threads),
        "config": {"command": command, "backends": backends, "sizes": sizes, "threads": threads, "warmup": warmup,
                   "repeat": repeat, "models_from": models_note, "batch": 1, "dtype": "float32 inputs"},
        "model_info": [s.describe() for s in specs],
        "models": rows,
        "unavailable": unavailable,
        "scaling": scaling(rows),
    }
    if ops:
        result["ops"], result["ops_unavailable"] = bench_ops(op_sizes, threads, warmup, repeat)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "latency.json", result)
    write_text(out / "latency.md", markdown(result))
    plot(result, out / "latency.png")
    return result
