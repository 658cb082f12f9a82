"""Inference backends behind one small interface.

A backend runs the model on one batch: `run(burst [B, N, h, w], noise_map [B, 1, h, w]) -> [B, 1, h, w]`
(float32 in and out; it casts to the model's dtype itself). `max_hw` is the largest (h, w) it takes
(a TensorRT profile's limit; None when any size works); `min_hw` the smallest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from ..errors import UserError
from ..model import ModelInfo

BACKENDS = ("auto", "trt", "ort-cuda", "ort-cpu")


class Backend(Protocol):
    name: str
    info: ModelInfo
    max_hw: Optional[tuple[int, int]]
    min_hw: Optional[tuple[int, int]]
    max_batch: Optional[int]

    def run(self, burst: np.ndarray, noise_map: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def _cuda_provider_present() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def open_backend(
    model: Path,
    backend: str = "auto",
    plugins: Optional[Path] = None,
    threads: Optional[int] = None,
    cuda_graph: bool = False,
) -> tuple[Backend, str]:
    """-> (backend, note): `note` says what `auto` picked and why."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    is_engine = model.suffix.lower() in (".engine", ".plan", ".trt")
    if is_engine:
        if backend not in ("auto", "trt"):
            raise UserError(f"{model}: a TensorRT engine runs only with --backend trt (give an .onnx for {backend})")
        from .trt import TrtBackend

        return TrtBackend(model, plugins=plugins, cuda_graph=cuda_graph), "TensorRT engine"
    if backend == "trt":
        raise UserError(f"{model}: --backend trt needs a TensorRT engine; build one with kpn-export trt {model} --fp16")
    from .ort import OrtBackend

    if backend == "ort-cpu":
        return OrtBackend(model, cuda=False, threads=threads), "requested"
    if backend == "ort-cuda":
        return OrtBackend(model, cuda=True, threads=threads), "requested"
    # auto with an ONNX model: a TensorRT engine of the same name beside it first (MODEL.engine, built by
    # kpn-export trt), then ONNX Runtime CUDA when usable, else CPU; each fallback says why
    why = ""
    engine = model.with_suffix(".engine")
    if engine.is_file():
        try:
            from .trt import TrtBackend

            return TrtBackend(engine, plugins=plugins, cuda_graph=cuda_graph), f"auto: {engine.name}"
        except UserError as exc:
            why = f"; TensorRT skipped: {exc}"
    if _cuda_provider_present():
        try:
            return OrtBackend(model, cuda=True, threads=threads), "auto: CUDA provider present" + why
        except UserError as exc:
            return OrtBackend(model, cuda=False, threads=threads), f"auto: CUDA unusable ({exc})" + why
    return OrtBackend(model, cuda=False, threads=threads), "auto: no CUDA provider" + (why or f", no {engine.name}")
