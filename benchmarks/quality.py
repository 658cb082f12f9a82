"""`kpn-bench quality`: PSNR/SSIM in gamma space per gain, laid out like AME-KPN Table 1.

Test bursts come from the project's generator (`train.data.validation_set`, AME-KPN sec. 3.1, the
four gains of Table 1) on the VALIDATION split of the image source (`train.data.load_source`, the same
hash split `kpn-train` uses, so the images were never trained on). Each test burst has `frames`
frames with the reference first; a model takes the first N frames it needs, with the reference moved
to its `reference_index` (the generator's "paper" motion model draws every frame's offset
independently, so this is the distribution the model was trained on).

Methods, all scored by `train.metrics.psnr_gamma` / `ssim_gamma` against the clean reference:
- the noisy reference frame and the plain burst mean (no alignment);
- the burst mean aligned by the true motion, an oracle no real method is: each frame moved back by the
  offset it was made with (cubic spline, sub-pixel), each pixel the mean of the frames that cover it.
  It shows what alignment and averaging alone can give on these bursts (with sub-pixel motion, not
  the ~9 dB of 8 aligned frames: each moved frame carries interpolation error);
- OpenCV `fastNlMeansDenoisingMulti` on the 8-bit sRGB-encoded frames (reference in the middle of
  a temporal window of `tws` frames) and BM3D (`bm3d` package) on the sRGB-encoded reference frame.
  Both get their filter strength as a multiple of the noise standard deviation in gamma space
  (median over pixels) estimated from the noise map (the same information the models receive); the multiple (and NLM's
  temporal window) is chosen per gain by grid search on TUNING bursts drawn from the training split
  (disjoint from the test images), and the grid with every score is recorded in quality.json;
- each model in PyTorch (checkpoint) and through the runtime (the exported ONNX model run by
  `runtime.backends.open_backend`, default ONNX Runtime CPU); with `--self-ensemble 4` or `8` also
  through the runtime averaged over that many turns of the burst (`runtime.symmetry.self_ensemble`,
  what `python -m runtime.denoise --self-ensemble N` runs; `4,8` gives both rows).

Time per megapixel: wall time of each method's calls over all test bursts / output megapixels, after
one untimed warm-up call (the classical methods' tuning is not counted).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .common import (
    BenchError,
    ModelSpec,
    arrange_burst,
    ensure_onnx,
    machine_info,
    save_figure,
    write_json,
    write_text,
)

# AME-KPN paper, Table 1 (their synthetic test set; PSNR dB / SSIM per gain), for reference only.
PAPER_TABLE1: dict[str, list[tuple[float, float]]] = {
    "Reference frame": [(33.98, 0.8625), (26.94, 0.6286), (21.50, 0.3980), (16.44, 0.2027)],
    "KPN, 5x5": [(37.94, 0.9767), (35.75, 0.9524), (33.70, 0.9223), (30.99, 0.8603)],
    "KPN, 21x21": [(37.17, 0.9754), (35.87, 0.9523), (33.47, 0.9204), (30.61, 0.8573)],
    "MKPN": [(38.29, 0.9719), (35.82, 0.9489), (35.43, 0.9122), (30.66, 0.8586)],
    "AME-KPN, 5x5": [(39.92, 0.9776), (37.02, 0.9561), (35.46, 0.9295), (32.29, 0.8663)],
}

NLM_STRENGTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
NLM_WINDOWS = (3, 5, 7)
BM3D_STRENGTHS = (0.5, 0.75, 1.0, 1.5, 2.0)
NOISY, MEAN, NLM, BM3D = "Noisy reference", "Burst mean", "OpenCV NLM multi-frame", "BM3D (reference frame)"
ALIGNED_MEAN = "Burst mean, aligned by the true motion (oracle)"
HELDOUT_PREFIX = "heldout:"  # --images heldout:FOLDER: all of FOLDER tests (e.g. `python -m train.photos --set wallpapers`)


# ----------------------------------------------------------------------------------------------------
# Metrics and classical methods


def psnr(pred_linear: np.ndarray, clean_linear: np.ndarray) -> float:
    from train.metrics import psnr_gamma

    return psnr_gamma(pred_linear, clean_linear)


def ssim(pred_linear: np.ndarray, clean_linear: np.ndarray) -> float:
    from train.metrics import ssim_gamma

    return ssim_gamma(np.asarray(pred_linear).squeeze(), np.asarray(clean_linear).squeeze())


def _srgb(x: np.ndarray) -> np.ndarray:
    from train.metrics import linear_to_srgb

    return linear_to_srgb(np.clip(x, 0.0, 1.0).astype(np.float64))


def _linear(g: np.ndarray) -> np.ndarray:
    from train.metrics import srgb_to_linear

    return srgb_to_linear(np.clip(g, 0.0, 1.0).astype(np.float64)).astype(np.float32)


def gamma_sigma(reference: np.ndarray, noise_map: np.ndarray) -> float:
    """Typical noise standard deviation after the sRGB gamma: the median over pixels of the linear
    noise map times the slope of the gamma at the (5x5 box-smoothed) noisy reference (first-order
    propagation). The median, not the RMS: the gamma's steep slope in dark pixels would otherwise
    dominate, and the best filter strength then varied far more between images."""
    from scipy.ndimage import uniform_filter

    y = np.maximum(uniform_filter(np.asarray(reference, np.float64), 5, mode="reflect"), 0.0)
    slope = np.where(y <= 0.0031308, 12.92, (1.055 / 2.4) * np.maximum(y, 0.0031308) ** (1 / 2.4 - 1))
    return float(np.median(slope * np.asarray(noise_map, np.float64).squeeze()))


def nlm_denoise(burst: np.ndarray, noise_map: np.ndarray, strength: float, window: int) -> np.ndarray:
    """cv2.fastNlMeansDenoisingMulti on 8-bit sRGB frames; the reference (frame 0) in the middle of a
    temporal window of `window` frames; h = strength * 255 * gamma-space sigma."""
    import cv2

    if window % 2 == 0 or window > burst.shape[0]:
        raise ValueError(f"NLM temporal window {window} must be odd and <= {burst.shape[0]} frames")
    u8 = np.round(_srgb(burst) * 255.0).astype(np.uint8)
    half = window // 2
    others = list(range(1, window))
    order = others[:half] + [0] + others[half:]
    h = float(strength * 255.0 * gamma_sigma(burst[0], noise_map))
    out = cv2.fastNlMeansDenoisingMulti([np.ascontiguousarray(u8[i]) for i in order], half, window, None, h, 7, 21)
    return _linear(out.astype(np.float64) / 255.0)


def bm3d_denoise(burst: np.ndarray, noise_map: np.ndarray, strength: float) -> np.ndarray:
    """BM3D (both stages) on the sRGB-encoded reference frame, sigma = strength * gamma-space sigma."""
    import bm3d

    g = _srgb(burst[0])
    out = bm3d.bm3d(g, sigma_psd=strength * gamma_sigma(burst[0], noise_map))
    return _linear(np.asarray(out))


# ----------------------------------------------------------------------------------------------------
# Data


def aligned_mean(burst: np.ndarray, offsets: np.ndarray, downsample: int) -> np.ndarray:
    """The oracle ALIGNED_MEAN: burst [N, h, w] whose frame i was cut `offsets[i]` (dy, dx) full-resolution
    pixels from the reference window (train.data.make_burst) and box-downsampled by `downsample`, so its
    pixel p shows the reference's p + offsets[i] / downsample. Frame i moved back by that (cubic spline),
    then per pixel the mean of the frames whose moved support covers it (the reference always does)."""
    from scipy.ndimage import shift

    moved = np.stack([shift(frame.astype(np.float64), np.asarray(off, np.float64) / downsample, order=3,
                            mode="constant", cval=np.nan) for frame, off in zip(burst, offsets)])
    return np.nanmean(moved, axis=0)


def _gain_name(g: int) -> str:
    return f"gain{g}"


def load_bursts(images: str, gains: list[int], crop: int, test_crops: int, tune_crops: int, frames: int,
                seed: int, val_fraction: float, split_seed: int, need_tuning: bool,
                motion: str = "paper") -> tuple[dict, dict, dict, np.ndarray]:
    """-> (test {gain: (burst [V,N,h,w], nmap [V,1,h,w], clean [V,1,h,w]) numpy}, tuning (same), source info,
    the test bursts' frame offsets [V,N,2] in full-resolution pixels)."""
    from train.data import (MOTION_MODELS, DataError, SourceImage, VALIDATION_GAINS, list_images, load_image, load_source,
                            refuse_seen, validation_bursts)

    for g in gains:
        if _gain_name(g) not in VALIDATION_GAINS:
            raise BenchError(f"--gains: {g} is not one of AME-KPN Table 1's gains (1, 2, 3, 4)")
    if motion not in MOTION_MODELS:
        raise BenchError(f"--motion {motion}: choose {', '.join(MOTION_MODELS)}")
    if test_crops < 1 or crop < 8:
        raise BenchError("--test-crops must be >= 1 and --crop >= 8")
    try:
        if images.startswith(HELDOUT_PREFIX):  # every image tests; the baselines tune on the builtin training split
            folder = Path(images[len(HELDOUT_PREFIX):])
            train_imgs = load_source("builtin", val_fraction, split_seed)[0]
            files = list_images(folder)
            val_imgs = [SourceImage(str(f.relative_to(folder)), load_image(f).pixels) for f in files]
            refuse_seen(files, val_imgs)
        else:
            train_imgs, val_imgs = load_source("builtin" if images == "builtin-test" else images, val_fraction, split_seed)
    except DataError as exc:
        raise BenchError(str(exc)) from None

    def make(imgs, count, s):
        """-> ({gain: bursts}, offsets, each burst's image name): `per` crops of each image in turn."""
        per = math.ceil(count / len(imgs))
        vs, offsets = validation_bursts(imgs, frames, 0, crop, per_image=per, seed=s, motion=motion)
        names = [im.name for im in imgs for _ in range(per)][:count]
        return {g: tuple(t.numpy()[:count] for t in vs[_gain_name(g)]) for g in gains}, offsets[:count], names

    test, test_offsets, test_crop_images = make(val_imgs, test_crops, seed)
    tune: dict = {}
    tune_names: list[str] = []
    if need_tuning and tune_crops > 0:
        step = max(len(train_imgs) / tune_crops, 1.0)
        chosen = [train_imgs[int(i * step)] for i in range(min(tune_crops, len(train_imgs)))]
        tune = make(chosen, tune_crops, seed + 1)[0]
        tune_names = [im.name for im in chosen]
    info = {
        "images": images,
        "motion": motion,
        "test_images": [im.name for im in val_imgs],
        "test_crop_images": test_crop_images,
        "tuning_images": tune_names,
        "train_split_size": len(train_imgs),
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "gains": {_gain_name(g): dict(zip(("sigma_r", "sigma_s"), VALIDATION_GAINS[_gain_name(g)])) for g in gains},
    }
    return test, tune, info, test_offsets


# ----------------------------------------------------------------------------------------------------
# Tuning


def tune(method: str, data: dict, gains: list[int], frames: int, log: Callable[[str], None]) -> dict:
    """Grid search per gain on the tuning bursts -> {gain: {"params": best, "psnr": best, "grid": [...]}}."""
    if method == NLM:
        grid = [{"strength": s, "window": w} for w in NLM_WINDOWS if w <= frames for s in NLM_STRENGTHS]
        fn = lambda b, m, p: nlm_denoise(b, m, p["strength"], p["window"])  # noqa: E731
    else:
        grid = [{"strength": s} for s in BM3D_STRENGTHS]
        fn = lambda b, m, p: bm3d_denoise(b, m, p["strength"])  # noqa: E731
    out = {}
    for g in gains:
        burst, nmap, clean = data[g]
        scores = []
        for p in grid:
            vals = [psnr(fn(burst[i], nmap[i], p), clean[i]) for i in range(len(burst))]
            scores.append({"params": p, "psnr": float(np.mean(vals))})
        best = max(scores, key=lambda s: s["psnr"])
        out[_gain_name(g)] = {"params": best["params"], "psnr": best["psnr"], "grid": scores}
        log(f"tuned {method} at gain {g}: {best['params']} (tuning PSNR {best['psnr']:.2f} dB)")
    return out


# ----------------------------------------------------------------------------------------------------
# Evaluation


def _evaluate(name: str, fn: Callable[[int, int], np.ndarray], test: dict, gains: list[int], results: dict,
              timing: dict, outputs: dict, log: Callable[[str], None]) -> None:
    """fn(gain, i) -> denoised linear [h, w] of test burst i; records PSNR/SSIM per gain and time per MP."""
    per_gain = {}
    seconds, pixels = 0.0, 0
    fn(gains[0], 0)  # warm-up (first-call allocation, session start): not timed
    for g in gains:
        burst, nmap, clean = test[g]
        ps, ss = [], []
        for i in range(len(burst)):
            t0 = time.perf_counter()
            out = np.asarray(fn(g, i), dtype=np.float32).reshape(clean[i].shape[-2:])
            seconds += time.perf_counter() - t0
            pixels += out.size
            ps.append(psnr(out, clean[i]))
            ss.append(ssim(out, clean[i]))
            outputs.setdefault(name, {}).setdefault(g, []).append(out)
        per_gain[_gain_name(g)] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)),
                                   "psnr_per_burst": ps, "ssim_per_burst": ss}
    results[name] = per_gain
    timing[name] = {"seconds": seconds, "megapixels": pixels / 1e6, "seconds_per_mp": seconds / (pixels / 1e6)}
    log(f"{name:40s} " + "  ".join(f"g{g}: {per_gain[_gain_name(g)]['psnr']:.2f}/{per_gain[_gain_name(g)]['ssim']:.3f}"
                                     for g in gains) + f"   {timing[name]['seconds_per_mp']:.2f} s/MP")


def _mean_interval(values: np.ndarray) -> tuple[float, float | None, list[float] | None]:
    """-> (mean, standard error, 95% Student-t interval) of independent samples; no error from one."""
    from scipy.stats import t as student_t

    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    se = float(values.std(ddof=1) / math.sqrt(len(values)))
    half = float(student_t.ppf(0.975, len(values) - 1)) * se
    return mean, se, [mean - half, mean + half]


def against_best_baseline(results: dict, gains: list[int], crop_images: list[str] | None = None) -> dict | None:
    """Each method's PSNR difference from the best classical baseline (the one of NLM and BM3D with the
    higher mean over gains), paired burst by burst: the same crop and motion appear at every gain (only
    the noise differs), so each crop's difference is averaged over the gains first and the crops are the
    sampling unit. Crops of one photograph are alike, so with `crop_images` (the photograph of each
    crop) the same is done with the photographs as the unit (each photograph's crops averaged first):
    the interval for photographs like these, not only for these crops.
    -> {"baseline", "crops", "images", "rows": {method: {mean_db, standard_error_db, ci95_db,
    crops_better, image_mean_db, image_standard_error_db, image_ci95_db, images_better}}} (no error or
    interval from a single crop or photograph; the image_ fields only with crop_images), or None
    without a classical baseline."""
    present = [b for b in (NLM, BM3D) if b in results]
    if not present:
        return None

    def mean_over_gains(name: str) -> float:
        return float(np.mean([results[name][_gain_name(g)]["psnr"] for g in gains]))

    baseline = max(present, key=mean_over_gains)
    base = np.array([results[baseline][_gain_name(g)]["psnr_per_burst"] for g in gains])  # [gains, crops]
    crops = base.shape[1]
    images = list(dict.fromkeys(crop_images)) if crop_images else []
    if crop_images and len(crop_images) != crops:
        raise BenchError(f"{len(crop_images)} crop image names for {crops} crops")
    rows = {}
    for name, per_gain in results.items():
        if name in (NOISY, MEAN, ALIGNED_MEAN, NLM, BM3D):
            continue
        per_crop = (np.array([per_gain[_gain_name(g)]["psnr_per_burst"] for g in gains]) - base).mean(axis=0)
        mean, se, ci95 = _mean_interval(per_crop)
        row = {"mean_db": mean, "standard_error_db": se, "ci95_db": ci95, "crops_better": int((per_crop > 0).sum())}
        if images:
            per_image = np.array([per_crop[[c == im for c in crop_images]].mean() for im in images])
            mean_i, se_i, ci95_i = _mean_interval(per_image)
            row.update(image_mean_db=mean_i, image_standard_error_db=se_i, image_ci95_db=ci95_i,
                       images_better=int((per_image > 0).sum()))
        rows[name] = row
    return {"baseline": baseline, "crops": crops, "images": len(images) or None, "rows": rows}


def _model_methods(spec: ModelSpec, crop: int, threads: int, runtime_backend: str, workdir: Path,
                   test: dict, self_ensemble: tuple[int, ...] = ()) -> tuple[list[tuple[str, Callable]], list[dict]]:
    """(name, fn(gain, i)) for the model in PyTorch and through the runtime (and the runtime's self-ensemble);
    unavailable ones with reason."""
    if crop % spec.size_multiple:
        raise BenchError(f"--crop {crop} is not a multiple of {spec.size_multiple} ({spec.name}); pick e.g. "
                         f"{crop - crop % spec.size_multiple or spec.size_multiple}")
    methods, unavailable = [], []

    def feed(g, i):
        burst, nmap, _ = test[g]
        return np.ascontiguousarray(arrange_burst(burst[i], spec.frames, spec.reference_index)[None]), nmap[i][None]

    if spec.checkpoint is not None:
        import torch

        from train.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        model, _ = load_checkpoint(spec.checkpoint)

        def run_torch(g, i, model=model):
            b, m = feed(g, i)
            with torch.inference_mode():
                return model(torch.from_numpy(b), torch.from_numpy(m)).numpy()[0, 0]

        methods.append((f"{spec.name} (PyTorch)", run_torch))
    else:
        unavailable.append({"method": f"{spec.name} (PyTorch)", "reason": "ONNX-only model: no checkpoint"})
    try:
        from runtime.backends import open_backend
        from runtime.errors import UserError

        onnx_path = ensure_onnx(spec, workdir / "onnx")
        be, note = open_backend(onnx_path, runtime_backend, threads=threads)

        def run_rt(g, i, be=be):
            b, m = feed(g, i)
            return be.run(b, m)[0, 0]

        methods.append((f"{spec.name} (runtime {be.name})", run_rt))
        from runtime.symmetry import self_ensemble as ensemble_of

        for turns in self_ensemble:

            def run_ensemble(g, i, run=ensemble_of(be.run, turns)):
                b, m = feed(g, i)
                return run(b, m)[0, 0]

            methods.append((f"{spec.name} (runtime {be.name}, self-ensemble x{turns})", run_ensemble))
    except (UserError, BenchError) as exc:
        unavailable.append({"method": f"{spec.name} (runtime {runtime_backend})", "reason": str(exc)})
    return methods, unavailable


def markdown(result: dict) -> str:
    cfg, env = result["config"], result["machine"]
    gains = cfg["gains"]
    names = ", ".join(result["source"]["test_images"])
    if cfg["images"].startswith(HELDOUT_PREFIX):
        test_words = (f"all {len(result['source']['test_images'])} photographs of `{cfg['images'][len(HELDOUT_PREFIX):]}` "
                      f"({names}), held out: never trained or tuned on")
    else:
        test_words = f"the validation split ({names}) of `{cfg['images']}`, never used for training"
    head = "| method | " + " | ".join(f"gain {g} PSNR | gain {g} SSIM" for g in gains) + " | s/MP |"
    sep = "|---|" + "---:|---:|" * len(gains) + "---:|"
    lines = [
        "# kpn-bench quality",
        "",
        f"Command: `{cfg['command']}`",
        "",
        f"{env['cpu']} ({env['cpu_count']} CPUs), {cfg['threads']} threads. Test bursts: {cfg['test_crops']} per gain, "
        f"{cfg['crop']}x{cfg['crop']} px, {cfg['frames']} frames, {cfg['motion']} motion, from {test_words}; generator "
        "`train.data.validation_set` (AME-KPN sec. 3.1). PSNR (dB) and SSIM in sRGB gamma space, mean over bursts. "
        "s/MP = seconds per output megapixel on this machine.",
        "",
        head,
        sep,
    ]
    for name, per_gain in result["results"].items():
        cells = " | ".join(f"{per_gain[f'gain{g}']['psnr']:.2f} | {per_gain[f'gain{g}']['ssim']:.4f}" for g in gains)
        lines.append(f"| {name} | {cells} | {result['time_per_mp'][name]['seconds_per_mp']:.3f} |")
    paired = result.get("against_best_baseline")
    if paired and paired["rows"]:
        n = paired["crops"]
        m = paired.get("images")
        lines += ["", f"## Against the best classical baseline, {paired['baseline']} (paired, {n} test crops)", "",
                  f"PSNR difference (dB) on the same bursts, mean over gains {', '.join(map(str, gains))} per crop, then "
                  f"over the {n} crops (each crop appears at every gain with its own noise, so the crops are the "
                  "sampling unit); standard error over the crops and a 95% interval (Student t). An interval that "
                  "holds 0 means this test set cannot tell the method from the baseline." + (
                      f" Crops of one photograph are alike: the last two columns take the {m} photographs as the unit "
                      "(each one's crops averaged first), the interval for other photographs like these." if m else ""), "",
                  "| method | difference dB | standard error | 95% interval | crops better | by photograph: 95% interval "
                  "| photographs better |", "|---|---:|---:|---|---:|---|---:|"]

        def interval(ci):
            return "n/a" if ci is None else f"{ci[0]:+.2f} to {ci[1]:+.2f}"

        for name, r in paired["rows"].items():
            se = "n/a" if r["standard_error_db"] is None else f"{r['standard_error_db']:.2f}"
            by_image = (f"{interval(r['image_ci95_db'])} | {r['images_better']} of {m}" if m else "n/a | n/a")
            lines.append(f"| {name} | {r['mean_db']:+.2f} | {se} | {interval(r['ci95_db'])} | {r['crops_better']} of {n} | "
                         f"{by_image} |")
    if result["model_parity"]:
        lines += ["", "## PyTorch vs runtime (exported ONNX)", "", "| model | max abs diff (linear) | max PSNR difference dB |",
                  "|---|---:|---:|"]
        for p in result["model_parity"]:
            lines.append(f"| {p['model']} | {p['max_abs_diff']:.2e} | {p['max_psnr_diff_db']:.4f} |")
    if result["unavailable"]:
        lines += ["", "## Not available", ""]
        lines += [f"- {u['method']}: not available: {u['reason']}" for u in result["unavailable"]]
    if result["tuning"]:
        lines += ["", f"## Tuning of the classical baselines (grid search on {cfg['tune_crops']} tuning bursts per gain "
                  f"from the training split: {', '.join(result['source']['tuning_images'])})", "",
                  "| method | gain | chosen parameters | tuning PSNR | grid size |", "|---|---|---|---:|---:|"]
        for method, per_gain in result["tuning"].items():
            for g, t in per_gain.items():
                lines.append(f"| {method} | {g} | {t['params']} | {t['psnr']:.2f} | {len(t['grid'])} |")
        lines.append("")
        lines.append("Strength = multiple of the gamma-space noise sigma (from the noise map): NLM h = strength x 255 x sigma "
                     "(8-bit frames, template 7, search 21, temporal window `window`); BM3D sigma_psd = strength x sigma.")
    lines += ["", "## AME-KPN paper, Table 1 (their test set and their models; for reference, not the same data)", "",
              "| algorithm | " + " | ".join(f"gain {g} PSNR | gain {g} SSIM" for g in range(1, 5)) + " |",
              "|---|" + "---:|---:|" * 4]
    for name, vals in PAPER_TABLE1.items():
        lines.append(f"| {name} | " + " | ".join(f"{p:.2f} | {s:.4f}" for p, s in vals) + " |")
    lines += ["", "Gains (sigma_r, sigma_s): " + "; ".join(f"{g}: ({v['sigma_r']:g}, {v['sigma_s']:g})"
                                                          for g, v in result["source"]["gains"].items()) + "."]
    lines += ["", why_numbers_differ(result["models"])]
    return "\n".join(lines) + "\n"


def data_words(data: str) -> str:
    """A training source (kpn-train --data) in a sentence."""
    from train.data import EXTRA_PREFIX

    if data == "builtin":
        return "scikit-image's bundled photographs"
    if data.startswith(EXTRA_PREFIX):
        from train.photos import is_registry_folder

        folder = data[len(EXTRA_PREFIX):]
        if is_registry_folder(folder):
            return "scikit-image's bundled photographs and the registry photographs of python -m train.photos"
        return f"scikit-image's bundled photographs and images from {folder}"
    return f"images from {data}"


def _stage_words(field: str, value) -> str:
    """How the sentence below says a training setting that stages change (train.trainer.STAGE_FIELDS)."""
    if field == "downsample":
        return f"at downsample {value}"
    if field == "still_fraction":
        return f"with {100 * value:.0f}% still bursts"
    if field == "augment":
        return "with dihedral augmentation" if value == "dihedral" else "without augmentation"
    if field == "anneal_floor":
        return f"with the annealed term held at {value:g} or more"
    if field == "lr_factor":
        return f"at {value:g}x the learning rate"
    if field == "data":
        return f"on {data_words(value)}"
    if field == "loss_scale":
        return "with the per-burst log loss" if value == "log" else "with the papers' (linear) loss"
    if field == "batch_size":
        return f"at {value} bursts per step"
    return f"with {field} {value}"


def why_numbers_differ(models: list[dict]) -> str:
    """The sentence the paper's table needs beside ours: how each side was trained and tested."""
    from train.trainer import STAGE_FIELDS

    ours = []
    for m in models:
        if m.get("training_step") is None:
            continue
        parts = [f"{m.get('width') or '?'} width"]
        if m.get("parameters"):
            parts.append(f"{m['parameters'] / 1e6:.2f}M parameters")
        steps = f"{int(m['training_step'])} steps"
        if m.get("training_batch_size") and m.get("training_crop"):
            steps += f" of {m['training_batch_size']} bursts of {m['training_crop']}x{m['training_crop']}"
        for field in STAGE_FIELDS:
            if field not in ("data", "batch_size") and m.get(f"training_{field}"):
                steps += " " + _stage_words(field, m[f"training_{field}"])
        if m.get("training_data"):
            steps += " " + _stage_words("data", m["training_data"])
        parts.append(steps)
        for stage in m.get("training_stages") or []:
            parts.append(f"from step {stage['from_step']} " + " and ".join(_stage_words(k, v) for k, v in stage["set"].items()))
        if m.get("kernels"):  # KPN/AME-KPN: how the kernels are normalised (the papers': raw)
            parts.append(f"{m['kernels']} kernels")
        if m.get("training_noise_range"):
            parts.append(f"noise range {m['training_noise_range']}")
        if m.get("training_wall_seconds"):
            parts.append(f"{m['training_wall_seconds'] / 60:.0f} min")
        ours.append(f"{m['name']} ({', '.join(parts)})")
    mine = "; ".join(ours) if ours else "see the models' checkpoints"
    return ("Why the numbers differ: the paper's networks were trained for 8x10^4 iterations of 16 bursts on a "
            "GTX 1080Ti (about 8 h each, AME-KPN sec. 3.2) on their own images, and tested on their own bursts; "
            f"ours: {mine}. Our test bursts come from other photographs (the validation split), so only the rows "
            "above, all run on the same bursts, compare directly; the paper's reference-frame row shows that its "
            "noise levels match ours.")


def crops_figure(outputs: dict, test: dict, gain: int, index: int, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    burst, nmap, clean = test[gain]
    panels = [(NOISY, outputs[NOISY][gain][index])]
    panels += [(name, outs[gain][index]) for name, outs in outputs.items() if name not in (NOISY, ALIGNED_MEAN)]
    panels.append(("Clean", clean[index, 0]))
    cols = min(len(panels), 5)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.7 * rows), squeeze=False)
    for ax, (name, img) in zip(axes.flat, panels):
        ax.imshow(_srgb(np.asarray(img, np.float64)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if name == "Clean":
            title = "Clean"
        else:
            title = f"{name}\n{psnr(img, clean[index]):.2f} dB"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"gain {gain}, test burst {index} (sRGB gamma)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def run(specs: list[ModelSpec], models_note: str, images: str, gains: list[int], crop: int, test_crops: int,
        tune_crops: int, frames: int, threads: int, seed: int, val_fraction: float, split_seed: int, use_bm3d: bool,
        use_nlm: bool, runtime_backend: str, out: Path, workdir: Path, command: str,
        log: Callable[[str], None] = print, motion: str = "paper", self_ensemble: tuple[int, ...] = ()) -> dict:
    import cv2
    import torch

    from train.data import DOWNSAMPLE  # the bursts' box-downsampling (validation_bursts' default)

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    if use_nlm and frames < 3:
        raise BenchError("--frames must be >= 3 for the NLM multi-frame baseline (or --no-nlm)")
    need_frames = max([s.frames for s in specs], default=1)
    if need_frames > frames:
        raise BenchError(f"--frames {frames}: a model needs {need_frames} frames")
    gains = sorted(set(gains))
    test, tuning_data, source, test_offsets = load_bursts(images, gains, crop, test_crops, tune_crops, frames, seed, val_fraction,
                                            split_seed, use_bm3d or use_nlm, motion)
    if (use_bm3d or use_nlm) and not tuning_data:
        raise BenchError("--tune-crops must be >= 1 to tune the classical baselines (or --no-nlm --no-bm3d)")
    log(f"test bursts: {len(test[gains[0]][0])} x {crop}x{crop} per gain from {source['test_images']}; "
        f"tuning bursts from {source['tuning_images']}")

    results: dict = {}
    timing: dict = {}
    outputs: dict = {}
    tuning: dict = {}
    unavailable: list[dict] = []
    _evaluate(NOISY, lambda g, i: test[g][0][i, 0], test, gains, results, timing, outputs, log)
    _evaluate(MEAN, lambda g, i: test[g][0][i].mean(axis=0), test, gains, results, timing, outputs, log)
    _evaluate(ALIGNED_MEAN, lambda g, i: aligned_mean(test[g][0][i], test_offsets[i], DOWNSAMPLE), test, gains, results,
              timing, outputs, log)
    if use_nlm:
        tuning[NLM] = tune(NLM, tuning_data, gains, frames, log)
        _evaluate(NLM, lambda g, i: nlm_denoise(test[g][0][i], test[g][1][i], **tuning[NLM][_gain_name(g)]["params"]),
                  test, gains, results, timing, outputs, log)
    else:
        unavailable.append({"method": NLM, "reason": "skipped (--no-nlm)"})
    if use_bm3d:
        tuning[BM3D] = tune(BM3D, tuning_data, gains, frames, log)
        _evaluate(BM3D, lambda g, i: bm3d_denoise(test[g][0][i], test[g][1][i], **tuning[BM3D][_gain_name(g)]["params"]),
                  test, gains, results, timing, outputs, log)
    else:
        unavailable.append({"method": BM3D, "reason": "skipped (--no-bm3d)"})

    parity = []
    for spec in specs:
        methods, missing = _model_methods(spec, crop, threads, runtime_backend, workdir, test, self_ensemble)
        unavailable += missing
        for name, fn in methods:
            _evaluate(name, fn, test, gains, results, timing, outputs, log)
        if len(methods) >= 2 and methods[0][0].endswith("(PyTorch)"):  # the model itself vs its export
            a, b = (outputs[m[0]] for m in methods[:2])
            diff = max(float(np.abs(x - y).max()) for g in gains for x, y in zip(a[g], b[g]))
            pd = max(abs(results[methods[0][0]][_gain_name(g)]["psnr"] - results[methods[1][0]][_gain_name(g)]["psnr"])
                     for g in gains)
            parity.append({"model": spec.name, "max_abs_diff": diff, "max_psnr_diff_db": pd})
    if not specs:
        unavailable.append({"method": "models", "reason": f"none given ({models_note}); pass --models CKPT.pt or MODEL.onnx"})

    result = {
        "machine": machine_info(threads),
        "config": {"command": command, "images": images, "gains": gains, "crop": crop, "test_crops": test_crops,
                   "tune_crops": tune_crops, "frames": frames, "motion": motion, "threads": threads, "seed": seed,
                   "tuning_seed": seed + 1, "runtime_backend": runtime_backend, "self_ensemble": list(self_ensemble),
                   "models_from": models_note},
        "source": source,
        "models": [s.describe() for s in specs],
        "results": results,
        "time_per_mp": timing,
        "tuning": tuning,
        "model_parity": parity,
        "against_best_baseline": against_best_baseline(results, gains, source["test_crop_images"]),
        "unavailable": unavailable,
        "paper_table1": {k: {f"gain{i + 1}": {"psnr": p, "ssim": s} for i, (p, s) in enumerate(v)}
                         for k, v in PAPER_TABLE1.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "quality.json", result)
    write_text(out / "quality.md", markdown(result))
    show = 3 if 3 in gains else gains[-1]
    crops_figure(outputs, test, show, 0, results, out / "quality_crops.png")
    return result
