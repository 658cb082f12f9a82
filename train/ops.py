"""The two custom ops of kpn-deploy, defined once, here: their PyTorch reference.

`kpn::adaptive_conv` and `kpn::trilinear_sample` are `torch.library` custom ops with fake (meta)
kernels and autograd, so models train through them and `torch.onnx.export` sees ONE op per use,
which the exporter turns into ONE `kpn` node. Every other face of each op (the ONNX function body,
the CUDA kernel, the CPU build of the kernel math, the TensorRT plugin) is tested against these
functions. Semantics, shapes and edge behaviour: docs/ops.md.

Both ops compute in float32 (or float64 for float64 inputs) and return the input dtype, so float16
tensors are accumulated in float32, as the CUDA kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adaptive_conv", "trilinear_sample"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# AdaptiveConv
# --------------------------------------------------------------------------------------------
def _adaptive_conv_math(frames: Tensor, kernels: Tensor, kernel_size: int) -> Tensor:
    """out[b,n,c,y,x] = sum_{i,j<K} kernels[b,n,i*K+j,y,x] * frames[b,n,c,y+i-K//2,x+j-K//2]."""
    b, n, c, h, w = frames.shape
    k = kernel_size
    compute = _compute_dtype(frames.dtype)
    # unfold lists the K*K neighbours in row-major (i, j) order, zero outside the image.
    patches = torch.nn.functional.unfold(
        frames.reshape(b * n, c, h, w).to(compute), kernel_size=k, padding=k // 2
    ).view(b, n, c, k * k, h, w)
    out = (patches * kernels.to(compute).unsqueeze(2)).sum(dim=3)
    return out.to(frames.dtype)


def _check_adaptive_conv(frames: Tensor, kernels: Tensor, kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"adaptive_conv: kernel_size must be odd and positive, got {kernel_size}")
    if frames.dim() != 5 or kernels.dim() != 5:
        raise ValueError(
            f"adaptive_conv: frames [B,N,C,H,W] and kernels [B,N,K*K,H,W] must be 5-D, got "
            f"{tuple(frames.shape)} and {tuple(kernels.shape)}"
        )
    b, n, _, h, w = frames.shape
    expected = (b, n, kernel_size * kernel_size, h, w)
    if tuple(kernels.shape) != expected:
        raise ValueError(
            f"adaptive_conv: kernels must have shape {expected} for frames {tuple(frames.shape)} "
            f"and kernel_size {kernel_size}, got {tuple(kernels.shape)}"
        )
    if frames.dtype != kernels.dtype:
        raise ValueError(f"adaptive_conv: dtypes differ ({frames.dtype} vs {kernels.dtype})")


@torch.library.custom_op("kpn::adaptive_conv", mutates_args=())
def _adaptive_conv_op(frames: Tensor, kernels: Tensor, kernel_size: int) -> Tensor:
    _check_adaptive_conv(frames, kernels, kernel_size)
    return _adaptive_conv_math(frames, kernels, kernel_size)


@_adaptive_conv_op.register_fake
def _(frames: Tensor, kernels: Tensor, kernel_size: int) -> Tensor:
    return frames.new_empty(frames.shape)


# --------------------------------------------------------------------------------------------
# TrilinearSample
# --------------------------------------------------------------------------------------------
def _trilinear_sample_math(video: Tensor, offsets: Tensor, reference_frame: int) -> Tensor:
    """Trilinear interpolation of video [B,C,T,H,W] at (t_ref+dt, y+dy, x+dx) -> [B,C,S,H,W].

    Each of the 8 corners contributes zero when it lies outside the clip. Positions are formed as
    integer base + relative offset in float32 (never absolute fp16 coordinates).
    """
    b, c, t, h, w = video.shape
    s = offsets.shape[1]
    compute = _compute_dtype(video.dtype)
    off = offsets.to(compute)
    ys = torch.arange(h, device=video.device, dtype=compute).view(1, 1, h, 1)
    xs = torch.arange(w, device=video.device, dtype=compute).view(1, 1, 1, w)
    pos_t = off[:, :, 0] + float(reference_frame)  # [B,S,H,W]
    pos_y = off[:, :, 1] + ys
    pos_x = off[:, :, 2] + xs
    t0, y0, x0 = pos_t.floor(), pos_y.floor(), pos_x.floor()
    ft, fy, fx = pos_t - t0, pos_y - y0, pos_x - x0
    t0, y0, x0 = t0.long(), y0.long(), x0.long()

    flat = video.to(compute).reshape(b, c, t * h * w)
    out = torch.zeros(b, c, s * h * w, dtype=compute, device=video.device)
    for dt_corner in (0, 1):
        ti = t0 + dt_corner
        wt = ft if dt_corner else 1.0 - ft
        for dy_corner in (0, 1):
            yi = y0 + dy_corner
            wy = fy if dy_corner else 1.0 - fy
            for dx_corner in (0, 1):
                xi = x0 + dx_corner
                wx = fx if dx_corner else 1.0 - fx
                inside = (ti >= 0) & (ti < t) & (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
                index = (ti.clamp(0, t - 1) * h + yi.clamp(0, h - 1)) * w + xi.clamp(0, w - 1)
                weight = (wt * wy * wx) * inside.to(compute)  # [B,S,H,W]
                gathered = torch.gather(flat, 2, index.reshape(b, 1, s * h * w).expand(b, c, -1))
                out = out + gathered * weight.reshape(b, 1, s * h * w)
    return out.view(b, c, s, h, w).to(video.dtype)


def _check_trilinear_sample(video: Tensor, offsets: Tensor, reference_frame: int) -> None:
    if video.dim() != 5 or offsets.dim() != 5:
        raise ValueError(
            f"trilinear_sample: video [B,C,T,H,W] and offsets [B,S,3,H,W] must be 5-D, got "
            f"{tuple(video.shape)} and {tuple(offsets.shape)}"
        )
    b, _, t, h, w = video.shape
    if offsets.shape[0] != b or offsets.shape[2] != 3 or tuple(offsets.shape[3:]) != (h, w):
        raise ValueError(
            f"trilinear_sample: offsets must have shape [{b}, S, 3, {h}, {w}] for video "
            f"{tuple(video.shape)}, got {tuple(offsets.shape)}"
        )
    if not 0 <= reference_frame < t:
        raise ValueError(f"trilinear_sample: reference_frame {reference_frame} outside [0, {t})")
    if video.dtype != offsets.dtype:
        raise ValueError(f"trilinear_sample: dtypes differ ({video.dtype} vs {offsets.dtype})")


@torch.library.custom_op("kpn::trilinear_sample", mutates_args=())
def _trilinear_sample_op(video: Tensor, offsets: Tensor, reference_frame: int) -> Tensor:
    _check_trilinear_sample(video, offsets, reference_frame)
    return _trilinear_sample_math(video, offsets, reference_frame)


@_trilinear_sample_op.register_fake
def _(video: Tensor, offsets: Tensor, reference_frame: int) -> Tensor:
    b, c = video.shape[0], video.shape[1]
    s, h, w = offsets.shape[1], offsets.shape[3], offsets.shape[4]
    return video.new_empty((b, c, s, h, w))


# --------------------------------------------------------------------------------------------
# Autograd: the backward differentiates the same math the forward ran (one definition of each op).
# --------------------------------------------------------------------------------------------
def _make_backward(math, n_tensor_inputs: int):
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensor_inputs])
        ctx.attribute = inputs[n_tensor_inputs]

    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(ctx.needs_input_grad[i]) for i, x in enumerate(saved)]
            out = math(*leaves, ctx.attribute)
            wanted = [x for x in leaves if x.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_output)) if wanted else iter(())
        return (*[next(grads) if x.requires_grad else None for x in leaves], None)

    return setup_context, backward


_ac_setup, _ac_backward = _make_backward(_adaptive_conv_math, 2)
_adaptive_conv_op.register_autograd(_ac_backward, setup_context=_ac_setup)
_ts_setup, _ts_backward = _make_backward(_trilinear_sample_math, 2)
_trilinear_sample_op.register_autograd(_ts_backward, setup_context=_ts_setup)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def adaptive_conv(frames: Tensor, kernels: Tensor, kernel_size: int) -> Tensor:
    """Per-pixel KxK filtering with predicted kernels.

    frames [B,N,C,H,W], kernels [B,N,K*K,H,W] (same dtype) -> [B,N,C,H,W]. Zero outside the image.
    """
    return torch.ops.kpn.adaptive_conv(frames, kernels, int(kernel_size))


def trilinear_sample(video: Tensor, offsets: Tensor, reference_frame: int | None = None) -> Tensor:
    """Sample video [B,C,T,H,W] at relative 3-D offsets [B,S,3,H,W] = (dt,dy,dx) -> [B,C,S,H,W].

    reference_frame defaults to T // 2.
    """
    if reference_frame is None:
        reference_frame = video.shape[2] // 2
    return torch.ops.kpn.trilinear_sample(video, offsets, int(reference_frame))
