"""Ship trained checkpoints: `python -m train.release CKPT... [--out models]`.

For each checkpoint (a `kpn-train` output) it writes into OUT:
  NAME.pt         the checkpoint itself (with optimizer state, so `kpn-train --resume` continues it)
  NAME.onnx       `kpn-export onnx` of it (fp32, dynamic shapes, verified in ONNX Runtime)
  NAME.fp16.onnx  the fp16 export (for TensorRT FP16 engines)
and OUT/MANIFEST.json: per model its files' sha256, config, training (command line, steps, wall time,
machine, data) and validation PSNR/SSIM at AME-KPN Table 1's four gains, plus the runtime's default
model: the best mean validation PSNR over the four gains. NAME is `<family>-<width>`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Optional

import typer

from .data import BUILTIN_IMAGES, BUILTIN_VALIDATION, EXTRA_PREFIX, VALIDATION_GAINS
from .photos import DEFAULT_OUT as DEFAULT_PHOTOS, REGISTRY_PHOTOS, is_registry_folder
from .models import config_from_dict
from .trainer import first_stage_values, stage_changes
from runtime.files import sha256_file, write_bytes_atomic

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)

# Options of `kpn-train` that define a run (TrainArgs field -> flag), in the order a user writes them.
_TRAIN_FLAGS = [("model", "--model"), ("width", "--width"), ("kernels", "--kernels"), ("data", "--data"), ("iters", "--iters"),
                ("batch_size", "--batch-size"), ("crop", "--crop"), ("lr", "--lr"), ("seed", "--seed"),
                ("frames", "--frames"), ("epoch_iters", "--epoch-iters"), ("motion", "--motion"), ("noise_range", "--noise-range"),
                ("downsample", "--downsample"), ("still_fraction", "--still-fraction"), ("augment", "--augment"),
                ("lr_factor", "--lr-factor"), ("anneal_decay", "--anneal-decay"), ("anneal_floor", "--anneal-floor"),
                ("loss_scale", "--loss-scale"), ("gradient_weight", "--gradient-weight"), ("val_every", "--val-every"),
                ("ckpt_every", "--ckpt-every")]
# Flags added after models had shipped, written only where a run set them, so that the shipped manifests'
# command lines stay what they were (and ST-PAN's, whose loss has no such term, never carry them).
_WRITTEN_ONLY_WHEN_SET = {"gradient_weight": 1.0}


def train_command(train_args: dict, out: str, steps: int | None = None) -> str:
    """The `kpn-train` command line(s) that reproduce a run (torchrun/DDP runs: per-process batch): a run
    with stages (a --resume that changed a field of train.trainer.STAGE_FIELDS, e.g. --downsample) is
    its first command, then one --resume per stage, joined by " && ". `steps`: where the run was stopped,
    if before its --iters; the command then ends there, which gives the same weights, since the epoch length is explicit in the command and each
    batch depends only on (seed, rank, step) (tests/test_train.py::test_resume_equals_uninterrupted_run).
    A run started with --init-from SOURCE is preceded by SOURCE's own commands (to its step), which write
    `out` with ".start" before the suffix (".start.start" for a source that had one, and so on). An
    AME-KPN started from a KPN by train.ame_from_kpn is preceded likewise by the KPN's commands (to
    `out` with ".kpn" before the suffix) and the conversion, and continues with --resume."""
    from_kpn = train_args.get("from_kpn")
    if isinstance(from_kpn, dict):
        return _from_kpn_command(train_args, from_kpn, out, steps)
    init = train_args.get("init_from")
    prefix = []
    if isinstance(init, dict):
        source_out = str(Path(out).with_suffix(".start" + Path(out).suffix))
        prefix = [train_command(init.get("train_args") or {}, source_out, steps=init.get("step"))]
    stages = train_args.get("stages") or []
    train_args = {**train_args, "iters": steps if steps is not None else train_args.get("iters")}
    first = dict(train_args) | first_stage_values(train_args)
    if stages:
        first["iters"] = stages[0]["from_step"]
    parts = ["kpn-train"]
    for field, flag in _TRAIN_FLAGS:
        value = first.get(field)
        if value is not None and not (field in _WRITTEN_ONLY_WHEN_SET and value == _WRITTEN_ONLY_WHEN_SET[field]):
            parts += [flag, str(value)]
    if prefix:
        parts += ["--init-from", source_out]
    commands = prefix + [" ".join(parts + ["--out", out])]
    commands += _stage_commands(train_args.get("model"), stages, out, train_args.get("iters"))
    return " && ".join(commands)


def _stage_commands(model: str, stages: list, out: str, end: int) -> list[str]:
    """One `kpn-train --resume` per stage, each to the next stage's first step (the last to `end`)."""
    flags = dict(_TRAIN_FLAGS)
    commands = []
    for i, stage in enumerate(stages):
        until = stages[i + 1]["from_step"] if i + 1 < len(stages) else end
        changes = " ".join(f"{flags[name]} {value}" for name, value in stage_changes(stage)[0].items())
        commands.append(f"kpn-train --model {model} --resume {out} --iters {until} {changes} --out {out}")
    return commands


def _from_kpn_command(train_args: dict, from_kpn: dict, out: str, steps: int | None) -> str:
    """train_command of an AME-KPN run that train.ame_from_kpn started from a KPN checkpoint."""
    kpn_out = str(Path(out).with_suffix(".kpn" + Path(out).suffix))
    commands = [train_command(from_kpn.get("train_args") or {}, kpn_out, steps=from_kpn["step"]),
                f"python -m train.ame_from_kpn {kpn_out} {out} --weight {from_kpn['weight']} "
                f"--head-lr-factor {train_args.get('head_lr_factor')} --fit-batches {from_kpn['fit_batches']}"]
    stages = train_args.get("stages") or []
    end = steps if steps is not None else train_args.get("iters")
    commands.append(f"kpn-train --model ame-kpn --resume {out} --iters {stages[0]['from_step'] if stages else end} --out {out}")
    commands += _stage_commands("ame-kpn", stages, out, end)
    return " && ".join(commands)


def data_sources(train_args: dict) -> list[str]:
    """Every --data value of the run, first stage first (the KPN's run first for an AME-KPN started from one)."""
    from_kpn = train_args.get("from_kpn")
    values = data_sources(from_kpn.get("train_args") or {}) if isinstance(from_kpn, dict) else []
    values.append(first_stage_values(train_args)["data"])
    for stage in train_args.get("stages") or []:
        changed = stage_changes(stage)[0]
        if "data" in changed:
            values.append(changed["data"])
    return list(dict.fromkeys(values))


def _registry_folder(data: str) -> str | None:
    """FOLDER of a 'builtin+FOLDER' source that holds exactly `python -m train.photos`'s photographs."""
    if data.startswith(EXTRA_PREFIX) and is_registry_folder(data[len(EXTRA_PREFIX):]):
        return data[len(EXTRA_PREFIX):]
    return None


def reproducible_command(train_args: dict, out: str, steps: int) -> str:
    """train_command, with the registry photographs' folder (wherever the run had it) as data/photos and
    the command that collects them in front."""
    command = train_command(train_args, out, steps=steps)
    folders = [f for f in map(_registry_folder, data_sources(train_args)) if f]
    for folder in folders:
        command = command.replace(f"--data {EXTRA_PREFIX}{folder} ", f"--data {EXTRA_PREFIX}{DEFAULT_PHOTOS} ")
    return f"python -m train.photos {DEFAULT_PHOTOS} && {command}" if folders else command


def data_description(train_args: dict) -> str:
    builtin = ("scikit-image's bundled photographs "
               f"(training: {sorted(set(BUILTIN_IMAGES) - set(BUILTIN_VALIDATION))}; validation: {list(BUILTIN_VALIDATION)})")
    parts = []
    for data in data_sources(train_args):
        if data == "builtin":
            parts.append(f"builtin: {builtin}")
        elif _registry_folder(data):
            parts.append(f"{EXTRA_PREFIX}{DEFAULT_PHOTOS}: {builtin}, with the registry photographs of `python -m train.photos` "
                         f"added for training ({[p.file for p in REGISTRY_PHOTOS]}; see image_licences)")
        else:
            parts.append(data)
    return "; then ".join(parts)


def trained_on(train_args: dict) -> str:
    """Where the checkpoint's last run (the command that wrote it, after any --resume) trained: its GPU
    when it ran with --device cuda, else this machine's CPU (releases are made where CPU runs train)."""
    device = str(train_args.get("device") or "cpu")
    if device.startswith("cuda"):
        name = train_args.get("device_name") or "name not recorded"
        return f"last run on a CUDA GPU ({name}); earlier runs of a resumed checkpoint may have used other machines"
    return machine()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"


def release_one(ckpt_path: Path, out_dir: Path, log=print) -> dict:
    """Copy, export and describe one checkpoint; returns its manifest entry."""
    from export.onnx_export import export_onnx

    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    cfg = config_from_dict(ckpt["config"]).to_dict()  # today's field names (older checkpoints: softmax_kernels)
    name = f"{cfg['family']}-{cfg['width']}"
    shipped = out_dir / f"{name}.pt"
    if ckpt_path.resolve() != shipped.resolve():
        tmp = shipped.with_name(f".{shipped.name}.tmp")
        shutil.copyfile(ckpt_path, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, shipped)
    files = {"checkpoint": shipped, "onnx": out_dir / f"{name}.onnx", "onnx_fp16": out_dir / f"{name}.fp16.onnx"}
    for key, fp16 in (("onnx", False), ("onnx_fp16", True)):
        report = export_onnx(shipped, files[key], fp16=fp16)
        log(f"{files[key]}: {report.file_size / 1e6:.2f} MB, max |ONNX Runtime - PyTorch| = {report.max_abs_diff:.2e}")
    metrics = ckpt.get("metrics") or {}
    train_args = ckpt.get("train_args") or {}
    val = metrics.get("val") or {}
    validation = {g: {"psnr": round(v["psnr"], 3), "ssim": round(v["ssim"], 4), "psnr_noisy": round(v["psnr_noisy"], 3),
                      "sigma_r": v["sigma_r"], "sigma_s": v["sigma_s"]} for g, v in val.items()}
    if validation:
        validation["mean_psnr"] = round(sum(v["psnr"] for v in val.values()) / len(val), 3)
    steps = int(ckpt.get("step", 0))
    return {
        "name": name,
        "family": cfg["family"],
        "width": cfg["width"],
        **{key: path.name for key, path in files.items()},
        "sha256": {path.name: sha256_file(path) for path in files.values()},
        "config": cfg,
        "training": {
            "command": reproducible_command(train_args, f"models/{name}.pt", steps),
            "resume": f"kpn-train --model {cfg['family']} --resume models/{name}.pt --iters MORE --out models/{name}.pt",
            "steps": steps,
            "batch_size": first_stage_values(train_args)["batch_size"],  # the first stage's; the command shows any change
            "crop": train_args.get("crop"),
            "world_size": train_args.get("world_size", 1),
            "code": (ckpt.get("versions") or {}).get("kpn-deploy-git", "commit not recorded (checkpoints name it since 2026-11-25)"),
            "wall_seconds": round(float(metrics["wall_seconds"])) if "wall_seconds" in metrics else None,
            "machine": trained_on(train_args),
            "data": data_description(train_args),
        },
        "validation": {
            "at_step": metrics.get("val_step"),
            "bursts": f"{train_args.get('val_per_image')} crops of {train_args.get('val_crop')}x{train_args.get('val_crop')} "
                      f"per validation image, per gain (train.data.validation_set)",
            **validation,
        },
    }


def choose_default(entries: list[dict]) -> tuple[str, str]:
    """The best mean validation PSNR over the four Table 1 gains: users meet all of them (gain 1-2 in
    daylight and indoors, 3-4 at night), and no single gain stands for them."""
    scored = [e for e in entries if "mean_psnr" in e["validation"]]
    if not scored:
        raise ValueError("no checkpoint has validation results; train with kpn-train (it validates)")
    best = max(scored, key=lambda e: e["validation"]["mean_psnr"])
    others = ", ".join(f"{e['name']} {e['validation']['mean_psnr']:.2f} dB" for e in scored if e is not best)
    why = (f"best mean validation PSNR over AME-KPN Table 1's four gains ({best['validation']['mean_psnr']:.2f} dB"
           + (f"; {others}" if others else "") + "): users meet every gain from daylight to night, so no single gain decides")
    return best["name"], why


def image_licences(models: list[dict]) -> dict[str, str]:
    """The licence of every photograph the shipped models trained on: the builtin ones, and the
    registry photographs where a model's data names them."""
    licences = {f"skimage.data.{k}": v for k, v in BUILTIN_IMAGES.items()}
    if any(f"{EXTRA_PREFIX}{DEFAULT_PHOTOS}" in str((e.get("training") or {}).get("data", "")) for e in models):
        licences.update({f"{DEFAULT_PHOTOS}/{p.file}": f"{p.licence}; {p.credit} ({p.package.registry} {p.package.name} "
                         f"{p.package.version}: {p.member})" for p in REGISTRY_PHOTOS})
    return licences


def release(checkpoints: list[Path], out_dir: Path, default: Optional[str] = None, log=print,
            default_reason: Optional[str] = None) -> dict:
    if default_reason and default is None:
        raise ValueError("--default-reason: give it with --default NAME")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "MANIFEST.json"
    entries = {}
    if manifest_path.is_file():  # keep models released earlier and not given again
        entries = {e["name"]: e for e in json.loads(manifest_path.read_text())["models"]}
    for ckpt in checkpoints:
        entry = release_one(ckpt, out_dir, log)
        entries[entry["name"]] = entry
    models = sorted(entries.values(), key=lambda e: e["name"])
    if default is None:
        default, why = choose_default(models)
    else:
        if default not in entries:
            raise ValueError(f"--default {default}: not among {sorted(entries)}")
        why = f"chosen by hand (--default): {default_reason}" if default_reason else "chosen by hand (--default)"
    manifest = {
        "default": default,
        "default_reason": why,
        "validation_gains": {g: {"sigma_r": sr, "sigma_s": ss} for g, (sr, ss) in VALIDATION_GAINS.items()},
        "image_licences": image_licences(models),
        "made_by": "python -m train.release " + " ".join(f"models/{e['checkpoint']}" for e in models),
        "models": models,
    }
    write_bytes_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    log(f"wrote {manifest_path} (default: {default})")
    return manifest


@app.command()
def main(
    checkpoints: list[Path] = typer.Argument(..., help="kpn-train checkpoints to ship"),
    out: Path = typer.Option(Path("models"), "--out", help="folder of shipped models"),
    default: Optional[str] = typer.Option(None, "--default", help="name of the runtime's default model (default: best mean validation PSNR)"),
    default_reason: Optional[str] = typer.Option(None, "--default-reason", help="why --default: recorded in the manifest's default_reason"),
) -> None:
    from export.errors import ExportError

    from .checkpoint import CheckpointError

    try:
        release(checkpoints, out, default, default_reason=default_reason)
    except (CheckpointError, ExportError, ValueError, OSError) as exc:
        typer.echo(f"train.release: error: {str(exc).strip().splitlines()[0]}", err=True)
        raise typer.Exit(2)


if __name__ == "__main__":
    app()
