"""export/trt.py without TensorRT: the pure helpers (profile, version-dependent flags, sidecar,
kpn functions stripped before parsing), the TensorRT API names it uses against TensorRT's type
stubs (tensorrt-stubs, 10.13), and `kpn-export trt` on a host without TensorRT. Building an
engine needs TensorRT and a GPU: that test skips with the reason."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from export.cli import app
from export.functions import DOMAIN, function_protos
from export.trt import (
    VERSION_DEPENDENT_NAMES,
    NetworkFlags,
    TrtBuildError,
    build_engine,
    network_flags,
    profile_shapes,
    sidecar_content,
    strip_kpn_functions,
)
from runtime.model import engine_info, read_engine_sidecar

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "export" / "trt.py"
VARIABLES = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "config": "IBuilderConfig",
    "parser": "OnnxParser",
    "profile": "IOptimizationProfile",
    "registry": "IPluginRegistry",
    "cache": "ITimingCache",
    "logger": "Logger",
}
KPN_METADATA = {"kpn.family": "kpn", "kpn.frames": "8", "kpn.size_multiple": "16", "kpn.kernel_size": "5",
                "kpn.precision": "fp32", "kpn.reference_index": "0", "kpn.receptive_radius": "60"}
DYNAMIC = {"burst": ["batch", 8, "height", "width"], "noise_map": ["batch", 1, "height", "width"]}


def _tiny_kpn_model(with_functions: bool = True) -> onnx.ModelProto:
    """burst, noise_map -> one kpn::AdaptiveConv node (K=1: frames [B,N,1,H,W], kernels [B,N,1,H,W])."""
    burst = helper.make_tensor_value_info("burst", TensorProto.FLOAT, DYNAMIC["burst"])
    noise = helper.make_tensor_value_info("noise_map", TensorProto.FLOAT, DYNAMIC["noise_map"])
    out = helper.make_tensor_value_info("denoised", TensorProto.FLOAT, ["batch", 8, 1, "height", "width"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Unsqueeze", ["burst", "axes"], ["frames"]),
        helper.make_node("AdaptiveConv", ["frames", "frames"], ["denoised"], domain=DOMAIN, kernel_size=1,
                         plugin_version="1", plugin_namespace=""),
    ]
    graph = helper.make_graph(nodes, "tiny", [burst, noise], [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(DOMAIN, 1)])
    if with_functions:
        model.functions.extend(function_protos(20))
        other = onnx.FunctionProto(name="Helper", domain="other.domain")
        model.functions.append(other)
    helper.set_model_props(model, KPN_METADATA)
    return model


# ------------------------------------------------------------------------------------------------
# version-dependent decisions
# ------------------------------------------------------------------------------------------------
def test_tensorrt_10_fp16_from_fp32_onnx_uses_the_builder_flag():
    assert network_flags("10.16.0.72", fp16=True, onnx_precision="fp32") == NetworkFlags(False, True, "fp16")
    assert network_flags("10.3.0", fp16=False, onnx_precision="fp32") == NetworkFlags(False, False, "fp32")


def test_fp16_onnx_builds_strongly_typed_without_fp16_flag():
    assert network_flags("10.16.0", fp16=True, onnx_precision="fp16") == NetworkFlags(True, False, "fp16")
    assert network_flags("10.16.0", fp16=False, onnx_precision="fp16") == NetworkFlags(True, False, "fp16")
    # TensorRT 11: always strongly typed, STRONGLY_TYPED deprecated: no flag to set
    assert network_flags("11.1.0", fp16=True, onnx_precision="fp16") == NetworkFlags(False, False, "fp16")


def test_tensorrt_11_refuses_fp16_from_an_fp32_onnx():
    with pytest.raises(TrtBuildError, match="kpn-export onnx CKPT --fp16"):
        network_flags("11.1.0.5", fp16=True, onnx_precision="fp32")
    assert network_flags("11.1.0.5", fp16=False, onnx_precision="fp32") == NetworkFlags(False, False, "fp32")


def test_tensorrt_8_is_refused():
    with pytest.raises(TrtBuildError, match="TensorRT 10 or later"):
        network_flags("8.6.1", fp16=False, onnx_precision="fp32")


# ------------------------------------------------------------------------------------------------
# optimisation profile
# ------------------------------------------------------------------------------------------------
def test_default_profile_from_metadata():
    profiles = profile_shapes(KPN_METADATA, DYNAMIC)
    assert profiles["burst"] == {"min": [1, 8, 64, 64], "opt": [1, 8, 512, 512], "max": [1, 8, 2048, 2048]}
    assert profiles["noise_map"] == {"min": [1, 1, 64, 64], "opt": [1, 1, 512, 512], "max": [1, 1, 2048, 2048]}


def test_default_profile_rounds_to_size_multiple_and_keeps_static_dims():
    meta = dict(KPN_METADATA, **{"kpn.size_multiple": "48"})
    static = {"burst": ["batch", 8, 96, 144], "noise_map": ["batch", 1, 96, 144]}
    profiles = profile_shapes(meta, static)
    assert profiles["burst"]["min"] == [1, 8, 96, 144] and profiles["burst"]["max"] == [1, 8, 96, 144]
    assert profile_shapes(meta, DYNAMIC)["burst"]["min"] == [1, 8, 96, 96]  # 64 -> 96


def test_given_shapes_propagate_to_noise_map():
    profiles = profile_shapes(KPN_METADATA, DYNAMIC, (1, 8, 64, 128), (2, 8, 256, 256), (4, 8, 1024, 1024))
    assert profiles["noise_map"] == {"min": [1, 1, 64, 128], "opt": [2, 1, 256, 256], "max": [4, 1, 1024, 1024]}


def test_max_shape_alone_gets_an_opt_inside_the_range():
    profiles = profile_shapes(KPN_METADATA, DYNAMIC, max_shape=(1, 8, 256, 256))
    assert profiles["burst"] == {"min": [1, 8, 64, 64], "opt": [1, 8, 256, 256], "max": [1, 8, 256, 256]}
    small = profile_shapes(KPN_METADATA, DYNAMIC, max_shape=(1, 8, 32, 48))
    assert small["burst"] == {"min": [1, 8, 32, 48], "opt": [1, 8, 32, 48], "max": [1, 8, 32, 48]}


@pytest.mark.parametrize(
    "shapes, message",
    [
        ({"min_shape": (1, 8, 60, 64)}, "multiples of 16"),
        ({"opt_shape": (1, 5, 512, 512)}, "dim 1 must be 8"),
        ({"min_shape": (1, 8, 512, 512), "opt_shape": (1, 8, 256, 256)}, "min <= opt <= max"),
        ({"max_shape": (1, 8, 256)}, "4 positive dims"),
    ],
)
def test_bad_profile_shapes_are_one_line_errors(shapes, message):
    with pytest.raises(TrtBuildError, match=message) as err:
        profile_shapes(KPN_METADATA, DYNAMIC, **shapes)
    assert "\n" not in str(err.value)


def test_frames_must_match_the_metadata_when_dynamic():
    dynamic_n = {"burst": ["batch", "frames", "height", "width"], "noise_map": ["batch", 1, "height", "width"]}
    assert profile_shapes(KPN_METADATA, dynamic_n)["burst"]["opt"] == [1, 8, 512, 512]
    with pytest.raises(TrtBuildError, match="N = 8 frames"):
        profile_shapes(KPN_METADATA, dynamic_n, opt_shape=(1, 5, 512, 512))


def test_static_dims_must_match():
    static = {"burst": ["batch", 8, 128, 128], "noise_map": ["batch", 1, 128, 128]}
    with pytest.raises(TrtBuildError, match="static in the ONNX"):
        profile_shapes(KPN_METADATA, static, opt_shape=(1, 8, 256, 256))


# ------------------------------------------------------------------------------------------------
# kpn functions removed in memory before parsing
# ------------------------------------------------------------------------------------------------
def test_strip_kpn_functions_keeps_nodes_and_the_original():
    model = _tiny_kpn_model()
    assert {f.name for f in model.functions if f.domain == DOMAIN} == {"AdaptiveConv", "TrilinearSample"}
    stripped = strip_kpn_functions(model)
    assert [(f.domain, f.name) for f in stripped.functions] == [("other.domain", "Helper")]
    assert [n.op_type for n in stripped.graph.node] == ["Unsqueeze", "AdaptiveConv"]
    node = stripped.graph.node[1]
    assert node.domain == DOMAIN
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute} == {
        "kernel_size": 1, "plugin_version": b"1", "plugin_namespace": b""}
    assert (DOMAIN, 1) in {(o.domain, o.version) for o in stripped.opset_import}
    assert len(model.functions) == 3  # the model on disk (and in memory) keeps its bodies
    assert {p.key: p.value for p in stripped.metadata_props} == KPN_METADATA


# ------------------------------------------------------------------------------------------------
# sidecar: what the runtime reads
# ------------------------------------------------------------------------------------------------
def test_sidecar_is_what_the_runtime_reads(tmp_path):
    library = tmp_path / "libkpn_plugins.so"
    library.write_bytes(b"not really a library")
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx")
    profiles = profile_shapes(KPN_METADATA, DYNAMIC)
    side = sidecar_content(
        tensorrt_version="10.16.0.72", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
        precision="fp16", profiles=profiles, plugin_paths=[library], metadata=KPN_METADATA,
        onnx_path=onnx_path, onnx_sha256=hashlib.sha256(b"onnx").hexdigest(),
        flags=NetworkFlags(False, True, "fp16"), workspace_mb=1024,
    )
    assert side["plugin_sha256"] == hashlib.sha256(b"not really a library").hexdigest()
    assert side["profiles"]["burst"]["max"] == [1, 8, 2048, 2048]
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    (tmp_path / "model.engine.json").write_text(json.dumps(side))
    read = read_engine_sidecar(engine)  # the runtime's own reader and checks
    info = engine_info(engine, read)
    assert info.family == "kpn" and info.precision == "fp32"  # the ONNX's metadata, copied verbatim
    assert read["precision"] == "fp16" and read["compute_capability"] == "9.0"


# ------------------------------------------------------------------------------------------------
# TensorRT names against the stubs
# ------------------------------------------------------------------------------------------------
def _stub_helpers():
    spec = importlib.util.spec_from_file_location("kpn_trt_api_test", ROOT / "tests" / "test_runtime_trt_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _used_names() -> tuple[set[tuple[str, ...]], set[tuple[str, str]], set[str]]:
    """trt.X.Y chains, (class, member) pairs on the VARIABLES, and getattr(trt.X, "NAME") lookups."""
    tree = ast.parse(SOURCE.read_text())
    chains: set[tuple[str, ...]] = set()
    members: set[tuple[str, str]] = set()
    getattrs: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "trt":
                chains.add(tuple(reversed(parts)))
            elif isinstance(cur, ast.Name) and cur.id in VARIABLES and isinstance(node.value, ast.Name):
                members.add((VARIABLES[cur.id], node.attr))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            target, name = node.args[0], node.args[1]
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "trt":
                getattrs.add(f"{target.attr}.{name.value}")
    return chains, members, getattrs


def test_every_tensorrt_name_exists_in_the_stubs():
    helpers = _stub_helpers()
    classes, top = helpers._stub_api()  # skips with the reason when tensorrt-stubs is missing
    package = helpers._package_top_level() | top
    chains, members, getattrs = _used_names()
    assert ("Builder",) in chains and ("OnnxParser",) in chains and ("BuilderFlag", "FP16") in chains
    assert ("IBuilderConfig", "set_memory_pool_limit") in members
    assert ("Builder", "build_serialized_network") in members
    missing = []
    for chain in sorted(chains):
        if chain[0] not in package or (len(chain) > 1 and chain[0] in classes and chain[1] not in classes[chain[0]]):
            missing.append("trt." + ".".join(chain))
    missing += [f"{cls}.{attr}" for cls, attr in sorted(members) if attr not in classes.get(cls, set())]
    assert not missing, f"not in tensorrt-stubs 10.13: {missing}"
    assert len(chains) >= 8 and len(members) >= 15
    # names newer than the stubs are looked up with getattr only, and documented
    assert getattrs == set(VERSION_DEPENDENT_NAMES)
    for name in getattrs:
        cls, member = name.split(".")
        assert member not in classes.get(cls, set()), f"{name} is in the stubs now: use it directly"


# ------------------------------------------------------------------------------------------------
# the CLI without TensorRT
# ------------------------------------------------------------------------------------------------
def _has_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here: the missing-TensorRT message cannot be shown")
def test_cli_without_tensorrt_is_one_line_and_writes_nothing(tmp_path):
    model = tmp_path / "model.onnx"
    onnx.save(_tiny_kpn_model(), str(model))
    result = CliRunner().invoke(app, ["trt", str(model), "--fp16", "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TensorRT not available" in lines[0] and "pip install 'kpn-deploy[gpu]'" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_cli_bad_profile_shape_fails_before_tensorrt(tmp_path):
    model = tmp_path / "model.onnx"
    onnx.save(_tiny_kpn_model(), str(model))
    result = CliRunner().invoke(app, ["trt", str(model), "--max-shape", "1x8x100x100"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "kpn-export: error: --max-shape 1x8x100x100: H and W must be multiples of 16 (kpn.size_multiple)"]


def test_cli_not_a_kpn_model(tmp_path):
    model = tmp_path / "plain.onnx"
    plain = _tiny_kpn_model()
    del plain.metadata_props[:]
    onnx.save(plain, str(model))
    result = CliRunner().invoke(app, ["trt", str(model)])
    assert result.exit_code == 2 and "not a kpn-deploy model" in result.stderr


@pytest.mark.skipif(not _has_tensorrt(), reason="needs TensorRT and an NVIDIA GPU (pip install 'kpn-deploy[gpu]')")
def test_build_engine_on_a_gpu_host(tmp_path):  # pragma: no cover - GPU hosts only
    library = ROOT / "plugins" / "build" / "libkpn_plugins.so"
    if not library.is_file():
        pytest.skip(f"{library} not built: cmake -S plugins -B plugins/build -DTENSORRT_INCLUDE_DIR=...")
    model = tmp_path / "model.onnx"
    onnx.save(_tiny_kpn_model(), str(model))
    engine = build_engine(model, plugins=[str(library)], max_shape=(1, 8, 128, 128))
    side = read_engine_sidecar(engine)
    assert side["metadata"] == KPN_METADATA and side["profiles"]["burst"]["max"] == [1, 8, 128, 128]
