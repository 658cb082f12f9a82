"""Start an AME-KPN from a trained KPN: `python -m train.ame_from_kpn KPN.pt OUT.pt`, then
`kpn-train --model ame-kpn --resume OUT.pt --iters N`.

AME-KPN is KPN plus a residual branch, a weight map that blends the two (eq. 4) and attention gates in
the decoders. Trained from scratch on our CPU budget it stayed 0.8-0.9 dB under our KPN
(docs/training-findings.md), so this starts it where the KPN ended and lets the new parts learn:
  - the backbone and the kernel rows of the head are the KPN's;
  - the attention gates are open (sigmoid(8) = 0.9997: the decoders pass their features on as the KPN's);
  - the weight map starts at `weight` everywhere (0.98: not saturated, so both branches get gradient);
  - the residual rows of the head (a 3x3 read-out of the last features, one for every frame) are fitted
    by least squares so that weight x KPN + (1 - weight) x R best fits the clean images of `fit_batches`
    training batches, in the loss's gamma space to first order (each pixel's error x the sRGB slope at
    the clean pixel, each burst weighted by 1 / the KPN's squared error there, as the log loss weighs it);
    so the AME-KPN starts near the KPN (0.1 dB under it on validation from kpn-small's step 71000) instead of `1 - weight` dark;
  - the run continues the KPN's: its step, schedule, data and Adam moments (the new tensors' second
    moments estimated from the same batches, so their first updates are not the fresh-Adam +-rate), with
    the blend parts (train.trainer.is_blend_part) at `head_lr_factor` x the rate. Why: at the end of a
    KPN's schedule (1.5e-5) Adam moves a parameter by about its rate per step, and the weight map's
    logit (3.9 for 0.98) did not move in thousands of steps (measured: docs/training-findings.md).

OUT records the KPN (path, sha256, step, its run's arguments) and these settings, so `train.release` writes
the whole chain of commands. The KPN checkpoint must carry its optimizer state (kpn-train's and
train.release's checkpoints do).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import typer

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .data import BurstSampler, DataError, load_source
from .losses import loss_for_family
from .metrics import linear_to_srgb
from .models import build_model, config_from_dict
from .trainer import LR_SCHEDULES, STAGE_FIELDS, TrainError, build_optimizer, lr_lambda_factory

FIT_SEED = 12345  # numpy seed of the fitting batches (not a training step's seed: those are [seed, rank, step])
GATE_LOGIT = 8.0  # pre-sigmoid value of the opened attention gates
RIDGE = 1e-6  # relative ridge of the least-squares fit (the features' scale times this)


def _srgb_slope(linear: torch.Tensor) -> torch.Tensor:
    """dG/dx of train.metrics.linear_to_srgb at each pixel of `linear` (by autograd, so the formula stays there)."""
    x = linear.detach().clamp(0.0, 1.0).requires_grad_(True)
    with torch.enable_grad():
        (slope,) = torch.autograd.grad(linear_to_srgb(x).sum(), x)
    return slope


def ame_from_kpn(kpn_path: str, out: str, weight: float = 0.98, head_lr_factor: float = 30.0,
                 fit_batches: int = 12, log=print) -> dict:
    """Writes the AME-KPN checkpoint `out` started from the KPN checkpoint `kpn_path`; -> its train_args."""
    from runtime.files import sha256_file

    if Path(out).resolve() == Path(kpn_path).resolve():
        raise TrainError(f"{out}: is the KPN checkpoint itself; write the AME-KPN to another file")
    if not 0.0 < weight < 1.0:
        raise TrainError(f"--weight {weight}: the weight map's start, a value in (0, 1), e.g. 0.98")
    if not 0.0 < head_lr_factor <= 1e3:
        raise TrainError(f"--head-lr-factor {head_lr_factor}: choose a factor above 0, e.g. 30")
    if fit_batches < 1:
        raise TrainError(f"--fit-batches {fit_batches}: at least 1")
    ck = read_checkpoint(kpn_path)
    kcfg = config_from_dict(ck["config"])
    if kcfg.family != "kpn":
        raise TrainError(f"{kpn_path}: holds a {kcfg.family} model, not a KPN")
    if not ck.get("optimizer"):
        raise TrainError(f"{kpn_path}: has no optimizer state; the AME-KPN continues the KPN's run with its Adam moments")
    kta = dict(ck.get("train_args") or {})
    step = int(ck["step"])
    kpn = build_model(kcfg)
    kpn.load_state_dict(ck["model"])
    kpn.eval()
    acfg = replace(kcfg, family="ame-kpn")
    torch.manual_seed(0)
    ame = build_model(acfg)
    n, k2, features = kcfg.frames, kcfg.kernel_size**2, kcfg.widths[0]

    train_images, _ = load_source(kta["data"], kta.get("val_fraction", 0.2), kta.get("split_seed", 0))
    sampler = BurstSampler(train_images, kcfg.frames, kcfg.reference_index, kta["crop"], downsample=kta["downsample"],
                           motion=kta["motion"], noise_range=kta["noise_range"], still_fraction=kta.get("still_fraction") or 0.0,
                           augment=kta.get("augment") or "none")
    rng = np.random.default_rng(FIT_SEED)
    batches = [sampler.batch(rng, kta["batch_size"]) for _ in range(fit_batches)]

    # Residual rows: R = w . unfold3x3(features) + b, the same for every frame, by weighted least squares
    # on (clean - weight x KPN) / (1 - weight).
    rows, targets, burst_weights = [], [], []
    with torch.no_grad():
        for burst, noise_map, clean in batches:
            kpn_out = kpn(burst, noise_map)
            feats = kpn.backbone(torch.cat([burst, noise_map], 1))
            cols = F.unfold(feats, 3, padding=1)  # [B, C*9, H*W], columns channel-major, then 3x3 position
            b, c9, hw = cols.shape
            rows.append(torch.cat([cols.transpose(1, 2).reshape(-1, c9), torch.ones(b * hw, 1)], 1).double())
            targets.append(((clean - weight * kpn_out) / (1 - weight)).reshape(-1, 1).double())
            # The loss compares images after the sRGB gamma G: to first order a pixel's error there is
            # G'(clean) x its linear error, so each pixel weighs G'(clean)^2 and each burst 1 / the
            # KPN's squared error after G. (Fitted on linear errors alone, the start was 0.3 dB under the
            # KPN on its own fitting batches: docs/training-findings.md.)
            slope = _srgb_slope(clean)
            mse = ((linear_to_srgb(kpn_out) - linear_to_srgb(clean)) ** 2).mean(dim=(1, 2, 3))
            burst_weights.append((slope**2 / mse.view(-1, 1, 1, 1)).reshape(-1, 1).double())
    a, y, sw = torch.cat(rows), torch.cat(targets), torch.cat(burst_weights).sqrt()
    aw = a * sw
    ridge = RIDGE * torch.eye(a.shape[1], dtype=torch.float64) * aw.pow(2).sum() / a.shape[0]
    coef = torch.linalg.solve(aw.T @ aw + ridge, aw.T @ (y * sw)).squeeze(1)

    with torch.no_grad():
        sd = ame.state_dict()
        for name, tensor in kpn.state_dict().items():
            if name.startswith("backbone."):
                sd[name].copy_(tensor)
        head_w, head_b = sd["kernel_residual_head.weight"], sd["kernel_residual_head.bias"]
        head_w.zero_()
        head_b.zero_()
        head_w[: n * k2].copy_(ck["model"]["kernel_head.weight"])
        head_b[: n * k2].copy_(ck["model"]["kernel_head.bias"])
        head_w[n * k2 :] = coef[:-1].float().view(features, 3, 3).unsqueeze(0).expand(n, features, 3, 3)
        head_b[n * k2 :] = coef[-1].float()
        sd["weight_head.weight"].zero_()
        sd["weight_head.bias"].fill_(math.log(weight / (1 - weight)))
        ame.load_state_dict(sd)
        for decoder in ame.backbone.decoders:
            last = decoder.channel_attention.mlp[2]  # its output enters the sigmoid twice (avg and max paths)
            last.weight.zero_()
            last.bias.fill_(GATE_LOGIT / 2)
            decoder.spatial_attention.conv.weight.zero_()
            decoder.spatial_attention.conv.bias.fill_(GATE_LOGIT)

    ata = dict(kta) | {"model": "ame-kpn", "stages": [], "init_from": None, "head_lr_factor": head_lr_factor,
                       "from_kpn": {"path": str(kpn_path), "sha256": sha256_file(kpn_path), "step": step,
                                    "weight": weight, "fit_batches": fit_batches, "train_args": kta}}
    _, decay, floor = LR_SCHEDULES["ame-kpn"]
    optimizer = build_optimizer(ame, kta["lr"], head_lr_factor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda_factory(decay, floor, kta["epoch_iters"], kta.get("lr_factor") or 1.0))
    scheduler.last_epoch = step

    # Adam state: the KPN's moments where a tensor carries over (the kernel rows of the head too); for the
    # new tensors zero first moments and second moments from the fitting batches' gradients.
    loss_fn = loss_for_family("ame-kpn", kta["anneal_decay"], kta.get("anneal_floor") or 0.0, kta.get("loss_scale") or "linear",
                              STAGE_FIELDS["gradient_weight"] if kta.get("gradient_weight") is None else kta["gradient_weight"])
    squares = {name: torch.zeros_like(p) for name, p in ame.named_parameters()}
    ame.train()
    for burst, noise_map, clean in batches:
        ame.zero_grad()
        out_, estimates = ame.forward_train(burst, noise_map)
        loss, _ = loss_fn(out_, estimates, clean, step)
        loss.backward()
        for name, p in ame.named_parameters():
            squares[name] += p.grad.detach() ** 2 / len(batches)
    ame.zero_grad()
    kpn_names = [name for name, _ in kpn.named_parameters()]
    kpn_state = {kpn_names[i]: s for i, s in ck["optimizer"]["state"].items()}
    for name, p in ame.named_parameters():
        if name in kpn_state:
            state = {k: v.clone() if torch.is_tensor(v) else v for k, v in kpn_state[name].items()}
        elif name.startswith("kernel_residual_head"):
            held = kpn_state[name.replace("kernel_residual_head", "kernel_head")]
            state = {"step": held["step"].clone(), "exp_avg": torch.zeros_like(p), "exp_avg_sq": squares[name].clone()}
            state["exp_avg"][: n * k2] = held["exp_avg"]
            state["exp_avg_sq"][: n * k2] = held["exp_avg_sq"]
        else:
            state = {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(p), "exp_avg_sq": squares[name].clone()}
        optimizer.state[p] = state
    metrics = {k: v for k, v in (ck.get("metrics") or {}).items() if k in ("wall_seconds", "history")}
    save_checkpoint(out, ame, acfg, optimizer, scheduler, step=step, metrics=metrics, train_args=ata)
    log(f"wrote {out}: an AME-KPN at step {step} of {kpn_path}'s run (weight map {weight}, blend parts at "
        f"{head_lr_factor}x the rate); continue with kpn-train --model ame-kpn --resume {out} --iters N")
    return ata


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)


@app.command()
def main(
    kpn: str = typer.Argument(..., help="a trained KPN checkpoint (kpn-train's, with its optimizer state)"),
    out: str = typer.Argument(..., help="the AME-KPN checkpoint to write (atomically; never the KPN's file)"),
    weight: float = typer.Option(0.98, "--weight", help="the weight map's start: the kernel branch's share of each output"),
    head_lr_factor: float = typer.Option(30.0, "--head-lr-factor", help="rate of the weight map and attention gates, x the schedule's"),
    fit_batches: int = typer.Option(12, "--fit-batches", help="training batches for the residual read-out's least-squares fit"),
) -> None:
    try:
        ame_from_kpn(kpn, out, weight, head_lr_factor, fit_batches)
    except (TrainError, CheckpointError, DataError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


if __name__ == "__main__":
    app()
