"""`kpn-train`: train KPN, AME-KPN, ST-PAN or PAN on synthetic bursts (see train/trainer.py).

Several GPUs or hosts: `torchrun --nproc-per-node G -m train.cli ...` (DistributedDataParallel; nccl
on CUDA, gloo on CPU); --batch-size is per process.
"""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)


@app.command()
def run(
    model: str = typer.Option(..., "--model", help="kpn, ame-kpn, st-pan or pan"),
    width: str = typer.Option("small", "--width", help="small (CPU), medium (twice small's channels, for a GPU) or paper (the papers' widths)"),
    data: Optional[str] = typer.Option(None, "--data", help="builtin (default: scikit-image's photographs, a fixed validation split), a folder of images (recursive; jpg/png/tif; a fifth of them, chosen by name, validate), or builtin+FOLDER (builtin with FOLDER's images added for training, e.g. from `python -m train.photos`). With --resume, a new value starts a new stage of the run"),
    iters: int = typer.Option(1000, "--iters", help="total optimizer steps (a resumed run continues to this)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="bursts per step (default 4; per process under torchrun). With --resume, a new value starts a new stage of the run (e.g. 32 on a GPU)"),
    crop: int = typer.Option(64, "--crop", help="training crop P (output size; the source window is 4P+128)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="initial learning rate (default: the paper's: 1e-4 KPN/AME-KPN, 2e-4 ST-PAN/PAN)"),
    out: str = typer.Option("ckpt.pt", "--out", help="checkpoint to write (atomically, every --ckpt-every steps and at the end)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="checkpoint to continue exactly (same step, optimizer, schedule, data)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    seed: int = typer.Option(0, "--seed"),
    val_every: int = typer.Option(500, "--val-every", help="validate at AME-KPN Table 1's four gains every K steps"),
    ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", help="checkpoint every K steps (default: --val-every)"),
    frames: Optional[int] = typer.Option(None, "--frames", help="frames per burst (default 8 KPN/AME-KPN, 5 ST-PAN)"),
    val_crop: int = typer.Option(128, "--val-crop", help="size of the validation bursts"),
    val_per_image: int = typer.Option(4, "--val-per-image", help="validation crops per validation image"),
    epoch_iters: Optional[int] = typer.Option(None, "--epoch-iters", help="iterations per LR-decay epoch (default: iters/40 for KPN/AME-KPN, 1 for ST-PAN/PAN)"),
    motion: str = typer.Option("paper", "--motion", help="paper (AME-KPN 3.1 offsets) or walk (cumulative, for clips)"),
    noise_range: str = typer.Option("paper", "--noise-range", help="paper (sigma_r <= 10^-1.5, sigma_s <= 10^-2: gains 3 and 4 of AME-KPN Table 1 lie beyond) or wide (10^-1 and 10^-1.5: covers all four gains)"),
    downsample: Optional[int] = typer.Option(None, "--downsample", help="box-downsampling factor of the training bursts: 4 (the papers', the default), 2 or 1 give 4x / 16x the image content per photograph; offsets stay in full-resolution pixels, so the motion grows by 4/factor. With --resume, a new value starts a new stage of the run (recorded in the checkpoint)"),
    still_fraction: Optional[float] = typer.Option(None, "--still-fraction", help="fraction of training bursts without motion (all frames aligned; default 0): with the papers' motion alone, short runs learn to ignore the other frames. With --resume, a new value starts a new stage of the run"),
    augment: Optional[str] = typer.Option(None, "--augment", help="none (default) or dihedral: each training window turned by a random one of the square's 8 symmetries (90-degree turns, transposes). With --resume, a new value starts a new stage of the run"),
    lr_factor: Optional[float] = typer.Option(None, "--lr-factor", help="multiplies the learning-rate schedule (default 1); with --resume, a new value starts a new stage of the run, e.g. 0.1 for a final low-rate stage"),
    anneal_decay: Optional[float] = typer.Option(None, "--anneal-decay", help="decay per step of the annealed per-frame/per-group loss term (default: the papers' 0.9998, made for ~100k-step runs; e.g. 0.997 for a few thousand steps; 0: no annealed term, for a run started from trained weights with --init-from)"),
    anneal_floor: Optional[float] = typer.Option(None, "--anneal-floor", help="the annealed term's weight never falls below this (default 0): the per-frame/per-group estimates keep training every frame's kernels or offsets. With --resume, a new value starts a new stage of the run"),
    loss_scale: Optional[str] = typer.Option(None, "--loss-scale", help="linear (default: the papers' loss) or log: the batch mean of each burst's log loss, so that low-noise bursts weigh as much as high-noise ones (the mean PSNR in dB over gains is what the bar measures). With --resume, a new value starts a new stage of the run"),
    gradient_weight: Optional[float] = typer.Option(None, "--gradient-weight", help="KPN/AME-KPN: lambda of eq. 7, the weight of the L1 loss on the output's gradients beside its squared error (default 1; at 1 the gradient term is 19-105x the squared error, so the loss hardly sees PSNR; 0: the squared error alone, the shipped KPN-family models' stages from kpn-small's step 58500 on). With --resume, a new value starts a new stage of the run"),
    kernels: Optional[str] = typer.Option(None, "--kernels", help="KPN/AME-KPN: softmax (default: N x softmax over a pixel's taps), projected (the raw kernels moved onto sum N: no tap starves of gradient, as a small softmax share does) or raw (the papers'); a new run only, a resume keeps the checkpoint's"),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="start a new run from this checkpoint's weights (those whose names and shapes match; the rest, e.g. the first convolution and the head of a net with another --frames, keep their initialisation). Recorded in the checkpoint"),
    workers: int = typer.Option(0, "--workers", help="processes that make the training bursts ahead of the steps (0: in the training process); on a GPU the synthesis, ~4 ms per burst on one CPU core, is otherwise the bottleneck. The bursts are the same for any value"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress or validation lines"),
) -> None:
    """Train a denoiser on synthetic bursts and write a checkpoint that kpn-export reads."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .trainer import TrainArgs, TrainError, train

    args = TrainArgs(model=model, width=width, data=data, iters=iters, batch_size=batch_size, crop=crop, lr=lr,
                     out=out, resume=resume, device=device, seed=seed, val_every=val_every, ckpt_every=ckpt_every,
                     frames=frames, val_crop=val_crop, val_per_image=val_per_image, epoch_iters=epoch_iters,
                     motion=motion, noise_range=noise_range, downsample=downsample, still_fraction=still_fraction,
                     augment=augment, lr_factor=lr_factor, anneal_decay=anneal_decay,
                     anneal_floor=anneal_floor, loss_scale=loss_scale, gradient_weight=gradient_weight, kernels=kernels,
                     init_from=init_from, workers=workers, quiet=quiet)
    try:
        train(args)
    except (TrainError, DataError, CheckpointError) as exc:
        typer.echo(f"kpn-train: error: {exc}", err=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        typer.echo("kpn-train: interrupted; the last checkpoint written is intact", err=True)
        raise typer.Exit(130)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
