"""Checkpoints carry their own config: `load_checkpoint(path)` rebuilds the model from the file alone.

Layout (a dict saved by torch.save): format, format_version, config, model (state_dict), optimizer,
scheduler, step, metrics, versions, train_args, and any extra keys a trainer adds (e.g. rng state).
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import ModelConfig, build_model, config_from_dict

FORMAT = "kpn-deploy-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line naming the file and the problem."""


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        kpn = version("kpn-deploy")
    except PackageNotFoundError:
        kpn = "unknown"
    versions = {"kpn-deploy": kpn, "torch": str(torch.__version__), "python": platform.python_version()}
    commit = code_commit()
    if commit:
        versions["kpn-deploy-git"] = commit
    return versions


@functools.cache
def code_commit() -> str | None:
    """The commit of the kpn-deploy checkout this code runs from ("+dirty" with uncommitted changes), so a
    checkpoint names the exact code that trained it; None outside a git checkout or without git.
    Read once per process (the trainer asks at start): the code that runs is what was imported, and a
    `git pull` in the checkout during a long run must not relabel its later checkpoints."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        lines = head.stdout.split()
        # an installed copy inside some other repository (a venv in a user's project) is not a checkout
        if head.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return lines[1] + ("+dirty" if dirty.stdout.strip() else "")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, then rename: never a partial checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def on_cpu(obj: Any) -> Any:
    """`obj` with every tensor inside (dicts, lists, tuples) copied to the CPU: a checkpoint written by a
    GPU run then loads with a plain torch.load on a machine without one (Adam's moments live on the
    parameters' device; load_state_dict moves them back there on a resume)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    cfg: ModelConfig,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    metrics: dict | None = None,
    train_args: dict | None = None,
    **extra: Any,
) -> None:
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "model": on_cpu(model.state_dict()),
        "optimizer": on_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "metrics": metrics or {},
        "versions": _versions(),
        "train_args": train_args or {},
        **extra,
    }
    atomic_torch_save(ckpt, path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate the checkpoint dict (no model built)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        # weights_only=True: a checkpoint is data, never code to run.
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kpn-deploy checkpoint (no '{FORMAT}' format tag)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('format_version')} is not supported "
            f"(this kpn-deploy reads version {FORMAT_VERSION})"
        )
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """-> (model in eval mode with its weights, the checkpoint dict)."""
    ckpt = read_checkpoint(path, map_location)
    try:
        cfg = config_from_dict(ckpt["config"])
        model = build_model(cfg)
        model.load_state_dict(ckpt["model"])
    except Exception as exc:
        raise CheckpointError(f"{path}: checkpoint does not rebuild its model ({str(exc).splitlines()[0][:200]})") from None
    model.eval()
    ckpt["config_object"] = cfg
    return model, ckpt
