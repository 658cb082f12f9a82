"""What the runtime needs to know about a model: its kpn.* metadata (docs/model-io.md).

ONNX models carry it in `metadata_props`; TensorRT engines in their sidecar `<engine>.json` (key
`metadata`, copied from the ONNX by `kpn-export trt`) or, failing that, in the ONNX file of the same
name beside the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError, first_line

REQUIRED_KEYS = ("kpn.family", "kpn.frames", "kpn.reference_index", "kpn.size_multiple", "kpn.receptive_radius")
# Shipped models and their manifest (written by `python -m train.release`); its "default" entry names
# the model the runtime uses when no --model is given.
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass
class ModelInfo:
    path: Path
    family: str
    frames: int
    reference_index: int
    size_multiple: int
    receptive_radius: int
    tiling_exact: bool = True
    precision: str = "fp32"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "engine" if self.path.suffix.lower() in (".engine", ".plan", ".trt") else "onnx"

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str]) -> "ModelInfo":
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise UserError(
                f"{path}: not a kpn-deploy model (metadata {', '.join(missing)} missing); export it with kpn-export onnx"
            )
        try:
            info = cls(
                path=path,
                family=meta["kpn.family"],
                frames=int(meta["kpn.frames"]),
                reference_index=int(meta["kpn.reference_index"]),
                size_multiple=int(meta["kpn.size_multiple"]),
                receptive_radius=int(meta["kpn.receptive_radius"]),
                tiling_exact=meta.get("kpn.tiling_exact", "1") != "0",
                precision=meta.get("kpn.precision", "fp32"),
                metadata=dict(meta),
            )
        except ValueError as exc:
            raise UserError(f"{path}: bad kpn.* metadata ({first_line(exc)}); re-export with kpn-export onnx") from None
        if info.frames < 1 or not 0 <= info.reference_index < info.frames or info.size_multiple < 1 or info.receptive_radius < 0:
            raise UserError(f"{path}: inconsistent kpn.* metadata; re-export with kpn-export onnx")
        return info


def default_model() -> Path:
    """The ONNX file of models/MANIFEST.json's default entry."""
    manifest = MODELS_DIR / "MANIFEST.json"
    try:
        data = json.loads(manifest.read_text())
        entry = next(m for m in data["models"] if m["name"] == data["default"])
        path = MODELS_DIR / entry["onnx"]
    except FileNotFoundError:
        raise UserError(
            f"{manifest}: the default model is not installed; pass --model MODEL.onnx "
            "(export one with kpn-export onnx CHECKPOINT)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise UserError(f"{manifest}: unreadable model manifest ({first_line(exc) or type(exc).__name__}); pass --model MODEL.onnx") from None
    if not path.is_file():
        raise UserError(f"{path}: the default model named in {manifest.name} is not installed; pass --model MODEL.onnx")
    return path


def resolve_model(model: Path | None) -> Path:
    if model is None:
        return default_model()
    if not model.exists():
        raise UserError(f"{model}: no such model file")
    if model.is_dir():
        raise UserError(f"{model}: is a folder, not a model file (.onnx or .engine)")
    return model


def engine_sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def read_engine_sidecar(engine: Path) -> dict:
    side = engine_sidecar_path(engine)
    if not side.is_file():
        raise UserError(f"{engine}: its sidecar {side.name} is missing; rebuild with kpn-export trt")
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{side}: unreadable engine sidecar ({first_line(exc)}); rebuild with kpn-export trt") from None
    need = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "profiles", "plugin_sha256")
    missing = [k for k in need if k not in data] if isinstance(data, dict) else list(need)
    if missing:
        raise UserError(f"{side}: engine sidecar lacks {', '.join(missing)}; rebuild with kpn-export trt")
    return data


def engine_info(engine: Path, sidecar: dict) -> ModelInfo:
    meta = sidecar.get("metadata")
    if isinstance(meta, dict) and meta:
        return ModelInfo.from_metadata(engine, {str(k): str(v) for k, v in meta.items()})
    onnx_path = engine.with_suffix(".onnx")
    if onnx_path.is_file():
        return onnx_info(onnx_path)
    raise UserError(
        f"{engine}: no kpn.* metadata (neither 'metadata' in {engine_sidecar_path(engine).name} nor "
        f"{onnx_path.name} beside it); rebuild with kpn-export trt"
    )


def onnx_info(path: Path) -> ModelInfo:
    """Metadata of an ONNX file without building a session (reads the proto, not the weights' use)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"{path}: not a valid ONNX model ({first_line(exc)}); re-export with kpn-export onnx") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    return ModelInfo.from_metadata(path, meta)
