"""TensorRT backend checks that run without TensorRT or a GPU, for real: engine sidecar, plugin library,
TensorRT version, and cuda-python's own report that there is no GPU. Engine runs need a GPU: skipped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runtime.backends import trt as rtrt
from runtime.denoise import app
from runtime.errors import UserError
from test_runtime_fixtures import noisy_frames, write_burst

META = {"kpn.family": "kpn", "kpn.frames": "8", "kpn.reference_index": "0", "kpn.size_multiple": "8", "kpn.receptive_radius": "68"}


def _engine(tmp: Path, plugin_sha: str = "", version: str = "10.13.0.35", sidecar: bool = True) -> Path:
    eng = tmp / "m.engine"
    eng.write_bytes(b"not really an engine")
    if sidecar:
        (tmp / "m.engine.json").write_text(json.dumps({
            "tensorrt_version": version, "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
            "precision": "fp16", "profiles": {"burst": {"min": [1, 8, 64, 64], "opt": [3, 8, 512, 512], "max": [4, 8, 1024, 1024]}},
            "plugin_sha256": plugin_sha, "metadata": META,
        }))
    return eng


def _cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def test_engine_without_plugin_library(tmp_path, monkeypatch):
    monkeypatch.delenv("KPN_PLUGINS", raising=False)
    monkeypatch.setattr(rtrt, "PLUGIN_LIBRARY", "libkpn_plugins_absent_for_test.so")
    eng = _engine(tmp_path)
    write_burst(tmp_path / "b", noisy_frames(8, 32, 32))
    code, out = _cli(tmp_path / "b", "--model", eng)
    assert code == 2 and "needs the plugin library" in out and "--plugins" in out and "m.engine" in out
    code, out = _cli(tmp_path / "b", "--model", eng, "--plugins", tmp_path / "nope.so")
    assert code == 2 and "nope.so: plugin library not found" in out
    assert not (tmp_path / "b-denoised.png").exists()


def test_engine_without_sidecar(tmp_path):
    eng = _engine(tmp_path, sidecar=False)
    write_burst(tmp_path / "b", noisy_frames(8, 32, 32))
    code, out = _cli(tmp_path / "b", "--model", eng)
    assert code == 2 and "m.engine.json is missing" in out and "kpn-export trt" in out


def test_plugin_library_of_another_build(tmp_path):
    lib = tmp_path / "libkpn_plugins.so"
    lib.write_bytes(b"a library")
    eng = _engine(tmp_path, plugin_sha=hashlib.sha256(b"another library").hexdigest())
    with pytest.raises(UserError, match="differs from the plugin library m.engine was built with"):
        rtrt.preflight(eng, lib)
    eng = _engine(tmp_path, plugin_sha=hashlib.sha256(b"a library").hexdigest())
    assert rtrt.preflight(eng, None)[1] == lib  # found beside the engine, hash matches


def test_engine_from_another_tensorrt_version(tmp_path):
    lib = tmp_path / "libkpn_plugins.so"
    lib.write_bytes(b"a library")
    eng = _engine(tmp_path, plugin_sha=hashlib.sha256(b"a library").hexdigest(), version="10.7.0.23")
    side = json.loads((tmp_path / "m.engine.json").read_text())
    with pytest.raises(UserError, match=r"built with TensorRT 10.7.0.23, this is TensorRT 10.13.0.35; rebuild with kpn-export trt"):
        rtrt.check_tensorrt_version(eng, side, "10.13.0.35")
    rtrt.check_tensorrt_version(eng, side, "10.7.0.23")  # same version: fine
    # through the CLI on this host: the version check runs before importing TensorRT
    write_burst(tmp_path / "b", noisy_frames(8, 32, 32))
    code, out = _cli(tmp_path / "b", "--model", eng)
    assert code == 2 and "built with TensorRT 10.7.0.23" in out
    assert len([ln for ln in out.splitlines() if ln.strip()]) == 1


def test_no_gpu_is_one_clear_line():
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed (pip install cuda-python)")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        pytest.skip("a GPU is present here; this test checks the no-GPU path")
    with pytest.raises(UserError) as info:
        rtrt.gpu_check(cudart, "m.engine")
    msg = str(info.value)
    assert msg.startswith("m.engine: no CUDA GPU available (cudaGetDeviceCount: cudaError") and "--backend ort-cpu" in msg
    assert "\n" not in msg


def test_onnx_with_backend_trt_says_build_an_engine(tmp_path):
    from test_runtime_fixtures import make_tiny_model

    m = make_tiny_model(tmp_path / "t.onnx")
    write_burst(tmp_path / "b", noisy_frames(8, 32, 32))
    code, out = _cli(tmp_path / "b", "--model", m, "--backend", "trt")
    assert code == 2 and "kpn-export trt" in out



def test_auto_falls_back_from_an_unusable_engine_and_says_why(tmp_path, monkeypatch):
    """auto with m.onnx and m.engine beside it tries TensorRT first; here (no TensorRT/GPU) it runs ORT."""
    from test_runtime_fixtures import make_tiny_model

    monkeypatch.setattr(rtrt, "PLUGIN_LIBRARY", "libkpn_plugins_absent_for_test.so")
    monkeypatch.delenv("KPN_PLUGINS", raising=False)
    m = make_tiny_model(tmp_path / "m.onnx")
    _engine(tmp_path)
    write_burst(tmp_path / "b", noisy_frames(8, 32, 32))
    code, out = _cli(tmp_path / "b", "--model", m, "--read-noise", 0.01, "--shot-noise", 0.01)
    assert code == 0 and "TensorRT skipped" in out and "needs the plugin library" in out
    assert (tmp_path / "b-denoised.png").exists()
