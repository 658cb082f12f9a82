"""ONNX Runtime backend (CPU and CUDA providers). The kpn ops run as their standard-op function bodies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError, first_line
from ..model import ModelInfo

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OrtBackend:
    def __init__(self, model: Path, cuda: bool = False, threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        self.name = "ort-cuda" if cuda else "ort-cpu"
        self.max_hw = None
        self.min_hw = None
        self.max_batch = None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: no provider chatter on the user's terminal
        n = threads if threads else int(os.environ.get("KPN_THREADS", "0") or 0)
        opts.intra_op_num_threads = max(n, 0)  # 0: ONNX Runtime's default (physical cores)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(
                    "--backend ort-cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu "
                    "(the gpu extra) or use --backend ort-cpu"
                )
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(model), opts, providers=providers)
        except Exception as exc:
            raise UserError(f"{model}: cannot load this ONNX model ({first_line(exc)}); re-export with kpn-export onnx") from None
        if cuda and "CUDAExecutionProvider" not in self.session.get_providers():
            raise UserError("--backend ort-cuda: the CUDA provider did not start (no GPU or CUDA libraries); use --backend ort-cpu")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(model, meta)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"burst", "noise_map"} or "denoised" not in outputs:
            raise UserError(
                f"{model}: inputs {sorted(inputs)} / outputs {outputs} are not the kpn-deploy contract "
                "(burst, noise_map -> denoised); re-export with kpn-export onnx"
            )
        self.dtype = _DTYPES.get(inputs["burst"].type)
        if self.dtype is None:
            raise UserError(f"{model}: input type {inputs['burst'].type} unsupported (float32 or float16)")

    def run(self, burst: np.ndarray, noise_map: np.ndarray) -> np.ndarray:
        feeds = {
            "burst": np.ascontiguousarray(burst, dtype=self.dtype),
            "noise_map": np.ascontiguousarray(noise_map, dtype=self.dtype),
        }
        (out,) = self.session.run(["denoised"], feeds)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
