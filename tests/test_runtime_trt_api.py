"""Every TensorRT name runtime/backends/trt.py uses exists in TensorRT's type stubs (tensorrt-stubs).

Collected from the source's AST: `trt.X`, `trt.X.Y`, and methods/attributes used on the variables
`runtime` (trt.Runtime), `engine` (ICudaEngine), `context` (IExecutionContext) and `registry`
(IPluginRegistry). The stubs are parsed as text (ast), never imported, so no TensorRT is needed.
"""

from __future__ import annotations

import ast
import re
import importlib.util
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "runtime" / "backends" / "trt.py"
VARIABLES = {"runtime": "Runtime", "engine": "ICudaEngine", "context": "IExecutionContext", "registry": "IPluginRegistry"}


def _stub_file() -> Path:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs not installed: pip install --no-deps tensorrt-stubs")
    path = Path(list(spec.submodule_search_locations)[0]) / "tensorrt.pyi"
    if not path.is_file():
        pytest.skip(f"{path} missing: pip install --no-deps tensorrt-stubs")
    return path


def _stub_api() -> tuple[dict[str, set[str]], set[str]]:
    """Classes and their members, and top-level names, of tensorrt.pyi. Read line by line: the stubs
    are not valid Python for ast (a non-default argument follows a default one in add_scale_nd)."""
    classes: dict[str, set[str]] = {}
    top: set[str] = set()
    current = None
    for line in _stub_file().read_text().splitlines():
        if m := re.match(r"class (\w+)", line):
            current = m.group(1)
            classes[current] = set()
            top.add(current)
        elif m := re.match(r"(?:def (\w+)|(\w+)\s*[:=])", line):
            current = None
            top.add(m.group(1) or m.group(2))
        elif current and (m := re.match(r"    (?:def (\w+)|(\w+)\s*[:=]|class (\w+))", line)):
            classes[current].add(m.group(1) or m.group(2) or m.group(3))
    return classes, top


def _package_top_level() -> set[str]:
    """Names the tensorrt package itself defines or re-exports (tensorrt/__init__.pyi), e.g. __version__, nptype."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    root = Path(list(spec.submodule_search_locations)[0]).parent
    names: set[str] = set()
    for init in (root / "tensorrt" / "__init__.pyi", root / "tensorrt_bindings" / "__init__.pyi"):
        if init.is_file():
            for node in ast.parse(init.read_text()).body:
                if isinstance(node, ast.ImportFrom):
                    names.update(a.asname or a.name for a in node.names)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
                elif isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
                elif isinstance(node, ast.FunctionDef):
                    names.add(node.name)
    return names


def _used() -> tuple[set[tuple[str, ...]], set[tuple[str, str]]]:
    tree = ast.parse(SOURCE.read_text())
    chains: set[tuple[str, ...]] = set()
    members: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            cur: ast.AST = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                if cur.id == "trt":
                    chains.add(tuple(reversed(parts)))
                elif cur.id in VARIABLES and isinstance(node.value, ast.Name):
                    members.add((VARIABLES[cur.id], node.attr))
                elif isinstance(cur, ast.Name) and cur.id == "self" and len(parts) >= 2 and parts[-1] in VARIABLES:
                    # self.engine.x / self.context.x
                    members.add((VARIABLES[parts[-1]], parts[-2]))
    return chains, members


def test_source_uses_tensorrt():
    chains, members = _used()
    assert ("Runtime",) in chains and ("get_plugin_registry",) in chains
    assert ("IExecutionContext", "execute_async_v3") in members
    assert ("ICudaEngine", "get_tensor_profile_shape") in members
    assert ("IPluginRegistry", "load_library") in members


def test_every_trt_name_exists_in_the_stubs():
    classes, top = _stub_api()
    package = _package_top_level() | top
    chains, members = _used()
    missing = []
    for chain in sorted(chains):
        if chain[0] not in package:
            missing.append("trt." + ".".join(chain))
        elif len(chain) > 1 and chain[0] in classes and chain[1] not in classes[chain[0]]:
            missing.append("trt." + ".".join(chain))
    for cls, attr in sorted(members):
        if attr not in classes.get(cls, set()):
            missing.append(f"{cls}.{attr}")
    assert not missing, f"not in tensorrt-stubs: {missing}"
    assert len(chains) >= 4 and len(members) >= 10
