"""ONNX Runtime (CPU) vs PyTorch eager, side by side in one run, on the same inputs and threads.

* model level: each family at small width, exported with ``export_onnx`` (fp32, dynamic shapes),
  latency of ``InferenceSession.run`` vs ``model(burst, noise_map)`` under ``torch.inference_mode``;
* op level: the standard-op function bodies of kpn::AdaptiveConv / kpn::TrilinearSample (one-node
  models from ``export.functions.op_model``) vs the PyTorch reference ops of ``train/ops.py`` at the
  shapes the models use.

    python -m benchmarks.onnx_vs_torch --out benchmarks/results/cpu-2core --sizes 256x256 512x512 --threads 2

Writes ``onnx_vs_torch.json`` and ``onnx_vs_torch.md`` to ``--out``. ``speedup`` = torch time / ORT
time (> 1: ONNX Runtime faster). Weights are random (seeded): latency does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

FAMILIES = ("kpn", "ame-kpn", "st-pan", "pan")


def _time(fn, warmup: int, repeats: int, min_seconds: float = 0.0) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeats:
            break
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "runs": len(times)}


def _session(path_or_bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _sizes(text: list[str]) -> list[tuple[int, int]]:
    out = []
    for s in text:
        h, w = s.lower().split("x")
        out.append((int(h), int(w)))
    return out


def bench_models(workdir: Path, sizes, threads: int, warmup: int, repeats: int, families) -> list[dict]:
    import torch

    from export.onnx_export import export_onnx
    from train.checkpoint import load_checkpoint, save_checkpoint
    from train.models import build_model, default_config

    rows = []
    for family in families:
        torch.manual_seed(0)
        cfg = default_config(family, "small")
        ckpt = workdir / f"{family}.pt"
        save_checkpoint(ckpt, build_model(cfg), cfg)
        report = export_onnx(ckpt, workdir / f"{family}.onnx")
        model, _ = load_checkpoint(ckpt)
        sess = _session(report.output, threads)
        for h, w in sizes:
            gen = torch.Generator().manual_seed(h * w)
            burst = torch.rand(1, cfg.frames, h, w, generator=gen)
            noise_map = torch.sqrt(1e-4 + 0.01 * burst[:, cfg.reference_index : cfg.reference_index + 1])
            feed = {"burst": burst.numpy(), "noise_map": noise_map.numpy()}
            with torch.inference_mode():
                t_torch = _time(lambda: model(burst, noise_map), warmup, repeats)
                ref = model(burst, noise_map).numpy()
            t_ort = _time(lambda: sess.run(None, feed), warmup, repeats)
            err = float(np.abs(sess.run(None, feed)[0] - ref).max())
            rows.append(
                {
                    "family": family,
                    "size": f"{h}x{w}",
                    "torch_ms": t_torch["median_ms"],
                    "ort_ms": t_ort["median_ms"],
                    "speedup": t_torch["median_ms"] / t_ort["median_ms"],
                    "max_abs_diff": err,
                    "onnx_nodes": report.node_count,
                    "onnx_mb": report.file_size / 1e6,
                    "runs": [t_torch["runs"], t_ort["runs"]],
                }
            )
            print(f"model {family:8s} {h}x{w}: torch {t_torch['median_ms']:8.1f} ms  ort {t_ort['median_ms']:8.1f} ms  "
                  f"speedup {rows[-1]['speedup']:.2f}  diff {err:.2g}", flush=True)
    return rows


def plugin_cpu_library():
    """(ctypes library of the plugin math's CPU build, None) or (None, why it cannot be built)."""
    from plugins import cpu_build

    try:
        return cpu_build.load_cpu_library(), None
    except cpu_build.CpuBuildUnavailable as exc:
        return None, str(exc)


def bench_ops(sizes, threads: int, warmup: int, repeats: int) -> list[dict]:
    """Per op: the PyTorch reference, the ONNX function body in ONNX Runtime and, when g++ and the CUDA
    headers are present, the plugin's kernel math built for the CPU (plugins/cpu_build.py: the same
    __host__ __device__ code the CUDA kernels run, one thread, a plain loop: a correctness build, not
    a fast CPU kernel)."""
    import torch

    import train.ops as ops
    from export.functions import op_model
    from plugins import cpu_build

    lib, _ = plugin_cpu_library()

    rows = []
    cases = [
        ("AdaptiveConv", "K=5, N=8 (KPN)", 5),
        ("TrilinearSample", "S=27, T=5 (ST-PAN)", 2),
        ("TrilinearSample", "S=25, T=1 (PAN)", 0),
    ]
    for op_type, label, attr in cases:
        sess = _session(op_model(op_type, attr).SerializeToString(), threads)
        for h, w in sizes:
            gen = torch.Generator().manual_seed(1)
            if op_type == "AdaptiveConv":
                a = torch.rand(1, 8, 1, h, w, generator=gen)
                b = torch.randn(1, 8, attr * attr, h, w, generator=gen) / attr
                feed = {"frames": a.numpy(), "kernels": b.numpy()}
                fn = lambda: ops.adaptive_conv(a, b, attr)  # noqa: E731
                plugin_fn = lambda: cpu_build.adaptive_conv(lib, feed["frames"], feed["kernels"], attr)  # noqa: E731
            else:
                t, s = (5, 27) if attr == 2 else (1, 25)
                a = torch.rand(1, 1, t, h, w, generator=gen)
                b = torch.randn(1, s, 3, h, w, generator=gen) * torch.tensor([0.7, 4.0, 4.0]).view(1, 1, 3, 1, 1)
                feed = {"video": a.numpy(), "offsets": b.numpy()}
                fn = lambda: ops.trilinear_sample(a, b, attr)  # noqa: E731
                plugin_fn = lambda: cpu_build.trilinear_sample(lib, feed["video"], feed["offsets"], attr)  # noqa: E731
            with torch.inference_mode():
                t_torch = _time(fn, warmup, repeats)
                ref = fn().numpy()
            t_ort = _time(lambda: sess.run(None, feed), warmup, repeats)
            err = float(np.abs(sess.run(None, feed)[0] - ref).max())
            rows.append(
                {
                    "op": op_type,
                    "case": label,
                    "size": f"{h}x{w}",
                    "torch_ms": t_torch["median_ms"],
                    "ort_ms": t_ort["median_ms"],
                    "speedup": t_torch["median_ms"] / t_ort["median_ms"],
                    "max_abs_diff": err,
                    "plugin_cpu_ms": _time(plugin_fn, warmup, repeats)["median_ms"] if lib else None,
                    "plugin_cpu_max_abs_diff": float(np.abs(plugin_fn() - ref).max()) if lib else None,
                }
            )
            print(f"op    {op_type:15s} {label:20s} {h}x{w}: torch {t_torch['median_ms']:8.1f} ms  "
                  f"ort {t_ort['median_ms']:8.1f} ms  speedup {rows[-1]['speedup']:.2f}", flush=True)
    return rows


def _opt(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# ONNX Runtime (CPU) vs PyTorch eager",
        "",
        f"{env['threads']} threads, {env['cpu']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}; "
        f"median of >= {env['repeats']} runs after {env['warmup']} warm-up; batch 1, fp32, random weights. "
        "speedup = torch / ORT.",
        "",
        "## Models (small width)",
        "",
        "| family | size | PyTorch ms | ORT ms | speedup | max abs diff | nodes | MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["models"]:
        lines.append(
            f"| {r['family']} | {r['size']} | {r['torch_ms']:.1f} | {r['ort_ms']:.1f} | {r['speedup']:.2f} | "
            f"{r['max_abs_diff']:.1e} | {r['onnx_nodes']} | {r['onnx_mb']:.2f} |"
        )
    lines += [
        "",
        "## Ops: ONNX function bodies vs PyTorch reference",
        "",
        "| op | case | size | PyTorch ms | ORT ms | speedup | max abs diff | plugin math, CPU build ms | its max abs diff |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["ops"]:
        lines.append(
            f"| {r['op']} | {r['case']} | {r['size']} | {r['torch_ms']:.1f} | {r['ort_ms']:.1f} | "
            f"{r['speedup']:.2f} | {r['max_abs_diff']:.1e} | {_opt(r.get('plugin_cpu_ms'), '.1f')} | "
            f"{_opt(r.get('plugin_cpu_max_abs_diff'), '.1e')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for onnx_vs_torch.json/.md")
    parser.add_argument("--sizes", nargs="+", default=["256x256", "512x512"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--skip-ops", action="store_true")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sizes = _sizes(args.sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kpn-bench-") as tmp:
        models = bench_models(Path(tmp), sizes, args.threads, args.warmup, args.repeats, args.families)
    ops_rows = [] if args.skip_ops else bench_ops(sizes, args.threads, args.warmup, args.repeats)
    result = {
        "environment": {
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "models": models,
        "ops": ops_rows,
    }
    (args.out / "onnx_vs_torch.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "onnx_vs_torch.md").write_text(_markdown(result))
    print(f"wrote {args.out / 'onnx_vs_torch.json'} and {args.out / 'onnx_vs_torch.md'}")
    return result


if __name__ == "__main__":
    main()
