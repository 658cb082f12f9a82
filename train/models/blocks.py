"""Building blocks shared by the model families: the U-Net backbone and the attention modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_stack(in_ch: int, out_ch: int, n_convs: int) -> nn.Sequential:
    """n_convs 3x3 convolutions with ReLU (the papers' basic block)."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ChannelAttention(nn.Module):
    """CBAM channel attention (the AME-KPN paper's M_Ac, its ref. [19]): global avg+max pool, shared MLP."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class SpatialAttention(nn.Module):
    """CBAM spatial attention (M_As): channel avg and max maps -> 7x7 conv -> sigmoid."""

    KERNEL = 7

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, self.KERNEL, padding=self.KERNEL // 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)))


class DecoderBlock(nn.Module):
    """Upsample x2 (bilinear), concatenate the skip, convolve; optionally refine with CBAM (eq. 5-6)."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, n_convs: int, attention: bool):
        super().__init__()
        self.convs = conv_stack(in_ch + skip_ch, out_ch, n_convs)
        self.channel_attention = ChannelAttention(out_ch) if attention else None
        self.spatial_attention = SpatialAttention() if attention else None

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.convs(torch.cat([x, skip], dim=1))
        if self.channel_attention is not None:
            x = self.channel_attention(x) * x  # F_c = M_Ac(F_d) * F_d
            x = self.spatial_attention(x) * x  # F_s = M_As(F_c) * F_c
        return x


def unet_receptive_radius(widths: tuple[int, ...], convs_per_block: int) -> int:
    """A bound on how far (in input pixels) a UNet output pixel can see, ignoring global attention."""
    levels = len(widths)
    radius = 0
    for level in range(levels):  # encoder convs, and the pooling below each level
        radius += convs_per_block * 2**level
        if level < levels - 1:
            radius += 2**level
    for level in range(levels - 2, -1, -1):  # bilinear upsampling reaches one coarse pixel; convs
        radius += 2 ** (level + 1) + convs_per_block * 2**level
    return radius


class UNet(nn.Module):
    """Encoder-decoder with skip connections; average-pool down, bilinear up (as in KPN).

    widths[0] is the full-resolution width; len(widths)-1 poolings, so H and W must be multiples of
    2 ** (len(widths) - 1). Returns the full-resolution feature map with widths[0] channels.
    """

    def __init__(self, in_ch: int, widths: tuple[int, ...], convs_per_block: int, attention: bool = False):
        super().__init__()
        self.widths = tuple(widths)
        self.convs_per_block = convs_per_block
        self.encoders = nn.ModuleList()
        ch = in_ch
        for w in widths:
            self.encoders.append(conv_stack(ch, w, convs_per_block))
            ch = w
        self.decoders = nn.ModuleList()
        for level in range(len(widths) - 2, -1, -1):
            self.decoders.append(DecoderBlock(ch, widths[level], widths[level], convs_per_block, attention))
            ch = widths[level]

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = F.avg_pool2d(x, 2)
            x = enc(x)
            skips.append(x)
        for dec, skip in zip(self.decoders, reversed(skips[:-1])):
            x = dec(x, skip)
        return x


def channel_softmax(x: Tensor) -> Tensor:
    """Softmax over dim 1 (channels) of [B, C, H, W], written as max/exp/sum: the same numbers as
    torch.softmax(x, 1), but exported as ONNX reductions rather than one Softmax(axis=1) node, which
    ONNX Runtime's CPU kernel runs ~10x slower on NCHW tensors (measured: 410 ms of a 1.08 s KPN
    forward at 256x256, one thread)."""
    e = (x - x.amax(dim=1, keepdim=True)).exp()
    return e / e.sum(dim=1, keepdim=True)
