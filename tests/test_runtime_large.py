"""A 4000x3000 burst runs tile by tile with bounded memory (peak RSS measured in a child process, from
/proc/self/status VmHWM: getrusage's ru_maxrss survives exec and would report the parent's peak)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from test_runtime_fixtures import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_4000x3000_burst_peak_memory(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.onnx")
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (3000, 4000), dtype=np.uint8)
    for i in range(8):  # 8 x 12 MB uint8 frames
        tifffile.imwrite(folder / f"f{i}.tif", np.roll(base, i, axis=1))
    code = (
        "import sys; from pathlib import Path; from runtime.denoise import denoise_burst; "
        f"r = denoise_burst(Path({str(folder)!r}), model=Path({str(model)!r}), backend='ort-cpu', threads=2); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print('PEAK_MB', int(hwm.split()[1]) / 1024)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    peak = float(r.stdout.split("PEAK_MB")[1])
    out = tifffile.imread(tmp_path / "big-denoised.tif")
    assert out.shape == (3000, 4000) and out.dtype == np.uint8
    # default tiling (512-pixel tiles). Frames in file form: 96 MB, the float32 output 48 MB, Python +
    # ONNX Runtime about 150 MB; an untiled run would need 384 MB more for the float32 burst alone
    assert peak < 500, f"peak RSS {peak:.0f} MB"
    print(f"peak RSS {peak:.0f} MB")
