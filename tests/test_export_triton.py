"""kpn-export triton: a Triton model repository from a tiny real ONNX model (tests/test_runtime_fixtures.py)
and, for the layout/config path only, from a TensorRT engine stand-in.

No Triton server runs here (none is installed; it needs its own container): these tests check the
repository layout Triton expects and parse config.pbtxt with Triton's own ModelConfig protobuf
(tritonclient.grpc.model_config_pb2; skipped when tritonclient is not installed). Whether a server
loads and serves the repository is not checked here.

The engine tests involve NO TensorRT: the ".engine" is a few dummy bytes and its sidecar JSON is written
by the test (the keys kpn-export trt writes); only the sidecar -> config path and the file copying are
exercised.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from export.cli import app
from export.errors import ExportError
from export import triton as ktriton
from test_runtime_fixtures import make_tiny_model

try:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
except Exception:  # ImportError, or tritonclient's RuntimeError without grpc support
    model_config_pb2 = None

needs_pb2 = pytest.mark.skipif(
    model_config_pb2 is None,
    reason="tritonclient[grpc] not installed (pip install 'kpn-deploy[triton]'): Triton's ModelConfig protobuf is "
    "needed to parse config.pbtxt; no Triton server is run by these tests in any case",
)
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def _cli(*args):
    r = CliRunner().invoke(app, ["triton", *[str(a) for a in args]])
    return r


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _onnx_io(path: Path):
    m = onnx.load(str(path))
    def one(vi):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        return vi.name, ONNX_TO_TRITON[vi.type.tensor_type.elem_type], dims
    return [one(v) for v in m.graph.input], [one(v) for v in m.graph.output], {p.key: p.value for p in m.metadata_props}


def _io(tensors):
    dt = model_config_pb2.DataType
    return [(t.name, dt.Name(t.data_type), list(t.dims)) for t in tensors]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny kpn.onnx")


# --------------------------------------------------------------------------------------------- ONNX


def test_onnx_repository_layout(tiny, tmp_path):
    repo = tmp_path / "repo"
    r = _cli(tiny, "--repo", repo)
    assert r.exit_code == 0, r.output
    assert _tree(repo) == {"tiny_kpn", "tiny_kpn/config.pbtxt", "tiny_kpn/1", "tiny_kpn/1/model.onnx"}
    assert (repo / "tiny_kpn/1/model.onnx").read_bytes() == tiny.read_bytes()
    assert "multiples of 8" in r.stdout and str(repo / "tiny_kpn") in r.stdout
    # the server may run as another user: the folders are readable by all
    assert oct((repo / "tiny_kpn").stat().st_mode & 0o755) == oct(0o755)


@needs_pb2
def test_onnx_config_parses_and_matches_model(tiny, tmp_path):
    repo = tmp_path / "repo"
    assert _cli(tiny, "--repo", repo, "--name", "kpn_small", "--dynamic-batching", "--instances", "2").exit_code == 0
    cfg = _parse(repo / "kpn_small/config.pbtxt")
    inputs, outputs, meta = _onnx_io(tiny)
    assert cfg.name == "kpn_small" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 8  # the ONNX default; the batch dimension is dropped from dims
    assert _io(cfg.input) == [(n, t, d[1:]) for n, t, d in inputs]
    assert _io(cfg.output) == [(n, t, d[1:]) for n, t, d in outputs]
    assert _io(cfg.input) == [("burst", "TYPE_FP32", [8, -1, -1]), ("noise_map", "TYPE_FP32", [1, -1, -1])]
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.HasField("dynamic_batching")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert {k: v for k, v in params.items() if k.startswith("kpn.")} == {k: v for k, v in meta.items() if k.startswith("kpn.")}
    assert "multiples of 8" in params["input_hw_rule"]


@needs_pb2
def test_onnx_fp16_no_batching_cpu(tmp_path):
    model = make_tiny_model(tmp_path / "half.onnx", frames=5, reference_index=2, fp16=True, family="st-pan")
    repo = tmp_path / "repo"
    r = _cli(model, "--repo", repo, "--max-batch-size", "0", "--kind", "cpu")
    assert r.exit_code == 0, r.output
    cfg = _parse(repo / "half/config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    # without batching the dims are the full shape, the batch dimension included (-1: dynamic)
    assert _io(cfg.input) == [("burst", "TYPE_FP16", [-1, 5, -1, -1]), ("noise_map", "TYPE_FP16", [-1, 1, -1, -1])]
    assert _io(cfg.output) == [("denoised", "TYPE_FP16", [-1, 1, -1, -1])]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["kpn.reference_index"].string_value == "2"


@needs_pb2
def test_static_batch_model_is_not_batched(tmp_path):
    m = onnx.load(str(make_tiny_model(tmp_path / "s.onnx")))
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, str(tmp_path / "static.onnx"))
    repo = tmp_path / "repo"
    assert _cli(tmp_path / "static.onnx", "--repo", repo).exit_code == 0
    cfg = _parse(repo / "static/config.pbtxt")
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 8, -1, -1]
    r = _cli(tmp_path / "static.onnx", "--repo", repo, "--name", "b4", "--max-batch-size", "4")
    assert r.exit_code == 2 and "dynamic first (batch) dimension" in r.stderr and not (repo / "b4").exists()


@needs_pb2
def test_text_by_hand_equals_protobuf(tiny):
    """Without tritonclient the config is written by hand: the same bytes protobuf prints (escapes included)."""
    spec = ktriton.read_model(tiny)
    spec.metadata["kpn.note"] = 'quote " backslash \\ tab \t newline \n sigma \u03c3 \u00e9'
    for mbs, dyn, kind in ((None, True, "gpu"), (0, False, "cpu")):
        cfg = ktriton.make_config(spec, "m", mbs, 3, kind, dyn)
        text = text_format.MessageToString(ktriton.to_message(cfg, model_config_pb2), as_utf8=True)
        assert ktriton._pbtxt_by_hand(cfg) == text
        assert _parse_text(text).parameters["kpn.note"].string_value == spec.metadata["kpn.note"]


def _parse_text(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_without_tritonclient_the_text_is_written_by_hand(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import fails as if not installed
    cfg = ktriton.make_config(ktriton.read_model(tiny), "m")
    text, how = ktriton.config_text(cfg)
    assert how.startswith("by hand") and text == ktriton._pbtxt_by_hand(cfg)
    assert 'platform: "onnxruntime_onnx"' in text and "max_batch_size: 8" in text


def test_existing_empty_model_folder_is_filled(tiny, tmp_path):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    assert _cli(tiny, "--repo", repo, "--name", "m").exit_code == 0
    assert _tree(repo) == {"m", "m/config.pbtxt", "m/1", "m/1/model.onnx"}


# --------------------------------------------------------------------------------------------- engines
# No TensorRT here: the engine is dummy bytes, the sidecar is written by the test.

META = {"kpn.family": "kpn", "kpn.frames": "8", "kpn.reference_index": "0", "kpn.size_multiple": "8",
        "kpn.receptive_radius": "68", "kpn.precision": "fp16"}


def _fake_engine(folder: Path, batch=(1, 4), metadata=META, plugin: bytes = b"plugin library stand-in") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / "libkpn_plugins.so"
    lib.write_bytes(plugin)
    eng = folder / "denoiser.engine"
    eng.write_bytes(b"dummy bytes standing in for a serialized TensorRT engine")
    (folder / "denoiser.engine.json").write_text(json.dumps({
        "tensorrt_version": "10.13.0.35", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "precision": "fp16",
        "profiles": {"burst": {"min": [batch[0], 8, 64, 64], "opt": [batch[1], 8, 512, 512], "max": [batch[1], 8, 1024, 1024]}},
        "plugin_sha256": hashlib.sha256(plugin).hexdigest(), "metadata": metadata,
    }))
    return eng, lib


def test_engine_repository_layout_and_plugin(tmp_path):
    eng, lib = _fake_engine(tmp_path / "build")
    repo = tmp_path / "repo"
    r = _cli(eng, "--repo", repo, "--plugins", lib)
    assert r.exit_code == 0, r.output
    assert _tree(repo) == {"denoiser", "denoiser/config.pbtxt", "denoiser/1", "denoiser/1/model.plan",
                           "denoiser/libkpn_plugins.so"}
    assert (repo / "denoiser/1/model.plan").read_bytes() == eng.read_bytes()
    assert (repo / "denoiser/libkpn_plugins.so").read_bytes() == lib.read_bytes()
    plugin = os.path.abspath(repo / "denoiser/libkpn_plugins.so")
    assert f"LD_PRELOAD={plugin} tritonserver --model-repository={os.path.abspath(repo)}" in r.stdout
    assert f"--backend-config=tensorrt,plugins={plugin}" in r.stdout


@needs_pb2
def test_engine_config_from_sidecar(tmp_path):
    eng, _ = _fake_engine(tmp_path / "build")  # library found beside the engine
    repo = tmp_path / "repo"
    assert _cli(eng, "--repo", repo, "--dynamic-batching").exit_code == 0
    cfg = _parse(repo / "denoiser/config.pbtxt")
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == 4  # the profile's largest batch
    # I/O dtype: kpn.precision of the metadata (the dtype of the ONNX the engine was built from)
    assert _io(cfg.input) == [("burst", "TYPE_FP16", [8, -1, -1]), ("noise_map", "TYPE_FP16", [1, -1, -1])]
    assert _io(cfg.output) == [("denoised", "TYPE_FP16", [1, -1, -1])]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["engine.tensorrt_version"] == "10.13.0.35" and params["engine.compute_capability"] == "9.0"
    assert json.loads(params["engine.profile"])["burst"]["max"] == [4, 8, 1024, 1024]
    assert all(params[k] == v for k, v in META.items())
    # an fp32 graph (TensorRT 10 builds FP16 engines from it with FP32 I/O) gives TYPE_FP32
    eng32, _ = _fake_engine(tmp_path / "b32", metadata={**META, "kpn.precision": "fp32"})
    assert _cli(eng32, "--repo", repo, "--name", "d32", "--max-batch-size", "2").exit_code == 0
    cfg32 = _parse(repo / "d32/config.pbtxt")
    assert cfg32.max_batch_size == 2 and cfg32.input[0].data_type == model_config_pb2.TYPE_FP32


@needs_pb2
def test_engine_fixed_batch_profile(tmp_path):
    eng, _ = _fake_engine(tmp_path / "build", batch=(1, 1))
    repo = tmp_path / "repo"
    assert _cli(eng, "--repo", repo).exit_code == 0
    cfg = _parse(repo / "denoiser/config.pbtxt")
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 8, -1, -1]


# --------------------------------------------------------------------------------------------- bad input


def _bad(args: list, repo: Path, must: str) -> str:
    before = _tree(repo) if repo.exists() else None
    r = _cli(*args)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and must in err and "Traceback" not in err, err
    assert (_tree(repo) if repo.exists() else None) == before  # nothing written, no temporary folder left
    return err


def test_bad_model_inputs(tiny, tmp_path):
    repo = tmp_path / "repo"
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not a model")
    assert "unknown model type '.pt'" in _bad([ckpt, "--repo", repo], repo, "model.pt")
    _bad([tmp_path / "none.onnx", "--repo", repo], repo, "no such model file")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not protobuf" * 20)
    _bad([garbage, "--repo", repo], repo, "garbage.onnx")
    plain = tmp_path / "plain.onnx"
    m = onnx.load(str(tiny))
    del m.metadata_props[:]
    onnx.save(m, str(plain))
    _bad([plain, "--repo", repo], repo, "not a kpn-deploy model")
    _bad([tiny, "--repo", repo, "--dynamic-batching", "--max-batch-size", "0"], repo, "--dynamic-batching")
    _bad([tiny, "--repo", repo, "--name", "../escape"], repo, "--name")
    _bad([tiny, "--repo", repo, "--instances", "0"], repo, "--instances")
    _bad([tiny, "--repo", repo, "--kind", "tpu"], repo, "--kind")
    _bad([tiny, "--repo", repo, "--plugins", tmp_path / "lib.so"], repo, "only TensorRT engines")
    assert not repo.exists()  # failed calls do not even create the repository folder


def test_bad_engine_inputs(tmp_path):
    eng, lib = _fake_engine(tmp_path / "build")
    repo = tmp_path / "repo"
    _bad([eng, "--repo", repo, "--kind", "cpu"], repo, "GPU only")
    _bad([eng, "--repo", repo, "--max-batch-size", "5"], repo, "largest batch 4")
    other = tmp_path / "other.so"
    other.write_bytes(b"another build of the plugins")
    _bad([eng, "--repo", repo, "--plugins", other], repo, "differs from the plugin library")
    lib.unlink()
    _bad([eng, "--repo", repo], repo, "libkpn_plugins.so")
    bare = tmp_path / "bare" / "x.plan"
    bare.parent.mkdir()
    bare.write_bytes(b"dummy")
    _bad([bare, "--repo", repo], repo, "sidecar x.plan.json is missing")


def test_existing_version_folder_is_not_overwritten(tiny, tmp_path):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    old = repo / "m" / "1" / "model.onnx"
    old.write_bytes(b"the model already served")
    mtime = old.stat().st_mtime_ns
    err = _bad([tiny, "--repo", repo, "--name", "m"], repo, "version folder exists and is not empty")
    assert str(repo / "m" / "1") in err
    assert old.read_bytes() == b"the model already served" and old.stat().st_mtime_ns == mtime
    # a config without a version folder is not overwritten either
    (repo / "n").mkdir()
    (repo / "n" / "config.pbtxt").write_text('name: "n"\n')
    _bad([tiny, "--repo", repo, "--name", "n"], repo, "holds config.pbtxt")
    assert (repo / "n" / "config.pbtxt").read_text() == 'name: "n"\n'


def test_unwritable_repository(tiny, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _bad([tiny, "--repo", afile], tmp_path, "is not a folder")
    _bad([tiny, "--repo", afile / "repo"], tmp_path, "cannot create the repository folder")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            _bad([tiny, "--repo", locked], locked, "not writable")
        finally:
            locked.chmod(0o700)
    # sysfs refuses new folders even to root (when this test runs as root, this is the real check)
    sysfs = Path("/sys")
    if sysfs.is_dir():
        r = _cli(tiny, "--repo", sysfs)
        assert r.exit_code == 2 and "not writable" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_api_raises_export_error(tmp_path):
    with pytest.raises(ExportError, match="unknown model type"):
        ktriton.write_repository(tmp_path / "m.pb", tmp_path / "repo")
    assert ktriton.default_name(Path("/x/My Model (v2).fp16.onnx")) == "My_Model__v2_.fp16"
    assert ktriton.default_name(Path(".hidden.onnx")) == "hidden"


@pytest.mark.slow
@needs_pb2
def test_real_exported_model(tmp_path):
    """A model from `kpn-export onnx` (kpn custom nodes + function bodies, full metadata), from a small
    random checkpoint made as tests/test_export_onnx.py makes them (about 10 s on 2 cores)."""
    pytest.importorskip("torch", reason="torch (the train extra) is needed to export a checkpoint")
    from export.inspect import inspect_onnx
    from export.onnx_export import export_onnx
    from test_export_onnx import _make_checkpoint

    onnx_path = export_onnx(_make_checkpoint(tmp_path, "kpn")).output
    repo = tmp_path / "repo"
    r = _cli(onnx_path, "--repo", repo, "--dynamic-batching")
    assert r.exit_code == 0, r.output
    assert _tree(repo) == {"kpn", "kpn/config.pbtxt", "kpn/1", "kpn/1/model.onnx"}
    assert (repo / "kpn/1/model.onnx").read_bytes() == onnx_path.read_bytes()
    info = inspect_onnx(onnx_path)
    assert info["custom_nodes"]  # the real thing: kpn::AdaptiveConv nodes
    cfg = _parse(repo / "kpn/config.pbtxt")
    want = lambda vs: [(v["name"], "TYPE_FP32", [d if isinstance(d, int) else -1 for d in v["shape"]][1:]) for v in vs]  # noqa: E731
    assert _io(cfg.input) == want(info["inputs"]) and _io(cfg.output) == want(info["outputs"])
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert {k: v for k, v in info["metadata"].items() if k.startswith("kpn.")} == {k: v for k, v in params.items() if k.startswith("kpn.")}
    assert json.loads(params["kpn.config"])["family"] == "kpn"


def test_help_shows_defaults():
    out = CliRunner().invoke(app, ["triton", "--help"]).output
    assert "--repo" in out and "file stem" in out and "largest batch" in out and "KPN_PLUGINS" in out
