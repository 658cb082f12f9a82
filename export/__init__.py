"""kpn-deploy export: PyTorch checkpoint -> ONNX (with kpn custom nodes and their function bodies)
-> TensorRT engine (``export.trt``, owned by the plugin side).

Public entry points (imported lazily so ``import export`` stays cheap):

* ``export.onnx_export.export_onnx(ckpt, output=None, opset=20, fp16=False, height=None, width=None)``
* ``export.inspect.inspect_onnx(path)``
* ``export.functions``: the standard-ONNX bodies of kpn::AdaptiveConv and kpn::TrilinearSample
* CLI: ``kpn-export onnx|inspect|trt`` (``export.cli``)
"""

from __future__ import annotations

__all__ = ["export_onnx", "ExportReport", "ExportError", "inspect_onnx"]


def __getattr__(name: str):
    if name in ("export_onnx", "ExportReport"):
        from export import onnx_export

        return getattr(onnx_export, name)
    if name == "ExportError":
        from export.errors import ExportError

        return ExportError
    if name == "inspect_onnx":
        from export.inspect import inspect_onnx

        return inspect_onnx
    raise AttributeError(f"module 'export' has no attribute {name!r}")
