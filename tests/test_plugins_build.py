"""The plugin library compiles: the CUDA kernels for every target architecture (needs nvcc), and the
whole library against TensorRT's headers (needs them: $TENSORRT_INCLUDE_DIR, or several folders in
$KPN_TRT_INCLUDE_DIRS separated by ':'), with its entry points exported from a shared library.

No TensorRT library is linked here: the shared library is linked with undefined TensorRT symbols
(getPluginRegistry), which the real libnvinfer resolves on a GPU host (the CMake build links it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from export.functions import OP_TYPES, PLUGIN_ATTRIBUTES

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
KERNELS = [PLUGINS / "adaptive_conv" / "adaptive_conv_kernel.cu", PLUGINS / "trilinear_sample" / "trilinear_sample_kernel.cu"]
PLUGIN_SOURCES = [
    PLUGINS / "common" / "kpn_plugin_utils.cpp",
    PLUGINS / "common" / "kpn_plugin_library.cpp",
    PLUGINS / "adaptive_conv" / "adaptive_conv_plugin.cpp",
    PLUGINS / "trilinear_sample" / "trilinear_sample_plugin.cpp",
]
HOST_CHECK = PLUGINS / "tests" / "plugin_host_check.cpp"
ARCHITECTURES = ["75", "80", "86", "87", "89", "90"]  # Turing .. Hopper, 87 = Jetson Orin
# what trtexec --dynamicPlugins / IPluginRegistry::loadLibrary look up, and the kernels' C ABI
EXPORTED = ["getCreators", "setLoggerFinder", "kpn_adaptive_conv_cuda", "kpn_trilinear_sample_cuda"]


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(["nice", *cmd], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"


def _nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA kernels compile only where the CUDA toolkit is installed")
    return nvcc


def _cuda_include() -> Path:
    _nvcc()
    spec = importlib.util.spec_from_file_location("kpn_cpu_build", PLUGINS / "cpu_build.py")
    cpu_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_build)
    include = cpu_build.find_cuda_include()
    if include is None or not (include / "cuda_runtime_api.h").is_file():
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found: set CUDA_HOME")
    return include


def _tensorrt_include_dirs() -> list[Path]:
    dirs = [p for p in os.environ.get("KPN_TRT_INCLUDE_DIRS", "").split(os.pathsep) if p]
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        dirs.append(os.environ["TENSORRT_INCLUDE_DIR"])
    return [Path(d) for d in dict.fromkeys(dirs)]


def _tensorrt_version(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text()
    parts = [re.search(rf"#define TRT_{k}_ENTERPRISE\s+(\d+)|#define NV_TENSORRT_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR")]
    return ".".join(next(g for g in m.groups() if g) for m in parts if m) or "?"


def test_kernels_compile_for_every_architecture(tmp_path):
    nvcc = _nvcc()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHITECTURES]
    _run([nvcc, "-std=c++17", "-O2", "-c", *gencode, *map(str, KERNELS)], cwd=tmp_path)
    for kernel in KERNELS:
        obj = tmp_path / (kernel.stem + ".o")
        assert obj.is_file()
        cuobjdump = shutil.which("cuobjdump") or shutil.which("cuobjdump", path=str(Path(nvcc).resolve().parent))
        if cuobjdump is None:  # not in every toolkit install; nvcc's success is the check then
            continue
        listing = subprocess.run([cuobjdump, "--list-elf", str(obj)], capture_output=True, text=True, check=True)
        for arch in ARCHITECTURES:
            assert f"sm_{arch}" in listing.stdout, f"{obj.name} lacks sm_{arch}"


def test_plugin_names_match_the_onnx_nodes():
    """Creator name == ONNX op_type, version == plugin_version, namespace "" == plugin_namespace,
    and the field each creator reads is the node's int attribute."""
    sources = {
        "AdaptiveConv": PLUGINS / "adaptive_conv" / "adaptive_conv_plugin",
        "TrilinearSample": PLUGINS / "trilinear_sample" / "trilinear_sample_plugin",
    }
    assert set(sources) == set(OP_TYPES)
    for op_type, stem in sources.items():
        header = stem.with_suffix(".h").read_text()
        source = stem.with_suffix(".cpp").read_text()
        assert re.search(rf'k{op_type}Name = "{op_type}";', header)
        assert re.search(rf'k{op_type}Version = "{PLUGIN_ATTRIBUTES["plugin_version"]}";', header)
        assert PLUGIN_ATTRIBUTES["plugin_namespace"] == ""
        assert len(re.findall(r'getPluginNamespace\(\) const noexcept\s*\{\s*return "";', source)) == 2
        attribute = OP_TYPES[op_type][1]
        assert re.search(rf'Field = "{attribute}";', source)


@pytest.fixture(scope="module")
def tensorrt_include_dirs():
    dirs = _tensorrt_include_dirs()
    if not dirs:
        pytest.skip("TensorRT headers not given: set TENSORRT_INCLUDE_DIR (or KPN_TRT_INCLUDE_DIRS=dir1:dir2) to <TensorRT>/include")
    for d in dirs:
        assert (d / "NvInferRuntime.h").is_file(), f"{d}: no NvInferRuntime.h (TENSORRT_INCLUDE_DIR / KPN_TRT_INCLUDE_DIRS)"
    return dirs


def test_plugin_library_compiles_and_exports_entry_points(tensorrt_include_dirs, tmp_path):
    nvcc = _nvcc()
    cuda_include = _cuda_include()
    # kernel objects do not depend on TensorRT: compile them once (one architecture is enough here,
    # every architecture is covered by the test above)
    kernel_objects = []
    for kernel in KERNELS:
        obj = tmp_path / (kernel.stem + ".o")
        _run([nvcc, "-std=c++17", "-O1", "-c", "-gencode=arch=compute_75,code=sm_75",
              "-Xcompiler=-fPIC,-fvisibility=hidden", str(kernel), "-o", str(obj)], cwd=tmp_path)
        kernel_objects.append(obj)
    versions = []
    for include in tensorrt_include_dirs:
        version = _tensorrt_version(include)
        versions.append(version)
        out = tmp_path / f"trt-{version}"
        out.mkdir()
        objects = []
        for source in PLUGIN_SOURCES:
            obj = out / (source.stem + ".o")
            # -Werror: our code is warning-free against each header set (TensorRT's own headers are
            # system headers: they warn about their own deprecated declarations)
            _run(["g++", "-std=c++17", "-O0", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror",
                  f"-isystem{include}", f"-isystem{cuda_include}", "-c", str(source), "-o", str(obj)], cwd=out)
            objects.append(obj)
        library = out / "libkpn_plugins.so"
        _run(["g++", "-shared", "-o", str(library), *map(str, objects + kernel_objects),
              f"-L{cuda_include.parent / 'lib64'}", "-lcudart"], cwd=out)
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True).stdout
        exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
        missing = [s for s in EXPORTED if s not in exported]
        assert not missing, f"TensorRT {version}: {library.name} does not export {missing}"
        undefined = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True, check=True).stdout
        assert "getPluginRegistry" in undefined  # resolved by libnvinfer on the GPU host
        # hidden visibility: only the entry points above are exported from our code
        ours = sorted(s for s in exported if "kpn" in s.lower() and s not in EXPORTED)
        assert not ours, f"unexpected exported symbols: {ours}"

        # the plugin classes, exercised on the host (plugins/tests/plugin_host_check.cpp): creator
        # fields, serialization round trip, shapes, formats, errors returned as statuses
        check = out / "plugin_host_check"
        cuda_lib = cuda_include.parent / "lib64"
        _run(["g++", "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", f"-isystem{include}", f"-isystem{cuda_include}",
              str(HOST_CHECK), *map(str, objects + kernel_objects), f"-L{cuda_lib}", f"-Wl,-rpath,{cuda_lib}", "-lcudart",
              "-o", str(check)], cwd=out)
        result = subprocess.run([str(check)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "ALL OK" in result.stdout, f"TensorRT {version}:\n{result.stdout}\n{result.stderr}"
        assert "[E] kpn plugin AdaptiveConv: kernels have 9 taps, kernel_size 5 needs 25" in result.stderr
    print("compiled against TensorRT", ", ".join(versions))
