"""Shared helpers for the runtime tests: a tiny real ONNX model that follows docs/model-io.md.

The model: x = fixed weighted mean of the N frames (1x1 conv); y = 5x5 conv of x (zero padding);
z = 2x2 average pool of y, upsampled back (nearest); out = y + 0.1 z + 0.01 noise_map. Receptive
radius: 2 (5x5) + 1 (pool/upsample) = 3 < the declared 8, size multiple 8 (the pool needs 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_tiny_model(path: Path, frames: int = 8, reference_index: int = 0, fp16: bool = False,
                    family: str = "kpn", metadata: dict | None = None) -> Path:
    rng = np.random.default_rng(0)
    dt = np.float16 if fp16 else np.float32
    et = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    w_mean = np.full((1, frames, 1, 1), 0.5 / frames, dtype=np.float32)
    w_mean[0, reference_index] += 0.5
    k = rng.uniform(0.0, 1.0, (1, 1, 5, 5)).astype(np.float32)
    k /= k.sum()
    inits = [
        numpy_helper.from_array(w_mean.astype(dt), "w_mean"),
        numpy_helper.from_array(k.astype(dt), "k5"),
        numpy_helper.from_array(np.array(0.1, dtype=dt), "c01"),
        numpy_helper.from_array(np.array(0.01, dtype=dt), "c001"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["burst", "w_mean"], ["x"]),
        helper.make_node("Conv", ["x", "k5"], ["y"], pads=[2, 2, 2, 2]),
        helper.make_node("AveragePool", ["y"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["z"], mode="nearest"),
        helper.make_node("Mul", ["z", "c01"], ["z1"]),
        helper.make_node("Mul", ["noise_map", "c001"], ["n1"]),
        helper.make_node("Add", ["y", "z1"], ["s"]),
        helper.make_node("Add", ["s", "n1"], ["denoised"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("burst", et, ["batch", frames, "height", "width"]),
         helper.make_tensor_value_info("noise_map", et, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("denoised", et, ["batch", 1, "height", "width"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "kpn.family": family, "kpn.width": "small", "kpn.frames": str(frames),
        "kpn.reference_index": str(reference_index), "kpn.size_multiple": "8",
        "kpn.receptive_radius": "8", "kpn.tiling_exact": "1", "kpn.precision": "fp16" if fp16 else "fp32",
    }
    meta.update(metadata or {})
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def write_burst(folder: Path, frames: np.ndarray, ext: str = ".png", names: list[str] | None = None) -> list[Path]:
    """frames [N, H, W] or [N, H, W, C] in file dtype -> files frame_0.ext ... (natural order)."""
    import imageio.v3 as iio
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        p = folder / (names[i] if names else f"frame_{i}{ext}")
        if ext in (".tif", ".tiff"):
            tifffile.imwrite(p, f)
        else:
            iio.imwrite(p, f)
        paths.append(p)
    return paths


def noisy_frames(n: int, h: int, w: int, c: int | None = None, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth pattern shifted a little per frame, with noise, in the file dtype."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        base = 0.5 + 0.3 * np.sin((xx + i) / 7.0) * np.cos((yy - i) / 11.0)
        chans = [np.clip(base * (0.8 + 0.1 * j) + 0.03 * rng.standard_normal((h, w)), 0, 1) for j in range(c or 1)]
        f = np.stack(chans, -1) if c else chans[0]
        out.append(f)
    arr = np.stack(out).astype(np.float32)
    if dtype == np.float32:
        return arr
    top = np.iinfo(dtype).max
    return np.rint(arr * top).astype(dtype)
