"""Regenerate examples/burst/: 8 noisy 8-bit sRGB PNG frames of a real photograph with synthetic motion.

Source: scikit-image's bundled `astronaut` photograph (skimage.data.astronaut(): Eileen Collins, NASA;
public domain per skimage's docs), linearised with the inverse sRGB gamma, then the project's own
generator train.data.make_burst (AME-KPN section 3.1): integer shifts per frame (the same for the
three colour channels), box downsampling by 2, and heteroscedastic Gaussian noise
x ~ N(y, sigma_r^2 + sigma_s * y) at AME-KPN Table 1's gain 2 (sigma_r = 2e-2, sigma_s = 4.3e-3),
re-encoded to sRGB. Needs the train extra (torch, scikit-image): pip install -e '.[train]'.

    python examples/make_example_burst.py [-o examples/burst] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIGMA_R, SIGMA_S = 2e-2, 4.3e-3  # AME-KPN Table 1, gain 2
FRAMES, SIZE, DOWNSAMPLE, BIG_JITTER, SMALL_JITTER = 8, 128, 2, 16, 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "examples" / "burst")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import imageio.v3 as iio
    import skimage.data

    from runtime.frames import from_linear
    from train.data import make_burst, sample_offsets
    from train.metrics import srgb_to_linear

    rgb = skimage.data.astronaut().astype(np.float64) / 255.0  # 512 x 512 x 3, sRGB
    rng = np.random.default_rng(args.seed)
    offsets = sample_offsets(rng, FRAMES, 0, "paper", BIG_JITTER, SMALL_JITTER)
    position = (40, 150)  # the reference window (256 x 256 before downsampling): the face
    channels = []
    for c in range(3):
        noisy, _, _ = make_burst(srgb_to_linear(rgb[:, :, c]), FRAMES, SIGMA_R, SIGMA_S, rng, crop=SIZE,
                                 downsample=DOWNSAMPLE, offsets=offsets, position=position, big_jitter=BIG_JITTER)
        channels.append(noisy)
    frames = from_linear(np.stack(channels, -1), np.uint8, linear=False)  # [N, h, w, 3] sRGB 8-bit
    args.output.mkdir(parents=True, exist_ok=True)
    for old in args.output.glob("frame_*.png"):
        old.unlink()
    for i, f in enumerate(frames):
        iio.imwrite(args.output / f"frame_{i}.png", f)
    print(f"wrote {FRAMES} frames {SIZE}x{SIZE} to {args.output} (offsets {offsets.tolist()})")


if __name__ == "__main__":
    main()
