"""Frame selection, noise maps and tiled inference (numpy only).

Tiling is exact: the frame is reflect-padded to a multiple of `size_multiple` once (as an untiled run
does), cut into cores of `tile` pixels (a multiple of `size_multiple`), and each core is run with a
margin of `overlap` >= `receptive_radius` pixels (rounded up to a multiple of `size_multiple`, so
every window starts on the U-Net's pooling grid); only the core of each window's output is kept.
A pixel's output then sees exactly the inputs it sees in the untiled run, for models whose
receptive field is bounded (`kpn.tiling_exact` = 1; AME-KPN's global channel pooling is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from .errors import UserError
from .model import ModelInfo

AUTO_UNTILED_PIXELS = 1024 * 1024  # padded frames up to this size run in one piece
DEFAULT_TILE = 512


def nearest_order(count: int, ref: int) -> list[int]:
    """Indices 0..count-1 by distance to `ref` (ties: the earlier frame first)."""
    return sorted(range(count), key=lambda i: (abs(i - ref), i))


def arrange(chosen: list[int], ref: int, reference_index: int) -> list[int]:
    """Model order: the other frames in time order with the reference placed at `reference_index`."""
    others = sorted(i for i in chosen if i != ref)
    return others[:reference_index] + [ref] + others[reference_index:]


def select_burst(count: int, ref: int, info: ModelInfo, pad: bool) -> tuple[list[int], Optional[str]]:
    """-> (frame indices in model order, a note for the user or None)."""
    n = info.frames
    if count > n:
        chosen = nearest_order(count, ref)[:n]
        return arrange(chosen, ref, info.reference_index), f"the folder has {count} frames; using the {n} nearest the reference"
    if count < n:
        if not pad:
            raise UserError(
                f"the {info.family} model needs {n} frames, the folder has {count}; add frames or pass "
                "--pad-frames (repeats the reference frame)"
            )
        others = sorted(i for i in range(count) if i != ref)
        order = others[: info.reference_index] + [ref] * (n - len(others)) + others[info.reference_index :]
        return order, f"the folder has {count} frames; padded to {n} by repeating the reference"
    return arrange(list(range(count)), ref, info.reference_index), None


def video_window(t: int, count: int, info: ModelInfo) -> list[int]:
    """Frames for output frame t of a sequence: the N time offsets nearest 0 (e.g. -2..2 for T = 5),
    in the model's order (others in time order, t at reference_index), mirrored at the sequence ends
    (frame -1 is frame 1; the end frame is not repeated)."""
    n = info.frames
    offsets = sorted(range(-n, n + 1), key=lambda d: (abs(d), d))[:n]
    others = sorted(d for d in offsets if d != 0)
    order = others[: info.reference_index] + [0] + others[info.reference_index :]
    return [int(_reflect(np.array(t + d), count)) for d in order]


def noise_map(reference: np.ndarray, sigma_r: float, sigma_s: float) -> np.ndarray:
    return np.sqrt(sigma_r**2 + sigma_s * np.maximum(reference, 0.0)).astype(np.float32)


@dataclass
class TilePlan:
    padded: tuple[int, int]
    tile: Optional[int]  # None: one window
    overlap: int
    windows: list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]  # (window, core) y0,y1,x0,x1


def plan_tiles(h: int, w: int, info: ModelInfo, tile: Optional[int], max_hw: Optional[tuple[int, int]] = None) -> TilePlan:
    m = info.size_multiple
    hp, wp = math.ceil(h / m) * m, math.ceil(w / m) * m
    overlap = math.ceil(info.receptive_radius / m) * m
    if tile is None:
        fits = max_hw is None or (hp <= max_hw[0] and wp <= max_hw[1])
        if hp * wp <= AUTO_UNTILED_PIXELS and fits:
            return TilePlan((hp, wp), None, overlap, [((0, hp, 0, wp), (0, hp, 0, wp))])
        tile = DEFAULT_TILE
        if max_hw is not None:
            tile = min(tile, min(max_hw) - 2 * overlap)
    if tile <= 0:
        raise UserError(f"--tile {tile}: must be positive (at least {m}, the model's size multiple)")
    t = max(m, math.ceil(tile / m) * m)
    if max_hw is not None and t + 2 * overlap > min(max_hw):
        raise UserError(f"--tile {tile}: tile + 2 x {overlap} overlap exceeds the engine's largest input {max_hw}; use a smaller --tile")
    windows = []
    for cy0 in range(0, hp, t):
        cy1 = min(cy0 + t, hp)
        for cx0 in range(0, wp, t):
            cx1 = min(cx0 + t, wp)
            win = (max(0, cy0 - overlap), min(hp, cy1 + overlap), max(0, cx0 - overlap), min(wp, cx1 + overlap))
            windows.append((win, (cy0, cy1, cx0, cx1)))
    return TilePlan((hp, wp), t, overlap, windows)


def _reflect(idx: np.ndarray, size: int) -> np.ndarray:
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    i = np.abs(idx) % period
    return np.where(i >= size, period - i, i)


def run_tiled(
    get_window: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    h: int,
    w: int,
    batch: int,
    info: ModelInfo,
    run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tile: Optional[int],
    max_hw: Optional[tuple[int, int]] = None,
    max_batch: Optional[int] = None,
    step: Optional[Callable[[], None]] = None,
) -> np.ndarray:
    """Run the model over the frame tile by tile -> [batch, h, w] float32.

    get_window(rows, cols) -> (burst [batch, N, len(rows), len(cols)], noise_map [batch, 1, ...]) for
    the given source row/column indices (reflect padding already applied to the indices).
    """
    plan = plan_tiles(h, w, info, tile, max_hw)
    out = np.empty((batch, h, w), dtype=np.float32)
    mb = max_batch or batch
    for (wy0, wy1, wx0, wx1), (cy0, cy1, cx0, cx1) in plan.windows:
        if cy0 >= h or cx0 >= w:
            if step:
                step()
            continue  # a core made only of padding
        rows = _reflect(np.arange(wy0, wy1), h)
        cols = _reflect(np.arange(wx0, wx1), w)
        burst, nmap = get_window(rows, cols)
        res = np.concatenate([run(burst[b : b + mb], nmap[b : b + mb]) for b in range(0, batch, mb)])
        ye, xe = min(cy1, h), min(cx1, w)
        out[:, cy0:ye, cx0:xe] = res[:, 0, cy0 - wy0 : ye - wy0, cx0 - wx0 : xe - wx0]
        if step:
            step()
    return out


def tile_count(h: int, w: int, info: ModelInfo, tile: Optional[int], max_hw=None) -> int:
    return len(plan_tiles(h, w, info, tile, max_hw).windows)


def iter_batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))
