"""Shared pieces of `kpn-bench`: model resolution, timing, memory, machine description, JSON I/O.

Nothing here decides what a model means: checkpoints are rebuilt with `train.checkpoint`, ONNX models
are written by `export.onnx_export.export_onnx`, and the "through the runtime" path opens them with
`runtime.backends.open_backend`, the same call `python -m runtime.denoise` makes.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from runtime.files import sha256_file

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"
FAMILIES = ("kpn", "ame-kpn", "st-pan", "pan")


class BenchError(Exception):
    """A user-caused problem; the CLI prints the one-line message and exits non-zero."""


# ----------------------------------------------------------------------------------------------------
# Parsing


def parse_list(text: str, kind: type = str, what: str = "list") -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise BenchError(f"{what}: empty list")
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise BenchError(f"{what}: {text!r} is not a comma-separated list of {kind.__name__}") from None


# ----------------------------------------------------------------------------------------------------
# Timing and memory


def time_calls(fn: Callable[[], object], warmup: int, repeat: int) -> list[float]:
    """Seconds per call of `fn`, `repeat` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times: list[float], pixels: int) -> dict:
    """median / p90 / min in ms and output megapixels per second at the median."""
    arr = np.asarray(times, dtype=np.float64)
    median = float(statistics.median(times))
    return {
        "median_ms": 1e3 * median,
        "p90_ms": 1e3 * float(np.percentile(arr, 90)),
        "min_ms": 1e3 * float(arr.min()),
        "runs": len(times),
        "mp_per_s": pixels / 1e6 / median,
        "ns_per_pixel": 1e9 * median / pixels,
    }


def _status_kb(key: str) -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> Optional[float]:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> Optional[float]:
    """Peak resident set size of this process since the last `reset_peak_rss` (Linux VmHWM)."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------
# Machine


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(threads: Optional[int] = None) -> dict:
    libs = ["numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python",
            "opencv-python-headless", "bm3d", "scikit-image", "matplotlib"]
    mem_kb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = float(line.split()[1])
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": None if mem_kb is None else round(mem_kb / 1024**2, 1),
        "gpus": _gpus(),
        "threads": threads,
        "versions": {lib: _version(lib) for lib in libs if _version(lib) is not None},
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (NaN/inf are written as null so the file is strict JSON)."""

    def clean(x):
        if isinstance(x, float) and not np.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer)):
            return clean(x.item())
        if isinstance(x, Path):
            return str(x)
        return x

    write_text(path, json.dumps(clean(data), indent=2, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# Models


@dataclass
class ModelSpec:
    """One model to benchmark: a checkpoint (PyTorch), an ONNX file (runtime), or both."""

    name: str
    family: str
    frames: int
    reference_index: int
    size_multiple: int
    checkpoint: Optional[Path] = None
    onnx: Optional[Path] = None
    random_weights: bool = False
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "frames": self.frames,
            "reference_index": self.reference_index,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "onnx": str(self.onnx) if self.onnx else None,
            "random_weights": self.random_weights,
            **self.info,
        }


def _onnx_meta(path: Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def _spec_from_onnx(path: Path, name: Optional[str] = None) -> ModelSpec:
    meta = _onnx_meta(path)
    if "kpn.family" not in meta:
        raise BenchError(f"{path}: not a kpn-deploy ONNX model (no kpn.family metadata); export it with kpn-export onnx")
    return ModelSpec(
        name=name or path.stem,
        family=meta["kpn.family"],
        frames=int(meta["kpn.frames"]),
        reference_index=int(meta["kpn.reference_index"]),
        size_multiple=int(meta.get("kpn.size_multiple", "1")),
        onnx=path,
        info={"precision": meta.get("kpn.precision", "fp32"), "width": meta.get("kpn.width"),
              "training_step": meta.get("kpn.training_step")},
    )


def _training_info(model, ckpt: dict) -> dict:
    """What a report needs to say how a checkpoint was trained (absent fields are left out)."""
    from train.trainer import STAGE_FIELDS, first_stage_values, stage_changes

    args, metrics = ckpt.get("train_args") or {}, ckpt.get("metrics") or {}
    info = {"parameters": sum(p.numel() for p in model.parameters())}
    for key in ("crop", "noise_range"):
        if args.get(key) is not None:
            info[f"training_{key}"] = args[key]
    stages = [{"from_step": int(s["from_step"]), "set": stage_changes(s)[0]} for s in args.get("stages") or []]
    if stages:
        info["training_stages"] = stages
    if args:  # how the run started (its stages change these later)
        first = first_stage_values(args)
        info["training_downsample"], info["training_data"] = first["downsample"], first["data"]
        info["training_batch_size"] = first["batch_size"]
        for name, unset in STAGE_FIELDS.items():  # the others only where they are not their default
            if name not in ("downsample", "data", "batch_size") and first[name] != unset:
                info[f"training_{name}"] = first[name]
    if metrics.get("wall_seconds") is not None:
        info["training_wall_seconds"] = round(float(metrics["wall_seconds"]))
    return info


def _spec_from_checkpoint(path: Path, name: Optional[str] = None) -> ModelSpec:
    from train.checkpoint import load_checkpoint

    try:
        model, ckpt = load_checkpoint(path)
    except Exception as exc:  # CheckpointError and torch's own errors
        raise BenchError(f"{path}: not a loadable kpn-deploy checkpoint ({str(exc).splitlines()[0][:160]})") from None
    cfg = ckpt["config_object"]
    spec = ModelSpec(
        name=name or path.stem,
        family=cfg.family,
        frames=cfg.frames,
        reference_index=cfg.reference_index,
        size_multiple=cfg.size_multiple,
        checkpoint=path,
        info={"width": getattr(cfg, "width", None), "kernels": getattr(cfg, "kernels", None),  # None: not a KPN
              "training_step": ckpt.get("step"), **_training_info(model, ckpt)},
    )
    # an ONNX export of exactly this checkpoint beside it is reused (its metadata names the checkpoint's hash)
    beside = path.with_suffix(".onnx")
    if beside.is_file():
        try:
            meta = _onnx_meta(beside)
            if meta.get("kpn.checkpoint_sha256") == sha256_file(path) and meta.get("kpn.precision", "fp32") == "fp32":
                spec.onnx = beside
        except Exception:  # unreadable: export anew
            pass
    return spec


def _manifest_specs() -> list[ModelSpec]:
    """Shipped models listed in models/MANIFEST.json (`python -m train.release`): each entry's
    checkpoint (its ONNX export, beside it, is reused by _spec_from_checkpoint)."""
    manifest = MODELS_DIR / "MANIFEST.json"
    if not manifest.is_file():
        return []
    entries = json.loads(manifest.read_text())["models"]
    return [_spec_from_checkpoint(MODELS_DIR / e["checkpoint"], e["name"]) for e in entries
            if (MODELS_DIR / e["checkpoint"]).is_file()]


def random_model(family: str, workdir: Path, width: str = "small", seed: int = 0) -> ModelSpec:
    """A freshly initialised model of `family` saved as a checkpoint (latency does not depend on weights)."""
    import torch

    from train.checkpoint import save_checkpoint
    from train.models import build_model, default_config

    torch.manual_seed(seed)
    cfg = default_config(family, width)
    path = workdir / f"{family}-{width}-random.pt"
    save_checkpoint(path, build_model(cfg), cfg)
    spec = _spec_from_checkpoint(path, f"{family}-{width} (random)")
    spec.random_weights = True
    return spec


def resolve_models(specs: Optional[list[str]], workdir: Path, allow_random: bool) -> tuple[list[ModelSpec], str]:
    """--models entries -> specs, and a note on where they came from.

    An entry is a checkpoint (.pt), an ONNX model (.onnx), `shipped` (models/MANIFEST.json) or, when
    `allow_random`, a family name (`kpn`, `ame-kpn`, `st-pan`, `pan`: small width, random weights).
    No entry: the shipped models, else (if allowed) the four families with random weights.
    """
    if not specs:
        shipped = _manifest_specs()
        if shipped:
            return shipped, "models/MANIFEST.json"
        if not allow_random:
            return [], "no --models and no models/MANIFEST.json"
        specs = list(FAMILIES)
    out: list[ModelSpec] = []
    for entry in specs:
        for item in parse_list(entry, str, "--models"):
            if item == "shipped":
                shipped = _manifest_specs()
                if not shipped:
                    raise BenchError("--models shipped: models/MANIFEST.json lists no model file present")
                out += shipped
                continue
            if item in FAMILIES and not Path(item).exists():
                if not allow_random:
                    raise BenchError(f"--models {item}: a family name means random weights, meaningless for quality; give a checkpoint")
                out.append(random_model(item, workdir))
                continue
            path = Path(item)
            if not path.is_file():
                raise BenchError(f"--models {item}: no such file (give a .pt checkpoint, an .onnx model, 'shipped' or a family name)")
            if path.suffix.lower() == ".onnx":
                out.append(_spec_from_onnx(path))
            else:
                out.append(_spec_from_checkpoint(path))
    names = [s.name for s in out]
    for i, s in enumerate(out):  # unique names for tables
        if names.count(s.name) > 1:
            s.name = f"{s.name}#{i}"
    return out, "--models"


def ensure_onnx(spec: ModelSpec, workdir: Path) -> Path:
    """The fp32 ONNX model of `spec`, exported from its checkpoint with export_onnx when needed."""
    if spec.onnx is not None:
        return spec.onnx
    if spec.checkpoint is None:
        raise BenchError(f"{spec.name}: neither an ONNX file nor a checkpoint")
    from export.onnx_export import export_onnx

    workdir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)
    out = workdir / f"{safe}.onnx"
    if out.exists():
        out.unlink()
    report = export_onnx(spec.checkpoint, out)
    spec.onnx = Path(report.output)
    return spec.onnx


def arrange_burst(burst: np.ndarray, frames: int, reference_index: int) -> np.ndarray:
    """From a burst [..., N, h, w] whose reference is frame 0, the first `frames` frames placed so the
    reference sits at `reference_index` (the other frames keep their order around it)."""
    n = burst.shape[-3]
    if frames > n:
        raise BenchError(f"the model wants {frames} frames; the test bursts have {n} (raise --frames)")
    others = list(range(1, frames))
    order = others[:reference_index] + [0] + others[reference_index:]
    return burst[..., order, :, :]
