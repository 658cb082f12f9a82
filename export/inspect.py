"""``kpn-export inspect MODEL.onnx``: what a user needs to know about an exported model.

Inputs and outputs (names, dtypes, shapes with named dynamic axes), opset imports, the kpn custom
nodes with their attributes, the model-local functions, the metadata of docs/model-io.md. Reads the
file with ``onnx`` only (no torch, no onnxruntime), so it works on any runtime host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx

from export.errors import ExportError

__all__ = ["inspect_onnx", "format_inspection", "load_onnx"]


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such ONNX file")
    if path.is_dir():
        raise ExportError(f"{path}: is a folder, not an ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"{path}: not a readable ONNX model ({first[:200]})") from None
    if not model.graph.node and not model.graph.input:
        raise ExportError(f"{path}: not an ONNX model (empty graph)")
    return model


def _value_info(vi: onnx.ValueInfoProto) -> dict:
    tt = vi.type.tensor_type
    shape = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            shape.append(d.dim_value)
        elif d.HasField("dim_param"):
            shape.append(d.dim_param)
        else:
            shape.append("?")
    return {
        "name": vi.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "?",
        "shape": shape,
    }


def _attrs(node_or_attrs) -> dict:
    out = {}
    for a in node_or_attrs:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def inspect_onnx(path: str | os.PathLike) -> dict:
    """-> a JSON-able dict describing the model at ``path``."""
    path = Path(path)
    model = load_onnx(path)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    std = {"", "ai.onnx"}
    custom = [
        {"name": n.name, "domain": n.domain, "op_type": n.op_type, "attributes": _attrs(n.attribute),
         "inputs": list(n.input), "outputs": list(n.output)}
        for n in graph.node
        if n.domain not in std
    ]
    functions = [
        {
            "name": f"{f.domain}::{f.name}",
            "attributes": list(f.attribute) + [a.name for a in f.attribute_proto],
            "nodes": len(f.node),
            "ops": sorted({n.op_type for n in f.node}),
            "opset_import": {i.domain or "ai.onnx": i.version for i in f.opset_import},
        }
        for f in model.functions
    ]
    params = sum(
        int(__import__("numpy").prod(list(t.dims))) if t.dims else 1 for t in graph.initializer
    )
    return {
        "path": str(path),
        "file_size": path.stat().st_size,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset_import": {i.domain or "ai.onnx": i.version for i in model.opset_import},
        "inputs": [_value_info(v) for v in graph.input if v.name not in initializers],
        "outputs": [_value_info(v) for v in graph.output],
        "node_count": len(graph.node),
        "op_histogram": _histogram(graph),
        "parameters": params,
        "custom_nodes": custom,
        "functions": functions,
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def _histogram(graph: onnx.GraphProto) -> dict[str, int]:
    hist: dict[str, int] = {}
    for n in graph.node:
        key = f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))


def format_inspection(info: dict) -> str:
    """Human-readable text of ``inspect_onnx``'s dict."""
    lines = [
        f"{info['path']}  ({info['file_size'] / 1e6:.2f} MB, {info['parameters']:,} parameters, "
        f"IR {info['ir_version']}, producer {info['producer'] or '?'})",
        "opset: " + ", ".join(f"{d} {v}" for d, v in info["opset_import"].items()),
        "inputs:",
    ]
    for v in info["inputs"]:
        lines.append(f"  {v['name']:<10} {v['dtype']:<8} [{', '.join(map(str, v['shape']))}]")
    lines.append("outputs:")
    for v in info["outputs"]:
        lines.append(f"  {v['name']:<10} {v['dtype']:<8} [{', '.join(map(str, v['shape']))}]")
    lines.append(f"nodes: {info['node_count']}  (" + ", ".join(f"{k} {n}" for k, n in info["op_histogram"].items()) + ")")
    lines.append(f"custom nodes: {len(info['custom_nodes'])}")
    for n in info["custom_nodes"]:
        attrs = ", ".join(f"{k}={v!r}" for k, v in n["attributes"].items())
        lines.append(f"  {n['domain']}::{n['op_type']} {n['name']} ({attrs})")
    lines.append(f"functions: {len(info['functions'])}")
    for f in info["functions"]:
        lines.append(
            f"  {f['name']} <{', '.join(f['attributes'])}>: {f['nodes']} standard nodes "
            f"({', '.join(f['ops'])})"
        )
    lines.append("metadata:")
    for k, v in info["metadata"].items():
        if k == "kpn.config":
            try:
                v = json.dumps(json.loads(v), separators=(",", ":"))
            except ValueError:
                pass
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)
