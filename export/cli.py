"""``kpn-export``: checkpoint -> ONNX -> TensorRT engine.

    kpn-export onnx CKPT [-o MODEL.onnx] [--opset 20] [--fp16] [--height H --width W]
    kpn-export inspect MODEL.onnx [--json]
    kpn-export trt MODEL.onnx [--fp16] [-o MODEL.engine] [--plugins LIB] [--min-shape ...] ...
    kpn-export triton MODEL.(onnx|engine) --repo DIR [--name NAME] [--max-batch-size B] [--instances N]
                      [--kind gpu|cpu] [--dynamic-batching] [--plugins LIB]

Errors a user can cause end in one line on stderr naming the file and the problem, exit status 2,
and nothing written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from export.errors import ExportError

app = typer.Typer(
    name="kpn-export",
    help="Export kpn-deploy checkpoints to ONNX (custom kpn nodes + standard-op function bodies) and "
    "build TensorRT engines.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2


def _fail(message: str) -> None:
    typer.echo(f"kpn-export: error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


@app.command("onnx")
def onnx_cmd(
    checkpoint: Path = typer.Argument(..., help="kpn-deploy checkpoint (.pt) to export"),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="ONNX file to write [default: CKPT with .onnx, -fp16.onnx with --fp16]"
    ),
    opset: int = typer.Option(20, "--opset", help="default-domain opset (20..24; GridSample 5-D needs 20)"),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 graph with FP16 inputs/outputs (for TensorRT 11)"),
    height: Optional[int] = typer.Option(None, "--height", help="static height (with --width); dynamic if omitted"),
    width: Optional[int] = typer.Option(None, "--width", help="static width (with --height)"),
    json_report: bool = typer.Option(False, "--json", help="print the export report as JSON"),
) -> None:
    """Export CHECKPOINT to ONE ONNX file that runs in ONNX Runtime and binds to TensorRT plugins."""
    from export.onnx_export import export_onnx

    try:
        report = export_onnx(checkpoint, output, opset=opset, fp16=fp16, height=height, width=width)
    except ExportError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(report.to_dict(), indent=2) if json_report else report.summary())


@app.command("inspect")
def inspect_cmd(
    model: Path = typer.Argument(..., help="ONNX model to describe"),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of text"),
) -> None:
    """Print inputs/outputs (shapes, dtypes), opsets, kpn custom nodes, functions and metadata."""
    from export.inspect import format_inspection, inspect_onnx

    try:
        info = inspect_onnx(model)
    except ExportError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(info, indent=2) if json_out else format_inspection(info))


def _shape(text: Optional[str], option: str) -> Optional[tuple[int, ...]]:
    """'1x8x256x256' or '1,8,256,256' -> (1, 8, 256, 256)."""
    if text is None:
        return None
    try:
        dims = tuple(int(t) for t in text.replace(",", "x").lower().split("x") if t)
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        _fail(f"{option} {text!r}: expected positive dimensions such as 1x8x256x256")
    return dims


@app.command("trt")
def trt_cmd(
    model: Path = typer.Argument(..., help="ONNX model exported by `kpn-export onnx`"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="engine file [default: MODEL.engine]"),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 engine (TensorRT 10: FP16 flag; 11: needs an FP16 ONNX)"),
    plugins: Optional[list[Path]] = typer.Option(
        None, "--plugins", help="plugin library (libkpn_plugins.so); repeatable"
    ),
    min_shape: Optional[str] = typer.Option(None, "--min-shape", help="smallest burst shape, e.g. 1x8x64x64"),
    opt_shape: Optional[str] = typer.Option(None, "--opt-shape", help="shape to tune for, e.g. 1x8x512x512"),
    max_shape: Optional[str] = typer.Option(None, "--max-shape", help="largest burst shape, e.g. 1x8x1024x1024"),
    workspace: Optional[int] = typer.Option(None, "--workspace", help="builder workspace in MB"),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="timing cache file to read/update"),
) -> None:
    """Build a TensorRT engine from MODEL (binds kpn nodes to the plugins of libkpn_plugins.so)."""
    if not model.is_file():
        _fail(f"{model}: no such ONNX file")
    shapes = {
        "min_shape": _shape(min_shape, "--min-shape"),
        "opt_shape": _shape(opt_shape, "--opt-shape"),
        "max_shape": _shape(max_shape, "--max-shape"),
    }
    try:
        from export import trt as trt_builder  # lazy: TensorRT only on GPU hosts
    except ImportError as exc:
        _fail(f"TensorRT engine builder export.trt is not available ({exc}); on a GPU host install the gpu extra: pip install 'kpn-deploy[gpu]'")
    error_types: tuple[type[BaseException], ...] = (ExportError,)
    if hasattr(trt_builder, "TrtBuildError"):
        error_types = error_types + (trt_builder.TrtBuildError,)
    try:
        path = trt_builder.build_engine(
            model,
            output_path=output,
            fp16=fp16,
            plugins=[str(p) for p in plugins] if plugins else None,
            **shapes,
            workspace_mb=workspace,
            timing_cache=timing_cache,
        )
    except error_types as exc:
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    typer.echo(f"wrote {path}")


@app.command("triton")
def triton_cmd(
    model: Path = typer.Argument(..., help="ONNX model (.onnx) or TensorRT engine (.engine/.plan, with its .json sidecar)"),
    repo: Path = typer.Option(..., "--repo", help="Triton model repository folder (created if absent)"),
    name: Optional[str] = typer.Option(None, "--name", help="model name in the repository (default: MODEL's file stem, sanitised)"),
    max_batch_size: Optional[int] = typer.Option(
        None, "--max-batch-size", help="Triton max_batch_size; 0: no batching (default: 8 for ONNX, the engine profile's largest batch)"
    ),
    instances: int = typer.Option(1, "--instances", help="model instances (instance_group count)"),
    kind: str = typer.Option("gpu", "--kind", help="gpu | cpu (instance_group kind; engines: gpu only)"),
    dynamic_batching: bool = typer.Option(False, "--dynamic-batching", help="let Triton batch requests together"),
    plugins: Optional[Path] = typer.Option(
        None, "--plugins", help="engines: plugin library libkpn_plugins.so (default: $KPN_PLUGINS, beside the engine, plugins/build/)"
    ),
    json_out: bool = typer.Option(False, "--json", help="print the written paths and config as JSON"),
) -> None:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx|model.plan for Triton Inference Server."""
    from dataclasses import asdict

    from export.triton import write_repository

    try:
        result = write_repository(
            model, repo, name=name, max_batch_size=max_batch_size, instances=instances, kind=kind,
            dynamic_batching=dynamic_batching, plugins=plugins,
        )
    except ExportError as exc:
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if json_out:
        report = {
            "model_dir": str(result.model_dir), "config": str(result.config_path), "model": str(result.model_path),
            "plugin_library": str(result.plugin_path) if result.plugin_path else None,
            "config_text_by": result.text_by, "model_config": asdict(result.config),
        }
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(result.summary())


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
