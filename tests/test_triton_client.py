"""examples/triton_client.py offline: no Triton server runs here (none is installed), so nothing here shows
that a server accepts these requests. Checked for real: argument parsing and the one-line errors (bad
folder; a refused connection, through real gRPC), the model facts the client reads from a config written
by `kpn-export triton` (in the JSON form the server returns), the request tensors it builds, and its
client-side pipeline, with the one server call replaced by ONNX Runtime on the very model file of the
repository: the result must equal `python -m runtime.denoise` with the same model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from export.triton import write_repository
from test_runtime_fixtures import make_tiny_model, noisy_frames, write_burst

try:
    import tritonclient.grpc as grpcclient
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2
except Exception:  # ImportError, or tritonclient's RuntimeError without grpc support
    grpcclient = None

pytestmark = pytest.mark.skipif(
    grpcclient is None,
    reason="tritonclient[grpc] not installed (pip install 'kpn-deploy[triton]'); no Triton server is run here in any case",
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client_mod():
    spec = importlib.util.spec_from_file_location("triton_client", ROOT / "examples" / "triton_client.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _config_as_served(config_pbtxt: Path) -> dict:
    """config.pbtxt -> the dict tritonclient.grpc's get_model_config(as_json=True)["config"] gives."""
    msg = text_format.Parse(config_pbtxt.read_text(), model_config_pb2.ModelConfig())
    return json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))


def test_help_and_bad_input(client_mod, tmp_path):
    r = CliRunner().invoke(client_mod.app, ["--help"])
    assert r.exit_code == 0 and "--model" in r.output and "--url" in r.output
    r = CliRunner().invoke(client_mod.app, [str(tmp_path / "none"), "--model", "m"])
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {tmp_path / 'none'}: no such folder"
    r = CliRunner().invoke(client_mod.app, [str(tmp_path)])
    assert r.exit_code == 2 and "--model" in r.output  # required


def test_refused_connection_is_one_line(client_mod, tmp_path):
    burst = tmp_path / "burst"
    write_burst(burst, noisy_frames(8, 32, 32))
    r = CliRunner().invoke(client_mod.app, [str(burst), "--model", "m", "--url", "127.0.0.1:1", "--timeout", "2"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "cannot get model 'm' from the Triton server at 127.0.0.1:1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["burst"]  # nothing written


def test_model_facts_and_request_from_onnx_repository(client_mod, tmp_path):
    model = make_tiny_model(tmp_path / "tiny.onnx", fp16=True)
    res = write_repository(model, tmp_path / "repo", name="kpn16", max_batch_size=3)
    be = client_mod.TritonBackend("kpn16", _config_as_served(res.config_path))
    assert (be.info.family, be.info.frames, be.info.size_multiple, be.info.receptive_radius) == ("kpn", 8, 8, 8)
    assert be.max_batch == 3 and be.max_hw is None and be.dtype == np.float16
    burst = np.random.default_rng(0).random((3, 8, 16, 24), dtype=np.float32)
    nmap = np.full((3, 1, 16, 24), 0.05, dtype=np.float32)
    inputs = be.build_inputs(burst, nmap)
    assert [(t.name(), t.datatype(), t.shape()) for t in inputs] == [
        ("burst", "FP16", [3, 8, 16, 24]), ("noise_map", "FP16", [3, 1, 16, 24])]
    # the raw bytes that go on the wire (tritonclient's own accessor)
    assert inputs[0]._get_content() == burst.astype(np.float16).tobytes()


def test_model_facts_from_engine_repository(client_mod, tmp_path):
    from test_export_triton import _fake_engine  # no TensorRT: dummy engine bytes and a test-written sidecar

    eng, _ = _fake_engine(tmp_path / "build")
    res = write_repository(eng, tmp_path / "repo")
    be = client_mod.TritonBackend("denoiser", _config_as_served(res.config_path))
    assert be.max_batch == 4 and be.min_hw == (64, 64) and be.max_hw == (1024, 1024) and be.dtype == np.float16


def test_pipeline_matches_runtime(client_mod, tmp_path):
    """The client's pipeline with the server call answered by ONNX Runtime on the repository's model.onnx
    (a local stand-in for the server, not a server) == python -m runtime.denoise on the same model."""
    import onnxruntime as ort

    from runtime.denoise import denoise_burst

    model = make_tiny_model(tmp_path / "tiny.onnx")
    res = write_repository(model, tmp_path / "repo", name="kpn", max_batch_size=2)
    session = ort.InferenceSession(str(res.model_path), providers=["CPUExecutionProvider"])
    batches = []

    class LocalOnnxRuntime(client_mod.TritonBackend):
        def infer(self, burst, noise_map):
            assert burst.shape[0] <= self.max_batch
            batches.append(burst.shape[0])
            return session.run(["denoised"], {"burst": burst.astype(self.dtype), "noise_map": noise_map.astype(self.dtype)})[0]

    burst = tmp_path / "burst"
    write_burst(burst, noisy_frames(8, 40, 48, c=3))  # RGB: 3 channels in the batch, sent 2 + 1
    be = LocalOnnxRuntime("kpn", _config_as_served(res.config_path))
    out = client_mod.denoise_on_triton(burst, be, tmp_path / "triton.png", tile=16)
    ref = denoise_burst(burst, tmp_path / "runtime.png", model=model, backend="ort-cpu", tile=16)
    import imageio.v3 as iio

    assert np.array_equal(iio.imread(out), iio.imread(ref.output))
    assert batches and set(batches) == {2, 1}
    # --self-ensemble: the same 8 turns on both sides
    out = client_mod.denoise_on_triton(burst, be, tmp_path / "triton-x8.png", tile=16, self_ensemble=8)
    ref = denoise_burst(burst, tmp_path / "runtime-x8.png", model=model, backend="ort-cpu", tile=16, self_ensemble=8)
    assert np.array_equal(iio.imread(out), iio.imread(ref.output))
    assert not np.array_equal(iio.imread(out), iio.imread(tmp_path / "triton.png"))
