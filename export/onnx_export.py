"""Checkpoint -> ONE ONNX file for every backend (docs/export.md, design.md "One ONNX file ...").

``export_onnx(ckpt)``:

1. loads the checkpoint (it carries its own config) and rebuilds the model;
2. exports it with ``torch.onnx.export(dynamo=True)``; a custom translation table turns every call of
   ``kpn::adaptive_conv`` / ``kpn::trilinear_sample`` into ONE node ``kpn::AdaptiveConv`` /
   ``kpn::TrilinearSample`` carrying its attribute plus ``plugin_version="1"`` and
   ``plugin_namespace=""`` (what TensorRT's parser needs to bind the plugin);
3. post-pass: appends the standard-op function bodies of ``export.functions`` to
   ``ModelProto.functions``, imports ``("kpn", 1)``, names the dynamic axes, writes the metadata of
   docs/model-io.md, strips exporter-machine stack traces, runs ``onnx.checker`` (full check);
4. writes to a temporary file next to the output, verifies it in ONNX Runtime (CPU, through
   Polygraphy's runner and comparator when Polygraphy is installed) against PyTorch on a synthetic
   burst of another size than the traced one, and only then renames it into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import logging

import numpy as np
import onnx
from onnxscript import FLOAT, FLOAT16

from export.errors import ExportError, VerificationError
from export.functions import (
    DOMAIN,
    DOMAIN_VERSION,
    MIN_OPSET,
    OP_TYPES,
    PLUGIN_ATTRIBUTES,
    function_protos,
)
from runtime.files import sha256_file as _sha256

__all__ = ["ExportReport", "export_onnx", "exporter_version", "INPUT_CONTRACT", "TOLERANCE"]

# Type variable of the translation functions (module level: the exporter resolves the annotations
# with typing.get_type_hints, which cannot see a function's locals).
T = TypeVar("T", FLOAT, FLOAT16)

#: Max abs difference to the fp32 PyTorch model accepted by the self-verification.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}

INPUT_CONTRACT = (
    "burst [B,N,H,W]: N frames in linear intensity (about [0,1]), the reference at "
    "kpn.reference_index; noise_map [B,1,H,W] = sqrt(sigma_r^2 + sigma_s * max(ref, 0)) of the noisy "
    "linear reference frame; H and W multiples of kpn.size_multiple; output denoised [B,1,H,W], linear"
)


def exporter_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kpn-deploy")
    except PackageNotFoundError:
        return "0.1.0+unknown"


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how it verified it."""

    output: Path
    checkpoint: Path
    family: str
    precision: str
    opset: int
    static_shape: tuple[int, int] | None
    node_count: int
    custom_nodes: list[dict] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    file_size: int = 0
    verify_shape: tuple[int, ...] = ()
    max_abs_diff: float = float("nan")
    tolerance: float = float("nan")
    verified_with: str = ""
    export_seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output"] = str(self.output)
        d["checkpoint"] = str(self.checkpoint)
        return d

    def summary(self) -> str:
        custom = ", ".join(
            f"{n['op_type']}({', '.join(f'{k}={v!r}' for k, v in n['attributes'].items())})"
            for n in self.custom_nodes
        )
        shape = "x".join(map(str, self.verify_shape))
        return "\n".join(
            [
                f"wrote {self.output} ({self.file_size / 1e6:.2f} MB, {self.precision}, opset {self.opset}, "
                f"{'static ' + 'x'.join(map(str, self.static_shape)) if self.static_shape else 'dynamic B/H/W'})",
                f"  nodes: {self.node_count} ({len(self.custom_nodes)} kpn: {custom})",
                f"  functions: {', '.join(self.functions)}",
                f"  verified with {self.verified_with} on burst {shape}: max abs diff to PyTorch "
                f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:g})",
            ]
        )


# --------------------------------------------------------------------------------------------
# Translation of the two torch custom ops into ONE kpn node each
# --------------------------------------------------------------------------------------------
def _translation_table() -> dict:
    import torch
    from onnxscript.values import Op, Opset

    import train.ops  # noqa: F401  (registers torch.ops.kpn.*)

    opset = Opset(DOMAIN, DOMAIN_VERSION)

    def schema(name: str, inputs: tuple[str, str], attr: str) -> onnx.defs.OpSchema:
        A = onnx.defs.OpSchema.AttrType
        return onnx.defs.OpSchema(
            name,
            DOMAIN,
            DOMAIN_VERSION,
            inputs=[onnx.defs.OpSchema.FormalParameter(n, "T") for n in inputs],
            outputs=[onnx.defs.OpSchema.FormalParameter("output", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "fp32 or fp16")],
            attributes=[
                onnx.defs.OpSchema.Attribute(attr, A.INT, ""),
                onnx.defs.OpSchema.Attribute("plugin_version", A.STRING, ""),
                onnx.defs.OpSchema.Attribute("plugin_namespace", A.STRING, ""),
            ],
        )

    adaptive_conv = Op(opset, "AdaptiveConv", schema("AdaptiveConv", ("frames", "kernels"), "kernel_size"))
    trilinear = Op(
        opset, "TrilinearSample", schema("TrilinearSample", ("video", "offsets"), "reference_frame")
    )

    # The return annotation matters: the exporter counts the outputs of a translation from it.
    def translate_adaptive_conv(frames: T, kernels: T, kernel_size: int) -> T:
        return adaptive_conv(frames, kernels, kernel_size=kernel_size, **PLUGIN_ATTRIBUTES)

    def translate_trilinear_sample(video: T, offsets: T, reference_frame: int) -> T:
        return trilinear(video, offsets, reference_frame=reference_frame, **PLUGIN_ATTRIBUTES)

    return {
        torch.ops.kpn.adaptive_conv.default: translate_adaptive_conv,
        torch.ops.kpn.trilinear_sample.default: translate_trilinear_sample,
    }


# --------------------------------------------------------------------------------------------
# Inputs, outputs and paths
# --------------------------------------------------------------------------------------------
def default_output(ckpt_path: Path, fp16: bool) -> Path:
    return ckpt_path.with_name(ckpt_path.stem + ("-fp16" if fp16 else "") + ".onnx")


def _check_output(output: Path, ckpt_path: Path) -> None:
    if output.resolve() == ckpt_path.resolve():
        raise ExportError(f"{output}: output is the checkpoint itself; choose another -o path")
    if output.is_dir():
        raise ExportError(f"{output}: output is a folder; give a file path such as {output / 'model.onnx'}")
    parent = output.parent
    if parent.exists() and not parent.is_dir():
        raise ExportError(f"{output}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise ExportError(f"{output}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"{output}: output folder {parent} is not writable")
    if output.exists() and not os.access(output, os.W_OK):
        raise ExportError(f"{output}: output file exists and is not writable")


def _load(ckpt_path: Path):
    if not ckpt_path.exists():
        raise ExportError(f"{ckpt_path}: no such checkpoint file")
    from train.checkpoint import CheckpointError, load_checkpoint

    try:
        model, ckpt = load_checkpoint(ckpt_path)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    return model, ckpt


def _val_psnr(metrics: dict | None) -> dict:
    """{"gain1": 38.2, ...} from metrics {"val": {"gain1": {"psnr": ..}, ...}} (empty if absent)."""
    val = (metrics or {}).get("val") if isinstance(metrics, dict) else None
    out = {}
    if isinstance(val, dict):
        for gain, m in val.items():
            if isinstance(m, dict) and isinstance(m.get("psnr"), (int, float)):
                out[str(gain)] = round(float(m["psnr"]), 4)
            elif isinstance(m, (int, float)) and not isinstance(m, bool):
                out[str(gain)] = round(float(m), 4)
    return out


def _metadata(cfg, ckpt: dict, ckpt_sha: str, precision: str) -> dict[str, str]:
    from train.models import config_sha256

    meta = {
        "kpn.family": cfg.family,
        "kpn.width": cfg.width,
        "kpn.frames": str(cfg.frames),
        "kpn.reference_index": str(cfg.reference_index),
        "kpn.size_multiple": str(cfg.size_multiple),
        "kpn.receptive_radius": str(cfg.receptive_radius),
        "kpn.tiling_exact": "1" if getattr(cfg, "tiling_exact", True) else "0",
    }
    if cfg.family in ("kpn", "ame-kpn"):
        meta["kpn.kernel_size"] = str(cfg.kernel_size)
    else:
        meta["kpn.samples"] = str(cfg.samples)
    meta.update(
        {
            "kpn.input_contract": INPUT_CONTRACT,
            "kpn.config": json.dumps(cfg.to_dict(), sort_keys=True),
            "kpn.config_sha256": config_sha256(cfg),
            "kpn.checkpoint_sha256": ckpt_sha,
            "kpn.training_step": str(int(ckpt.get("step") or 0)),
            "kpn.val_psnr": json.dumps(_val_psnr(ckpt.get("metrics")), sort_keys=True),
            "kpn.exporter_version": exporter_version(),
            "kpn.precision": precision,
        }
    )
    return meta


# --------------------------------------------------------------------------------------------
# Export and post-pass
# --------------------------------------------------------------------------------------------
def _trace_size(cfg, height: int | None, width: int | None) -> tuple[int, int]:
    if height is not None:
        return height, width  # type: ignore[return-value]
    m = cfg.size_multiple
    return 4 * m, 6 * m


def _verify_size(cfg, height: int | None, width: int | None) -> tuple[int, int]:
    if height is not None:
        return height, width  # type: ignore[return-value]
    m = cfg.size_multiple
    return 5 * m, 3 * m  # neither the traced 4m x 6m nor square


def _synthetic_inputs(cfg, batch: int, h: int, w: int, seed: int = 0):
    """A burst of smooth structure + signal-dependent noise, intensities in [0, 1]."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(h, 1)
    xx = torch.linspace(0, 1, w).view(1, w)
    clean = 0.5 + 0.3 * torch.sin(6.0 * xx + 3.0 * yy) * torch.cos(4.0 * yy)
    sigma_r, sigma_s = 0.02, 0.01
    frames = []
    for i in range(cfg.frames):
        shifted = torch.roll(clean, shifts=(i % 3 - 1, (i * 2) % 5 - 2), dims=(0, 1))
        noise = torch.randn(batch, h, w, generator=gen) * torch.sqrt(sigma_r**2 + sigma_s * shifted)
        frames.append((shifted + noise).clamp(0, 1))
    burst = torch.stack(frames, dim=1)  # [B,N,H,W]
    ref = burst[:, cfg.reference_index : cfg.reference_index + 1]
    noise_map = torch.sqrt(sigma_r**2 + sigma_s * ref.clamp(min=0))
    return burst.float().contiguous(), noise_map.float().contiguous()


def _torch_export(model, cfg, fp16: bool, opset: int, height: int | None, width: int | None):
    import torch
    from torch.export import Dim

    h, w = _trace_size(cfg, height, width)
    burst, noise_map = _synthetic_inputs(cfg, 2, h, w, seed=1)
    if fp16:
        model = model.half()
        burst, noise_map = burst.half(), noise_map.half()
    m = cfg.size_multiple
    batch = Dim("batch", min=1, max=1024)
    axes: dict[int, object] = {0: batch}
    if height is None:
        axes[2] = m * Dim("h", min=1, max=16384 // m)
        axes[3] = m * Dim("w", min=1, max=16384 // m)
    dynamic_shapes = {"burst": dict(axes), "noise_map": dict(axes)}
    sink = io.StringIO()
    torch_logger = logging.getLogger("torch.onnx")
    old_level = torch_logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        torch_logger.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model,
                (burst, noise_map),
                input_names=["burst", "noise_map"],
                output_names=["denoised"],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                custom_translation_table=_translation_table(),
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"{cfg.family}: torch.onnx.export failed ({first[:300]})") from exc
        finally:
            torch_logger.setLevel(old_level)
    return program.model_proto


def _post_pass(model: onnx.ModelProto, meta: dict[str, str], opset: int, static: bool) -> onnx.ModelProto:
    # 1. function bodies of the kpn ops, and the kpn domain import
    keep = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
    used_ops = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    model.functions.extend(f for f in function_protos(opset) if f.name in used_ops)
    imports = {i.domain: i for i in model.opset_import}
    if DOMAIN not in imports:
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    stray = sorted(d for d in imports if d not in ("", "ai.onnx", DOMAIN))
    used = {n.domain for n in model.graph.node} - {"", "ai.onnx", DOMAIN}
    if used:
        raise ExportError(f"exported graph uses unexpected custom domains {sorted(used)}")
    for d in stray:  # imported but unused (e.g. pkg.onnxscript.torch_lib after inlining)
        for i, imp in enumerate(model.opset_import):
            if imp.domain == d:
                del model.opset_import[i]
                break

    # 2. outputs in the graph's precision: the exporter's decomposition of fp16 `sum` accumulates in
    #    fp32 and returns fp32; keep that accumulation and cast the result back at the very end.
    want = onnx.TensorProto.FLOAT16 if meta["kpn.precision"] == "fp16" else onnx.TensorProto.FLOAT
    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type != want:
            inner = f"{out.name}_{onnx.TensorProto.DataType.Name(tt.elem_type).lower()}"
            for node in model.graph.node:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            model.graph.node.append(
                onnx.helper.make_node("Cast", [inner], [out.name], to=want, name=f"cast_{out.name}")
            )
            tt.elem_type = want

    # 3. readable names of the dynamic axes ("8*h" -> "height")
    names = {"batch": "batch"}
    if not static:
        m = meta["kpn.size_multiple"]
        names.update({f"{m}*h": "height", f"{m}*w": "width", "h": "height", "w": "width"})
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]

    # 4. drop exporter-side metadata (stack traces with local paths, FX names) from nodes and values, and
    # the graph's (the exported program's signature and range constraints: the latter printed from a set,
    # so its order, and the file's bytes, changed from one process to the next)
    def strip(props) -> None:
        kept = [p for p in props if not p.key.startswith("pkg.torch")]
        del props[:]
        props.extend(kept)

    strip(model.graph.metadata_props)
    strip(model.metadata_props)
    for node in model.graph.node:
        strip(node.metadata_props)
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        strip(vi.metadata_props)
    for init in model.graph.initializer:
        strip(init.metadata_props)

    # 5. model metadata (docs/model-io.md)
    kept = [p for p in model.metadata_props if not p.key.startswith("kpn.")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (
        f"kpn-deploy {meta['kpn.family']} ({meta['kpn.width']}, {meta['kpn.precision']}) denoiser; "
        "custom nodes in domain 'kpn' with standard-op function bodies (docs/export.md)"
    )
    model.producer_name = "kpn-deploy"
    model.producer_version = meta["kpn.exporter_version"]
    return model


def custom_nodes(model: onnx.ModelProto) -> list[dict]:
    out = []
    for node in model.graph.node:
        if node.domain == DOMAIN:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            out.append({"name": node.name, "op_type": node.op_type, "attributes": attrs})
    return out


def expected_custom_nodes(cfg) -> dict[str, int]:
    """How many kpn nodes of each type a model of this config holds (one per use of an op)."""
    if cfg.family in ("kpn", "ame-kpn"):
        return {"AdaptiveConv": 1}
    return {"TrilinearSample": 1}


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------
def _ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify(
    path: Path, model32, cfg, precision: str, h: int, w: int, batch: int = 1
) -> tuple[float, str]:
    """Run the ONNX file in ONNX Runtime (CPU) and the fp32 PyTorch model on the same synthetic burst.

    Returns (max abs diff, what ran it). Uses Polygraphy's OnnxrtRunner and Comparator when present
    (the same route as ``polygraphy run model.onnx --onnxrt``), else onnxruntime directly.
    """
    import torch

    burst, noise_map = _synthetic_inputs(cfg, batch, h, w, seed=7)
    with torch.no_grad():
        expected = model32(burst, noise_map).float().numpy()
    np_dtype = np.float16 if precision == "fp16" else np.float32
    feed = {"burst": burst.numpy().astype(np_dtype), "noise_map": noise_map.numpy().astype(np_dtype)}
    tol = TOLERANCE[precision]
    try:
        from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc
        from polygraphy.backend.onnxrt import OnnxrtRunner
        from polygraphy.logger import G_LOGGER
    except ImportError:
        (out,) = _ort_session(path).run(["denoised"], feed)
        got = out.astype(np.float32)
        if got.shape != expected.shape:
            raise VerificationError(f"{path}: output shape {got.shape} != PyTorch {expected.shape}")
        return float(np.abs(got - expected).max()), "onnxruntime CPU"

    G_LOGGER.module_severity = G_LOGGER.ERROR
    runner = OnnxrtRunner(lambda: _ort_session(path), name="onnxrt")
    with runner:
        out = runner.infer(feed)
    raw = np.asarray(out["denoised"])
    if raw.dtype != np_dtype:
        raise VerificationError(f"{path}: output dtype {raw.dtype} != {np.dtype(np_dtype).name} ({precision} model)")
    got = raw.astype(np.float32)
    if got.shape != expected.shape:
        raise VerificationError(f"{path}: output shape {got.shape} != PyTorch {expected.shape}")
    results = RunResults()
    results.append(("pytorch", [IterationResult({"denoised": expected}, runner_name="pytorch")]))
    results.append(("onnxrt", [IterationResult({"denoised": got}, runner_name="onnxrt")]))
    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=tol, rtol=0.0))
    diff = float(np.abs(got - expected).max())
    if not bool(accuracy) and diff <= tol:  # disagreement between the two checks: trust neither
        raise VerificationError(f"{path}: Polygraphy comparator failed at max abs diff {diff:.3g}")
    return diff, "polygraphy OnnxrtRunner (onnxruntime CPU)"


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def export_onnx(
    ckpt_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    opset: int = MIN_OPSET,
    fp16: bool = False,
    height: int | None = None,
    width: int | None = None,
) -> ExportReport:
    """Export a kpn-deploy checkpoint to ONNX, verify it in ONNX Runtime, write it atomically."""
    start = time.perf_counter()
    ckpt_path = Path(ckpt_path)
    out_path = Path(output) if output is not None else default_output(ckpt_path, fp16)
    if not MIN_OPSET <= opset <= 24:
        raise ExportError(f"opset {opset} not supported: use {MIN_OPSET}..24 (GridSample 5-D needs {MIN_OPSET}+)")
    if (height is None) != (width is None):
        raise ExportError("give both --height and --width for a static model, or neither")
    _check_output(out_path, ckpt_path)
    if ckpt_path.exists() and ckpt_path.is_dir():
        raise ExportError(f"{ckpt_path}: is a folder, not a checkpoint file")
    model, ckpt = _load(ckpt_path)
    cfg = ckpt["config_object"]
    if height is not None:
        m = cfg.size_multiple
        if height <= 0 or width <= 0 or height % m or width % m:  # type: ignore[operator]
            raise ExportError(
                f"static size {height}x{width} is not a positive multiple of {m} (kpn.size_multiple "
                f"of this {cfg.family} model)"
            )
    precision = "fp16" if fp16 else "fp32"
    meta = _metadata(cfg, ckpt, _sha256(ckpt_path), precision)

    import copy

    model32 = model.float().eval()
    to_export = copy.deepcopy(model32) if fp16 else model32
    proto = _torch_export(to_export, cfg, fp16, opset, height, width)
    proto = _post_pass(proto, meta, opset, static=height is not None)

    nodes = custom_nodes(proto)
    want = expected_custom_nodes(cfg)
    got = {t: sum(1 for n in nodes if n["op_type"] == t) for t in OP_TYPES}
    if any(got[t] != want.get(t, 0) for t in OP_TYPES):
        raise ExportError(f"{ckpt_path}: expected kpn nodes {want}, the exported graph has {got}")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{out_path}: exported model fails onnx.checker ({first[:300]})") from None

    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save_model(proto, str(tmp))
        vh, vw = _verify_size(cfg, height, width)
        diff, how = verify(tmp, model32, cfg, precision, vh, vw, batch=1)
        tol = TOLERANCE[precision]
        if not diff <= tol:  # also catches NaN
            raise VerificationError(
                f"{out_path}: ONNX Runtime output differs from PyTorch by {diff:.3g} (> {tol:g}); not written"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

    return ExportReport(
        output=out_path,
        checkpoint=ckpt_path,
        family=cfg.family,
        precision=precision,
        opset=opset,
        static_shape=(height, width) if height is not None else None,  # type: ignore[arg-type]
        node_count=len(proto.graph.node),
        custom_nodes=nodes,
        functions=[f"{f.domain}::{f.name}" for f in proto.functions],
        file_size=out_path.stat().st_size,
        verify_shape=(1, cfg.frames, vh, vw),
        max_abs_diff=diff,
        tolerance=tol,
        verified_with=how,
        export_seconds=time.perf_counter() - start,
    )
