"""`python -m runtime.denoise BURST_DIR`: denoise a burst (or, with --video, a sequence) of frames.

Python API: `denoise_burst(folder, ...) -> Result` and `denoise_video(folder, ...)`; both raise
`runtime.errors.UserError` for anything the user can fix. No torch anywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .backends import BACKENDS, open_backend
from .errors import UserError
from .frames import (
    TIFF_EXTENSIONS,
    Frame,
    check_consistent,
    check_output,
    default_suffix,
    from_linear,
    list_frames,
    read_frame,
    read_frames,
    to_linear,
    write_atomic,
)
from .model import ModelInfo, onnx_info, read_engine_sidecar, resolve_model
from .noise import estimate_noise
from .pipeline import run_tiled, select_burst, tile_count, video_window
from .symmetry import check_ensemble_size, self_ensemble as ensemble_of, square_limit

NOISE_CROP = 1024  # noise estimation looks at the central NOISE_CROP^2 pixels of each frame


@dataclass
class Result:
    output: Path
    backend: str
    seconds: float
    megapixels: float
    sigma: list[tuple[float, float]]  # per processed channel
    notes: list[str]

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / max(self.seconds, 1e-9)


def _console() -> Console:
    return Console(stderr=True, soft_wrap=True)


def channel_split(c: int) -> tuple[int, int]:
    """-> (channels denoised, channels copied from the reference): alpha is copied, not denoised."""
    return (1, 1) if c == 2 else (3, 1) if c == 4 else (c, 0)


def reference_position(paths: list[Path], reference: Optional[str]) -> int:
    if reference is None:
        return 0
    if reference.lstrip("-").isdigit():
        i = int(reference)
        if not 0 <= i < len(paths):
            raise UserError(f"--reference {reference}: index outside 0..{len(paths) - 1} (frames in natural sort order)")
        return i
    for i, p in enumerate(paths):
        if p.name == reference or p.name == Path(reference).name and Path(reference).parent in (Path("."), p.parent):
            return i
    raise UserError(f"--reference {reference}: no such frame in the folder")


def _model_info(model: Path) -> ModelInfo:
    if model.suffix.lower() in (".engine", ".plan", ".trt"):
        from .model import engine_info

        return engine_info(model, read_engine_sidecar(model))
    return onnx_info(model)


def noise_sigmas(frame_at: Callable[[int], Frame], used: list[int], linear: bool, read_noise, shot_noise):
    """(sigma_r, sigma_s) per denoised channel: the given pair, or estimated from the centre crops of
    frames `used` -> (sigmas, estimated)."""
    first = frame_at(used[0])
    nproc, _ = channel_split(first.shape[2])
    integer = first.pixels.dtype != np.float32
    if (read_noise is None) != (shot_noise is None):
        raise UserError("give both --read-noise and --shot-noise, or neither (then they are estimated from the burst)")
    if read_noise is not None:
        if read_noise < 0 or shot_noise < 0 or not np.isfinite([read_noise, shot_noise]).all():
            raise UserError("--read-noise and --shot-noise must be finite and >= 0 (linear units, as in the papers)")
        return [(float(read_noise), float(shot_noise))] * nproc, False
    out = []
    for c in range(nproc):
        crops = np.stack([to_linear(centre_crop(frame_at(i).pixels, NOISE_CROP)[:, :, c], linear) for i in used])
        try:
            out.append(estimate_noise(crops, clip_low=0.0 if integer else None, clip_high=1.0 if integer else None))
        except ValueError as exc:
            raise UserError(f"cannot estimate the noise ({exc}); pass --read-noise and --shot-noise") from None
    return out, True


def centre_crop(px: np.ndarray, size: int) -> np.ndarray:
    h, w = px.shape[:2]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return px[y0 : y0 + size, x0 : x0 + size]


def open_burst(folder: Path, output: Optional[Path], linear: bool) -> tuple[list[Path], list[Frame], bool, Path]:
    """Read a burst folder and check its output path -> (paths, frames, linear, output). Float frames
    are linear whatever --linear says."""
    paths = list_frames(folder)
    frames = read_frames(paths)
    linear = linear or frames[0].pixels.dtype == np.float32
    out = Path(output) if output is not None else folder.parent / f"{folder.name}-denoised{default_suffix(paths)}"
    check_output(out, paths, frames[0].pixels.dtype)
    return paths, frames, linear, out


class _Progress:
    def __init__(self, console: Console, total: int, label: str) -> None:
        self.progress = None
        if total > 1 and console.is_terminal:
            self.progress = Progress(
                TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total} tiles"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
            )
            self.task = self.progress.add_task(label, total=total)

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def step(self) -> None:
        if self.progress:
            self.progress.advance(self.task)

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()


def denoise_frames(frames: list[Frame], order: list[int], info: ModelInfo, backend, linear: bool,
                    sigmas: list[tuple[float, float]], tile: Optional[int], step=None,
                    self_ensemble: int = 1) -> np.ndarray:
    """Denoise the burst `order` (indices into frames, model order) -> file-typed [H, W, C]; with
    `self_ensemble` 4 or 8 every window is the mean over that many of its turns (runtime.symmetry)."""
    ref = frames[order[info.reference_index]]
    h, w, c = ref.shape
    nproc, _ = channel_split(c)
    raw = [frames[i].pixels for i in order]
    sr = np.array([s[0] for s in sigmas], dtype=np.float32)[:, None, None, None]
    ss = np.array([s[1] for s in sigmas], dtype=np.float32)[:, None, None, None]

    def window(rows: np.ndarray, cols: np.ndarray):
        burst = np.stack([to_linear(px[np.ix_(rows, cols)][:, :, :nproc], linear) for px in raw])  # [N, h, w, C]
        burst = np.ascontiguousarray(burst.transpose(3, 0, 1, 2), dtype=np.float32)  # [C, N, h, w]
        ref_lin = burst[:, info.reference_index : info.reference_index + 1]
        return burst, np.sqrt(sr**2 + ss * np.maximum(ref_lin, 0.0)).astype(np.float32)

    run = ensemble_of(backend.run, self_ensemble)
    out_lin = run_tiled(window, h, w, nproc, info, run, tile, window_limit(backend, self_ensemble), backend.max_batch, step)
    result = np.empty_like(ref.pixels)
    result[:, :, :nproc] = from_linear(out_lin.transpose(1, 2, 0), ref.pixels.dtype, linear)
    result[:, :, nproc:] = ref.pixels[:, :, nproc:]
    return result


def window_limit(backend, self_ensemble: int) -> Optional[tuple[int, int]]:
    """The largest window the backend takes; with the self-ensemble (quarter turns), in both orientations."""
    return square_limit(backend.max_hw) if self_ensemble > 1 else backend.max_hw


def _open(path: Path, backend: str, plugins: Optional[Path], threads: Optional[int], cuda_graph: bool):
    be, note = open_backend(path, backend, plugins, threads, cuda_graph)
    return be, note, be.info


def denoise_burst(
    folder: Path,
    output: Optional[Path] = None,
    model: Optional[Path] = None,
    backend: str = "auto",
    read_noise: Optional[float] = None,
    shot_noise: Optional[float] = None,
    reference: Optional[str] = None,
    linear: bool = False,
    tile: Optional[int] = None,
    plugins: Optional[Path] = None,
    pad_frames: bool = False,
    threads: Optional[int] = None,
    cuda_graph: bool = False,
    console: Optional[Console] = None,
    self_ensemble: int = 1,
) -> Result:
    console = console or _console()
    folder = Path(folder)
    check_ensemble_size(self_ensemble)
    paths, frames, linear, out = open_burst(folder, output, linear)
    ref = reference_position(paths, reference)
    model_path = resolve_model(model)
    needed = _model_info(model_path).frames  # metadata and sidecar checks before any heavy import
    if len(paths) == 1 and needed > 1 and not pad_frames:
        raise UserError(f"{folder}: holds a single frame ({paths[0].name}); the model needs a burst of {needed} (or pass --pad-frames)")
    t0 = time.perf_counter()
    be, note, info = _open(model_path, backend, plugins, threads, cuda_graph)
    try:
        order, frame_note = select_burst(len(paths), ref, info, pad_frames)
        notes = [n for n in (frame_note,) if n]
        if self_ensemble > 1:
            notes.append(f"self-ensemble: the model runs on {self_ensemble} turns of the burst ({self_ensemble}x the time)")
        h, w, c = frames[0].shape
        sigmas, estimated = noise_sigmas(frames.__getitem__, sorted(set(order), key=order.index), linear,
                                         read_noise, shot_noise)
        if estimated:
            notes.append("estimated noise: " + ", ".join(f"sigma_r={a:.4g} sigma_s={b:.4g}" for a, b in sigmas))
        for n in notes:
            console.print(n, markup=False, highlight=False)
        total = tile_count(h, w, info, tile, window_limit(be, self_ensemble))
        with _Progress(console, total, f"denoising with {be.name}") as prog:
            result = denoise_frames(frames, order, info, be, linear, sigmas, tile, prog.step, self_ensemble)
        write_atomic(out, result)
    finally:
        be.close()
    secs = time.perf_counter() - t0
    res = Result(out, f"{be.name} ({note})", secs, h * w / 1e6, sigmas, notes)
    console.print(f"{out}: {w}x{h}x{c}, {len(order)} frames, {info.family} on {res.backend}, {secs:.2f} s, {res.mp_per_s:.2f} MP/s",
                  markup=False, highlight=False)
    return res


def denoise_video(
    folder: Path,
    output: Optional[Path] = None,
    model: Optional[Path] = None,
    backend: str = "auto",
    read_noise: Optional[float] = None,
    shot_noise: Optional[float] = None,
    linear: bool = False,
    tile: Optional[int] = None,
    plugins: Optional[Path] = None,
    threads: Optional[int] = None,
    cuda_graph: bool = False,
    console: Optional[Console] = None,
    self_ensemble: int = 1,
) -> Result:
    """Sliding window of N (= T) frames around every frame; writes a folder of denoised frames."""
    console = console or _console()
    folder = Path(folder)
    check_ensemble_size(self_ensemble)
    paths = list_frames(folder)
    # validate every frame first (nothing is written when one is bad), keep only the first in memory
    first = read_frame(paths[0])
    for p in paths[1:]:
        check_consistent([first, read_frame(p)])
    if len(paths) == 1:
        raise UserError(f"{folder}: holds a single frame ({paths[0].name}); a video needs several")
    is_float = first.pixels.dtype == np.float32
    linear = linear or is_float
    out_dir = Path(output) if output is not None else folder.parent / f"{folder.name}-denoised"
    if out_dir.resolve() == folder.resolve():
        raise UserError(f"{out_dir}: is the input folder; choose another output folder with -o")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; choose another -o")
    suffix = ".tif" if is_float else None
    outs = [out_dir / (p.stem + (suffix or (p.suffix if p.suffix.lower() in (".png",) + TIFF_EXTENSIONS else ".png"))) for p in paths]
    check_dir = out_dir if out_dir.exists() else out_dir.parent
    check_output(check_dir / outs[0].name, paths, first.pixels.dtype)
    model_path = resolve_model(model)
    _model_info(model_path)
    t0 = time.perf_counter()
    be, note, info = _open(model_path, backend, plugins, threads, cuda_graph)
    try:
        h, w, c = first.shape
        cache: dict[int, Frame] = {}

        def get(i: int) -> Frame:
            if i not in cache:
                cache[i] = read_frame(paths[i])
            return cache[i]

        mid = len(paths) // 2
        win = video_window(mid, len(paths), info)
        sigmas, estimated = noise_sigmas(get, sorted(set(win)), linear, read_noise, shot_noise)
        if estimated:
            console.print("estimated noise: " + ", ".join(f"sigma_r={a:.4g} sigma_s={b:.4g}" for a, b in sigmas), markup=False, highlight=False)
        if self_ensemble > 1:
            console.print(f"self-ensemble: the model runs on {self_ensemble} turns of every frame ({self_ensemble}x the time)",
                          markup=False, highlight=False)
        out_dir.mkdir(exist_ok=True)
        per = tile_count(h, w, info, tile, window_limit(be, self_ensemble))
        with _Progress(console, per * len(paths), f"denoising {len(paths)} frames with {be.name}") as prog:
            for t in range(len(paths)):
                idx = video_window(t, len(paths), info)
                for k in [k for k in cache if k not in idx]:
                    del cache[k]
                frames = {i: get(i) for i in idx}
                local = [frames[i] for i in idx]
                result = denoise_frames(local, list(range(len(idx))), info, be, linear, sigmas, tile, prog.step, self_ensemble)
                write_atomic(outs[t], result)
    finally:
        be.close()
    secs = time.perf_counter() - t0
    res = Result(out_dir, f"{be.name} ({note})", secs, h * w * len(paths) / 1e6, sigmas, [])
    console.print(f"{out_dir}: {len(paths)} frames {w}x{h}x{c}, {info.family} on {res.backend}, {secs:.2f} s, {res.mp_per_s:.2f} MP/s",
                  markup=False, highlight=False)
    return res


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    burst_dir: Path = typer.Argument(..., help="folder of frames (PNG 8/16-bit, TIFF uint8/uint16/float32, JPEG)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output file (default: BURST_DIR-denoised.png, .tif for TIFF input); a folder with --video"),
    model: Optional[Path] = typer.Option(None, "--model", help="model .onnx or TensorRT .engine (default: the default model of models/MANIFEST.json)"),
    backend: str = typer.Option("auto", "--backend", help="auto | trt | ort-cuda | ort-cpu"),
    read_noise: Optional[float] = typer.Option(None, "--read-noise", help="sigma_r, linear units (estimated when absent)"),
    shot_noise: Optional[float] = typer.Option(None, "--shot-noise", help="sigma_s, linear units (estimated when absent)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="reference frame: file name or index (default 0: the first in natural order)"),
    linear: bool = typer.Option(False, "--linear", help="frames hold linear intensities (no sRGB decode/encode)"),
    tile: Optional[int] = typer.Option(None, "--tile", help="tile size in pixels (default: untiled up to 1 MP, else 512)"),
    video: bool = typer.Option(False, "--video", help="sliding window over a sequence; writes a folder of frames"),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="TensorRT plugin library libkpn_plugins.so"),
    pad_frames: bool = typer.Option(False, "--pad-frames", help="fewer frames than the model needs: repeat the reference"),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime CPU threads (default: all cores)"),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="TensorRT: replay each tile shape as a CUDA graph"),
    self_ensemble: int = typer.Option(1, "--self-ensemble", metavar="TURNS", help="average the model's outputs over 4 "
                                      "(the 90-degree rotations) or 8 (also transposed) turns of the burst: 4x or 8x the "
                                      "time, a cleaner output; 1 = off"),
) -> None:
    """Denoise the burst in BURST_DIR (reference first, or --reference) with a KPN-family model."""
    console = _console()
    try:
        if backend not in BACKENDS:
            raise UserError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if video:
            if reference is not None or pad_frames:
                raise UserError("--reference and --pad-frames do not apply to --video (every frame is a reference in turn)")
            denoise_video(burst_dir, output, model, backend, read_noise, shot_noise, linear, tile, plugins, threads, cuda_graph,
                          console, self_ensemble)
        else:
            denoise_burst(burst_dir, output, model, backend, read_noise, shot_noise, reference, linear, tile, plugins,
                          pad_frames, threads, cuda_graph, console, self_ensemble)
    except UserError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; nothing written", markup=False, highlight=False)
        raise typer.Exit(130)


if __name__ == "__main__":
    app()
