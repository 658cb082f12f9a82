"""Reading and writing frames: PNG 8/16-bit, TIFF uint8/uint16/float32, JPEG.

Frames are kept in their file's dtype (uint8, uint16 or float32) as [H, W, C] arrays; conversion to
linear float32 happens per tile (`to_linear`), so a 4000x3000 burst costs its file size in memory,
not four times that.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from natsort import natsorted

from .errors import UserError, first_line

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TIFF_EXTENSIONS = (".tif", ".tiff")

# sRGB transfer function (IEC 61966-2-1), the same constants as train.metrics
SRGB_ALPHA = 0.055
SRGB_THRESHOLD = 0.0031308  # linear
SRGB_THRESHOLD_ENCODED = 0.04045


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    power = ((np.maximum(x, SRGB_THRESHOLD_ENCODED) + SRGB_ALPHA) / (1 + SRGB_ALPHA)) ** 2.4
    return np.where(x <= SRGB_THRESHOLD_ENCODED, x / 12.92, power).astype(np.float32)


def linear_to_srgb(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    power = (1 + SRGB_ALPHA) * np.maximum(y, SRGB_THRESHOLD) ** (1 / 2.4) - SRGB_ALPHA
    return np.where(y <= SRGB_THRESHOLD, 12.92 * y, power).astype(np.float32)


_LUTS: dict[tuple[str, bool], np.ndarray] = {}


def _lut(dtype: np.dtype, linear: bool) -> np.ndarray:
    key = (np.dtype(dtype).name, linear)
    if key not in _LUTS:
        top = np.iinfo(dtype).max
        codes = np.arange(top + 1, dtype=np.float32) / top
        _LUTS[key] = codes if linear else srgb_to_linear(codes)
    return _LUTS[key]


def to_linear(pixels: np.ndarray, linear: bool) -> np.ndarray:
    """File values -> linear float32 intensities (integers through a lookup table)."""
    if pixels.dtype == np.float32:
        return pixels if linear else srgb_to_linear(pixels)
    return _lut(pixels.dtype, linear)[pixels]


def from_linear(values: np.ndarray, dtype: np.dtype, linear: bool, rows: int = 256) -> np.ndarray:
    """Linear float32 -> file values of `dtype` (sRGB re-encoded unless `linear`), `rows` rows at a
    time so that the temporaries stay small on big frames."""
    dtype = np.dtype(dtype)
    if values.ndim >= 2 and values.shape[0] > rows:
        out = np.empty(values.shape, dtype=dtype)
        for y in range(0, values.shape[0], rows):
            out[y : y + rows] = from_linear(values[y : y + rows], dtype, linear, rows)
        return out
    if dtype == np.float32:
        return values.astype(np.float32) if linear else linear_to_srgb(values)
    encoded = values if linear else linear_to_srgb(values)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(np.clip(encoded, 0.0, 1.0) * top), 0, top).astype(dtype)


@dataclass
class Frame:
    path: Path
    pixels: np.ndarray  # [H, W, C], uint8 / uint16 / float32

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.pixels.shape  # type: ignore[return-value]


def list_frames(folder: Path) -> list[Path]:
    """The images of `folder` in natural sort order; UserError when there are none."""
    if not folder.exists():
        raise UserError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{folder}: is not a folder (give the folder holding the burst's frames)")
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise UserError(f"{folder}: the folder is empty (put the burst's frames in it)")
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise UserError(
            f"{folder}: no image files (looked for {', '.join(IMAGE_EXTENSIONS)}; found {len(entries)} other entries)"
        )
    return [Path(p) for p in natsorted(images, key=lambda p: p.name)]


def read_frame(path: Path) -> Frame:
    """Read one frame as [H, W, C] in its own dtype; UserError for anything unusable."""
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            import tifffile

            arr = tifffile.imread(str(path))
        else:
            import imageio.v3 as iio

            arr = iio.imread(path)
    except Exception as exc:  # truncated, corrupt, unknown format: every reader raises its own type
        raise UserError(f"{path}: cannot read this image ({first_line(exc)}); is it truncated or corrupt?") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] > 4 or min(arr.shape[:2]) < 1:
        raise UserError(f"{path}: unsupported image layout {arr.shape} (expected H x W with 1 to 4 channels)")
    if arr.dtype in (np.float16, np.float64):
        arr = arr.astype(np.float32)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        raise UserError(f"{path}: unsupported pixel type {arr.dtype} (use 8/16-bit integers or 32-bit float)")
    if arr.dtype == np.float32 and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise UserError(f"{path}: {bad} pixels are NaN or Inf; fix or drop this frame")
    return Frame(path, np.ascontiguousarray(arr))


def read_frames(paths: list[Path]) -> list[Frame]:
    frames = [read_frame(p) for p in paths]
    check_consistent(frames)
    return frames


def check_consistent(frames: list[Frame]) -> None:
    first = frames[0]
    for f in frames[1:]:
        if f.shape != first.shape:
            raise UserError(
                f"{f.path}: size {f.shape[1]}x{f.shape[0]} with {f.shape[2]} channel(s) differs from "
                f"{first.path.name} ({first.shape[1]}x{first.shape[0]}, {first.shape[2]} channel(s)); "
                "all frames of a burst must match"
            )
        if f.pixels.dtype != first.pixels.dtype:
            raise UserError(
                f"{f.path}: pixel type {f.pixels.dtype} differs from {first.path.name} ({first.pixels.dtype}); "
                "all frames of a burst must match"
            )


def default_suffix(paths: list[Path]) -> str:
    return ".tif" if paths[0].suffix.lower() in TIFF_EXTENSIONS else ".png"


def check_output(output: Path, inputs: list[Path], pixels_dtype: np.dtype) -> None:
    """Refuse outputs that would overwrite an input, land nowhere, or cannot hold the result."""
    parent = output.parent
    for p in inputs:
        if output.resolve() == p.resolve() or (output.exists() and p.exists() and os.path.samefile(output, p)):
            raise UserError(f"{output}: is an input frame; choose another output with -o")
    if output.exists() and output.is_dir():
        raise UserError(f"{output}: is a folder; give a file name with -o")
    if not parent.exists():
        raise UserError(f"{parent}: output folder does not exist; create it or choose another -o")
    if not parent.is_dir():
        raise UserError(f"{parent}: output folder is not a folder; choose another -o")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{parent}: output folder is not writable; choose another -o")
    suffix = output.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise UserError(f"{output}: unknown output format {output.suffix!r}; use .png, .tif or .jpg")
    if suffix in (".jpg", ".jpeg") and np.dtype(pixels_dtype) != np.uint8:
        raise UserError(f"{output}: JPEG holds 8-bit images only; use .png or .tif for this {np.dtype(pixels_dtype)} burst")
    if np.dtype(pixels_dtype) == np.float32 and suffix not in TIFF_EXTENSIONS:
        raise UserError(f"{output}: float input needs a TIFF output (.tif) to keep its values")


def write_atomic(output: Path, pixels: np.ndarray) -> None:
    """Write `pixels` ([H, W, C]) to `output` through a temporary file in the same folder + os.replace."""
    arr = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    suffix = output.suffix.lower()
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=suffix, dir=output.parent)
    os.close(fd)
    try:
        if suffix in TIFF_EXTENSIONS:
            import tifffile

            tifffile.imwrite(tmp, arr, photometric="rgb" if arr.ndim == 3 and arr.shape[2] in (3, 4) else "minisblack")
        else:
            import imageio.v3 as iio

            kwargs = {"quality": 95} if suffix in (".jpg", ".jpeg") else {}
            if suffix in (".jpg", ".jpeg") and arr.dtype != np.uint8:
                raise UserError(f"{output}: JPEG holds 8-bit images only; use .png or .tif for this output")
            iio.imwrite(tmp, arr, extension=suffix, **kwargs)
        os.replace(tmp, output)
    except UserError:
        _unlink(tmp)
        raise
    except OSError as exc:
        _unlink(tmp)
        raise UserError(f"{output}: cannot write ({first_line(exc)})") from None
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
