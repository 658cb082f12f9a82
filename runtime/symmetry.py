"""The 8 symmetries of the square (quarter turns and transposes) and the self-ensemble built on them.

`dihedral(a, k)` turns the last two axes by k % 4 quarter turns (np.rot90's direction) and then
transposes them when k >= 4; `undo_dihedral(a, k)` is its inverse. Training's `--augment dihedral`
draws from the same 8 (train.data imports `dihedral` from here), so every turned burst is one the
models were trained on.

The self-ensemble (`--self-ensemble N`) runs the model on the first N of these turns of the input
(4: the quarter turns; 8: also their transposes), turns each output back and averages them: N times
the model time for a cleaner output (test-time augmentation). On kpn-bench's test bursts the 4
quarter turns give 91-98% of the 8 turns' gain (README).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .errors import UserError

DIHEDRAL_COUNT = 8
ENSEMBLE_SIZES = (1, 4, 8)  # 1: the plain run; 4: dihedral(., 0..3), the quarter turns; 8: all


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Symmetry k (0-7) of the square: k % 4 quarter turns of the last two axes, transposed for k >= 4."""
    out = np.rot90(a, k % 4, axes=(-2, -1))
    if k >= 4:
        out = np.swapaxes(out, -2, -1)
    return np.ascontiguousarray(out)


def undo_dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """The inverse of `dihedral(., k)`: undo_dihedral(dihedral(a, k), k) == a."""
    if k >= 4:
        a = np.swapaxes(a, -2, -1)
    return np.ascontiguousarray(np.rot90(a, -(k % 4), axes=(-2, -1)))


Run = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_ensemble_size(turns: int) -> None:
    if turns not in ENSEMBLE_SIZES:
        raise UserError(f"--self-ensemble {turns}: choose 1 (off), 4 (the quarter turns) or 8 (and their transposes)")


def self_ensemble(run: Run, turns: int = DIHEDRAL_COUNT) -> Run:
    """run(burst [B, N, h, w], noise_map [B, 1, h, w]) -> [B, 1, h, w], averaged over symmetries 0..turns-1.

    The windows the runtime passes are multiples of the model's size multiple, so a turned window lies
    on the U-Net's pooling grid like the window itself (tiling stays exact for bounded receptive fields).
    """
    check_ensemble_size(turns)
    if turns == 1:
        return run

    def run_all(burst: np.ndarray, noise_map: np.ndarray) -> np.ndarray:
        total: Optional[np.ndarray] = None
        for k in range(turns):
            out = undo_dihedral(run(dihedral(burst, k), dihedral(noise_map, k)), k).astype(np.float64)
            total = out if total is None else total + out
        return (total / turns).astype(np.float32)

    return run_all


def square_limit(max_hw: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """The largest (h, w) a backend takes in both orientations (a transposed window swaps h and w)."""
    return None if max_hw is None else (min(max_hw), min(max_hw))
