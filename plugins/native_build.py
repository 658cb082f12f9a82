"""Compile a shared library once per content hash and cache it (the CPU build of the kernel math in
cpu_build.py and the CUDA build of the kernels in cuda_build.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path


def cached_build(command: list[str], inputs: list[Path], cache: Path, prefix: str, what: str, key: str = "") -> Path:
    """Run `command -o LIB` unless LIB = cache/<prefix>_<hash>.so exists, where the hash covers the
    inputs' bytes, the command and `key` (e.g. the compiler's version) -> LIB."""
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(path.read_bytes())
    digest.update(" ".join([*command, key]).encode())
    cache.mkdir(parents=True, exist_ok=True)
    library = cache / f"{prefix}_{digest.hexdigest()[:16]}.so"
    if not library.is_file():
        # compile beside the target and rename: concurrent runs never load a half-written file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        result = subprocess.run([*command, "-o", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"{what} build failed: {' '.join(command)}\n{result.stdout}\n{result.stderr}")
        os.replace(tmp, library)
    return library
