"""The standard-ONNX function bodies of kpn::AdaptiveConv and kpn::TrilinearSample, run in ONNX
Runtime (CPU), against the PyTorch reference ops of train/ops.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import train.ops as ops  # noqa: E402
from export.functions import (  # noqa: E402
    DOMAIN,
    PLUGIN_ATTRIBUTES,
    function_protos,
    op_model,
)

DTYPES = {
    "fp32": (torch.float32, onnx.TensorProto.FLOAT, 1e-5),
    "fp16": (torch.float16, onnx.TensorProto.FLOAT16, 1e-2),
}


def _session(model: onnx.ModelProto) -> "ort.InferenceSession":
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _assert_close(out: np.ndarray, ref: torch.Tensor, tol: float) -> None:
    ref_np = ref.float().numpy()
    assert out.shape == ref_np.shape
    err = float(np.abs(out.astype(np.float32) - ref_np).max())
    scale = max(1.0, float(np.abs(ref_np).max()))
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol * scale:.3g}"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_adaptive_conv_body_matches_reference(k: int, precision: str) -> None:
    tdtype, odtype, tol = DTYPES[precision]
    gen = torch.Generator().manual_seed(k)
    frames = torch.rand(2, 3, 2, 13, 17, generator=gen).to(tdtype)
    kernels = (torch.randn(2, 3, k * k, 13, 17, generator=gen) / k).to(tdtype)
    sess = _session(op_model("AdaptiveConv", k, odtype))
    (out,) = sess.run(None, {"frames": frames.numpy(), "kernels": kernels.numpy()})
    assert out.dtype == frames.numpy().dtype
    _assert_close(out, ops.adaptive_conv(frames, kernels, k), tol)


def test_adaptive_conv_body_zero_padding_at_borders() -> None:
    # A kernel that only takes the neighbour (+2, +2) shifts the image; the last 2 rows/cols are 0.
    k = 5
    frames = torch.rand(1, 1, 1, 9, 11)
    kernels = torch.zeros(1, 1, k * k, 9, 11)
    kernels[:, :, k * k - 1] = 1.0
    (out,) = _session(op_model("AdaptiveConv", k)).run(
        None, {"frames": frames.numpy(), "kernels": kernels.numpy()}
    )
    np.testing.assert_array_equal(out[..., :-2, :-2], frames.numpy()[..., 2:, 2:])
    assert np.all(out[..., -2:, :] == 0) and np.all(out[..., :, -2:] == 0)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("t", [1, 3, 5])
@pytest.mark.parametrize("s", [1, 9, 27])
def test_trilinear_sample_body_matches_reference(t: int, s: int, precision: str) -> None:
    tdtype, odtype, tol = DTYPES[precision]
    gen = torch.Generator().manual_seed(100 * t + s)
    video = torch.rand(2, 2, t, 11, 14, generator=gen).to(tdtype)
    # offsets of a few pixels/frames: many samples fall partly or wholly outside the clip
    offsets = torch.randn(2, s, 3, 11, 14, generator=gen) * torch.tensor([1.5, 4.0, 4.0]).view(
        1, 1, 3, 1, 1
    )
    offsets = offsets.to(tdtype)
    ref_frame = t // 2
    sess = _session(op_model("TrilinearSample", ref_frame, odtype))
    (out,) = sess.run(None, {"video": video.numpy(), "offsets": offsets.numpy()})
    assert out.dtype == video.numpy().dtype
    _assert_close(out, ops.trilinear_sample(video, offsets, ref_frame), tol)


@pytest.mark.parametrize("t,ref_frame", [(1, 0), (3, 0), (5, 4)])
def test_trilinear_sample_body_out_of_range_and_size_one_time_axis(t: int, ref_frame: int) -> None:
    """Fractional dt on a 1-frame clip (PAN) is attenuated by max(0, 1-|dt|); far offsets give 0."""
    h, w = 6, 7
    video = torch.rand(1, 1, t, h, w)
    dts = torch.tensor([0.0, 0.25, -0.6, 0.99, 1.0, -1.0, 2.5, -7.0])
    s = dts.numel()
    offsets = torch.zeros(1, s, 3, h, w)
    offsets[0, :, 0] = dts.view(s, 1, 1)
    offsets[0, :, 1] = 0.3
    offsets[0, :, 2] = -0.45
    # a band of pixels displaced far outside the image in y and x
    offsets[0, :, 1, 0, :] = 50.0
    offsets[0, :, 2, :, 0] = -50.0
    sess = _session(op_model("TrilinearSample", ref_frame))
    (out,) = sess.run(None, {"video": video.numpy(), "offsets": offsets.numpy()})
    ref = ops.trilinear_sample(video, offsets, ref_frame)
    _assert_close(out, ref, 1e-5)
    assert np.all(out[..., 0, :] == 0) and np.all(out[..., :, 0] == 0)
    if t == 1:
        # dt = 0.25 keeps 75 % of the dt = 0 sample, |dt| >= 1 keeps nothing
        np.testing.assert_allclose(out[0, 0, 1], 0.75 * out[0, 0, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[0, 0, 2], 0.4 * out[0, 0, 0], rtol=1e-5, atol=1e-6)
        assert np.abs(out[0, 0, 0, 1:, 1:]).max() > 0.1
        assert np.all(out[0, 0, 4:] == 0)


def test_trilinear_sample_body_size_one_spatial_axes() -> None:
    video = torch.rand(1, 2, 3, 1, 1)
    offsets = torch.tensor([0.4, -0.3, 0.2]).view(1, 1, 3, 1, 1).repeat(1, 4, 1, 1, 1)
    offsets[0, 1, 1] = 1.5  # fully outside in y
    (out,) = _session(op_model("TrilinearSample", 1)).run(
        None, {"video": video.numpy(), "offsets": offsets.numpy()}
    )
    _assert_close(out, ops.trilinear_sample(video, offsets, 1), 1e-5)
    assert np.all(out[:, :, 1] == 0)


def test_function_protos_declare_domain_and_plugin_attributes() -> None:
    protos = {f.name: f for f in function_protos(21)}
    assert set(protos) == {"AdaptiveConv", "TrilinearSample"}
    for name, attr in (("AdaptiveConv", "kernel_size"), ("TrilinearSample", "reference_frame")):
        fn = protos[name]
        assert fn.domain == DOMAIN
        assert attr in fn.attribute
        assert {a.name for a in fn.attribute_proto} == set(PLUGIN_ATTRIBUTES)
        assert {(i.domain, i.version) for i in fn.opset_import} == {("", 21)}
        # standard ops only inside the body
        assert all(n.domain in ("", "ai.onnx") for n in fn.node)
    with pytest.raises(ValueError, match="opset 19"):
        function_protos(19)


def test_body_runs_at_newer_opset() -> None:
    frames = torch.rand(1, 2, 1, 8, 8)
    kernels = torch.rand(1, 2, 9, 8, 8)
    (out,) = _session(op_model("AdaptiveConv", 3, opset=22)).run(
        None, {"frames": frames.numpy(), "kernels": kernels.numpy()}
    )
    _assert_close(out, ops.adaptive_conv(frames, kernels, 3), 1e-5)
