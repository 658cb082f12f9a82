"""Synthetic training and validation bursts, as AME-KPN section 3.1 (after KPN, Mildenhall et al.).

One burst from a clean linear image y (single channel, full resolution):
  1. the reference window of (f*h) x (f*w) pixels (f = 4) sits at a random place; each of the N-1
     other frames is the same window shifted by an integer offset (dy, dx): with probability
     min(n/N, 1), n ~ Poisson(1.5) drawn once per burst, uniform in [-64, 64]^2, otherwise uniform in
     [-8, 8]^2 (offsets in full-resolution pixels, i.e. +-16 / +-2 pixels after downsampling; this is
     the KPN reference code's jitter 16 / small jitter 2 at upscale 4);
  2. every frame is downsampled f x in each dimension with a box filter (mean of f x f blocks);
  3. noise x ~ N(y, sigma_r^2 + sigma_s * y), independent per pixel and frame, with sigma_r
     log-uniform in [1e-3, 10^-1.5] and sigma_s log-uniform in [1e-4, 1e-2] (one pair per burst;
     the papers' ranges, log-uniform as in KPN's reference code). `noise_range="wide"` raises both
     upper ends by half a decade, to 10^-1 and 10^-1.5, so that training covers all four gains of
     AME-KPN Table 1 (the papers test gains 3 and 4 beyond their training range);
  4. noise map sqrt(sigma_r^2 + sigma_s * max(x_ref, 0)) of the noisy reference (docs/model-io.md).
The reference goes at `reference_index`: first for KPN/AME-KPN, the middle (T // 2) of a T = 5 clip
for ST-PAN, whose other frames take the same offset model (`motion="paper"`, the default). With
`motion="walk"` the frames of a clip move cumulatively outward from the reference instead, each step
drawn from the same model at half the amplitude (so the farthest frame stays within +-64 pixels):
smoother, video-like motion. PAN (T = 1) gets the reference alone. With `still_fraction` f > 0 (kpn-train
--still-fraction), a fraction f of the training bursts have no motion at all: with the papers' motion
alone our short runs learned to ignore the other frames (issue 8's note), which aligned bursts undo.
With `augment="dihedral"` (kpn-train --augment) each training window is first turned by a random one of
the square's 8 symmetries: eight photographs give little content, and noise and motion have no
preferred orientation.

Images are sRGB-encoded (8-bit, 16-bit or float in [0, 1]) and are linearised with the inverse sRGB
gamma (train.metrics.srgb_to_linear). Models are single-channel (colour is denoised channel by
channel), so each training burst takes one channel of a colour image, chosen at random.

`make_burst` is the generator others use (examples, quality benchmarks); `BurstSampler` draws
training batches; `validation_set` builds the fixed validation bursts at AME-KPN Table 1's gains.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.symmetry import dihedral  # one definition of the 8 symmetries, shared with --self-ensemble

from .metrics import srgb_to_linear

DOWNSAMPLE = 4
BIG_JITTER = 64
SMALL_JITTER = 8
POISSON_LAMBDA = 1.5
# (sigma_r range, sigma_s range) per noise-range name; both drawn log-uniformly.
NOISE_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "paper": ((1e-3, 10**-1.5), (1e-4, 1e-2)),
    "wide": ((1e-3, 10**-1.0), (1e-4, 10**-1.5)),
}
# AME-KPN Table 1: (sigma_r, sigma_s) of gains 1-4 (gain 4 is beyond the training range).
VALIDATION_GAINS: dict[str, tuple[float, float]] = {
    "gain1": (5e-3, 1e-3),
    "gain2": (2e-2, 4.3e-3),
    "gain3": (5e-2, 1e-2),
    "gain4": (8e-2, 2.3e-2),
}
# Offset models of sample_offsets: "paper" and "walk" train; "large" (every frame from the big range) and
# "still" (no motion: a tripod or a perfectly aligned burst) are test conditions for the benchmarks.
MOTION_MODELS = ("paper", "walk", "large", "still")
# Training-crop augmentations (kpn-train --augment): "dihedral" turns each source window by a random one
# of the square's 8 symmetries (90-degree turns, with or without a transpose) before the burst is made.
AUGMENTATIONS = ("none", "dihedral")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

# scikit-image's bundled natural photographs (shipped inside the wheel, no download), with the licence
# their skimage.data docstrings state. Left out: synthetic/text/medical images and those whose
# docstring states no licence (moon, stereo_motorcycle).
BUILTIN_IMAGES: dict[str, str] = {
    "astronaut": "NASA (Eileen Collins); public domain",
    "camera": "Lav Varshney; CC0",
    "coffee": "Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0",
    "chelsea": "Stefan van der Walt; CC0",
    "rocket": "SpaceX; public domain",
    "coins": "Greek coins from Pompeii, Brooklyn Museum; no known copyright restrictions",
    "clock": "Stefan van der Walt; public domain",
    "hubble_deep_field": "NASA; public domain",
    "grass": "Pixabay texture; CC0",
    "gravel": "CC0Textures (Gravel04); CC0",
    "brick": "CC0Textures (Bricks25); CC0",
}


# The builtin source's validation images: fixed by name (a portrait, an object, a texture), so that the
# validation set is varied and the example burst (examples/burst, from astronaut) is never trained on.
BUILTIN_VALIDATION: tuple[str, ...] = ("astronaut", "coins", "brick")


class DataError(Exception):
    """Bad training data; the message is one line naming the file or folder and the problem."""


# ----------------------------------------------------------------------------------------------------
# The burst generator


def box_downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping factor x factor blocks of the last two axes (sizes must divide)."""
    *lead, h, w = img.shape
    if h % factor or w % factor:
        raise ValueError(f"box_downsample: size {h}x{w} is not a multiple of {factor}")
    return img.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def sample_noise_params(rng: np.random.Generator, noise_range: str = "paper") -> tuple[float, float]:
    """(sigma_r, sigma_s), each log-uniform in its range of NOISE_RANGES[noise_range]."""
    if noise_range not in NOISE_RANGES:
        raise ValueError(f"unknown noise range {noise_range!r}; choose one of {sorted(NOISE_RANGES)}")
    (r_lo, r_hi), (s_lo, s_hi) = NOISE_RANGES[noise_range]
    lr = rng.uniform(np.log10(r_lo), np.log10(r_hi))
    ls = rng.uniform(np.log10(s_lo), np.log10(s_hi))
    return float(10.0**lr), float(10.0**ls)


def sample_offsets(
    rng: np.random.Generator,
    frames: int,
    reference_index: int = 0,
    motion: str = "paper",
    big: int = BIG_JITTER,
    small: int = SMALL_JITTER,
    still_fraction: float = 0.0,
) -> np.ndarray:
    """Integer (dy, dx) per frame [frames, 2], zero for the reference (full-resolution pixels).
    `still_fraction`: the probability that the burst has no motion at all (drawn first, and only when
    it is above 0, so that runs without it keep their random streams)."""
    if motion not in MOTION_MODELS:
        raise ValueError(f"unknown motion model {motion!r}; choose {', '.join(MOTION_MODELS)}")
    offsets = np.zeros((frames, 2), dtype=np.int64)
    if still_fraction > 0 and rng.random() < still_fraction:
        return offsets
    if frames <= 1 or motion == "still":
        return offsets
    # "large": every frame from the big range (a stress test for alignment, not a training default)
    p_big = 1.0 if motion == "large" else min(rng.poisson(POISSON_LAMBDA) / frames, 1.0)

    def draw(b: int, s: int) -> np.ndarray:
        r = b if rng.random() < p_big else s
        return rng.integers(-r, r + 1, size=2)

    if motion in ("paper", "large"):
        for i in range(frames):
            if i != reference_index:
                offsets[i] = draw(big, small)
    elif motion == "walk":
        reach = max(reference_index, frames - 1 - reference_index)
        b, s = max(big // reach, 1), max(small // reach, 1)
        for direction in (-1, 1):
            i = reference_index + direction
            while 0 <= i < frames:
                offsets[i] = offsets[i - direction] + draw(b, s)
                i += direction
    return offsets


def add_noise(clean: np.ndarray, sigma_r: float, sigma_s: float, rng: np.random.Generator) -> np.ndarray:
    """x ~ N(y, sigma_r^2 + sigma_s * y) per pixel (y clipped at 0 inside the variance)."""
    std = np.sqrt(sigma_r**2 + sigma_s * np.maximum(clean, 0.0))
    return (clean + std * rng.standard_normal(clean.shape)).astype(np.float32)


def noise_map(noisy_reference: np.ndarray, sigma_r: float, sigma_s: float) -> np.ndarray:
    return np.sqrt(sigma_r**2 + sigma_s * np.maximum(noisy_reference, 0.0)).astype(np.float32)


def make_burst(
    clean_linear,
    frames: int,
    sigma_r: float | None,
    sigma_s: float | None,
    rng: np.random.Generator,
    reference_index: int = 0,
    crop: int | tuple[int, int] | None = None,
    downsample: int = DOWNSAMPLE,
    offsets: np.ndarray | None = None,
    position: tuple[int, int] | None = None,
    motion: str = "paper",
    big_jitter: int = BIG_JITTER,
    small_jitter: int = SMALL_JITTER,
    noise_range: str = "paper",
    still_fraction: float = 0.0,
):
    """One synthetic burst from a clean single-channel linear image [H, W] (full resolution).

    -> (noisy [N, h, w], noise_map [1, h, w], clean [1, h, w]) float32, numpy arrays or torch tensors
    like the input. `crop` is the output size (h, w) (None: the largest that fits); the reference
    window of (downsample*h) x (downsample*w) pixels needs `big_jitter` pixels of image on each side.
    `position` (top-left of the reference window) and `offsets` [N, 2] are drawn from `rng` when None;
    `sigma_r`/`sigma_s` too (log-uniform in NOISE_RANGES[noise_range]) when None; drawn offsets are all
    zero with probability `still_fraction`. Draw order: offsets, position, noise parameters, noise.
    """
    as_torch = isinstance(clean_linear, torch.Tensor)
    img = clean_linear.detach().cpu().numpy() if as_torch else np.asarray(clean_linear)
    img = img.astype(np.float64, copy=False)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"make_burst wants one channel [H, W], got shape {img.shape}")
    if not 0 <= reference_index < frames:
        raise ValueError(f"reference_index {reference_index} outside 0..{frames - 1}")
    H, W = img.shape
    margin = big_jitter
    if crop is None:
        h, w = (H - 2 * margin) // downsample, (W - 2 * margin) // downsample
    else:
        h, w = (crop, crop) if isinstance(crop, int) else crop
    if h < 1 or w < 1 or downsample * h + 2 * margin > H or downsample * w + 2 * margin > W:
        raise ValueError(
            f"image {H}x{W} is too small for a {h}x{w} burst: it needs "
            f"{downsample}*size + 2*{margin} pixels per side"
        )
    if offsets is None:
        offsets = sample_offsets(rng, frames, reference_index, motion, big_jitter, small_jitter, still_fraction)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.shape != (frames, 2):
        raise ValueError(f"offsets must be [{frames}, 2], got {offsets.shape}")
    if np.abs(offsets).max(initial=0) > margin:
        raise ValueError(f"offsets beyond the margin of {margin} pixels")
    hh, ww = downsample * h, downsample * w
    if position is None:
        position = (int(rng.integers(margin, H - margin - hh + 1)), int(rng.integers(margin, W - margin - ww + 1)))
    y0, x0 = position
    if sigma_r is None or sigma_s is None:
        sigma_r, sigma_s = sample_noise_params(rng, noise_range)
    windows = np.stack([img[y0 + dy : y0 + dy + hh, x0 + dx : x0 + dx + ww] for dy, dx in offsets])
    clean_frames = box_downsample(windows, downsample)
    noisy = add_noise(clean_frames, sigma_r, sigma_s, rng)
    nmap = noise_map(noisy[reference_index], sigma_r, sigma_s)[None]
    clean = clean_frames[reference_index][None].astype(np.float32)
    if as_torch:
        return torch.from_numpy(noisy), torch.from_numpy(nmap), torch.from_numpy(clean)
    return noisy, nmap, clean


# ----------------------------------------------------------------------------------------------------
# Image sources


@dataclass
class SourceImage:
    name: str
    pixels: np.ndarray  # [H, W, C] as stored (uint8, uint16 or float32), sRGB-encoded

    def linear(self, channel: int, window: tuple[slice, slice] | None = None) -> np.ndarray:
        """One channel (or a window of it), scaled to [0, 1] and linearised -> float64 [h, w]."""
        px = self.pixels[..., channel] if window is None else self.pixels[window[0], window[1], channel]
        if px.dtype == np.uint8:
            unit = px / 255.0
        elif px.dtype == np.uint16:
            unit = px / 65535.0
        else:
            unit = np.clip(px.astype(np.float64), 0.0, 1.0)
        return srgb_to_linear(unit.astype(np.float64))


def _as_hwc(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == bool:
        raise DataError(f"{name}: binary (1-bit) image, not a photograph")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{name}: unsupported image shape {arr.shape} (multi-page or volume?)")
    c = arr.shape[2]
    if c == 2:  # grey + alpha
        arr = arr[..., :1]
    elif c == 4:  # RGBA
        arr = arr[..., :3]
    elif c not in (1, 3):
        raise DataError(f"{name}: {c} channels; expected grey, RGB or RGBA")
    if arr.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise DataError(f"{name}: float image with NaN or infinite values")
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.integer):  # e.g. int32 from some TIFFs: scale by its own range
        return np.ascontiguousarray((arr.astype(np.float64) / np.iinfo(arr.dtype).max).clip(0, 1).astype(np.float32))
    raise DataError(f"{name}: unsupported pixel type {arr.dtype}")


def load_image(path: str | os.PathLike) -> SourceImage:
    import imageio.v3 as iio

    path = Path(path)
    try:
        arr = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio/PIL/tifffile raise many types for a bad file
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: unreadable image ({msg})") from None
    if arr.size == 0:
        raise DataError(f"{path}: empty image")
    return SourceImage(str(path), _as_hwc(arr, str(path)))


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: no such data folder")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (give a folder of images, 'builtin' or 'builtin+FOLDER')")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{folder}: no images (looked for {', '.join(IMAGE_EXTENSIONS)} recursively)")
    return files


def builtin_images() -> list[SourceImage]:
    import skimage.data

    return [SourceImage(f"builtin:{name}", _as_hwc(np.asarray(getattr(skimage.data, name)()), name)) for name in BUILTIN_IMAGES]


# "builtin+FOLDER": the builtin source (its training photographs and its fixed validation images) with
# every image of FOLDER added to the training side, e.g. the photographs that `python -m train.photos`
# collects from package registries. The validation set stays the builtin one, so runs on either source
# (and the stages of one run) are validated on the same bursts.
EXTRA_PREFIX = "builtin+"


def _pinned_among(files: list[Path], photos) -> tuple[Path, str] | None:
    """(file, photo name) of the first of `files` whose sha256 is one of `photos`' (train.photos), or None."""
    from runtime.files import sha256_file

    pinned = {p.sha256: p.file for p in photos}
    for f in files:
        name = pinned.get(sha256_file(f))
        if name is not None:
            return f, name
    return None


def _same_pixels(a: SourceImage, b: SourceImage) -> bool:
    return a.pixels.shape == b.pixels.shape and np.array_equal(a.pixels, b.pixels)


def refuse_heldout(files: list[Path]) -> None:
    """Raise DataError for a file that is one of the wallpaper photographs held out for evaluation
    (train.photos.HELDOUT_PHOTOS, by sha256): they are never trained or tuned on."""
    from .photos import HELDOUT_PHOTOS

    found = _pinned_among(files, HELDOUT_PHOTOS)
    if found:
        raise DataError(f"{found[0]}: held out for evaluation (the wallpaper {found[1]} of train.photos --set wallpapers): "
                        "never trained or tuned on; use it with kpn-bench --images heldout:FOLDER")


def refuse_seen(files: list[Path], images: list[SourceImage]) -> None:
    """Raise DataError for an image that training or checkpoint selection has seen, for a set that
    claims to be held out (kpn-bench --images heldout:FOLDER): the pixels of a builtin photograph
    (training and validation split alike) or one of train.photos' training photographs (by sha256)."""
    from .photos import REGISTRY_PHOTOS

    found = _pinned_among(files, REGISTRY_PHOTOS)
    if found:
        raise DataError(f"{found[0]}: the training photograph {found[1]} of train.photos: not held out")
    builtin = builtin_images()
    for im, f in zip(images, files):
        for b in builtin:
            if _same_pixels(im, b):
                raise DataError(f"{f}: the same pixels as {b.name}, which training or validation used: not held out")


def extra_training_images(folder: str, validation: list[SourceImage]) -> list[SourceImage]:
    """Every image of `folder`, for training; refuses an image with the pixels of a validation image
    and a held-out wallpaper."""
    files = list_images(folder)
    refuse_heldout(files)
    extra = [load_image(f) for f in files]
    for im in extra:
        for v in validation:
            if _same_pixels(im, v):
                raise DataError(f"{im.name}: the same pixels as validation image {v.name} "
                                "(validation images are never trained on)")
    return extra


def split_names(names: list[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Disjoint (train, val) index lists. An image is for validation when the hash of (seed, its name)
    maps below `val_fraction`, so its side depends on its name (relative path) alone: adding images
    to a folder never moves the others across. Should that leave either side empty (tiny folders),
    the image(s) of lowest / highest hash move over so both sides have one."""
    if len(names) < 2:
        raise DataError("need at least 2 images: training and validation images are disjoint")
    u = [int(hashlib.sha256(f"{seed}:{n}".encode()).hexdigest()[:15], 16) / 16**15 for n in names]
    val = {i for i in range(len(names)) if u[i] < val_fraction}
    order = sorted(range(len(names)), key=lambda i: u[i])
    if not val:
        val = {order[0]}
    if len(val) == len(names):
        val.discard(order[-1])
    return [i for i in range(len(names)) if i not in val], sorted(val)


def load_source(data: str, val_fraction: float = 0.2, split_seed: int = 0) -> tuple[list[SourceImage], list[SourceImage]]:
    """'builtin', 'builtin+FOLDER' or a folder -> (train images, validation images), disjoint and
    deterministic. The builtin split is BUILTIN_VALIDATION (FOLDER's images all train); a folder is
    split by `split_names` (val_fraction, split_seed)."""
    if data == "builtin" or data.startswith(EXTRA_PREFIX):
        images = builtin_images()
        val_names = {f"builtin:{n}" for n in BUILTIN_VALIDATION}
        train = [im for im in images if im.name not in val_names]
        val = [im for im in images if im.name in val_names]
        if data != "builtin":
            train += extra_training_images(data[len(EXTRA_PREFIX):], val)
        return train, val
    else:
        files = list_images(data)
        refuse_heldout(files)
        images = [load_image(f) for f in files]
        names = [str(f.relative_to(Path(data))) for f in files]
    train, val = split_names(names, val_fraction, split_seed)
    return [images[i] for i in train], [images[i] for i in val]


# ----------------------------------------------------------------------------------------------------
# Batches


def _fit(image: SourceImage, need: int) -> SourceImage:
    """Images smaller than the burst window (downsample*crop + 2*64 pixels a side) are enlarged once
    (skimage.transform.resize, bicubic, anti-aliased) so the paper's window and offsets fit."""
    h, w = image.pixels.shape[:2]
    if min(h, w) >= need:
        return image
    from skimage.transform import resize

    s = need / min(h, w)
    shape = (max(need, int(np.ceil(h * s))), max(need, int(np.ceil(w * s))), image.pixels.shape[2])
    px = resize(image.pixels, shape, order=3, preserve_range=True, anti_aliasing=False)
    if image.pixels.dtype in (np.uint8, np.uint16):
        px = np.clip(np.round(px), 0, np.iinfo(image.pixels.dtype).max).astype(image.pixels.dtype)
    else:
        px = px.astype(np.float32)
    return SourceImage(image.name, px)


class BurstSampler:
    """Draws training batches of synthetic bursts from a list of images."""

    def __init__(self, images: list[SourceImage], frames: int, reference_index: int, crop: int,
                 downsample: int = DOWNSAMPLE, motion: str = "paper", noise_range: str = "paper",
                 still_fraction: float = 0.0, augment: str = "none"):
        if not images:
            raise DataError("no training images")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; choose {' or '.join(AUGMENTATIONS)}")
        self.augment = augment
        self.frames, self.reference_index, self.crop = frames, reference_index, crop
        self.downsample, self.motion, self.noise_range = downsample, motion, noise_range
        self.still_fraction = still_fraction
        self.window = downsample * crop + 2 * BIG_JITTER
        self.images = [_fit(im, self.window) for im in images]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = self.images[int(rng.integers(len(self.images)))]
        channel = int(rng.integers(image.pixels.shape[2]))
        h, w = image.pixels.shape[:2]
        y, x = int(rng.integers(h - self.window + 1)), int(rng.integers(w - self.window + 1))
        clean = image.linear(channel, (slice(y, y + self.window), slice(x, x + self.window)))
        if self.augment == "dihedral":  # drawn only when on, so that runs without it keep their streams
            clean = dihedral(clean, int(rng.integers(8)))
        return make_burst(clean, self.frames, None, None, rng, self.reference_index, self.crop,
                          self.downsample, motion=self.motion, noise_range=self.noise_range,
                          still_fraction=self.still_fraction)

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (burst [B, N, P, P], noise_map [B, 1, P, P], clean [B, 1, P, P]) float32 tensors."""
        items = [self.sample(rng) for _ in range(batch_size)]
        return tuple(torch.from_numpy(np.stack([it[k] for it in items])) for k in range(3))  # type: ignore[return-value]


def validation_set(images: list[SourceImage], frames: int, reference_index: int, crop: int,
                   per_image: int = 4, seed: int = 0, downsample: int = DOWNSAMPLE,
                   motion: str = "paper") -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fixed validation bursts: `per_image` crops of each validation image (channel, place and offsets
    drawn from `seed`), each at the four gains of AME-KPN Table 1 with the same clean frames and
    offsets. -> {gain: (burst [V,N,P,P], noise_map [V,1,P,P], clean [V,1,P,P])}."""
    return validation_bursts(images, frames, reference_index, crop, per_image, seed, downsample, motion)[0]


def validation_bursts(images: list[SourceImage], frames: int, reference_index: int, crop: int,
                      per_image: int = 4, seed: int = 0, downsample: int = DOWNSAMPLE,
                      motion: str = "paper") -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], np.ndarray]:
    """validation_set's bursts and each burst's frame offsets [V, N, 2] (full-resolution pixels, as
    sample_offsets draws them; the same at every gain), for benchmarks that need the true motion."""
    sampler = BurstSampler(images, frames, reference_index, crop, downsample, motion)
    out: dict[str, list] = {g: [] for g in VALIDATION_GAINS}
    all_offsets = []
    for i, image in enumerate(sampler.images):
        for k in range(per_image):
            rng = np.random.default_rng([seed, i, k])
            channel = int(rng.integers(image.pixels.shape[2]))
            h, w = image.pixels.shape[:2]
            y, x = int(rng.integers(h - sampler.window + 1)), int(rng.integers(w - sampler.window + 1))
            clean = image.linear(channel, (slice(y, y + sampler.window), slice(x, x + sampler.window)))
            offsets = sample_offsets(rng, frames, reference_index, motion)
            all_offsets.append(offsets)
            for g, (sr, ss) in VALIDATION_GAINS.items():
                noise_rng = np.random.default_rng([seed, i, k, int(g[-1])])
                out[g].append(make_burst(clean, frames, sr, ss, noise_rng, reference_index, crop, downsample,
                                         offsets=offsets, position=(BIG_JITTER, BIG_JITTER)))
    sets = {g: tuple(torch.from_numpy(np.stack([it[j] for it in items])) for j in range(3))  # type: ignore[misc]
            for g, items in out.items()}
    return sets, np.stack(all_offsets)
