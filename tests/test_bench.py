"""kpn-bench: the latency and quality commands on tiny real configurations (no mocks), and the helpers.

Speed itself is not asserted (that belongs in the reports); the tests check that every figure is
consistent with its definition and that the files are complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
from typer.testing import CliRunner  # noqa: E402

from benchmarks.cli import app  # noqa: E402
from benchmarks.common import arrange_burst, summarize  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kpn_ckpt(tmp_path_factory) -> Path:
    """A freshly initialised small KPN checkpoint with its ONNX export beside it (reused by kpn-bench)."""
    from export.onnx_export import export_onnx
    from train.checkpoint import save_checkpoint
    from train.models import build_model, default_config

    d = tmp_path_factory.mktemp("bench-model")
    torch.manual_seed(0)
    cfg = default_config("kpn", "small")
    ckpt = d / "kpn.pt"
    # as a run of 2 steps at downsample 2, then a stage at 1 (what the report's "why" sentence reads)
    stages = [{"from_step": 1, "downsample": 1, "previous": 2}]
    save_checkpoint(ckpt, build_model(cfg), cfg, step=2, train_args={"batch_size": 2, "crop": 16, "downsample": 1, "stages": stages})
    export_onnx(ckpt, d / "kpn.onnx")
    return ckpt


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    return result


def _tensorrt_importable() -> bool:
    try:
        from export import trt  # noqa: F401
    except ImportError:
        return False
    return True


def test_summarize_definitions():
    times = [0.010, 0.030, 0.020, 0.050, 0.040]
    s = summarize(times, pixels=512 * 512)
    assert s["median_ms"] == pytest.approx(30.0)
    assert s["p90_ms"] == pytest.approx(1e3 * float(np.percentile(times, 90)))
    assert s["min_ms"] == pytest.approx(10.0)
    assert s["mp_per_s"] == pytest.approx(512 * 512 / 1e6 / 0.030)
    assert s["ns_per_pixel"] == pytest.approx(0.030 * 1e9 / (512 * 512))
    assert s["median_ms"] <= s["p90_ms"]


def test_arrange_burst_puts_reference_at_index():
    burst = np.arange(8)[:, None, None] * np.ones((8, 2, 2))
    st = arrange_burst(burst, 5, 2)  # ST-PAN: 5 frames, reference in the middle
    assert st[:, 0, 0].tolist() == [1, 2, 0, 3, 4]
    assert arrange_burst(burst, 1, 0)[:, 0, 0].tolist() == [0]
    assert arrange_burst(burst, 8, 0)[:, 0, 0].tolist() == list(range(8))


def test_psnr_helper_matches_formula():
    from benchmarks.quality import psnr
    from train.metrics import srgb_to_linear

    rng = np.random.default_rng(0)
    clean_g = rng.uniform(0.1, 0.8, (32, 32))
    # an error of exactly 0.01 in gamma space everywhere: PSNR = 10 log10(1 / 0.01^2) = 40 dB
    assert psnr(srgb_to_linear(clean_g + 0.01), srgb_to_linear(clean_g)) == pytest.approx(40.0, abs=1e-6)
    noisy_g = np.clip(clean_g + rng.normal(0, 0.05, clean_g.shape), 0, 1)
    mse = np.mean((noisy_g - clean_g) ** 2)
    assert psnr(srgb_to_linear(noisy_g), srgb_to_linear(clean_g)) == pytest.approx(10 * math.log10(1 / mse), abs=1e-6)


def test_latency_command(kpn_ckpt, tmp_path):
    out = tmp_path / "lat"
    backends = ["torch", "torch-cuda", "torch-cuda-fp16", "ort-cpu", "trt-fp32", "trt-fp16"]
    r = _invoke(["latency", "--models", str(kpn_ckpt), "--backends", ",".join(backends), "--sizes", "32,64",
                 "--repeat", "3", "--warmup", "1", "--threads", "2", "--op-sizes", "16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "latency.json").read_text())
    assert {"machine", "config", "models", "unavailable", "scaling", "ops", "model_info"} <= set(data)
    assert data["machine"]["cpu_count"] >= 1 and "onnxruntime" in data["machine"]["versions"]
    rows = data["models"]
    assert {(row["backend"], row["size"]) for row in rows} >= {("torch", 32), ("torch", 64), ("ort-cpu", 32), ("ort-cpu", 64)}
    for row in rows:
        assert row["runs"] == 3
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["mp_per_s"] == pytest.approx(row["pixels"] / 1e6 / (row["median_ms"] / 1e3), rel=1e-9)
        assert row["pixels"] == row["size"] ** 2
        assert row["peak_rss_mb"] > 50  # the interpreter with torch and onnxruntime loaded
    # every requested backend is either measured or listed with its reason
    for b in backends:
        measured = any(row["backend"] == b for row in rows)
        listed = [u for u in data["unavailable"] if u["backend"] == b]
        assert measured or (listed and all(u["reason"] for u in listed)), b
    if not _tensorrt_importable():
        assert {u["backend"] for u in data["unavailable"]} >= {"trt-fp32", "trt-fp16"}
    if not torch.cuda.is_available():
        gpu_reasons = [u["reason"] for u in data["unavailable"] if u["backend"].startswith("torch-cuda")]
        assert len(gpu_reasons) == 2 and all("no CUDA GPU" in r for r in gpu_reasons)
    else:
        assert {(row["backend"], row["size"]) for row in rows} >= {("torch-cuda", 64), ("torch-cuda-fp16", 64)}
    assert {row["op"] for row in data["ops"]} == {"AdaptiveConv", "TrilinearSample"}
    assert all(row["max_abs_diff"] < 1e-4 for row in data["ops"])
    # the plugin's kernel math (CPU build of the same source the CUDA kernels compile) beside them
    from plugins import cpu_build

    if cpu_build.find_cxx() and cpu_build.find_cuda_include():
        assert all(row["plugin_cpu_ms"] > 0 and row["plugin_cpu_max_abs_diff"] < 1e-4 for row in data["ops"])
    else:
        assert any(u["face"].startswith("plugin math") for u in data["ops_unavailable"])
    md = (out / "latency.md").read_text()
    assert "| model | backend | size | median ms | p90 ms | MP/s |" in md
    assert "not available:" in md and "speed-up vs torch" in md
    png = (out / "latency.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000


def test_latency_rejects_unknown_backend(kpn_ckpt, tmp_path):
    r = _invoke(["latency", "--models", str(kpn_ckpt), "--backends", "torch,tensorflow", "--sizes", "32",
                 "--out", str(tmp_path / "x")])
    assert r.exit_code != 0
    assert "unknown tensorflow" in r.output
    assert not (tmp_path / "x" / "latency.json").exists()


def test_missing_model_is_one_line_error(tmp_path):
    r = _invoke(["quality", "--models", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "q")])
    assert r.exit_code != 0
    assert "nope.pt: no such file" in r.output
    assert "Traceback" not in r.output


def test_quality_command(kpn_ckpt, tmp_path):
    out = tmp_path / "q"
    r = _invoke(["quality", "--models", str(kpn_ckpt), "--gains", "1,4", "--crop", "32", "--test-crops", "2",
                 "--tune-crops", "1", "--threads", "2", "--self-ensemble", "8,4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "quality.json").read_text())
    res = data["results"]
    names = {"Noisy reference", "Burst mean", "Burst mean, aligned by the true motion (oracle)", "OpenCV NLM multi-frame",
             "BM3D (reference frame)", "kpn (PyTorch)", "kpn (runtime ort-cpu)", "kpn (runtime ort-cpu, self-ensemble x4)",
             "kpn (runtime ort-cpu, self-ensemble x8)"}
    assert set(res) == names
    for name in names:
        for g in ("gain1", "gain4"):
            assert len(res[name][g]["psnr_per_burst"]) == 2
            assert res[name][g]["psnr"] == pytest.approx(np.mean(res[name][g]["psnr_per_burst"]))
            assert -1 <= res[name][g]["ssim"] <= 1
        assert data["time_per_mp"][name]["seconds_per_mp"] > 0
    # Noise of variance v per frame; the mean of 8 frames has v/8 but is blurred by the misalignment,
    # an error that does not grow with the gain: so from gain 1 to gain 4 the mean loses far less PSNR
    # than the noisy frame, and at gain 1 (little noise) the misalignment makes it worse than the frame.
    drop = {m: res[m]["gain1"]["psnr"] - res[m]["gain4"]["psnr"] for m in ("Burst mean", "Noisy reference")}
    assert drop["Burst mean"] < drop["Noisy reference"] - 5
    assert res["Burst mean"]["gain1"]["psnr"] < res["Noisy reference"]["gain1"]["psnr"]
    # aligned by the true motion, the mean gains on the noisy frame where the noise dominates (gain 4)
    oracle = res["Burst mean, aligned by the true motion (oracle)"]
    assert oracle["gain4"]["psnr"] > res["Noisy reference"]["gain4"]["psnr"] + 3
    assert oracle["gain4"]["psnr"] > res["Burst mean"]["gain4"]["psnr"] + 3
    # the classical baselines, tuned on other images, still improve on the noisy frame at low noise
    assert res["BM3D (reference frame)"]["gain1"]["psnr"] > res["Noisy reference"]["gain1"]["psnr"]
    # tuning recorded: the chosen parameters are the best of the grid
    for method in ("OpenCV NLM multi-frame", "BM3D (reference frame)"):
        for g, t in data["tuning"][method].items():
            assert t["psnr"] == max(s["psnr"] for s in t["grid"])
            assert t["params"] in [s["params"] for s in t["grid"]]
    assert set(data["source"]["test_images"]).isdisjoint(data["source"]["tuning_images"])
    # export loses nothing visible
    (parity,) = data["model_parity"]
    assert parity["max_abs_diff"] < 1e-4 and parity["max_psnr_diff_db"] < 0.01
    md = (out / "quality.md").read_text()
    assert "| method | gain 1 PSNR | gain 1 SSIM | gain 4 PSNR | gain 4 SSIM | s/MP |" in md
    assert "AME-KPN, 5x5 | 39.92 | 0.9776" in md
    # the sentence on why the paper's numbers differ states how the model was trained, from its checkpoint
    (model,) = data["models"]
    n_params = sum(t.numel() for t in torch.load(kpn_ckpt, weights_only=True)["model"].values())
    assert model["parameters"] == n_params and model["training_step"] is not None
    assert f"kpn (small width, {n_params / 1e6:.2f}M parameters, {model['training_step']} steps" in md
    assert model["training_downsample"] == 2
    assert "2 steps of 2 bursts of 16x16 at downsample 2 on scikit-image's bundled photographs, from step 1 at downsample 1" in md
    assert (out / "quality_crops.png").read_bytes().startswith(PNG_MAGIC)
    # the paired comparison with the better classical baseline is in the JSON and the report
    paired = data["against_best_baseline"]
    assert paired["baseline"] in ("OpenCV NLM multi-frame", "BM3D (reference frame)") and paired["crops"] == 2
    assert set(paired["rows"]) == {n for n in names if n.startswith("kpn")}
    row = paired["rows"]["kpn (PyTorch)"]
    gains_mean = lambda m: np.mean([res[m][g]["psnr"] for g in ("gain1", "gain4")])  # noqa: E731
    assert row["mean_db"] == pytest.approx(gains_mean("kpn (PyTorch)") - gains_mean(paired["baseline"]))
    assert f"## Against the best classical baseline, {paired['baseline']} (paired, 2 test crops)" in md
    # 2 crops spread over the 3 builtin validation images: one crop of each of the first two, so counted
    # by photograph the figures are the crops'
    assert data["source"]["test_crop_images"] == data["source"]["test_images"][:2] and paired["images"] == 2
    assert row["image_mean_db"] == pytest.approx(row["mean_db"]) and row["image_ci95_db"] == pytest.approx(row["ci95_db"])


def test_quality_rejects_unknown_motion(kpn_ckpt, tmp_path):
    r = _invoke(["quality", "--models", str(kpn_ckpt), "--motion", "teleport", "--out", str(tmp_path / "q")])
    assert r.exit_code != 0 and "--motion teleport: choose paper, walk, large, still" in r.output
    assert not (tmp_path / "q" / "quality.json").exists()


def test_quality_rejects_a_bad_ensemble_size(kpn_ckpt, tmp_path):
    r = _invoke(["quality", "--models", str(kpn_ckpt), "--self-ensemble", "4,2", "--out", str(tmp_path / "q")])
    assert r.exit_code != 0 and "--self-ensemble 4,2: each value must be 4" in r.output
    assert not (tmp_path / "q").exists()


def test_report_words_each_training_stage():
    from benchmarks.quality import why_numbers_differ

    model = {"name": "m", "width": "small", "training_step": 12500, "training_batch_size": 8, "training_crop": 64,
             "training_downsample": 2, "training_stages": [
                 {"from_step": 4500, "set": {"downsample": 1}},
                 {"from_step": 10250, "set": {"still_fraction": 0.5}},
                 {"from_step": 12500, "set": {"augment": "dihedral", "lr_factor": 0.1}},
                 {"from_step": 16250, "set": {"loss_scale": "log"}}]}
    sentence = why_numbers_differ([model])
    for words in ("12500 steps of 8 bursts of 64x64 at downsample 2", "from step 4500 at downsample 1",
                  "from step 10250 with 50% still bursts", "from step 12500 with dihedral augmentation and at 0.1x the learning rate",
                  "from step 16250 with the per-burst log loss"):
        assert words in sentence, (words, sentence)
    assert "kernels" not in sentence  # a model without kernels (ST-PAN/PAN) says nothing of them
    assert "with the per-burst log loss, projected kernels" in why_numbers_differ([{**model, "kernels": "projected"}])


def test_aligned_mean_undoes_the_generators_motion():
    """The oracle row: frames made by train.data.make_burst with known offsets, moved back by them. Whole
    output pixels (offsets that are multiples of the downsampling) come back exactly where covered;
    quarter pixels come back close on a smooth image, far closer than the unaligned mean; no motion is
    the plain mean."""
    from benchmarks.quality import aligned_mean
    from train.data import BIG_JITTER, make_burst

    yy, xx = np.mgrid[0:400, 0:400] / 400.0
    smooth = 0.2 + 0.3 * np.sin(15 * xx) * np.cos(12 * yy) ** 2 + 0.2 * xx
    rng = np.random.default_rng(0)
    whole = np.array([[0, 0], [4, -8], [-12, 4], [8, 8]])
    burst, _, clean = make_burst(smooth, 4, 1e-9, 1e-12, rng, 0, 32, 4, offsets=whole, position=(BIG_JITTER, BIG_JITTER))
    out = aligned_mean(burst, whole, 4)
    np.testing.assert_allclose(out[4:-4, 4:-4], clean[0, 4:-4, 4:-4], atol=1e-6)
    quarter = np.array([[0, 0], [1, -3], [-2, 5], [7, 2]])
    burst, _, clean = make_burst(smooth, 4, 1e-9, 1e-12, rng, 0, 32, 4, offsets=quarter, position=(BIG_JITTER, BIG_JITTER))
    inner = (slice(3, -3), slice(3, -3))  # the spline's edge handling aside
    err_aligned = np.abs(aligned_mean(burst, quarter, 4) - clean[0])[inner].max()
    err_plain = np.abs(burst.mean(axis=0) - clean[0])[inner].max()
    assert err_aligned < 1e-3 and err_aligned < err_plain / 20, (err_aligned, err_plain)
    still = rng.random((3, 8, 8))
    np.testing.assert_allclose(aligned_mean(still, np.zeros((3, 2)), 4), still.mean(axis=0), atol=1e-12)


def test_against_best_baseline_pairs_crops_across_gains():
    """Mean, standard error and 95% interval of a model's PSNR difference from the better baseline,
    against the formulas written out by hand for 3 crops at 2 gains."""
    from benchmarks.common import BenchError
    from benchmarks.quality import BM3D, NLM, NOISY, against_best_baseline

    def rows(g1, g2):
        return {"gain1": {"psnr": float(np.mean(g1)), "psnr_per_burst": g1},
                "gain2": {"psnr": float(np.mean(g2)), "psnr_per_burst": g2}}

    results = {
        NOISY: rows([20.0, 20.0, 20.0], [15.0, 15.0, 15.0]),
        NLM: rows([30.0, 30.0, 30.0], [25.0, 25.0, 25.0]),  # mean 27.5: under BM3D, so not the baseline
        BM3D: rows([32.0, 30.0, 34.0], [26.0, 27.0, 25.0]),  # mean 29.0
        "m": rows([33.0, 31.0, 33.0], [27.0, 28.0, 24.0]),
    }
    paired = against_best_baseline(results, [1, 2])
    assert paired["baseline"] == BM3D and paired["crops"] == 3 and set(paired["rows"]) == {"m"}
    # per crop, mean over the two gains of m - BM3D: (1+1)/2, (1+1)/2, (-1-1)/2 = 1, 1, -1
    per_crop = [1.0, 1.0, -1.0]
    mean = sum(per_crop) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in per_crop) / 2)
    se = sd / math.sqrt(3)
    t975_df2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)
    row = paired["rows"]["m"]
    assert row["mean_db"] == pytest.approx(mean)
    assert row["standard_error_db"] == pytest.approx(se)
    assert row["ci95_db"] == pytest.approx([mean - t975_df2 * se, mean + t975_df2 * se])
    assert row["crops_better"] == 2
    # one crop: a mean, but no error or interval
    one = {k: {g: {"psnr": v[g]["psnr_per_burst"][0], "psnr_per_burst": v[g]["psnr_per_burst"][:1]} for g in v}
           for k, v in results.items()}
    row1 = against_best_baseline(one, [1, 2])["rows"]["m"]
    assert row1["mean_db"] == pytest.approx(1.0) and row1["standard_error_db"] is None and row1["ci95_db"] is None
    assert "image_mean_db" not in row and paired["images"] is None
    # with the photograph of each crop: crops 0 and 1 of photograph a (mean 1), crop 2 of b (-1); the
    # photographs are the unit, so the mean is 0 (not the crops' 1/3), and its interval is t(1 df) wide
    by_image = against_best_baseline(results, [1, 2], ["a", "a", "b"])
    assert by_image["images"] == 2
    row = by_image["rows"]["m"]
    assert row["mean_db"] == pytest.approx(mean)  # the crop-level figures do not change
    se_images = math.sqrt(((1 - 0) ** 2 + (-1 - 0) ** 2) / 1) / math.sqrt(2)
    t975_df1 = 12.706204736174698  # Student t, 97.5% quantile, 1 degree of freedom (tables)
    assert row["image_mean_db"] == pytest.approx(0.0) and row["image_standard_error_db"] == pytest.approx(se_images)
    assert row["image_ci95_db"] == pytest.approx([-t975_df1 * se_images, t975_df1 * se_images])
    assert row["images_better"] == 1
    with pytest.raises(BenchError, match="2 crop image names for 3 crops"):
        against_best_baseline(results, [1, 2], ["a", "b"])
    # no classical baseline run: nothing to compare with
    assert against_best_baseline({NOISY: results[NOISY], "m": results["m"]}, [1, 2]) is None


def test_quality_on_a_heldout_folder_tests_every_image_and_tunes_elsewhere(kpn_ckpt, tmp_path):
    """--images heldout:FOLDER: every image of FOLDER is a test image (none is split off for tuning);
    the classical baselines are tuned on the builtin training split."""
    import imageio.v3 as iio
    import skimage.data

    folder = tmp_path / "held"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    smooth = lambda: (np.cumsum(rng.normal(size=(200, 240, 3)), axis=1) % 256).astype(np.uint8)  # noqa: E731
    iio.imwrite(folder / "a.png", smooth())
    iio.imwrite(folder / "sub" / "b.png", smooth())
    out = tmp_path / "q"
    r = _invoke(["quality", "--models", str(kpn_ckpt), "--images", f"heldout:{folder}", "--gains", "2", "--crop", "32",
                 "--test-crops", "2", "--tune-crops", "1", "--threads", "2", "--no-bm3d", "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "quality.json").read_text())
    assert data["source"]["test_images"] == ["a.png", "sub/b.png"]
    assert data["source"]["test_crop_images"] == ["a.png", "sub/b.png"]  # one crop each
    assert data["source"]["tuning_images"] and all(n.startswith("builtin:") for n in data["source"]["tuning_images"])
    assert len(data["results"]["kpn (PyTorch)"]["gain2"]["psnr_per_burst"]) == 2
    md = (out / "quality.md").read_text()
    assert f"from all 2 photographs of `{folder}` (a.png, sub/b.png), held out: never trained or tuned on" in md
    r = _invoke(["quality", "--models", str(kpn_ckpt), "--images", f"heldout:{tmp_path / 'none'}", "--out", str(out)])
    assert r.exit_code != 0 and f"{tmp_path / 'none'}: no such data folder" in r.output
    # a photograph training has seen is not held out, under any name
    iio.imwrite(folder / "sub" / "mine.png", skimage.data.rocket())
    r = _invoke(["quality", "--models", str(kpn_ckpt), "--images", f"heldout:{folder}", "--out", str(tmp_path / "q2")])
    assert r.exit_code != 0
    assert f"{folder / 'sub' / 'mine.png'}: the same pixels as builtin:rocket, which training or validation used: not held out" in r.output
    assert not (tmp_path / "q2" / "quality.json").exists()
