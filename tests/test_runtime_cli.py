"""runtime.denoise end to end with a tiny real ONNX model (tests/test_runtime_fixtures.py): I/O formats,
frame selection, tiling, bad input (one line, exit 2, nothing written, inputs unchanged), no torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import onnxruntime as ort
import pytest
import tifffile
from typer.testing import CliRunner

from runtime.denoise import app, denoise_burst
from runtime.frames import from_linear, srgb_to_linear, to_linear
from runtime.model import ModelInfo
from runtime.pipeline import select_burst, video_window
from test_runtime_fixtures import make_tiny_model, noisy_frames, write_burst

ROOT = Path(__file__).resolve().parents[1]
SR, SS = 0.01, 0.005


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def _reference_run(model: Path, burst_lin: np.ndarray) -> np.ndarray:
    """The model run directly in ONNX Runtime on the whole frame: [C, N, H, W] -> [C, H, W]."""
    c, n, h, w = burst_lin.shape
    hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
    b = np.pad(burst_lin, ((0, 0), (0, 0), (0, hp - h), (0, wp - w)), mode="reflect")
    nm = np.sqrt(SR**2 + SS * np.maximum(b[:, :1], 0)).astype(np.float32)
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (out,) = s.run(["denoised"], {"burst": b.astype(np.float32), "noise_map": nm})
    return out[:, 0, :h, :w]


def test_rgb_png_matches_direct_model_run(tiny, tmp_path):
    frames = noisy_frames(8, 45, 61, c=3)  # not multiples of 8: reflect padding and crop
    write_burst(tmp_path / "b", frames)
    code, out = _cli(tmp_path / "b", "--model", tiny, "--read-noise", SR, "--shot-noise", SS, "--backend", "ort-cpu")
    assert code == 0, out
    res = iio.imread(tmp_path / "b-denoised.png")
    assert res.dtype == np.uint8 and res.shape == (45, 61, 3)
    lin = srgb_to_linear(frames.astype(np.float32) / 255).transpose(3, 0, 1, 2)
    want = from_linear(_reference_run(tiny, lin).transpose(1, 2, 0), np.uint8, linear=False)
    assert np.abs(res.astype(int) - want.astype(int)).max() <= 1  # rounding of the sRGB encode only
    assert "ort-cpu" in out and "MP/s" in out


def test_16bit_gray_and_float_tiff_keep_type(tiny, tmp_path):
    f16 = noisy_frames(8, 40, 40, dtype=np.uint16)
    write_burst(tmp_path / "g", f16)
    assert _cli(tmp_path / "g", "--model", tiny, "--read-noise", SR, "--shot-noise", SS)[0] == 0
    res = iio.imread(tmp_path / "g-denoised.png")
    assert res.dtype == np.uint16 and res.shape == (40, 40)
    # float TIFF: linear in and out, written as .tif, values equal the direct run
    ff = noisy_frames(8, 40, 48, dtype=np.float32)
    write_burst(tmp_path / "f", ff, ext=".tif")
    code, out = _cli(tmp_path / "f", "--model", tiny, "--read-noise", SR, "--shot-noise", SS)
    assert code == 0, out
    res = tifffile.imread(tmp_path / "f-denoised.tif")
    assert res.dtype == np.float32 and res.shape == (40, 48)
    np.testing.assert_allclose(res, _reference_run(tiny, ff[None])[0], atol=1e-5)


def test_jpeg_in_png_out_and_fp16_model(tiny, tmp_path):
    frames = noisy_frames(8, 40, 40, c=3)
    write_burst(tmp_path / "j", frames, ext=".jpg")
    assert _cli(tmp_path / "j", "--model", tiny, "--read-noise", SR, "--shot-noise", SS)[0] == 0
    assert iio.imread(tmp_path / "j-denoised.png").shape == (40, 40, 3)  # JPEG in: lossless PNG out
    # an fp16 model: the backend casts to the session's input type; agrees with fp32 to fp16 precision
    half = make_tiny_model(tmp_path / "half.onnx", fp16=True)
    ff = noisy_frames(8, 40, 48, dtype=np.float32)
    write_burst(tmp_path / "f", ff, ext=".tif")
    for m, name in ((tiny, "a.tif"), (half, "b.tif")):
        assert _cli(tmp_path / "f", "-o", tmp_path / name, "--model", m, "--read-noise", SR, "--shot-noise", SS)[0] == 0
    a, b = tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif")
    assert b.dtype == np.float32 and 0 < np.abs(a - b).max() <= 1e-2


def test_luts_round_trip():
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(from_linear(to_linear(codes, False), np.uint8, False), codes)
    codes16 = np.arange(0, 65536, 7, dtype=np.uint16)
    assert np.array_equal(from_linear(to_linear(codes16, False), np.uint16, False), codes16)


@pytest.mark.parametrize("tile", [8, 16, 24])
def test_tiled_equals_untiled(tiny, tmp_path, tile):
    frames = noisy_frames(8, 53, 70, dtype=np.float32)
    write_burst(tmp_path / "b", frames, ext=".tif")
    args = ["--model", tiny, "--read-noise", SR, "--shot-noise", SS]
    assert _cli(tmp_path / "b", "-o", tmp_path / "whole.tif", *args)[0] == 0
    assert _cli(tmp_path / "b", "-o", tmp_path / "tiled.tif", "--tile", tile, *args)[0] == 0
    whole, tiled = tifffile.imread(tmp_path / "whole.tif"), tifffile.imread(tmp_path / "tiled.tif")
    assert np.abs(whole - tiled).max() <= 1e-4


def test_self_ensemble_option_tiled_and_untiled(tiny, tmp_path):
    frames = noisy_frames(8, 40, 52, dtype=np.float32)
    write_burst(tmp_path / "b", frames, ext=".tif")
    args = ["--model", tiny, "--read-noise", SR, "--shot-noise", SS, "--self-ensemble", 8]
    code, out = _cli(tmp_path / "b", "-o", tmp_path / "whole.tif", *args)
    assert code == 0 and "self-ensemble" in out, out
    assert _cli(tmp_path / "b", "-o", tmp_path / "tiled.tif", "--tile", 16, *args)[0] == 0
    whole, tiled = tifffile.imread(tmp_path / "whole.tif"), tifffile.imread(tmp_path / "tiled.tif")
    # the reference: the model run directly on the 8 turns of the padded burst, turned back, averaged
    b = np.pad(frames[None], ((0, 0), (0, 0), (0, 0), (0, 4)), mode="reflect")
    session = ort.InferenceSession(str(tiny), providers=["CPUExecutionProvider"])
    outs = []
    for k in range(8):
        t = np.rot90(b, k % 4, axes=(2, 3))
        t = np.ascontiguousarray(t.transpose(0, 1, 3, 2) if k >= 4 else t)
        nm = np.sqrt(SR**2 + SS * np.maximum(t[:, :1], 0)).astype(np.float32)
        (o,) = session.run(["denoised"], {"burst": t, "noise_map": nm})
        outs.append(np.rot90(o.transpose(0, 1, 3, 2) if k >= 4 else o, -(k % 4), axes=(2, 3)))
    want = np.mean(outs, axis=0)[0, 0, :, :52]
    assert np.abs(whole - want).max() <= 1e-5
    assert np.abs(tiled - whole).max() <= 1e-5
    assert np.abs(whole - _reference_run(tiny, frames[None])[0]).max() > 1e-3  # not the plain run


def test_self_ensemble_keeps_windows_inside_a_non_square_limit(tiny):
    """An engine's profile takes windows up to (h, w) = max_hw; a turned window swaps h and w, so with
    --self-ensemble the plan must fit both orientations. A real ONNX Runtime backend given such a limit."""
    from runtime.backends import open_backend
    from runtime.denoise import denoise_frames
    from runtime.frames import Frame

    be, _ = open_backend(tiny, "ort-cpu")
    frames = [Frame(Path(f"f{i}.tif"), f[:, :, None]) for i, f in enumerate(noisy_frames(8, 40, 90, dtype=np.float32))]
    free = denoise_frames(frames, list(range(8)), be.info, be, True, [(SR, SS)], None, self_ensemble=8)
    shapes = []
    run = be.run
    be.run = lambda b, m: (shapes.append(b.shape[-2:]), run(b, m))[1]
    be.max_hw = (48, 96)  # the untiled 40x96 window fits as is, not turned
    limited = denoise_frames(frames, list(range(8)), be.info, be, True, [(SR, SS)], None, self_ensemble=8)
    assert shapes and all(h <= 48 and w <= 48 for h, w in shapes), shapes
    assert np.abs(limited - free).max() <= 1e-5  # tiling stays exact


def test_frame_selection_and_reference():
    kpn = ModelInfo(Path("m"), "kpn", 8, 0, 8, 8)
    stpan = ModelInfo(Path("m"), "st-pan", 5, 2, 8, 8)
    assert select_burst(12, 5, kpn, False)[0] == [5, 1, 2, 3, 4, 6, 7, 8]  # the 8 nearest frame 5
    assert "8 nearest" in select_burst(12, 5, kpn, False)[1]
    assert select_burst(5, 0, stpan, False)[0] == [1, 2, 0, 3, 4]
    assert select_burst(3, 1, kpn, True)[0] == [1, 1, 1, 1, 1, 1, 0, 2]  # reference first, padded with copies of it
    assert video_window(0, 10, stpan) == [2, 1, 0, 1, 2]  # mirrored at the start
    assert video_window(9, 10, stpan) == [7, 8, 9, 8, 7]
    assert video_window(4, 10, stpan) == [2, 3, 4, 5, 6]


def test_more_frames_reference_by_name_and_pad(tiny, tmp_path):
    frames = noisy_frames(10, 32, 32)
    write_burst(tmp_path / "b", frames)
    code, out = _cli(tmp_path / "b", "--model", tiny, "--read-noise", SR, "--shot-noise", SS, "--reference", "frame_9.png")
    assert code == 0 and "8 nearest" in out
    write_burst(tmp_path / "few", frames[:3])
    code, out = _cli(tmp_path / "few", "--model", tiny, "--read-noise", SR, "--shot-noise", SS)
    assert code == 2 and "needs 8 frames" in out and not (tmp_path / "few-denoised.png").exists()
    code, out = _cli(tmp_path / "few", "--model", tiny, "--read-noise", SR, "--shot-noise", SS, "--pad-frames")
    assert code == 0 and "repeating the reference" in out


def test_estimated_noise_is_printed(tiny, tmp_path):
    write_burst(tmp_path / "b", noisy_frames(8, 64, 64))
    code, out = _cli(tmp_path / "b", "--model", tiny)
    assert code == 0 and "estimated noise: sigma_r=" in out


def test_video_writes_a_folder(tmp_path):
    model = make_tiny_model(tmp_path / "st.onnx", frames=5, reference_index=2, family="st-pan")
    frames = noisy_frames(7, 32, 40)
    write_burst(tmp_path / "v", frames)
    code, out = _cli(tmp_path / "v", "--video", "--model", model, "--read-noise", SR, "--shot-noise", SS)
    assert code == 0, out
    outs = sorted((tmp_path / "v-denoised").iterdir())
    assert [p.name for p in outs] == [f"frame_{i}.png" for i in range(7)]
    # frame 3's output equals a burst run on frames 1..5 with frame 3 as the reference
    write_burst(tmp_path / "w", frames[1:6])
    assert _cli(tmp_path / "w", "--model", model, "--read-noise", SR, "--shot-noise", SS, "--reference", "2")[0] == 0
    assert np.array_equal(iio.imread(outs[3]), iio.imread(tmp_path / "w-denoised.png"))


def test_no_torch_in_a_full_run(tiny, tmp_path):
    write_burst(tmp_path / "b", noisy_frames(8, 32, 32, c=3))
    code = (
        "import sys; from pathlib import Path; from runtime.denoise import denoise_burst; "
        f"denoise_burst(Path({str(tmp_path / 'b')!r}), model=Path({str(tiny)!r})); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("NO-TORCH")


# --- bad input: one line naming the file and the problem, exit 2, nothing written, inputs unchanged ---

def _bad_cases(tmp: Path, tiny: Path):
    good = noisy_frames(8, 32, 32)
    cases = {}

    def burst(name, frames=good, ext=".png"):
        write_burst(tmp / name, frames, ext=ext)
        return tmp / name

    cases["missing folder"] = ([tmp / "nope"], "no such folder", "nope")
    (tmp / "empty").mkdir()
    cases["empty folder"] = ([tmp / "empty"], "empty", "empty")
    (tmp / "txt").mkdir()
    (tmp / "txt" / "notes.txt").write_text("hello")
    cases["non-image files only"] = ([tmp / "txt"], "no image files", "txt")
    b = burst("sizes")
    iio.imwrite(b / "frame_3.png", noisy_frames(1, 32, 40)[0])
    cases["frames of different sizes"] = ([b], "differs from", "frame_3.png")
    b = burst("trunc")
    data = (b / "frame_2.png").read_bytes()
    (b / "frame_2.png").write_bytes(data[: len(data) // 2])
    cases["truncated image"] = ([b], "cannot read", "frame_2.png")
    b = burst("single", good[:1])
    cases["single frame"] = ([b], "single frame", "frame_0.png")
    ff = noisy_frames(8, 32, 32, dtype=np.float32)
    ff[4, 3, 3] = np.nan
    b = burst("nan", ff, ext=".tif")
    cases["NaN in float TIFF"] = ([b], "NaN or Inf", "frame_4.tif")
    b = burst("self")
    cases["-o is an input"] = ([b, "-o", b / "frame_1.png"], "is an input frame", "frame_1.png")
    b = burst("noout")
    cases["output folder missing"] = ([b, "-o", tmp / "nodir" / "x.png"], "does not exist", "nodir")
    (tmp / "afile").write_text("x")
    cases["output parent is a file"] = ([b, "-o", tmp / "afile" / "x.png"], "not a folder", "afile")
    cases["16-bit burst to JPEG"] = ([burst("deep", noisy_frames(8, 32, 32, dtype=np.uint16)), "-o", tmp / "x.jpg"], "8-bit images only", "x.jpg")
    cases["missing model"] = ([b, "--model", tmp / "missing.onnx"], "no such model", "missing.onnx")
    (tmp / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 10)
    cases["corrupt model"] = ([b, "--model", tmp / "corrupt.onnx"], "not a valid ONNX model", "corrupt.onnx")
    nometa = make_tiny_model(tmp / "nometa.onnx")
    import onnx

    m = onnx.load(str(nometa))
    del m.metadata_props[:]
    onnx.save(m, str(nometa))
    cases["model without kpn metadata"] = ([b, "--model", nometa], "not a kpn-deploy model", "nometa.onnx")
    cases["self-ensemble of 3 turns"] = ([b, "--self-ensemble", 3], "choose 1 (off), 4", "--self-ensemble 3")
    return cases


def test_bad_input(tiny, tmp_path):
    cases = _bad_cases(tmp_path, tiny)
    for name, (args, message, names) in cases.items():
        before = _snapshot(tmp_path)
        extra = [] if "--model" in [str(a) for a in args] else ["--model", tiny]
        code, out = _cli(*args, *extra, "--read-noise", SR, "--shot-noise", SS)
        assert code == 2, (name, out)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, out)
        assert message in lines[0] and names in lines[0], (name, lines[0])
        assert "Traceback" not in out
        assert _snapshot(tmp_path) == before, name  # nothing written, nothing changed


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the not-a-folder case covers it")
def test_unwritable_output_folder(tiny, tmp_path):
    write_burst(tmp_path / "b", noisy_frames(8, 32, 32))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, out = _cli(tmp_path / "b", "-o", ro / "x.png", "--model", tiny)
        assert code == 2 and "not writable" in out and not list(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_default_model_missing_is_one_line(tmp_path, monkeypatch):
    import runtime.model as rm

    write_burst(tmp_path / "b", noisy_frames(8, 32, 32))
    monkeypatch.setattr(rm, "MODELS_DIR", tmp_path / "models")
    code, out = _cli(tmp_path / "b")
    assert code == 2 and "default model is not installed" in out and "--model" in out


def test_default_model_comes_from_the_manifest(tmp_path, monkeypatch):
    import runtime.model as rm

    models = tmp_path / "models"
    models.mkdir()
    (models / "MANIFEST.json").write_text(json.dumps({"default": "b", "models": [
        {"name": "a", "onnx": "a.onnx"}, {"name": "b", "onnx": "b.onnx"}]}))
    monkeypatch.setattr(rm, "MODELS_DIR", models)
    with pytest.raises(rm.UserError, match="b.onnx: the default model named in MANIFEST.json is not installed"):
        rm.resolve_model(None)
    (models / "b.onnx").write_bytes(b"x")
    assert rm.resolve_model(None) == models / "b.onnx"
    (models / "MANIFEST.json").write_text("{")
    with pytest.raises(rm.UserError, match="unreadable model manifest"):
        rm.resolve_model(None)
