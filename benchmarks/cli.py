"""`kpn-bench`: latency and quality reports (JSON + markdown + PNG). See benchmarks/README.md."""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from .common import BenchError, parse_list, resolve_models

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Latency and quality benchmarks of kpn-deploy models (see benchmarks/README.md).")


def _fail(message: str) -> None:
    typer.echo(f"kpn-bench: error: {message}", err=True)
    raise typer.Exit(2)


def _command() -> str:
    return "kpn-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _work(out: Path, keep: bool):
    if keep:
        d = out / "work"
        d.mkdir(parents=True, exist_ok=True)
        return _Keep(d)
    return tempfile.TemporaryDirectory(prefix="kpn-bench-")


class _Keep:
    def __init__(self, d: Path) -> None:
        self.d = d

    def __enter__(self) -> str:
        return str(self.d)

    def __exit__(self, *exc) -> None:
        return None


@app.command("latency")
def latency_cmd(
    out: Path = typer.Option(..., "--out", help="folder for latency.json, latency.md, latency.png"),
    models: Optional[list[str]] = typer.Option(
        None, "--models", help="checkpoints (.pt), ONNX models, 'shipped' or family names (random small weights); "
        "comma-separated or repeated [default: models/MANIFEST.json, else the four families with random weights]"),
    backends: str = typer.Option("torch,ort-cpu,ort-cuda,trt-fp32,trt-fp16", "--backends", help="comma-separated"),
    sizes: str = typer.Option("256,512,1024,2048", "--sizes", help="square frame sizes, comma-separated"),
    frames: Optional[int] = typer.Option(None, "--frames", help="frames per burst [default: each model's own N]"),
    threads: int = typer.Option(os.cpu_count() or 1, "--threads", help="CPU threads (torch and ONNX Runtime)"),
    repeat: int = typer.Option(10, "--repeat", help="timed runs per configuration"),
    warmup: int = typer.Option(2, "--warmup", help="untimed warm-up runs per configuration"),
    ops: bool = typer.Option(True, "--ops/--no-ops", help="also the op-level benchmark"),
    op_sizes: str = typer.Option("256,512", "--op-sizes", help="sizes of the op-level benchmark"),
    keep_work: bool = typer.Option(False, "--keep-work", help="keep exported ONNX/engines under OUT/work"),
) -> None:
    """Latency, throughput and peak memory per model x backend x size."""
    from . import latency

    try:
        backend_list = parse_list(backends, str, "--backends")
        size_list = parse_list(sizes, int, "--sizes")
        op_size_list = parse_list(op_sizes, int, "--op-sizes")
        with _work(out, keep_work) as work:
            specs, note = resolve_models(models, Path(work), allow_random=True)
            if frames is not None:
                bad = [s.name for s in specs if s.frames != frames]
                if bad:
                    raise BenchError(f"--frames {frames}: the models take a fixed N ({', '.join(f'{s.name}: {s.frames}' for s in specs)}); "
                                     "leave --frames out or pick models of that N")
            latency.run(specs, note, backend_list, size_list, threads, warmup, repeat, out, Path(work), ops,
                        op_size_list, _command(), log=typer.echo)
    except BenchError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out / 'latency.json'}, {out / 'latency.md'}, {out / 'latency.png'}")


@app.command("quality")
def quality_cmd(
    out: Path = typer.Option(..., "--out", help="folder for quality.json, quality.md, quality_crops.png"),
    models: Optional[list[str]] = typer.Option(
        None, "--models", help="checkpoints (.pt) or ONNX models, comma-separated or repeated [default: models/MANIFEST.json]"),
    images: str = typer.Option("builtin-test", "--images", help="'builtin-test' (validation split of the builtin "
                               "photographs), a folder (its validation split; the rest tunes the baselines) or heldout:FOLDER "
                               "(every image of FOLDER tests, e.g. the wallpapers of `python -m train.photos --set wallpapers`; "
                               "the baselines tune on the builtin training split)"),
    gains: str = typer.Option("1,2,3,4", "--gains", help="AME-KPN Table 1 gains, comma-separated"),
    crop: int = typer.Option(128, "--crop", help="test burst size in pixels (square)"),
    test_crops: int = typer.Option(8, "--test-crops", help="test bursts per gain (the same crops at every gain); the report gives each model's difference from the best classical baseline with its standard error over the crops, which falls as 1/sqrt(crops)"),
    tune_crops: int = typer.Option(4, "--tune-crops", help="tuning bursts per gain (from the training split)"),
    frames: int = typer.Option(8, "--frames", help="frames per test burst (models take the first N they need)"),
    motion: str = typer.Option("paper", "--motion", help="offsets of the test and tuning bursts: paper (AME-KPN 3.1), "
                               "walk (video-like), large (every frame from the big [-64,64] range) or still (no motion: a tripod burst)"),
    threads: int = typer.Option(os.cpu_count() or 1, "--threads", help="CPU threads"),
    seed: int = typer.Option(0, "--seed", help="seed of the test bursts (the tuning bursts use seed+1)"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="validation fraction of the train/val split (as kpn-train)"),
    split_seed: int = typer.Option(0, "--split-seed", help="seed of the train/val split (as kpn-train)"),
    bm3d: bool = typer.Option(True, "--bm3d/--no-bm3d", help="include BM3D (slow)"),
    nlm: bool = typer.Option(True, "--nlm/--no-nlm", help="include OpenCV fastNlMeansDenoisingMulti"),
    runtime_backend: str = typer.Option("ort-cpu", "--runtime-backend", help="runtime backend for the exported models"),
    keep_work: bool = typer.Option(False, "--keep-work", help="keep exported ONNX under OUT/work"),
    self_ensemble: str = typer.Option("", "--self-ensemble", metavar="TURNS", help="also each model through the runtime "
                                      "averaged over 4 and/or 8 turns of the burst, e.g. 4,8 (runtime.denoise --self-ensemble)"),
) -> None:
    """PSNR/SSIM (gamma space) per gain like AME-KPN Table 1, with classical baselines and time per MP."""
    from . import quality

    try:
        gain_list = parse_list(gains, int, "--gains")
        turns = ensemble_sizes(self_ensemble)
        with _work(out, keep_work) as work:
            specs, note = resolve_models(models, Path(work), allow_random=False)
            quality.run(specs, note, images, gain_list, crop, test_crops, tune_crops, frames, threads, seed,
                        val_fraction, split_seed, bm3d, nlm, runtime_backend, out, Path(work), _command(),
                        log=typer.echo, motion=motion, self_ensemble=turns)
    except BenchError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out / 'quality.json'}, {out / 'quality.md'}, {out / 'quality_crops.png'}")


def ensemble_sizes(text: str) -> tuple[int, ...]:
    """--self-ensemble "4,8" -> (4, 8); "" -> (); each a size the runtime takes, above 1 (1 is the plain
    runtime row, always there)."""
    from runtime.symmetry import ENSEMBLE_SIZES

    if not text.strip():
        return ()
    sizes = tuple(sorted(set(parse_list(text, int, "--self-ensemble"))))
    if any(n not in ENSEMBLE_SIZES or n == 1 for n in sizes):
        raise BenchError(f"--self-ensemble {text}: each value must be 4 (the quarter turns) or 8 (and their transposes)")
    return sizes


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
