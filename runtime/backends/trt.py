"""TensorRT backend: a serialized engine + libkpn_plugins.so, device memory and stream via cuda-python.

Order of checks, cheapest and most common first, so that a user without TensorRT or without a GPU
still gets the precise reason: engine file and sidecar JSON -> plugin library (present, same sha256
as at build time) -> `import tensorrt` and its version vs the sidecar -> cuda-python and a GPU ->
GPU name and compute capability vs the sidecar -> deserialize.

Every `trt.*` name and every method called on `runtime`, `engine`, `context`, `registry` objects
here is checked against the tensorrt-stubs package by tests/test_runtime_trt_api.py: keep those
variable names.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import UserError, first_line
from ..model import engine_info, engine_sidecar_path, read_engine_sidecar
from ..files import sha256_file as _sha256

PLUGIN_LIBRARY = "libkpn_plugins.so"
REBUILD = "rebuild with kpn-export trt"


def find_plugin_library(engine_file: Path, plugins: Optional[Path]) -> Path:
    """--plugins, else $KPN_PLUGINS, else libkpn_plugins.so beside the engine or in plugins/build/."""
    if plugins is not None:
        if not plugins.is_file():
            raise UserError(f"{plugins}: plugin library not found (--plugins); build it: cmake -S plugins -B plugins/build && cmake --build plugins/build")
        return plugins
    candidates = []
    if os.environ.get("KPN_PLUGINS"):
        candidates.append(Path(os.environ["KPN_PLUGINS"]))
    root = Path(__file__).resolve().parents[2]
    candidates += [engine_file.parent / PLUGIN_LIBRARY, root / "plugins" / "build" / PLUGIN_LIBRARY]
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(
        f"{engine_file}: needs the plugin library {PLUGIN_LIBRARY} (looked in $KPN_PLUGINS, beside the engine and in "
        "plugins/build/); pass --plugins PATH"
    )


def preflight(engine_file: Path, plugins: Optional[Path]) -> tuple[dict, Path]:
    """Checks that need neither TensorRT nor a GPU: sidecar, plugin library and its hash."""
    if not engine_file.is_file():
        raise UserError(f"{engine_file}: no such engine file")
    sidecar = read_engine_sidecar(engine_file)
    lib = find_plugin_library(engine_file, plugins)
    want = str(sidecar.get("plugin_sha256") or "")
    if want and _sha256(lib) != want:
        raise UserError(f"{lib}: differs from the plugin library {engine_file.name} was built with; {REBUILD} (or pass the original --plugins)")
    return sidecar, lib


def installed_tensorrt_version() -> Optional[str]:
    """TensorRT's version from the installed distribution, without importing it (None: not installed)."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_cu12_libs", "tensorrt-cu12-libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_tensorrt_version(engine_file: Path, sidecar: dict, installed: Optional[str]) -> None:
    built = str(sidecar["tensorrt_version"])
    if installed is None:
        raise UserError(
            f"{engine_file}: built with TensorRT {built}, and TensorRT is not installed here; pip install 'kpn-deploy[gpu]' "
            "or run the .onnx with --backend ort-cpu"
        )
    if installed != built:
        raise UserError(f"{engine_file}: built with TensorRT {built}, this is TensorRT {installed}; {REBUILD}")


def import_tensorrt(engine_file: Path, sidecar: dict) -> Any:
    check_tensorrt_version(engine_file, sidecar, installed_tensorrt_version())  # before the (slow) import
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError(f"{engine_file}: TensorRT is not importable ({first_line(exc)}); pip install 'kpn-deploy[gpu]' or run the .onnx with --backend ort-cpu") from None
    if not hasattr(trt, "Runtime"):  # e.g. only tensorrt-stubs installed: an empty namespace package
        raise UserError(f"{engine_file}: TensorRT is not installed (the tensorrt module has no Runtime); pip install 'kpn-deploy[gpu]'")
    check_tensorrt_version(engine_file, sidecar, str(getattr(trt, "__version__", "?")))
    return trt


def _cuda_runtime(engine_file: Path) -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise UserError(f"{engine_file}: cuda-python is not installed ({first_line(exc)}); pip install 'kpn-deploy[gpu]'") from None
    return cudart


def gpu_check(cudart: Any, where: str) -> tuple[str, str]:
    """-> (gpu name, 'major.minor') of device 0; UserError with one line when there is no usable GPU."""
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as exc:  # no driver library at all
        raise UserError(f"{where}: no CUDA GPU available ({first_line(exc)}); use --backend ort-cpu with the .onnx model") from None
    if int(err) != 0 or not count:
        name = getattr(err, "name", str(err))
        raise UserError(f"{where}: no CUDA GPU available (cudaGetDeviceCount: {name}); use --backend ort-cpu with the .onnx model")
    err, prop = cudart.cudaGetDeviceProperties(0)
    _check(cudart, err, "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return name, f"{prop.major}.{prop.minor}"


def _check(cudart: Any, err: Any, what: str) -> None:
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")


def _call(cudart: Any, result: Any, what: str) -> Any:
    """cuda.bindings calls return (err, value...) tuples."""
    if isinstance(result, tuple):
        _check(cudart, result[0], what)
        return result[1] if len(result) == 2 else result[1:]
    _check(cudart, result, what)
    return None


class TrtBackend:
    name = "trt"

    def __init__(self, engine_path: Path, plugins: Optional[Path] = None, cuda_graph: bool = False) -> None:
        sidecar, lib = preflight(engine_path, plugins)
        self.info = engine_info(engine_path, sidecar)
        trt = import_tensorrt(engine_path, sidecar)
        cudart = _cuda_runtime(engine_path)
        gpu, cc = gpu_check(cudart, str(engine_path))
        if str(sidecar["compute_capability"]) != cc or str(sidecar["gpu_name"]) != gpu:
            raise UserError(
                f"{engine_path}: built for {sidecar['gpu_name']} (sm {sidecar['compute_capability']}), this GPU is {gpu} (sm {cc}); {REBUILD}"
            )
        self.trt, self.cudart, self.cuda_graph = trt, cudart, cuda_graph
        self.logger = trt.Logger(trt.Logger.WARNING)
        registry = trt.get_plugin_registry()
        try:
            self._plugin_handle = registry.load_library(str(lib))
        except Exception:
            self._plugin_handle = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # registers its creators on load
        runtime = trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise UserError(f"{engine_path}: TensorRT could not deserialize this engine (see the log above); {REBUILD}")
        self.runtime, self.engine = runtime, engine
        context = engine.create_execution_context()
        self.context = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if sorted(names) != ["burst", "denoised", "noise_map"]:
            raise UserError(f"{engine_path}: tensors {names} are not burst, noise_map -> denoised; {REBUILD}")
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        lo, _opt, hi = engine.get_tensor_profile_shape("burst", 0)
        self.min_hw = (int(lo[2]), int(lo[3]))
        self.max_hw = (int(hi[2]), int(hi[3]))
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.stream = _call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.graphs: dict[tuple, Any] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _call(self.cudart, self.cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_call(self.cudart, self.cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self.buffers[name] = (ptr, nbytes)
            self.graphs.clear()  # captured graphs hold the old addresses
        return ptr

    def run(self, burst: np.ndarray, noise_map: np.ndarray) -> np.ndarray:
        cudart, context = self.cudart, self.context
        b, n, h, w = burst.shape
        if b > self.max_batch or b < self.min_batch or not (self.min_hw[0] <= h <= self.max_hw[0] and self.min_hw[1] <= w <= self.max_hw[1]):
            raise UserError(
                f"{self.info.path}: input {b}x{n}x{h}x{w} is outside the engine's profile "
                f"(batch {self.min_batch}..{self.max_batch}, {self.min_hw}..{self.max_hw}); use --tile or {REBUILD} with a larger --max-shape"
            )
        host = {
            "burst": np.ascontiguousarray(burst, dtype=self.dtypes["burst"]),
            "noise_map": np.ascontiguousarray(noise_map, dtype=self.dtypes["noise_map"]),
        }
        out = np.empty((b, 1, h, w), dtype=self.dtypes["denoised"])
        for name in ("burst", "noise_map"):
            context.set_input_shape(name, tuple(host[name].shape))
        ptrs = {name: self._buffer(name, arr.nbytes) for name, arr in host.items()}
        ptrs["denoised"] = self._buffer("denoised", out.nbytes)
        for name, ptr in ptrs.items():
            context.set_tensor_address(name, ptr)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in host.items():
            _call(cudart, cudart.cudaMemcpyAsync(ptrs[name], arr.ctypes.data, arr.nbytes, h2d, self.stream), "cudaMemcpyAsync")
        self._enqueue((b, n, h, w))
        _call(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, ptrs["denoised"], out.nbytes, d2h, self.stream), "cudaMemcpyAsync")
        _call(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out.astype(np.float32)

    def _enqueue(self, shape: tuple) -> None:
        cudart, context = self.cudart, self.context
        if not self.cuda_graph:
            if not context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            return
        graph_exec = self.graphs.get(shape)
        if graph_exec is None:
            # one plain run first (TensorRT sets up shape-dependent state outside capture), then capture
            if not context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _call(cudart, cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
            context.execute_async_v3(self.stream)
            graph = _call(cudart, cudart.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
            graph_exec = _call(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            self.graphs[shape] = graph_exec
            return  # the warm-up run above already produced this batch's output
        _call(cudart, cudart.cudaGraphLaunch(graph_exec, self.stream), "cudaGraphLaunch")

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers.clear()
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


__all__ = ["TrtBackend", "preflight", "find_plugin_library", "engine_sidecar_path"]
