"""runtime.symmetry: the 8 symmetries of the square against index formulas, and the self-ensemble
against a direct average of the turned runs (numpy only: the tiny ONNX model of the runtime tests)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from runtime.errors import UserError
from runtime.symmetry import DIHEDRAL_COUNT, dihedral, self_ensemble, square_limit, undo_dihedral
from test_runtime_fixtures import make_tiny_model


def _naive(img: np.ndarray, k: int) -> np.ndarray:
    """k % 4 counter-clockwise quarter turns, out[y, x] = img[x, n-1-y] each, then a transpose for k >= 4."""
    n = img.shape[0]
    out = img
    for _ in range(k % 4):
        out = np.array([[out[x, n - 1 - y] for x in range(n)] for y in range(n)])
    return out.T if k >= 4 else out


def test_dihedral_matches_index_formulas_and_undo_inverts_it():
    img = np.arange(16.0).reshape(4, 4)
    for k in range(DIHEDRAL_COUNT):
        assert np.array_equal(dihedral(img, k), _naive(img, k)), k
    assert len({dihedral(img, k).tobytes() for k in range(DIHEDRAL_COUNT)}) == 8  # the whole group
    stack = np.random.default_rng(0).standard_normal((2, 3, 5, 7))  # leading axes untouched, h != w
    for k in range(DIHEDRAL_COUNT):
        turned = dihedral(stack, k)
        swapped = (k % 2 == 1) != (k >= 4)  # an odd number of quarter turns or a transpose, not both
        assert turned.shape == ((2, 3, 7, 5) if swapped else (2, 3, 5, 7)), k
        assert np.array_equal(undo_dihedral(turned, k), stack), k
        assert np.array_equal(turned[1, 2], dihedral(stack[1, 2], k))


def test_square_limit():
    assert square_limit(None) is None
    assert square_limit((512, 1024)) == (512, 512)


def test_self_ensemble_is_the_mean_of_the_turned_runs(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.onnx")  # its 5x5 kernel is not symmetric: the turns differ
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def run(b, m):
        return session.run(["denoised"], {"burst": b, "noise_map": m})[0]

    rng = np.random.default_rng(1)
    burst = rng.uniform(0, 1, (2, 8, 16, 24)).astype(np.float32)
    nmap = rng.uniform(0.01, 0.1, (2, 1, 16, 24)).astype(np.float32)
    got = self_ensemble(run)(burst, nmap)
    # the reference turns with np.rot90/transpose directly, run by run
    outs = []
    for k in range(DIHEDRAL_COUNT):
        b, m = np.rot90(burst, k % 4, axes=(2, 3)), np.rot90(nmap, k % 4, axes=(2, 3))
        if k >= 4:
            b, m = b.transpose(0, 1, 3, 2), m.transpose(0, 1, 3, 2)
        o = run(np.ascontiguousarray(b), np.ascontiguousarray(m))
        if k >= 4:
            o = o.transpose(0, 1, 3, 2)
        outs.append(np.rot90(o, -(k % 4), axes=(2, 3)))
    want = np.mean(outs, axis=0)
    assert got.shape == (2, 1, 16, 24) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-6
    assert np.abs(got - run(burst, nmap)).max() > 1e-3  # not the plain run: the ensemble really averages
    # 4: the quarter turns, symmetries 0-3; 1: the plain run itself
    assert np.abs(self_ensemble(run, 4)(burst, nmap) - np.mean(outs[:4], axis=0)).max() <= 1e-6
    assert self_ensemble(run, 1) is run
    with pytest.raises(UserError, match="--self-ensemble 3: choose 1"):
        self_ensemble(run, 3)
