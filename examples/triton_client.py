"""Denoise a burst folder on a Triton Inference Server that serves a model written by `kpn-export triton`.

    pip install -e '.[triton]'
    python examples/triton_client.py examples/burst --model kpn_small [--url localhost:8001] [-o out.png]

The client does on this side what `python -m runtime.denoise` does (and with the same code, imported from
runtime/): read the frames, linearise sRGB, estimate the noise (sigma_r, sigma_s) unless given, build the
noise map, tile large frames with exact overlap, split colour channels into the batch dimension, write
the result atomically. Only the model call goes to the server, over gRPC (tritonclient.grpc).

What the model needs (frames N, reference index, size multiple, receptive radius, the engine profile's
largest tile) is read from the server: `kpn-export triton` put the model's kpn.* metadata into the
config's `parameters`.

Not run against a server in this repository (no Triton server here); the tests check the argument
parsing, the request tensors and the client-side pipeline offline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from runtime.denoise import denoise_frames, noise_sigmas, open_burst, reference_position  # noqa: E402
from runtime.errors import UserError, first_line  # noqa: E402
from runtime.frames import list_frames, write_atomic  # noqa: E402
from runtime.model import ModelInfo  # noqa: E402
from runtime.pipeline import select_burst  # noqa: E402
from runtime.symmetry import check_ensemble_size  # noqa: E402

TRITON_TO_NUMPY = {"TYPE_FP32": (np.float32, "FP32"), "TYPE_FP16": (np.float16, "FP16")}


def model_info_from_config(name: str, config: dict) -> ModelInfo:
    """The kpn.* metadata from a Triton model config (the dict of get_model_config(as_json=True)["config"])."""
    params = {k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}
    return ModelInfo.from_metadata(Path(f"triton:{name}"), params)


class TritonBackend:
    """The runtime's backend interface (runtime/backends/__init__.py) for a model on a Triton server."""

    name = "triton"

    def __init__(self, model: str, config: dict, client=None) -> None:
        self.model, self.client = model, client
        self.info = model_info_from_config(model, config)
        inputs = {t["name"]: t for t in config.get("input", [])}
        outputs = [t["name"] for t in config.get("output", [])]
        if set(inputs) != {"burst", "noise_map"} or outputs != ["denoised"]:
            raise UserError(f"triton model {model!r}: inputs {sorted(inputs)} / outputs {outputs} are not burst, noise_map -> denoised")
        dtype = inputs["burst"].get("data_type", "TYPE_FP32")
        if dtype not in TRITON_TO_NUMPY:
            raise UserError(f"triton model {model!r}: input type {dtype} unsupported (TYPE_FP32 or TYPE_FP16)")
        self.dtype, self.datatype = TRITON_TO_NUMPY[dtype]
        mbs = int(config.get("max_batch_size", 0) or 0)
        dims = [int(d) for d in inputs["burst"].get("dims", [])]
        # with max_batch_size 0 the dims hold the batch dimension: fixed (> 0) or any (-1)
        self.max_batch: Optional[int] = mbs if mbs > 0 else (dims[0] if dims and dims[0] > 0 else None)
        self.min_hw = self.max_hw = None
        profile = self.info.metadata.get("engine.profile")  # set by kpn-export triton for engines
        if profile:  # a TensorRT engine: tiles must fit its optimisation profile
            burst = json.loads(profile)["burst"]
            self.min_hw = (int(burst["min"][2]), int(burst["min"][3]))
            self.max_hw = (int(burst["max"][2]), int(burst["max"][3]))

    def build_inputs(self, burst: np.ndarray, noise_map: np.ndarray) -> list:
        """The request's input tensors (tritonclient.grpc.InferInput), in the model's dtype."""
        import tritonclient.grpc as grpcclient

        inputs = []
        for name, arr in (("burst", burst), ("noise_map", noise_map)):
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
            t = grpcclient.InferInput(name, list(arr.shape), self.datatype)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        return inputs

    def infer(self, burst: np.ndarray, noise_map: np.ndarray) -> np.ndarray:
        """One request to the server -> denoised [B, 1, h, w] in the model's dtype."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        try:
            result = self.client.infer(self.model, self.build_inputs(burst, noise_map),
                                       outputs=[grpcclient.InferRequestedOutput("denoised")])
        except InferenceServerException as exc:
            raise UserError(f"triton model {self.model!r}: inference failed ({first_line(exc)})") from None
        return result.as_numpy("denoised")

    def run(self, burst: np.ndarray, noise_map: np.ndarray) -> np.ndarray:
        return np.asarray(self.infer(burst, noise_map), dtype=np.float32)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def connect(url: str, model: str, timeout: float) -> TritonBackend:
    try:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except Exception as exc:  # ImportError, or tritonclient's RuntimeError without grpc support
        raise UserError(f"tritonclient[grpc] is not installed ({first_line(exc)}); pip install 'kpn-deploy[triton]'") from None
    client = grpcclient.InferenceServerClient(url)
    try:
        config = client.get_model_config(model, as_json=True, client_timeout=timeout)["config"]
    except InferenceServerException as exc:
        client.close()
        raise UserError(f"cannot get model {model!r} from the Triton server at {url} ({first_line(exc)}); is it running and serving that model?") from None
    return TritonBackend(model, config, client)


def denoise_on_triton(folder: Path, backend: TritonBackend, output: Optional[Path] = None, read_noise=None, shot_noise=None,
                      reference: Optional[str] = None, linear: bool = False, tile: Optional[int] = None,
                      pad_frames: bool = False, self_ensemble: int = 1) -> Path:
    """runtime.denoise.denoise_burst with the model call sent to Triton -> the output path."""
    paths, frames, linear, out = open_burst(folder, output, linear)
    info = backend.info
    order, note = select_burst(len(paths), reference_position(paths, reference), info, pad_frames)
    sigmas, _estimated = noise_sigmas(frames.__getitem__, sorted(set(order), key=order.index), linear,
                                      read_noise, shot_noise)
    if note:
        typer.echo(note, err=True)
    result = denoise_frames(frames, order, info, backend, linear, sigmas, tile, self_ensemble=self_ensemble)
    write_atomic(out, result)
    return out


app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def main(
    burst_dir: Path = typer.Argument(..., help="folder of frames (PNG 8/16-bit, TIFF, JPEG), as for python -m runtime.denoise"),
    model: str = typer.Option(..., "--model", help="model name in the Triton repository (kpn-export triton --name)"),
    url: str = typer.Option("localhost:8001", "--url", help="Triton gRPC endpoint host:port"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="output image (default: BURST_DIR-denoised.png)"),
    read_noise: Optional[float] = typer.Option(None, "--read-noise", help="sigma_r, linear units (estimated when absent)"),
    shot_noise: Optional[float] = typer.Option(None, "--shot-noise", help="sigma_s, linear units (estimated when absent)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="reference frame: file name or index (default 0)"),
    linear: bool = typer.Option(False, "--linear", help="frames hold linear intensities (no sRGB decode/encode)"),
    tile: Optional[int] = typer.Option(None, "--tile", help="tile size in pixels (default: untiled up to 1 MP, else 512)"),
    pad_frames: bool = typer.Option(False, "--pad-frames", help="fewer frames than the model needs: repeat the reference"),
    timeout: float = typer.Option(10.0, "--timeout", help="seconds to wait for the server's model config"),
    self_ensemble: int = typer.Option(1, "--self-ensemble", metavar="TURNS", help="average over 4 or 8 turns of the burst "
                                      "(as python -m runtime.denoise; that many requests per tile); 1 = off"),
) -> None:
    """Send the burst in BURST_DIR to MODEL on a Triton server and write the denoised image."""
    try:
        list_frames(burst_dir)  # a bad folder or option fails before any network call
        check_ensemble_size(self_ensemble)
        backend = connect(url, model, timeout)
        try:
            out = denoise_on_triton(burst_dir, backend, output, read_noise, shot_noise, reference, linear, tile, pad_frames,
                                    self_ensemble)
        finally:
            backend.close()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"wrote {out} ({backend.info.family} on triton:{model} at {url})")


if __name__ == "__main__":
    app()
