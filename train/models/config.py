"""One config dataclass per model family. A checkpoint stores `config.to_dict()` and rebuilds its model
from it alone (`config_from_dict`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from .blocks import unet_receptive_radius

# The papers' widths (and their reference code's): KPN (Mildenhall et al.) uses a 5-level U-Net of
# 64..512 channels with 3 convolutions per block; AME-KPN's code keeps KPN's backbone; ST-PAN's
# Table I did not survive the text extraction of the paper, so it takes the same backbone.
PAPER_WIDTHS = (64, 128, 256, 512, 512)
PAPER_CONVS = 3
# Small presets train on a 2-core CPU (< 2M parameters, ~tens of kMAC per pixel).
SMALL_WIDTHS = (16, 32, 64, 128)
SMALL_CONVS = 2
# Medium: the small layout at twice the channels (~4x the parameters, ~2M; ~3x the MACs per pixel), for a lent
# GPU: a step between what a CPU trains and the papers' ~28M, still small enough to ship (~8 MB of fp32 weights).
MEDIUM_WIDTHS = (32, 64, 128, 256)
MEDIUM_CONVS = 2
# KPNConfig.kernels: how the predicted kernels are normalised.
KERNEL_FORMS = ("softmax", "projected", "raw")


@dataclass
class KPNConfig:
    """KPN (Mildenhall et al. 2018) and, with attention and residual branches, AME-KPN."""

    family: str = "kpn"
    width: str = "small"
    frames: int = 8
    kernel_size: int = 5
    widths: tuple[int, ...] = SMALL_WIDTHS
    convs_per_block: int = SMALL_CONVS
    reference_index: int = 0
    # How the head's N*K*K outputs z of a pixel become its kernels (KERNEL_FORMS; kpn-train --kernels):
    # "softmax": N * softmax(z): every output pixel is a convex combination of burst pixels, so it stays
    #   on the image's scale whatever the net's state (with the papers' raw kernels short CPU trainings
    #   spent most steps learning kernel sums of 1, and their errors showed as brightness bias). But a
    #   tap's gradient is proportional to its weight: once a frame's share is small it gets almost none,
    #   and our softmax KPNs learned to ignore the other frames for good.
    # "projected": z + (N - sum z) / (N*K*K): the raw kernels moved onto the plane where the taps sum to
    #   N (Y = mean_i X_i (*) K_i then keeps the image's brightness), a linear map, so every tap keeps
    #   its gradient whatever its weight. Taps may be negative, as the papers' raw kernels.
    # "raw": the papers' kernels, z as it is.
    kernels: str = "softmax"

    def __post_init__(self):
        self.widths = tuple(self.widths)
        if self.kernels not in KERNEL_FORMS:
            raise ValueError(f"{self.family}: unknown kernels {self.kernels!r}; choose {', '.join(KERNEL_FORMS)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"{self.family}: kernel_size must be odd, got {self.kernel_size}")

    @property
    def attention(self) -> bool:
        return self.family == "ame-kpn"

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def receptive_radius(self) -> int:
        # U-Net, then the 3x3 head, then the KxK adaptive convolution.
        return unet_receptive_radius(self.widths, self.convs_per_block) + 1 + self.kernel_size // 2

    @property
    def tiling_exact(self) -> bool:
        # AME-KPN's channel attention pools globally: a tile sees other statistics than the frame.
        return not self.attention

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d


@dataclass
class PANConfig:
    """ST-PAN (Xu et al.): 3x3x3 sampling grid over T=5 frames. PAN is the 2-D case (T=1, 5x5 grid)."""

    family: str = "st-pan"
    width: str = "small"
    frames: int = 5
    grid: tuple[int, int, int] = (3, 3, 3)  # (t, y, x) extent of the regular grid
    groups: int = 3  # s of the annealed grouped regulariser (eq. 10-11)
    offset_scale: float = 16.0  # tanh output x this = spatial offset in pixels (paper: 128)
    widths: tuple[int, ...] = SMALL_WIDTHS
    convs_per_block: int = SMALL_CONVS
    weight_width: int = 32  # channels of the three-convolution weight branch
    reference_index: int = field(default=-1)  # -1: T // 2, filled in __post_init__

    def __post_init__(self):
        self.grid = tuple(self.grid)
        self.widths = tuple(self.widths)
        if self.reference_index < 0:
            self.reference_index = self.frames // 2
        if self.samples % self.groups:
            raise ValueError(f"{self.family}: {self.samples} samples do not split into {self.groups} groups")

    @property
    def samples(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def receptive_radius(self) -> int:
        # U-Net + offset head, the farthest sample (offset + grid + bilinear corner), then the three
        # 3x3 convolutions of the weight branch, whose inputs are themselves samples.
        sample_reach = int(self.offset_scale) + self.grid[1] // 2 + 1
        return unet_receptive_radius(self.widths, self.convs_per_block) + 1 + sample_reach + 3

    @property
    def tiling_exact(self) -> bool:
        return True

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        d["grid"] = list(self.grid)
        return d


ModelConfig = KPNConfig | PANConfig
FAMILIES = ("kpn", "ame-kpn", "st-pan", "pan")
# kpn-train --width: the backbone of each preset.
BACKBONES = {
    "small": dict(widths=SMALL_WIDTHS, convs_per_block=SMALL_CONVS),
    "medium": dict(widths=MEDIUM_WIDTHS, convs_per_block=MEDIUM_CONVS),
    "paper": dict(widths=PAPER_WIDTHS, convs_per_block=PAPER_CONVS),
}
WIDTHS = tuple(BACKBONES)


def default_config(family: str, width: str = "small") -> ModelConfig:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if width not in WIDTHS:
        raise ValueError(f"unknown width {width!r}; choose one of {', '.join(WIDTHS)}")
    backbone = BACKBONES[width]
    if family in ("kpn", "ame-kpn"):
        return KPNConfig(family=family, width=width, **backbone)
    paper = width == "paper"
    common = dict(width=width, offset_scale=128.0 if paper else 16.0, weight_width=64 if paper else 32, **backbone)
    if family == "st-pan":
        return PANConfig(family="st-pan", frames=5, grid=(3, 3, 3), groups=3, **common)
    return PANConfig(family="pan", frames=1, grid=(1, 5, 5), groups=1, **common)


def config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    family = d.get("family")
    if family in ("kpn", "ame-kpn"):
        cls = KPNConfig
    elif family in ("st-pan", "pan"):
        cls = PANConfig
    else:
        raise ValueError(f"unknown model family {family!r} in config")
    if "softmax_kernels" in d and cls is KPNConfig:  # checkpoints before `kernels` (True for all shipped)
        d["kernels"] = "softmax" if d.pop("softmax_kernels") else "raw"
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown config fields for {family}: {sorted(unknown)}")
    for key in ("widths", "grid"):
        if key in d:
            d[key] = tuple(d[key])
    return cls(**d)


def config_sha256(cfg: ModelConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()
