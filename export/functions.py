"""Standard-ONNX bodies of the two kpn custom ops (model-local functions, domain ``kpn``, version 1).

Each exported model holds ONE ``kpn::AdaptiveConv`` / ``kpn::TrilinearSample`` node per use of an op,
and, in ``ModelProto.functions``, a function of the same domain and name whose body is written here
with standard ONNX ops. ONNX Runtime runs these bodies, so the file needs no custom library; TensorRT's
parser binds the nodes to the plugins of ``libkpn_plugins.so`` instead (docs/export.md).

The semantics are those of the PyTorch reference in ``train/ops.py`` (docs/ops.md); the tests in
``tests/test_onnx_functions.py`` hold the bodies to it.

Both bodies cast their inputs to float32, compute, and cast back to the input dtype (``CastLike``), so
one body serves fp32 and fp16 models, accumulates in fp32 as the CUDA kernels do, and runs on ONNX
Runtime's CPU provider, which has no fp16 Conv or GridSample.

* AdaptiveConv: a depthwise Conv whose K*K one-hot weights are built at run time from the
  ``kernel_size`` attribute (EyeLike of a K*K x K*K matrix) extracts the K*K neighbours of every pixel
  (``auto_pad=SAME_UPPER``: K//2 zeros on each side for odd K), then Mul + ReduceSum with the
  predicted kernels. K-generic: one body for every K.
* TrilinearSample: GridSample on the 5-D clip (opset 20+), ``mode=linear``, ``padding_mode=zeros``
  (each of the 8 corners outside the clip contributes zero, as the reference). Sample positions are
  formed in float32 as integer base + relative offset. The grid is normalised with
  ``align_corners=0`` (index p -> (2p+1)/size - 1) rather than ``align_corners=1``
  (p -> 2p/(size-1) - 1): the latter divides by zero on a size-1 axis and maps every coordinate of
  such an axis to 0, which is wrong for PAN (T = 1) with a nonzero dt, where the reference gives
  weight max(0, 1-|dt|). With ``align_corners=0`` the mapping is affine and exact for every size >= 1,
  so no special case or mask is needed (T = 1, H = 1, W = 1 all follow the reference).
"""

from __future__ import annotations

import onnx
from onnxscript import opset20 as op
from onnxscript import script
from onnxscript.values import Opset

__all__ = [
    "DOMAIN",
    "DOMAIN_VERSION",
    "MIN_OPSET",
    "PLUGIN_ATTRIBUTES",
    "OP_TYPES",
    "AdaptiveConv",
    "TrilinearSample",
    "function_protos",
]

DOMAIN = "kpn"
DOMAIN_VERSION = 1
#: GridSample takes 5-D input from opset 20 on.
MIN_OPSET = 20
#: Attributes every kpn node carries besides its own, for TensorRT's plugin lookup.
PLUGIN_ATTRIBUTES = {"plugin_version": "1", "plugin_namespace": ""}
#: op_type -> (torch op name, name of its int attribute)
OP_TYPES = {
    "AdaptiveConv": ("kpn::adaptive_conv", "kernel_size"),
    "TrilinearSample": ("kpn::trilinear_sample", "reference_frame"),
}

_kpn = Opset(DOMAIN, DOMAIN_VERSION)
_FLOAT = onnx.TensorProto.FLOAT


@script(_kpn, default_opset=op)
def AdaptiveConv(frames, kernels, kernel_size: int):
    """frames [B,N,C,H,W], kernels [B,N,K*K,H,W] -> [B,N,C,H,W]; zero outside the image."""
    shape = op.Shape(frames)
    k = op.Reshape(op.Constant(value_int=kernel_size), op.Constant(value_ints=[1]))
    kk = op.Mul(k, k)
    x = op.Cast(frames, to=1)
    w = op.Cast(kernels, to=1)
    hw = op.Slice(shape, op.Constant(value_ints=[3]), op.Constant(value_ints=[5]))
    # [B*N*C, 1, H, W]
    planes = op.Reshape(x, op.Concat(op.Constant(value_ints=[-1, 1]), hw, axis=0))
    # one-hot weights [K*K, 1, K, K]: filter i*K+j picks the neighbour (i - K//2, j - K//2)
    square = op.ConstantOfShape(op.Concat(kk, kk, axis=0))
    eye = op.EyeLike(square, dtype=1)
    weight = op.Reshape(eye, op.Concat(kk, op.Constant(value_ints=[1]), k, k, axis=0))
    patches = op.Conv(planes, weight, auto_pad="SAME_UPPER")  # [B*N*C, K*K, H, W]
    bnc = op.Slice(shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[3]))
    patches6 = op.Reshape(patches, op.Concat(bnc, kk, hw, axis=0))  # [B,N,C,K*K,H,W]
    weighted = op.Mul(patches6, op.Unsqueeze(w, op.Constant(value_ints=[2])))
    out = op.ReduceSum(weighted, op.Constant(value_ints=[3]), keepdims=0)
    return op.CastLike(out, frames)


@script(_kpn, default_opset=op)
def TrilinearSample(video, offsets, reference_frame: int):
    """video [B,C,T,H,W], offsets [B,S,3,H,W] = (dt,dy,dx) relative -> [B,C,S,H,W]."""
    vshape = op.Cast(op.Shape(video), to=1)
    t = op.Slice(vshape, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]))
    h = op.Squeeze(op.Slice(vshape, op.Constant(value_ints=[3]), op.Constant(value_ints=[4])))
    w = op.Squeeze(op.Slice(vshape, op.Constant(value_ints=[4]), op.Constant(value_ints=[5])))
    off = op.Cast(offsets, to=1)
    axis = op.Constant(value_ints=[2])
    dt = op.Slice(off, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), axis)
    dy = op.Slice(off, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]), axis)
    dx = op.Slice(off, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]), axis)
    zero = op.Constant(value_float=0.0)
    one = op.Constant(value_float=1.0)
    two = op.Constant(value_float=2.0)
    ys = op.Unsqueeze(op.Range(zero, h, one), op.Constant(value_ints=[1]))  # [H, 1]
    xs = op.Range(zero, w, one)  # [W]
    t_ref = op.Cast(op.Constant(value_int=reference_frame), to=1)
    # absolute positions in float32 (integer base + relative offset), [B,S,1,H,W] each
    pos_t = op.Add(dt, t_ref)
    pos_y = op.Add(dy, ys)
    pos_x = op.Add(dx, xs)
    # align_corners=0 normalisation, valid for any size >= 1 (see the module docstring)
    norm_t = op.Sub(op.Div(op.Add(op.Mul(pos_t, two), one), t), one)
    norm_y = op.Sub(op.Div(op.Add(op.Mul(pos_y, two), one), h), one)
    norm_x = op.Sub(op.Div(op.Add(op.Mul(pos_x, two), one), w), one)
    # GridSample wants [B, D_out=S, H_out, W_out, 3] holding (x, y, z)
    grid = op.Transpose(op.Concat(norm_x, norm_y, norm_t, axis=2), perm=[0, 1, 3, 4, 2])
    out = op.GridSample(
        op.Cast(video, to=1), grid, mode="linear", padding_mode="zeros", align_corners=0
    )
    return op.CastLike(out, video)


def _with_plugin_attributes(fn: onnx.FunctionProto) -> onnx.FunctionProto:
    """Declare plugin_version / plugin_namespace (with their defaults) on the function too.

    The kpn nodes carry these attributes for TensorRT; declaring them keeps node and function
    signatures identical for tools that compare them (the body does not use them).
    """
    declared = set(fn.attribute) | {a.name for a in fn.attribute_proto}
    for name, value in PLUGIN_ATTRIBUTES.items():
        if name not in declared:
            fn.attribute_proto.append(onnx.helper.make_attribute(name, value))
    return fn


def function_protos(opset: int = MIN_OPSET) -> list[onnx.FunctionProto]:
    """The FunctionProtos of both ops, importing the default domain at ``opset`` (the model's).

    The bodies use ops whose semantics are unchanged from opset 20 to 24 (Conv, GridSample, Cast,
    Reshape, Slice, ...), so the same body is valid at any of those versions; a function must import
    the same version of a domain as the model that holds it.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: GridSample on 5-D input needs opset {MIN_OPSET}+")
    protos = []
    for fn in (AdaptiveConv, TrilinearSample):
        proto = onnx.FunctionProto()
        proto.CopyFrom(fn.to_function_proto())
        for imp in proto.opset_import:
            if imp.domain == "":
                imp.version = opset
        protos.append(_with_plugin_attributes(proto))
    return protos


def op_model(
    op_type: str,
    attribute: int,
    dtype: int = onnx.TensorProto.FLOAT,
    opset: int = MIN_OPSET,
) -> onnx.ModelProto:
    """A model of ONE kpn node (as the exporter writes it) plus its function, with dynamic shapes.

    Inputs ``frames``/``kernels`` (AdaptiveConv) or ``video``/``offsets`` (TrilinearSample), rank 5,
    of ``dtype``; output ``out``. Used by the op-level tests and the benchmark.
    """
    if op_type not in OP_TYPES:
        raise ValueError(f"unknown kpn op {op_type!r}; expected one of {sorted(OP_TYPES)}")
    attr_name = OP_TYPES[op_type][1]
    names = ("frames", "kernels") if op_type == "AdaptiveConv" else ("video", "offsets")
    dims = ["b", "n", "c", "h", "w"]
    inputs = [
        onnx.helper.make_tensor_value_info(n, dtype, [f"{n}_{d}" for d in dims]) for n in names
    ]
    output = onnx.helper.make_tensor_value_info("out", dtype, [f"out_{d}" for d in dims])
    node = onnx.helper.make_node(
        op_type, list(names), ["out"], domain=DOMAIN, **{attr_name: int(attribute)},
        **PLUGIN_ATTRIBUTES,
    )
    graph = onnx.helper.make_graph([node], f"kpn_{op_type}", inputs, [output])
    model = onnx.helper.make_model(
        graph,
        opset_imports=[
            onnx.helper.make_opsetid("", opset),
            onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION),
        ],
        functions=function_protos(opset),
    )
    model.ir_version = 10
    return model
