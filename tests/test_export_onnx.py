"""kpn-export onnx / inspect: every family at small width, exported once per session (module-scoped
fixtures), graph structure, ONNX Runtime vs PyTorch at two sizes, fp16 vs fp32, CLI bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from export.cli import app  # noqa: E402
from export.errors import ExportError  # noqa: E402
from export.inspect import inspect_onnx  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.models import build_model, default_config  # noqa: E402

FAMILIES = ["kpn", "ame-kpn", "st-pan", "pan"]
KPN_OP = {"kpn": "AdaptiveConv", "ame-kpn": "AdaptiveConv", "st-pan": "TrilinearSample", "pan": "TrilinearSample"}
METADATA_KEYS = {
    "kpn.family", "kpn.width", "kpn.frames", "kpn.reference_index", "kpn.size_multiple",
    "kpn.receptive_radius", "kpn.tiling_exact", "kpn.input_contract", "kpn.config",
    "kpn.config_sha256", "kpn.checkpoint_sha256", "kpn.training_step", "kpn.val_psnr",
    "kpn.exporter_version", "kpn.precision",
}
VAL = {"val": {"gain1": {"psnr": 36.25, "ssim": 0.93}, "gain4": {"psnr": 31.5, "ssim": 0.85}}}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_checkpoint(folder: Path, family: str) -> Path:
    torch.manual_seed(FAMILIES.index(family))
    cfg = default_config(family, "small")
    model = build_model(cfg)
    with torch.no_grad():  # non-trivial weights: spread the heads a little beyond their init
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = folder / f"{family}.pt"
    save_checkpoint(path, model, cfg, step=1234, metrics=VAL)
    return path


def _inputs(frames: int, ref: int, b: int, h: int, w: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    burst = torch.rand(b, frames, h, w, generator=gen)  # intensities in [0, 1]
    noise_map = torch.sqrt(0.01**2 + 0.01 * burst[:, ref : ref + 1])
    return burst, noise_map


def _run(path: Path, burst, noise_map, dtype=np.float32) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["denoised"], {"burst": burst.numpy().astype(dtype), "noise_map": noise_map.numpy().astype(dtype)})
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, workdir):
    family = request.param
    ckpt = _make_checkpoint(workdir, family)
    before = _sha(ckpt)
    rep32 = export_onnx(ckpt)
    rep16 = export_onnx(ckpt, fp16=True)
    assert _sha(ckpt) == before  # the checkpoint is never touched
    from train.checkpoint import load_checkpoint

    model, ckpt_dict = load_checkpoint(ckpt)
    return family, ckpt, rep32, rep16, model, ckpt_dict["config_object"]


def test_graph_structure(exported):
    family, ckpt, rep32, rep16, _, cfg = exported
    for rep, dtype in ((rep32, onnx.TensorProto.FLOAT), (rep16, onnx.TensorProto.FLOAT16)):
        assert rep.output.exists() and rep.output.stat().st_size == rep.file_size
        model = onnx.load(str(rep.output))
        onnx.checker.check_model(model, full_check=True)
        kpn_nodes = [n for n in model.graph.node if n.domain == "kpn"]
        assert [n.op_type for n in kpn_nodes] == [KPN_OP[family]]  # exactly one kpn node
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in kpn_nodes[0].attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
        if KPN_OP[family] == "AdaptiveConv":
            assert attrs["kernel_size"] == cfg.kernel_size
        else:
            assert attrs["reference_frame"] == cfg.reference_index
        assert {n.domain for n in model.graph.node} <= {"", "kpn"}
        assert {i.domain: i.version for i in model.opset_import} == {"": 20, "kpn": 1}
        assert [(f.domain, f.name) for f in model.functions] == [("kpn", KPN_OP[family])]
        assert all(n.domain == "" for f in model.functions for n in f.node)
        # I/O names, dtypes and dynamic axes
        io = {v.name: v.type.tensor_type for v in list(model.graph.input) + list(model.graph.output)}
        assert set(io) == {"burst", "noise_map", "denoised"}
        for name, tt in io.items():
            assert tt.elem_type == dtype, name
            dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
            channels = cfg.frames if name == "burst" else 1
            assert dims == ["batch", channels, "height", "width"], (name, dims)
        assert rep.node_count == len(model.graph.node)
        assert len(rep.custom_nodes) == 1


def test_metadata(exported):
    family, ckpt, rep32, rep16, _, cfg = exported
    meta = {p.key: p.value for p in onnx.load(str(rep32.output)).metadata_props}
    specific = "kpn.kernel_size" if family in ("kpn", "ame-kpn") else "kpn.samples"
    assert METADATA_KEYS | {specific} <= set(meta)
    assert meta["kpn.family"] == family and meta["kpn.width"] == "small"
    assert int(meta["kpn.frames"]) == cfg.frames
    assert int(meta["kpn.reference_index"]) == cfg.reference_index
    assert int(meta["kpn.size_multiple"]) == cfg.size_multiple
    assert int(meta["kpn.receptive_radius"]) == cfg.receptive_radius
    assert meta[specific] == str(cfg.kernel_size if family in ("kpn", "ame-kpn") else cfg.samples)
    assert meta["kpn.checkpoint_sha256"] == _sha(ckpt)
    assert meta["kpn.training_step"] == "1234"
    assert json.loads(meta["kpn.val_psnr"]) == {"gain1": 36.25, "gain4": 31.5}
    assert json.loads(meta["kpn.config"]) == cfg.to_dict()
    assert meta["kpn.precision"] == "fp32"
    assert {p.key: p.value for p in onnx.load(str(rep16.output)).metadata_props}["kpn.precision"] == "fp16"


def test_no_exporter_metadata_is_left(exported):
    """torch.export's metadata (stack traces with local paths; the graph's range constraints, printed from
    a set, so in another order in another process) is dropped everywhere: the same checkpoint exports to
    the same bytes, which the shipped manifest's sha256 can then vouch for."""
    _, _, rep32, rep16, _, _ = exported
    for path in (rep32.output, rep16.output):
        m = onnx.load(str(path))
        holders = [m, m.graph, *m.graph.node, *m.graph.input, *m.graph.output, *m.graph.value_info, *m.graph.initializer]
        left = sorted({p.key for h in holders for p in h.metadata_props if p.key.startswith("pkg.torch")})
        assert not left, (path, left)


@pytest.mark.parametrize("b,h,w", [(2, 32, 48), (1, 64, 40)])
def test_onnxruntime_matches_pytorch(exported, b, h, w):
    family, _, rep32, _, model, cfg = exported
    burst, noise_map = _inputs(cfg.frames, cfg.reference_index, b, h, w, seed=h + w)
    with torch.no_grad():
        expected = model(burst, noise_map).numpy()
    got = _run(rep32.output, burst, noise_map)
    assert got.shape == (b, 1, h, w) and got.dtype == np.float32
    err = float(np.abs(got - expected).max())
    assert err <= 1e-4, f"{family} {b}x{h}x{w}: max abs error {err:.3g}"
    assert float(np.abs(expected).max()) > 1e-3  # not a trivially zero output


def test_projected_kernel_kpn_exports_and_matches_pytorch(tmp_path):
    """kpn-train --kernels projected: the projection is plain ONNX ops around kpn::AdaptiveConv."""
    from dataclasses import replace

    torch.manual_seed(11)
    cfg = replace(default_config("kpn", "small"), kernels="projected")
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_checkpoint(tmp_path / "kpn-projected.pt", model, cfg, step=7, metrics=VAL)
    report = export_onnx(tmp_path / "kpn-projected.pt")
    burst, noise_map = _inputs(cfg.frames, cfg.reference_index, 1, 32, 40, seed=3)
    with torch.no_grad():
        expected = model.eval()(burst, noise_map).numpy()
    err = float(np.abs(_run(report.output, burst, noise_map) - expected).max())
    assert err <= 1e-4 and float(np.abs(expected).max()) > 1e-3, err


def test_fp16_export_close_to_fp32(exported):
    family, _, rep32, rep16, _, cfg = exported
    burst, noise_map = _inputs(cfg.frames, cfg.reference_index, 1, 48, 32, seed=5)
    out32 = _run(rep32.output, burst, noise_map)
    out16 = _run(rep16.output, burst, noise_map, np.float16)
    assert out16.dtype == np.float16
    err = float(np.abs(out16.astype(np.float32) - out32).max())
    assert err <= 1e-2, f"{family}: fp16 vs fp32 max abs diff {err:.3g}"
    assert rep16.file_size < 0.6 * rep32.file_size
    assert rep32.max_abs_diff <= 1e-4 and rep16.max_abs_diff <= 1e-2  # the self-verification


def test_static_export_and_polygraphy_run(workdir):
    """A static 32x48 model; then `polygraphy run --onnxrt` (the route users take with --trt)."""
    ckpt = workdir / "kpn.pt"
    if not ckpt.exists():
        _make_checkpoint(workdir, "kpn")
    out = workdir / "kpn-static.onnx"
    rep = export_onnx(ckpt, out, height=32, width=48)
    assert rep.static_shape == (32, 48) and rep.verify_shape == (1, 8, 32, 48)
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 8, 32, 48]
    if shutil.which("polygraphy") is None:
        pytest.skip("polygraphy CLI not installed")
    proc = subprocess.run(
        ["polygraphy", "run", str(out), "--onnxrt", "--input-shapes", "burst:[2,8,32,48]",
         "noise_map:[2,1,32,48]", "--val-range", "[0,1]"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASSED" in proc.stdout + proc.stderr


def test_inspect_cli(exported):
    family, _, rep32, _, _, cfg = exported
    result = CliRunner().invoke(app, ["inspect", str(rep32.output)])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"kpn::{KPN_OP[family]}" in text and "plugin_version='1'" in text
    assert f"burst      float32  [batch, {cfg.frames}, height, width]" in text
    assert f"kpn.family: {family}" in text and "kpn 1" in text
    info = json.loads(CliRunner().invoke(app, ["inspect", "--json", str(rep32.output)]).stdout)
    assert info == json.loads(json.dumps(inspect_onnx(rep32.output)))


# --------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the file, exit 2, nothing written
# --------------------------------------------------------------------------------------------
def _bad(args: list[str], folder: Path, must_name: str) -> str:
    before = sorted(p.name for p in folder.iterdir())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and must_name in err and "Traceback" not in err, err
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written, no temp left
    return err


def test_cli_bad_inputs(tmp_path):
    _bad(["onnx", str(tmp_path / "missing.pt")], tmp_path, "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    assert "corrupt.pt" in _bad(["onnx", str(corrupt)], tmp_path, "not a readable")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    assert "not a kpn-deploy checkpoint" in _bad(["onnx", str(other)], tmp_path, "other.pt")
    _bad(["onnx", str(tmp_path)], tmp_path, str(tmp_path))
    _bad(["inspect", str(corrupt)], tmp_path, "corrupt.pt")
    _bad(["inspect", str(tmp_path / "none.onnx")], tmp_path, "none.onnx")
    _bad(["trt", str(tmp_path / "none.onnx")], tmp_path, "none.onnx")
    _bad(["trt", str(corrupt), "--min-shape", "1xAx8"], tmp_path, "--min-shape")


def test_cli_bad_outputs(workdir, tmp_path):
    ckpt = tmp_path / "kpn.pt"
    shutil.copy(workdir / "kpn.pt" if (workdir / "kpn.pt").exists() else _make_checkpoint(tmp_path, "kpn"), ckpt)
    sha = _sha(ckpt)
    assert "output is the checkpoint" in _bad(["onnx", str(ckpt), "-o", str(ckpt)], tmp_path, "kpn.pt")
    # the same file through another spelling of its path
    alias = tmp_path / "." / "kpn.pt"
    _bad(["onnx", str(ckpt), "-o", str(alias)], tmp_path, "kpn.pt")
    _bad(["onnx", str(ckpt), "-o", str(tmp_path / "no" / "such" / "m.onnx")], tmp_path, "does not exist")
    _bad(["onnx", str(ckpt), "-o", str(ckpt / "m.onnx")], tmp_path, "is a file, not a folder")
    _bad(["onnx", str(ckpt), "-o", str(tmp_path)], tmp_path, "is a folder")
    _bad(["onnx", str(ckpt), "--height", "30", "--width", "48", "-o", str(tmp_path / "s.onnx")], tmp_path, "multiple of 8")
    _bad(["onnx", str(ckpt), "--opset", "17", "-o", str(tmp_path / "s.onnx")], tmp_path, "opset 17")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            _bad(["onnx", str(ckpt), "-o", str(locked / "m.onnx")], locked, "not writable")
        finally:
            locked.chmod(0o700)
    assert _sha(ckpt) == sha


def test_export_error_is_raised_by_api(tmp_path):
    with pytest.raises(ExportError, match="no such checkpoint"):
        export_onnx(tmp_path / "nothing.pt")


def test_cli_onnx_writes_and_reports(workdir, tmp_path):
    ckpt = workdir / "kpn.pt"
    if not ckpt.exists():
        _make_checkpoint(workdir, "kpn")
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["onnx", str(ckpt), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["output"] == str(out) and out.stat().st_size == report["file_size"]
    assert report["max_abs_diff"] <= 1e-4 and report["custom_nodes"][0]["op_type"] == "AdaptiveConv"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind


def test_kpn_export_entry_point_help():
    proc = subprocess.run([sys.executable, "-c", "from export.cli import main; main()", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("onnx", "inspect", "trt"):
        assert command in proc.stdout


def test_failed_verification_writes_nothing(workdir, tmp_path, monkeypatch):
    """A difference above tolerance is an error and leaves no file (nor temporary) behind."""
    import export.onnx_export as onnx_export

    ckpt = workdir / "kpn.pt"
    if not ckpt.exists():
        _make_checkpoint(workdir, "kpn")
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", -1.0)  # nothing can pass
    out = tmp_path / "never.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(ckpt, out)
    assert list(tmp_path.iterdir()) == []
