"""``kpn-export triton``: a Triton Inference Server model repository for one kpn-deploy model.

    DIR/NAME/config.pbtxt
    DIR/NAME/1/model.onnx          (platform "onnxruntime_onnx")   or
    DIR/NAME/1/model.plan          (platform "tensorrt_plan")
    DIR/NAME/libkpn_plugins.so     (engines only: Triton loads it with LD_PRELOAD or
                                    --backend-config=tensorrt,plugins=...)

Inputs and outputs (names, data types, dims) come from the model itself: from the ONNX graph, or for a
TensorRT engine (TensorRT is not needed here) from its sidecar ``<engine>.json``: the optimisation
profile gives the shapes, the kpn.* metadata copied from the ONNX gives the I/O dtype (kpn.precision is
the dtype of the ONNX graph the engine was built from) and docs/model-io.md gives the names. The kpn.*
metadata goes into the config as ``parameters``, so a client can read it from the server.

config.pbtxt is printed with protobuf from Triton's own ModelConfig message (``tritonclient``, the
``triton`` extra); without tritonclient the same text is written by hand (``_pbtxt_by_hand``; the tests
check both give identical text).

The model folder is built in a hidden temporary folder inside DIR and renamed into place: either all of
it appears or nothing does. An existing non-empty model folder is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from export.errors import ExportError

__all__ = [
    "TensorSpec",
    "TritonConfig",
    "RepositoryResult",
    "read_model",
    "make_config",
    "config_text",
    "write_repository",
    "plugin_instructions",
]

PLUGIN_LIBRARY = "libkpn_plugins.so"
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
DEFAULT_ONNX_MAX_BATCH = 8  # ONNX models with a dynamic batch dimension
VERSION = "1"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# ONNX TensorProto element type -> Triton DataType name
ONNX_TO_TRITON = {
    1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 11: "TYPE_FP64",
    2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
    9: "TYPE_BOOL",
}
PRECISION_TO_TRITON = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
CONTRACT_INPUTS = ("burst", "noise_map")  # docs/model-io.md
CONTRACT_OUTPUT = "denoised"


@dataclass
class TensorSpec:
    name: str
    data_type: str  # Triton DataType name, e.g. TYPE_FP32
    dims: list[int]  # full shape including the batch dimension; -1 for a dynamic dimension


@dataclass
class ModelSpec:
    """What the exporter read from a model file."""

    path: Path
    kind: str  # "onnx" or "engine"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]
    max_batch: Optional[int]  # engines: the profile's largest batch; None: no limit known
    parameters: dict[str, str] = field(default_factory=dict)  # extra config parameters (engine facts)
    plugin_library: Optional[Path] = None


@dataclass
class TritonConfig:
    """The fields of Triton's ModelConfig that kpn-export sets (dims here exclude the batch dimension
    when max_batch_size > 0, as Triton expects)."""

    name: str
    platform: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    instance_count: int
    instance_kind: str  # KIND_GPU or KIND_CPU
    dynamic_batching: bool
    parameters: dict[str, str]


@dataclass
class RepositoryResult:
    model_dir: Path
    config_path: Path
    model_path: Path
    plugin_path: Optional[Path]
    config: TritonConfig
    text_by: str  # "protobuf (tritonclient)" or "by hand (tritonclient not installed)"

    def summary(self) -> str:
        cfg = self.config
        lines = [
            f"wrote {self.model_dir} ({cfg.platform}, max_batch_size {cfg.max_batch_size}, "
            f"{cfg.instance_count} x {cfg.instance_kind}{', dynamic batching' if cfg.dynamic_batching else ''})",
            f"  {self.config_path}",
            f"  {self.model_path}",
        ]
        for t in cfg.inputs:
            lines.append(f"  input  {t.name:<10} {t.data_type:<9} dims {t.dims}")
        for t in cfg.outputs:
            lines.append(f"  output {t.name:<10} {t.data_type:<9} dims {t.dims}")
        m = cfg.parameters.get("kpn.size_multiple")
        if m:
            lines.append(f"  H and W of each request must be multiples of {m} (kpn.size_multiple)")
        if self.plugin_path is not None:
            lines.append(f"  {self.plugin_path}")
            lines.append(plugin_instructions(self.model_dir.parent, self.plugin_path))
        return "\n".join(lines)


def plugin_instructions(repo: Path, plugin: Path) -> str:
    """How to start Triton so that the TensorRT engine finds the kpn plugins (paths as seen by the server)."""
    repo, plugin = Path(os.path.abspath(repo)), Path(os.path.abspath(plugin))
    return (
        "Triton must load the kpn TensorRT plugins before it loads this engine; start it with either\n"
        f"  LD_PRELOAD={plugin} tritonserver --model-repository={repo}\n"
        f"  tritonserver --model-repository={repo} --backend-config=tensorrt,plugins={plugin}\n"
        "(inside a container use the paths as mounted there; the library must match the server's TensorRT)"
    )


# ----------------------------------------------------------------------------------------------- reading


def model_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise ExportError(
        f"{path}: unknown model type {path.suffix or '(no suffix)'!r}; give an ONNX model (.onnx) or a "
        f"TensorRT engine ({', '.join(ENGINE_SUFFIXES)})"
    )


def _check_kpn_metadata(path: Path, meta: dict[str, str]) -> None:
    from runtime.errors import UserError
    from runtime.model import ModelInfo

    try:
        ModelInfo.from_metadata(path, meta)
    except UserError as exc:
        raise ExportError(str(exc)) from None


def _onnx_dims(vi) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def read_onnx(path: Path) -> ModelSpec:
    import onnx

    from export.inspect import load_onnx

    model = load_onnx(path)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"{path}: keeps weights in external data files; export it as one file (kpn-export onnx does)")
    initializers = {i.name for i in model.graph.initializer}

    def spec(vi) -> TensorSpec:
        elem = vi.type.tensor_type.elem_type
        if elem not in ONNX_TO_TRITON:
            raise ExportError(f"{path}: tensor {vi.name!r} has ONNX type {elem}, which Triton has no type for")
        return TensorSpec(vi.name, ONNX_TO_TRITON[elem], _onnx_dims(vi))

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [spec(v) for v in model.graph.output]
    meta = {p.key: p.value for p in model.metadata_props}
    _check_kpn_metadata(path, meta)
    return ModelSpec(path, "onnx", inputs, outputs, meta, max_batch=None)


def _profile(side: Path, sidecar: dict) -> dict[str, dict[str, list[int]]]:
    """The sidecar's first optimisation profile: {tensor: {"min": [...], "opt": [...], "max": [...]}}."""
    profiles = sidecar.get("profiles")
    if isinstance(profiles, list):  # several profiles: Triton uses profile 0 unless told otherwise
        profiles = profiles[0] if profiles else None
    burst = profiles.get("burst") if isinstance(profiles, dict) else None
    ok = isinstance(burst, dict) and all(
        isinstance(burst.get(k), list) and len(burst[k]) == 4 and all(isinstance(d, int) and d > 0 for d in burst[k])
        for k in ("min", "max")
    )
    if not ok:
        raise ExportError(f"{side}: 'profiles' holds no burst min/max shapes (4 positive dims each); rebuild with kpn-export trt")
    return profiles  # type: ignore[return-value]


def _dims_from_range(lo: list[int], hi: list[int]) -> list[int]:
    return [a if a == b else -1 for a, b in zip(lo, hi)]


def read_engine(path: Path, plugins: Optional[Path]) -> ModelSpec:
    """An engine's I/O from its sidecar and the kpn I/O contract (no TensorRT needed)."""
    from runtime.backends.trt import preflight
    from runtime.errors import UserError
    from runtime.model import engine_info, engine_sidecar_path

    try:
        sidecar, lib = preflight(path, plugins)  # sidecar keys, plugin library present and with the build's sha256
        info = engine_info(path, sidecar)
    except UserError as exc:
        raise ExportError(str(exc)) from None
    side = engine_sidecar_path(path)
    meta = dict(info.metadata)
    precision = meta.get("kpn.precision", "fp32")
    if precision not in PRECISION_TO_TRITON:
        raise ExportError(f"{side}: metadata kpn.precision {precision!r} is neither fp32 nor fp16; rebuild with kpn-export trt")
    dtype = PRECISION_TO_TRITON[precision]
    prof = _profile(side, sidecar)
    lo, hi = prof["burst"]["min"], prof["burst"]["max"]
    if lo[1] != hi[1] or lo[1] != info.frames:
        raise ExportError(f"{side}: burst profile frames {lo[1]}..{hi[1]} differ from kpn.frames {info.frames}; rebuild with kpn-export trt")
    burst = _dims_from_range(lo, hi)
    nmap = prof.get("noise_map")
    if isinstance(nmap, dict) and isinstance(nmap.get("min"), list) and isinstance(nmap.get("max"), list):
        noise = _dims_from_range(nmap["min"], nmap["max"])
    else:
        noise = [burst[0], 1, burst[2], burst[3]]
    inputs = [TensorSpec("burst", dtype, burst), TensorSpec("noise_map", dtype, noise)]
    outputs = [TensorSpec(CONTRACT_OUTPUT, dtype, list(noise))]
    params = {
        "engine.tensorrt_version": str(sidecar["tensorrt_version"]),
        "engine.gpu_name": str(sidecar["gpu_name"]),
        "engine.compute_capability": str(sidecar["compute_capability"]),
        "engine.precision": str(sidecar["precision"]),
        "engine.profile": json.dumps({k: prof[k] for k in sorted(prof)}, separators=(",", ":")),
        "engine.plugin_library": PLUGIN_LIBRARY,
        "engine.plugin_sha256": str(sidecar["plugin_sha256"]),
    }
    return ModelSpec(path, "engine", inputs, outputs, meta, max_batch=int(hi[0]), parameters=params, plugin_library=lib)


def read_model(path: Path, plugins: Optional[Path] = None) -> ModelSpec:
    path = Path(path)
    kind = model_kind(path)
    if not path.exists():
        raise ExportError(f"{path}: no such model file")
    if not path.is_file():
        raise ExportError(f"{path}: is not a file (give an .onnx model or a TensorRT engine)")
    if kind == "onnx":
        if plugins is not None:
            raise ExportError(f"--plugins {plugins}: only TensorRT engines need the plugin library (ONNX Runtime runs the kpn function bodies)")
        return read_onnx(path)
    return read_engine(path, plugins)


# ----------------------------------------------------------------------------------------------- config


def default_name(path: Path) -> str:
    """The model file's stem with anything but letters, digits, '_', '-', '.' replaced by '_'."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem).lstrip(".-")
    return name or "model"


def make_config(
    spec: ModelSpec,
    name: str,
    max_batch_size: Optional[int] = None,
    instances: int = 1,
    kind: str = "gpu",
    dynamic_batching: bool = False,
) -> TritonConfig:
    if not NAME_RE.match(name):
        raise ExportError(f"--name {name!r}: use letters, digits, '_', '-' and '.' (not first)")
    if instances < 1:
        raise ExportError(f"--instances {instances}: must be at least 1")
    if kind not in ("gpu", "cpu"):
        raise ExportError(f"--kind {kind!r}: choose gpu or cpu")
    if spec.kind == "engine" and kind == "cpu":
        raise ExportError(f"{spec.path}: a TensorRT engine runs on the GPU only; use --kind gpu (or export the .onnx for CPU)")
    tensors = spec.inputs + spec.outputs
    batch_dims = {t.dims[0] if t.dims else None for t in tensors}
    batchable = batch_dims == {-1}  # every tensor has a leading dynamic dimension
    if spec.kind == "engine":
        batchable = batchable and (spec.max_batch or 0) >= 1
    if max_batch_size is None:
        max_batch_size = (spec.max_batch if spec.kind == "engine" else DEFAULT_ONNX_MAX_BATCH) if batchable else 0
    if max_batch_size < 0:
        raise ExportError(f"--max-batch-size {max_batch_size}: must be 0 (no batching) or positive")
    if max_batch_size > 0 and not batchable:
        fixed = ", ".join(f"{t.name} {t.dims}" for t in tensors)
        raise ExportError(
            f"{spec.path}: --max-batch-size {max_batch_size} needs a dynamic first (batch) dimension on every "
            f"input and output ({fixed}); use --max-batch-size 0 or export with a dynamic batch"
        )
    if spec.kind == "engine" and spec.max_batch is not None and max_batch_size > spec.max_batch:
        raise ExportError(
            f"{spec.path}: --max-batch-size {max_batch_size} exceeds the engine profile's largest batch "
            f"{spec.max_batch}; use at most {spec.max_batch} or rebuild with a larger --max-shape"
        )
    if dynamic_batching and max_batch_size == 0:
        raise ExportError("--dynamic-batching needs --max-batch-size > 0 (Triton batches along the first dimension)")

    def strip(t: TensorSpec) -> TensorSpec:
        return TensorSpec(t.name, t.data_type, t.dims[1:] if max_batch_size > 0 else list(t.dims))

    params = {k: v for k, v in spec.metadata.items() if k.startswith("kpn.")}
    m = params.get("kpn.size_multiple")
    if m:
        params["input_hw_rule"] = (
            f"H and W of burst and noise_map must be multiples of {m} (kpn.size_multiple): pad (reflect) to the "
            "next multiple and crop the output back"
        )
    params.update(spec.parameters)
    return TritonConfig(
        name=name,
        platform="onnxruntime_onnx" if spec.kind == "onnx" else "tensorrt_plan",
        max_batch_size=max_batch_size,
        inputs=[strip(t) for t in spec.inputs],
        outputs=[strip(t) for t in spec.outputs],
        instance_count=instances,
        instance_kind="KIND_GPU" if kind == "gpu" else "KIND_CPU",
        dynamic_batching=dynamic_batching,
        parameters=params,
    )


def _model_config_pb2():
    """Triton's ModelConfig protobuf module, or None when tritonclient[grpc] is not installed."""
    try:
        from tritonclient.grpc import model_config_pb2
    except Exception:  # ImportError, or tritonclient's RuntimeError when grpc support is missing
        return None
    return model_config_pb2


def to_message(cfg: TritonConfig, pb2):
    """-> pb2.ModelConfig for `cfg`."""
    msg = pb2.ModelConfig(name=cfg.name, platform=cfg.platform, max_batch_size=cfg.max_batch_size)
    for t in cfg.inputs:
        msg.input.add(name=t.name, data_type=pb2.DataType.Value(t.data_type), dims=t.dims)
    for t in cfg.outputs:
        msg.output.add(name=t.name, data_type=pb2.DataType.Value(t.data_type), dims=t.dims)
    msg.instance_group.add(count=cfg.instance_count, kind=pb2.ModelInstanceGroup.Kind.Value(cfg.instance_kind))
    if cfg.dynamic_batching:
        msg.dynamic_batching.SetInParent()
    for k, v in cfg.parameters.items():
        msg.parameters[k].string_value = v
    return msg


def _escape(text: str) -> str:
    """protobuf text-format string escaping as text_format.MessageToString(as_utf8=True) does it: quote,
    apostrophe, backslash, tab, newline, CR and other control characters escaped; other text as is (UTF-8)."""
    special = {9: r"\t", 10: r"\n", 13: r"\r", 34: r"\"", 39: r"\'", 92: r"\\"}
    out = []
    for ch in text:
        o = ord(ch)
        out.append(special.get(o) or (f"\\{o:03o}" if o < 32 or o == 127 else ch))
    return "".join(out)


def _pbtxt_by_hand(cfg: TritonConfig) -> str:
    """The text protobuf's text_format prints for `to_message(cfg)`: fields in field-number order
    (name 1, platform 2, max_batch_size 4, input 5, output 6, instance_group 7, dynamic_batching 11,
    parameters 14, map keys sorted), proto3 defaults (0) left out."""
    lines = [f'name: "{_escape(cfg.name)}"', f'platform: "{_escape(cfg.platform)}"']
    if cfg.max_batch_size:
        lines.append(f"max_batch_size: {cfg.max_batch_size}")
    for section, tensors in (("input", cfg.inputs), ("output", cfg.outputs)):
        for t in tensors:
            lines += [f"{section} {{", f'  name: "{_escape(t.name)}"', f"  data_type: {t.data_type}"]
            lines += [f"  dims: {d}" for d in t.dims]
            lines.append("}")
    lines += ["instance_group {", f"  count: {cfg.instance_count}", f"  kind: {cfg.instance_kind}", "}"]
    if cfg.dynamic_batching:
        lines += ["dynamic_batching {", "}"]
    for k in sorted(cfg.parameters):
        lines += [
            "parameters {", f'  key: "{_escape(k)}"', "  value {",
            f'    string_value: "{_escape(cfg.parameters[k])}"', "  }", "}",
        ]
    return "\n".join(lines) + "\n"


def config_text(cfg: TritonConfig) -> tuple[str, str]:
    """-> (config.pbtxt text, how it was made)."""
    pb2 = _model_config_pb2()
    if pb2 is None:
        return _pbtxt_by_hand(cfg), "by hand (tritonclient not installed)"
    from google.protobuf import text_format

    return text_format.MessageToString(to_message(cfg, pb2), as_utf8=True), "protobuf (tritonclient)"


# ----------------------------------------------------------------------------------------------- writing


def _check_target(target: Path) -> None:
    """Refuse anything but an absent model folder, an empty one, or one holding only an empty version folder."""
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise ExportError(f"{target}: exists and is not a model folder; choose another --name or remove it")
    entries = sorted(p.name for p in target.iterdir())
    version = target / VERSION
    if VERSION in entries and (not version.is_dir() or any(version.iterdir())):
        raise ExportError(f"{version}: model version folder exists and is not empty; choose another --name or remove it (nothing was written)")
    others = [e for e in entries if e != VERSION]
    if others:
        raise ExportError(f"{target}: model folder exists and holds {', '.join(others[:3])}; choose another --name or remove it (nothing was written)")


def write_repository(
    model: Path,
    repo: Path,
    name: Optional[str] = None,
    max_batch_size: Optional[int] = None,
    instances: int = 1,
    kind: str = "gpu",
    dynamic_batching: bool = False,
    plugins: Optional[Path] = None,
) -> RepositoryResult:
    """Write repo/NAME/{config.pbtxt, 1/model.onnx|model.plan[, libkpn_plugins.so]} atomically."""
    model, repo = Path(model), Path(repo)
    spec = read_model(model, plugins)
    cfg = make_config(spec, name or default_name(model), max_batch_size, instances, kind, dynamic_batching)
    text, text_by = config_text(cfg)

    if repo.exists() and not repo.is_dir():
        raise ExportError(f"{repo}: repository path exists and is not a folder; give a folder with --repo")
    target = repo / cfg.name
    _check_target(target)
    created: list[Path] = []
    if not repo.exists():
        missing = [p for p in [repo, *repo.parents] if not p.exists()]
        try:
            repo.mkdir(parents=True)
        except OSError as exc:
            raise ExportError(f"{repo}: cannot create the repository folder ({exc.strerror or exc}); choose another --repo") from None
        created = list(reversed(missing))  # outermost first
    model_file = "model.onnx" if spec.kind == "onnx" else "model.plan"
    tmp: Optional[Path] = None
    try:
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}.tmp-", dir=repo))
        except OSError as exc:
            raise ExportError(f"{repo}: repository folder is not writable ({exc.strerror or exc}); choose another --repo") from None
        try:
            (tmp / VERSION).mkdir()
            shutil.copyfile(model, tmp / VERSION / model_file)
            if spec.plugin_library is not None:
                shutil.copyfile(spec.plugin_library, tmp / PLUGIN_LIBRARY)
            (tmp / "config.pbtxt").write_text(text, encoding="utf-8")
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the server may run as another user
            _check_target(target)  # again, right before the rename
            if (target / VERSION).is_dir():
                (target / VERSION).rmdir()  # empty (checked)
            os.replace(tmp, target)  # onto an absent or empty folder
        except OSError as exc:
            raise ExportError(f"{target}: cannot write the model folder ({exc.strerror or exc}); nothing was written") from None
        tmp = None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(created):  # folders this call created, innermost first
            try:
                p.rmdir()
            except OSError:
                break
        raise
    return RepositoryResult(
        model_dir=target,
        config_path=target / "config.pbtxt",
        model_path=target / VERSION / model_file,
        plugin_path=target / PLUGIN_LIBRARY if spec.plugin_library is not None else None,
        config=cfg,
        text_by=text_by,
    )
