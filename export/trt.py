"""``kpn-export trt``: ONNX (kpn nodes) -> TensorRT engine + JSON sidecar, with libkpn_plugins.so.

    build_engine(model, output_path=None, fp16=False, plugins=None,
                 min_shape=None, opt_shape=None, max_shape=None, workspace_mb=None, timing_cache=None)

Order of work, cheapest checks first, nothing written on any failure:
ONNX file and its kpn.* metadata -> output path -> shapes of the optimisation profile -> TensorRT
importable (else one line naming `pip install 'kpn-deploy[gpu]'`) -> version-dependent flags ->
plugin library -> GPU -> parse (kpn functions stripped in memory) -> build -> engine and sidecar
written to temporary files and renamed into place.

TensorRT 10 vs 11 (decided from ``trt.__version__``, see `network_flags`):
- 10: explicit batch is the default (the EXPLICIT_BATCH flag is deprecated and ignored, so it is
  not set); FP16 from an fp32 ONNX through ``BuilderFlag.FP16``; an fp16 ONNX is built strongly
  typed, so its fp16 inputs/outputs stay exactly as exported.
- 11: networks are always strongly typed and ``BuilderFlag.FP16`` no longer exists: an FP16 engine
  comes from an FP16 ONNX (``kpn-export onnx CKPT --fp16``); ``--fp16`` on an fp32 ONNX is an error.

Every `trt.*` name and every method called on the variables `builder`, `network`, `config`,
`parser`, `profile`, `registry`, `cache`, `logger` here is checked against the tensorrt-stubs
package (TensorRT 10.13) by tests/test_export_trt.py: keep those variable names. Names that are
newer than 10.13 are looked up with getattr and listed in VERSION_DEPENDENT_NAMES; names 11 removed
(BuilderFlag.FP16, NetworkDefinitionCreationFlag.STRONGLY_TYPED) are used on TensorRT 10 only.
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from export.functions import DOMAIN
from runtime.files import sha256_file

PLUGIN_LIBRARY = "libkpn_plugins.so"
DEFAULT_PLUGIN_PATH = Path(__file__).resolve().parents[1] / "plugins" / "build" / PLUGIN_LIBRARY
GPU_EXTRA = "pip install 'kpn-deploy[gpu]' on a host with an NVIDIA GPU and driver"
#: default profile sizes (height = width) for the burst input, rounded to the model's size_multiple
DEFAULT_MIN_SIZE, DEFAULT_OPT_SIZE, DEFAULT_MAX_SIZE = 64, 512, 2048
BURST_INPUT = "burst"
#: TensorRT names newer than the 10.13 stubs, looked up with getattr (absent: the feature is skipped)
VERSION_DEPENDENT_NAMES = {
    "OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE": "newer than 10.13 (10.15+ parsers prefer a plugin over a function only with it or plugin_namespace)",
}


class TrtBuildError(Exception):
    """A user-facing engine build failure; ``str(err)`` is one line for stderr (exit status 2)."""


# --------------------------------------------------------------------------------------------------
# Pure helpers (no TensorRT): tested on every machine
# --------------------------------------------------------------------------------------------------
def tensorrt_major_minor(version: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in version.split(".")[:2]]
    except ValueError:
        raise TrtBuildError(f"cannot read the TensorRT version {version!r}") from None
    return (parts + [0])[0], (parts + [0, 0])[1]


@dataclass(frozen=True)
class NetworkFlags:
    """How to build for one TensorRT version and one model precision."""

    strongly_typed: bool  # set NetworkDefinitionCreationFlag.STRONGLY_TYPED (TensorRT 10, fp16 ONNX)
    fp16_builder_flag: bool  # set BuilderFlag.FP16 (TensorRT 10, fp32 ONNX, --fp16)
    precision: str  # "fp16" or "fp32": the engine's precision, recorded in the sidecar


def network_flags(tensorrt_version: str, fp16: bool, onnx_precision: str) -> NetworkFlags:
    """The version-dependent decisions of the builder (module docstring)."""
    major, _minor = tensorrt_major_minor(tensorrt_version)
    if major < 10:
        raise TrtBuildError(f"TensorRT {tensorrt_version} is too old: kpn plugins are IPluginV3, which needs TensorRT 10 or later; {GPU_EXTRA}")
    if onnx_precision not in ("fp32", "fp16"):
        raise TrtBuildError(f"unknown kpn.precision {onnx_precision!r} in the ONNX metadata; re-export with kpn-export onnx")
    if onnx_precision == "fp16":
        # the types come from the ONNX: strongly typed on 10 (implicit on 11), no FP16 flag
        return NetworkFlags(strongly_typed=major == 10, fp16_builder_flag=False, precision="fp16")
    if major >= 11:
        if fp16:
            raise TrtBuildError(
                f"TensorRT {tensorrt_version} builds FP16 engines from FP16 ONNX models only (no FP16 builder flag): "
                "export one with kpn-export onnx CKPT --fp16 and build it with kpn-export trt"
            )
        return NetworkFlags(strongly_typed=False, fp16_builder_flag=False, precision="fp32")
    return NetworkFlags(strongly_typed=False, fp16_builder_flag=fp16, precision="fp16" if fp16 else "fp32")


def _onnx_dims(value_info: Any) -> list[int | str]:
    """Static dims as int, dynamic ones as their dim_param name ('' when unnamed)."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def default_burst_shapes(metadata: dict[str, str], burst_dims: Sequence[int | str]) -> dict[str, tuple[int, ...]]:
    """min/opt/max burst shapes: batch 1, N frames, 64/512/2048 pixels rounded up to size_multiple;
    static dims of the ONNX are kept."""
    multiple = int(metadata.get("kpn.size_multiple", "1"))
    frames = int(metadata.get("kpn.frames", "0")) or (burst_dims[1] if isinstance(burst_dims[1], int) else 1)

    def rounded(size: int) -> int:
        return -(-size // multiple) * multiple

    shapes = {}
    for key, size in (("min", DEFAULT_MIN_SIZE), ("opt", DEFAULT_OPT_SIZE), ("max", DEFAULT_MAX_SIZE)):
        wanted = [1, frames, rounded(size), rounded(size)]
        shapes[key] = tuple(d if isinstance(d, int) and d > 0 else w for d, w in zip(burst_dims, wanted))
    return shapes


def profile_shapes(
    metadata: dict[str, str],
    input_dims: dict[str, Sequence[int | str]],
    min_shape: Optional[Sequence[int]] = None,
    opt_shape: Optional[Sequence[int]] = None,
    max_shape: Optional[Sequence[int]] = None,
) -> dict[str, dict[str, list[int]]]:
    """The optimisation profile {input: {"min", "opt", "max"}} from the burst shapes given (or the
    defaults), validated against the ONNX's static dims, N and size_multiple. The other inputs
    (noise_map [B,1,H,W]) take each dynamic axis from the burst axis of the same name."""
    if BURST_INPUT not in input_dims:
        raise TrtBuildError(f"the model has no input {BURST_INPUT!r} (inputs: {', '.join(input_dims)}); export it with kpn-export onnx")
    burst_dims = list(input_dims[BURST_INPUT])
    if len(burst_dims) != 4:
        raise TrtBuildError(f"input {BURST_INPUT!r} has {len(burst_dims)} dims, expected [B, N, H, W]")
    defaults = default_burst_shapes(metadata, burst_dims)
    multiple = int(metadata.get("kpn.size_multiple", "1"))
    frames = int(metadata.get("kpn.frames", "0"))

    def check(key: str, shape: tuple[int, ...]) -> None:
        text = "x".join(map(str, shape))
        if len(shape) != 4 or any(d <= 0 for d in shape):
            raise TrtBuildError(f"--{key}-shape {text}: expected 4 positive dims B x N x H x W, e.g. 1x8x256x256")
        for axis, (d, onnx_d) in enumerate(zip(shape, burst_dims)):
            if isinstance(onnx_d, int) and onnx_d > 0 and d != onnx_d:
                raise TrtBuildError(f"--{key}-shape {text}: dim {axis} must be {onnx_d} (static in the ONNX)")
        if frames and shape[1] != frames:
            raise TrtBuildError(f"--{key}-shape {text}: the model takes N = {frames} frames")
        if shape[2] % multiple or shape[3] % multiple:
            raise TrtBuildError(f"--{key}-shape {text}: H and W must be multiples of {multiple} (kpn.size_multiple)")

    given = {key: tuple(int(d) for d in shape) for key, shape in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)) if shape}
    for key, shape in given.items():  # the user's shapes first, so errors name the option they gave
        check(key, shape)
    burst = {key: given.get(key, defaults[key]) for key in ("min", "opt", "max")}
    if "min" not in given and "max" in given:  # e.g. --max-shape 1x8x32x32: the default min must not exceed it
        burst["min"] = tuple(min(lo, hi) for lo, hi in zip(burst["min"], burst["max"]))
    if "opt" not in given:
        # tune for the default opt size clamped into the range given (e.g. --max-shape below 512)
        burst["opt"] = tuple(max(min(o, hi), lo) for o, lo, hi in zip(defaults["opt"], burst["min"], burst["max"]))
    for key, shape in burst.items():
        check(key, shape)
    for axis in range(4):
        if not burst["min"][axis] <= burst["opt"][axis] <= burst["max"][axis]:
            shapes = " <= ".join("x".join(map(str, burst[k])) for k in ("min", "opt", "max"))
            raise TrtBuildError(f"profile shapes must satisfy min <= opt <= max in every dim, got {shapes}")

    axis_of = {name: i for i, name in enumerate(burst_dims) if isinstance(name, str) and name}
    profiles: dict[str, dict[str, list[int]]] = {BURST_INPUT: {k: list(v) for k, v in burst.items()}}
    for name, dims in input_dims.items():
        if name == BURST_INPUT:
            continue
        entry = {}
        for key in ("min", "opt", "max"):
            shape = []
            for axis, d in enumerate(dims):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif isinstance(d, str) and d in axis_of:
                    shape.append(burst[key][axis_of[d]])
                else:
                    raise TrtBuildError(f"input {name!r}: dynamic dim {axis} ({d or 'unnamed'}) is not an axis of {BURST_INPUT!r}; re-export with kpn-export onnx")
            entry[key] = shape
        profiles[name] = entry
    return profiles


def strip_kpn_functions(model: Any) -> Any:
    """A copy of the ModelProto without its kpn model-local functions.

    Early TensorRT 10 parsers expand a local function in preference to a plugin of the same op name
    (and TensorRT's GridSample is 2-D only, so the TrilinearSample body cannot build at all): without
    the functions, every kpn node binds to its plugin. The file on disk keeps them (ONNX Runtime runs them).
    """
    import onnx

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    keep = [f for f in stripped.functions if f.domain != DOMAIN]
    del stripped.functions[:]
    stripped.functions.extend(keep)
    return stripped


def sidecar_content(
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    profiles: dict[str, dict[str, list[int]]],
    plugin_paths: Sequence[Path],
    metadata: dict[str, str],
    onnx_path: Path,
    onnx_sha256: str,
    flags: NetworkFlags,
    workspace_mb: Optional[int],
) -> dict:
    """The `<engine>.json` sidecar: what runtime/backends/trt.py checks before deserializing
    (TensorRT version, GPU, plugin library hash), the profile, and the ONNX's kpn.* metadata."""
    plugins = [{"path": str(p), "sha256": sha256_file(p)} for p in plugin_paths]
    kpn_library = next((p for p in plugins if Path(p["path"]).name == PLUGIN_LIBRARY), plugins[0] if plugins else None)
    return {
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        "profiles": profiles,
        "plugin_sha256": kpn_library["sha256"] if kpn_library else "",
        "plugins": plugins,
        "onnx": onnx_path.name,
        "onnx_sha256": onnx_sha256,
        "builder": {
            "strongly_typed": flags.strongly_typed,
            "fp16_builder_flag": flags.fp16_builder_flag,
            "workspace_mb": workspace_mb,
        },
        "metadata": dict(metadata),
    }


def find_plugin_libraries(plugins: Optional[Sequence[str | os.PathLike]]) -> list[Path]:
    """--plugins (all must exist), else $KPN_PLUGINS, else plugins/build/libkpn_plugins.so."""
    if plugins:
        paths = [Path(p) for p in plugins]
        for p in paths:
            if not p.is_file():
                raise TrtBuildError(f"{p}: plugin library not found (--plugins)")
        return paths
    candidates = [Path(os.environ["KPN_PLUGINS"])] if os.environ.get("KPN_PLUGINS") else []
    candidates.append(DEFAULT_PLUGIN_PATH)
    for c in candidates:
        if c.is_file():
            return [c]
    raise TrtBuildError(
        f"plugin library {PLUGIN_LIBRARY} not found ($KPN_PLUGINS, {DEFAULT_PLUGIN_PATH}); build it with "
        "cmake -S plugins -B plugins/build -DTENSORRT_INCLUDE_DIR=<TensorRT>/include && cmake --build plugins/build, or pass --plugins"
    )


def _write_atomically(path: Path, data: bytes) -> Path:
    """Write to a temporary file in the target folder; the caller renames it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


# --------------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------------
def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TrtBuildError(f"TensorRT not available ({str(exc).splitlines()[0]}); {GPU_EXTRA}") from None
    if not hasattr(trt, "Builder"):  # e.g. only tensorrt-stubs installed: an empty namespace package
        raise TrtBuildError(f"TensorRT not available (the tensorrt module has no Builder: only stubs installed?); {GPU_EXTRA}")
    return trt


def gpu_properties() -> tuple[str, str]:
    """(GPU name, 'major.minor') of device 0 through cuda-python, as the runtime reads them."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise TrtBuildError(f"cuda-python not available ({str(exc).splitlines()[0]}); {GPU_EXTRA}") from None
    from runtime.backends.trt import gpu_check
    from runtime.errors import UserError

    try:
        return gpu_check(cudart, "kpn-export trt")
    except UserError as exc:
        raise TrtBuildError(str(exc)) from None


def _load_plugins(trt: Any, paths: Sequence[Path]) -> list[Any]:
    """Load each library through the plugin registry (getCreators), falling back to a global dlopen
    (its static registrar registers the creators). The handles must outlive the build."""
    registry = trt.get_plugin_registry()
    handles = []
    for path in paths:
        try:
            handle = registry.load_library(str(path))
        except Exception:
            handle = None
        if handle is None:
            try:
                handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise TrtBuildError(f"{path}: cannot load the plugin library ({str(exc).splitlines()[0]})") from None
        handles.append(handle)
    return handles


def _parser_errors(parser: Any) -> str:
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    return "; ".join(e.replace("\n", " ") for e in errors) or "no error reported"


def build_engine(
    model: str | os.PathLike,
    output_path: Optional[str | os.PathLike] = None,
    fp16: bool = False,
    plugins: Optional[Sequence[str | os.PathLike]] = None,
    min_shape: Optional[Sequence[int]] = None,
    opt_shape: Optional[Sequence[int]] = None,
    max_shape: Optional[Sequence[int]] = None,
    workspace_mb: Optional[int] = None,
    timing_cache: Optional[str | os.PathLike] = None,
) -> Path:
    """Build a TensorRT engine from an ONNX exported by `kpn-export onnx`; returns the engine path.

    Writes `<engine>` and `<engine>.json` (sidecar_content) atomically; nothing on failure."""
    import onnx

    model_path = Path(model)
    try:
        proto = onnx.load(str(model_path))
    except Exception as exc:
        raise TrtBuildError(f"{model_path}: not a readable ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    metadata = {p.key: p.value for p in proto.metadata_props}
    if "kpn.family" not in metadata:
        raise TrtBuildError(f"{model_path}: not a kpn-deploy model (no kpn.* metadata); export it with kpn-export onnx")
    engine_path = Path(output_path) if output_path else model_path.with_suffix(".engine")
    if engine_path.resolve() == model_path.resolve():
        raise TrtBuildError(f"{engine_path}: the engine would overwrite the ONNX model; choose another -o")
    if not engine_path.parent.is_dir():
        raise TrtBuildError(f"{engine_path}: folder {engine_path.parent} does not exist")
    if not os.access(engine_path.parent, os.W_OK):
        raise TrtBuildError(f"{engine_path}: folder {engine_path.parent} is not writable")
    if workspace_mb is not None and workspace_mb <= 0:
        raise TrtBuildError(f"--workspace {workspace_mb}: must be a positive number of MB")
    initializers = {i.name for i in proto.graph.initializer}
    input_dims = {i.name: _onnx_dims(i) for i in proto.graph.input if i.name not in initializers}
    profiles = profile_shapes(metadata, input_dims, min_shape, opt_shape, max_shape)

    trt = import_tensorrt()
    tensorrt_version = str(trt.__version__)
    flags = network_flags(tensorrt_version, fp16, metadata.get("kpn.precision", "fp32"))
    plugin_paths = find_plugin_libraries(plugins)
    gpu_name, compute_capability = gpu_properties()

    logger = trt.Logger(trt.Logger.WARNING)
    plugin_handles = _load_plugins(trt, plugin_paths)  # noqa: F841 (kept alive until the engine is built)
    builder = trt.Builder(logger)
    network_creation = 0
    if flags.strongly_typed:
        network_creation |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # TensorRT 10 only
    network = builder.create_network(network_creation)
    parser = trt.OnnxParser(network, logger)
    override = getattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE", None)
    if override is not None:  # TensorRT 10.14+: prefer our plugin over any same-named function
        parser.set_flag(override)
    if not parser.parse(strip_kpn_functions(proto).SerializeToString(), str(model_path)):
        raise TrtBuildError(f"{model_path}: TensorRT's ONNX parser failed: {_parser_errors(parser)}")

    config = builder.create_builder_config()
    if flags.fp16_builder_flag:
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10 only: network_flags never asks for it on 11
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profiles:
            raise TrtBuildError(f"{model_path}: TensorRT sees an input {name!r} the ONNX graph does not list")
        shapes = profiles[name]
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(f"{model_path}: TensorRT could not build the engine (see the TensorRT log above)")

    onnx_sha256 = sha256_file(model_path)
    sidecar = sidecar_content(
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=flags.precision,
        profiles=profiles,
        plugin_paths=plugin_paths,
        metadata=metadata,
        onnx_path=model_path,
        onnx_sha256=onnx_sha256,
        flags=flags,
        workspace_mb=workspace_mb,
    )
    sidecar_path = engine_path.with_name(engine_path.name + ".json")
    tmp_engine = _write_atomically(engine_path, bytes(serialized))
    try:
        tmp_sidecar = _write_atomically(sidecar_path, (json.dumps(sidecar, indent=2) + "\n").encode())
    except BaseException:
        os.unlink(tmp_engine)
        raise
    os.replace(tmp_engine, engine_path)
    os.replace(tmp_sidecar, sidecar_path)
    if cache_path is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            os.replace(_write_atomically(cache_path, bytes(cache.serialize())), cache_path)
    return engine_path


__all__ = [
    "TrtBuildError",
    "build_engine",
    "network_flags",
    "NetworkFlags",
    "profile_shapes",
    "default_burst_shapes",
    "strip_kpn_functions",
    "sidecar_content",
    "find_plugin_libraries",
]
