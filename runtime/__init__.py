"""kpn-deploy runtime: denoise bursts with exported models, no torch.

`python -m runtime.denoise BURST_DIR` is the command; `runtime.denoise.denoise_burst` the Python API.
Imports numpy, onnxruntime and image I/O only; tensorrt and cuda-python are imported lazily by the
TensorRT backend.
"""

__all__ = ["UserError"]

from .errors import UserError
