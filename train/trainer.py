"""The training loop behind `kpn-train`: synthetic bursts, the papers' losses and learning-rate
schedules, periodic validation at AME-KPN Table 1's gains, atomic checkpoints, exact resume and
DistributedDataParallel under torchrun.

Learning-rate schedules (Adam):
- KPN / AME-KPN (AME-KPN 3.2): 1e-4, multiplied by 10^-0.05 once per "epoch" until 5e-6 (= lr0/20).
  The paper does not say how long an epoch is; here it is `epoch_iters` iterations, by default
  ceil(iters / 40): the paper's run of 8e4 iterations then has 2000-iteration epochs and reaches the
  floor after 26 epochs (52k iterations), and a shorter run keeps the same shape.
- ST-PAN / PAN (ST-PAN IV.B): 2e-4, multiplied by 0.999991 per "epoch" until 1e-4 (= lr0/2). An
  epoch here is one iteration: over the paper's 2e5 iterations the rate halves after 77k iterations;
  a longer epoch would leave it nearly constant.
A different --lr scales the floor with it (the ratios above). `--lr-factor F` multiplies the whole
schedule by F; on a --resume it starts a new stage (e.g. 0.1 for a final low-rate stage: the ST-PAN
schedule above stays near its initial rate for the first 10k steps, so a short run ends at a high rate).

Exact resume: the batch of step t on rank r is drawn from numpy's default_rng([seed, r, t]), so a
resumed run needs no saved data-RNG state; the checkpoint carries weights, Adam state, scheduler
state and the step. Under torchrun each process draws its own batch (`batch_size` per process);
rank 0 validates and writes the checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, code_commit, read_checkpoint, save_checkpoint
from .data import AUGMENTATIONS, DOWNSAMPLE, NOISE_RANGES, VALIDATION_GAINS, BurstSampler, DataError, load_source, validation_set
from .losses import loss_for_family
from .metrics import psnr_gamma, ssim_gamma
from .models import KERNEL_FORMS, WIDTHS, build_model, config_from_dict, default_config

# (initial lr, decay per epoch, floor as a fraction of the initial lr)
LR_SCHEDULES = {
    "kpn": (1e-4, 10**-0.05, 5e-6 / 1e-4),
    "ame-kpn": (1e-4, 10**-0.05, 5e-6 / 1e-4),
    "st-pan": (2e-4, 0.999991, 1e-4 / 2e-4),
    "pan": (2e-4, 0.999991, 1e-4 / 2e-4),
}


class TrainError(Exception):
    """A user error in the training arguments; one line."""


@dataclass
class TrainArgs:
    model: str = "kpn"
    width: str = "small"
    data: str | None = None  # None: "builtin", or on --resume the checkpoint's; a new value starts a stage
    iters: int = 1000
    batch_size: int | None = None  # None: 4, or on --resume the checkpoint's; a new value starts a stage
    crop: int = 64
    lr: float | None = None  # None: the paper's initial rate for the family
    out: str = "ckpt.pt"
    resume: str | None = None
    device: str = "cpu"
    seed: int = 0
    val_every: int = 500
    ckpt_every: int | None = None  # None: = val_every
    frames: int | None = None  # None: the family's default (8 / 5 / 1)
    val_crop: int = 128
    val_per_image: int = 4
    val_fraction: float = 0.2
    split_seed: int = 0
    epoch_iters: int | None = None  # None: ceil(iters / 40) for KPN/AME-KPN, 1 for ST-PAN/PAN
    motion: str = "paper"
    noise_range: str = "paper"  # train.data.NOISE_RANGES
    # box-downsampling of the training bursts (validation keeps the papers' 4). None: 4, or on --resume the
    # checkpoint's. Like still_fraction, a different value on --resume starts a new stage (STAGE_FIELDS).
    downsample: int | None = None
    still_fraction: float | None = None  # share of bursts without motion; None: 0, or on --resume the checkpoint's
    augment: str | None = None  # train.data.AUGMENTATIONS; None: "none", or on --resume the checkpoint's
    lr_factor: float | None = None  # multiplies the learning-rate schedule; None: 1, or on --resume the checkpoint's
    stages: list = field(default_factory=list)  # [{"from_step", "set": {field: new}, "previous": {field: old}}]
    anneal_decay: float | None = None  # None: the papers' 0.9998 (train.losses)
    anneal_floor: float | None = None  # lowest weight of the annealed term; None: 0, or on --resume the checkpoint's
    loss_scale: str | None = None  # train.losses.LOSS_SCALES; None: "linear", or on --resume the checkpoint's
    gradient_weight: float | None = None  # lambda of eq. 7 (KPN/AME-KPN); None: 1, or on --resume the checkpoint's
    kernels: str | None = None  # KPN/AME-KPN kernel form (train.models.KERNEL_FORMS); None: the config's default
    # A new run that starts from another checkpoint's weights (those whose names and shapes match; the rest,
    # e.g. the first convolution and the head of a net with another --frames, keep their initialisation).
    # Resolved to {"path", "sha256", "step", "train_args"} and kept through resumes.
    init_from: str | dict | None = None
    # AME-KPN's blend parts (is_blend_part: weight map, attention gates) learn at this multiple of the
    # schedule's rate. Set by `python -m train.ame_from_kpn`, which starts an AME-KPN from a trained KPN
    # late in its schedule, where the KPN's rate cannot move a new weight map (train/ame_from_kpn.py).
    head_lr_factor: float = 1.0
    # {"path", "sha256", "step", "weight", "fit_batches", "train_args"}: the KPN checkpoint an AME-KPN run
    # was started from by train.ame_from_kpn (its own run too, so that train.release can write the chain)
    from_kpn: dict | None = None
    quiet: bool = False
    # processes that make the training bursts ahead of the steps (0: in the training process). Not a run
    # field: step s's burst comes from the seed (seed, rank, s) wherever it is made, so a resume may change it.
    workers: int = 0
    # fields that define the run: a resume takes them from the checkpoint
    RUN_FIELDS: tuple = field(default=("model", "width", "data", "batch_size", "crop", "lr", "seed", "frames",
                                       "val_crop", "val_per_image", "val_fraction", "split_seed",
                                       "epoch_iters", "motion", "noise_range", "downsample", "still_fraction",
                                       "augment", "lr_factor", "stages", "anneal_decay", "anneal_floor",
                                       "loss_scale", "gradient_weight", "init_from", "head_lr_factor", "from_kpn"),
                         repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("RUN_FIELDS")
        return d


# Run fields that a --resume may change, with the value a checkpoint without the field was trained with.
# A change starts a new stage of the run (recorded in train_args["stages"]; train.release turns the
# stages back into command lines).
STAGE_FIELDS = {"data": "builtin", "downsample": DOWNSAMPLE, "still_fraction": 0.0, "augment": "none", "lr_factor": 1.0, "anneal_floor": 0.0,
                "loss_scale": "linear", "gradient_weight": 1.0, "batch_size": 4}


def stage_changes(stage: dict) -> tuple[dict, dict]:
    """-> ({field: new value}, {field: previous value}) of one entry of train_args["stages"]. Reads the
    first format too ({"from_step", "downsample", "previous"}: checkpoints that changed only --downsample)."""
    if isinstance(stage.get("set"), dict):
        return dict(stage["set"]), dict(stage.get("previous") or {})
    return {"downsample": stage["downsample"]}, {"downsample": stage["previous"]}


def first_stage_values(train_args: dict) -> dict:
    """{field: value} of STAGE_FIELDS that a run started with, before its stages changed them."""
    values = {name: unset if train_args.get(name) is None else train_args[name] for name, unset in STAGE_FIELDS.items()}
    for stage in reversed(train_args.get("stages") or []):
        values.update(stage_changes(stage)[1])
    return values


def is_blend_part(name: str) -> bool:
    """Whether parameter `name` of an AME-KPN is one of the parts a KPN lacks that set its blend (eq. 4):
    the weight map's head and the decoders' channel and spatial attention."""
    return name.startswith("weight_head.") or ".channel_attention." in name or ".spatial_attention." in name


def build_optimizer(net: nn.Module, lr: float, head_lr_factor: float = 1.0) -> torch.optim.Adam:
    """Adam over `net`; with head_lr_factor != 1 in two groups: every other parameter at lr, the blend
    parts (is_blend_part) at lr * head_lr_factor. The scheduler scales both groups alike."""
    if head_lr_factor == 1.0:
        return torch.optim.Adam(net.parameters(), lr=lr)
    named = list(net.named_parameters())
    return torch.optim.Adam([{"params": [p for name, p in named if not is_blend_part(name)], "lr": lr},
                             {"params": [p for name, p in named if is_blend_part(name)], "lr": lr * head_lr_factor}])


def lr_lambda_factory(decay: float, floor: float, epoch_iters: int, factor: float = 1.0):
    def f(step: int) -> float:
        return factor * max(decay ** (step // epoch_iters), floor)

    return f


class _TrainForward(nn.Module):
    """Makes forward() return forward_train's pair, so DistributedDataParallel hooks see it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, burst, noise_map):
        return self.net.forward_train(burst, noise_map)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


@torch.no_grad()
def evaluate(model: nn.Module, val: dict, device: torch.device, batch: int = 8) -> dict:
    """PSNR/SSIM in gamma space per gain (mean over the validation bursts), and the noisy
    reference's PSNR for comparison."""
    was_training = model.training
    model.eval()
    out = {}
    for gain, (burst, nmap, clean) in val.items():
        preds = torch.cat([model(burst[i : i + batch].to(device), nmap[i : i + batch].to(device)).cpu()
                           for i in range(0, len(burst), batch)])
        ref = int(getattr(getattr(model, "cfg", None), "reference_index", 0))
        sr, ss = VALIDATION_GAINS[gain]
        out[gain] = {
            "sigma_r": sr,
            "sigma_s": ss,
            "psnr": float(np.mean([psnr_gamma(p, c) for p, c in zip(preds, clean)])),
            "ssim": float(np.mean([ssim_gamma(p[0], c[0]) for p, c in zip(preds, clean)])),
            "psnr_noisy": float(np.mean([psnr_gamma(b[ref], c[0]) for b, c in zip(burst, clean)])),
        }
    model.train(was_training)
    return out


def _resolve(args: TrainArgs) -> tuple[TrainArgs, dict | None]:
    """Fill defaults; on --resume take the run-defining fields from the checkpoint."""
    ckpt = None
    if args.kernels is not None and args.model in ("st-pan", "pan"):
        raise TrainError(f"--kernels is a KPN/AME-KPN option; {args.model} predicts no kernels")
    if args.init_from is not None and args.resume:
        raise TrainError("--init-from starts a new run; --resume continues one: pass one of them")
    if args.resume:
        ckpt = read_checkpoint(args.resume)
        saved = ckpt.get("train_args") or {}
        family = (ckpt.get("config") or {}).get("family")
        if family != args.model:
            raise TrainError(f"{args.resume}: checkpoint holds a {family} model, not {args.model}; pass --model {family}")
        if args.kernels is not None:
            held = config_from_dict(ckpt["config"]).kernels
            if args.kernels != held:
                raise TrainError(f"{args.resume}: --kernels {args.kernels}: the checkpoint's model has {held} kernels "
                                 "(--kernels applies to a new run)")
        # the model's kernel form is the checkpoint's (None: a run from before the option, the default form)
        args.kernels = saved.get("kernels")
        asked = {name: getattr(args, name) for name in STAGE_FIELDS}
        for name in args.RUN_FIELDS:
            if name in saved:
                setattr(args, name, saved[name])
        changed, previous = {}, {}
        for name, unset in STAGE_FIELDS.items():
            before = saved.get(name)
            before = unset if before is None else before  # checkpoints from before the option
            setattr(args, name, before)
            if asked[name] is not None and asked[name] != before:
                setattr(args, name, asked[name])
                changed[name], previous[name] = asked[name], before
        if changed:
            args.stages = list(args.stages) + [{"from_step": int(ckpt.get("step", 0)), "set": changed, "previous": previous}]
    for name, unset in STAGE_FIELDS.items():
        if getattr(args, name) is None:
            setattr(args, name, unset)
    if args.model not in LR_SCHEDULES:
        raise TrainError(f"unknown model {args.model!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if args.width not in WIDTHS:
        raise TrainError(f"unknown width {args.width!r}; choose one of {', '.join(WIDTHS)}")
    for name in ("iters", "batch_size", "crop", "val_every", "val_crop", "val_per_image"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.motion not in ("paper", "walk"):
        raise TrainError(f"unknown motion model {args.motion!r}; choose paper or walk")
    if args.noise_range not in NOISE_RANGES:
        raise TrainError(f"unknown noise range {args.noise_range!r}; choose {' or '.join(NOISE_RANGES)}")
    if args.downsample not in (1, 2, 4):
        raise TrainError(f"--downsample {args.downsample}: choose 1, 2 or 4")
    if not 0.0 <= args.still_fraction <= 1.0:
        raise TrainError(f"--still-fraction {args.still_fraction}: choose a fraction in [0, 1]")
    if args.augment not in AUGMENTATIONS:
        raise TrainError(f"unknown augmentation {args.augment!r}; choose {' or '.join(AUGMENTATIONS)}")
    if not 0.0 < args.lr_factor <= 1e3:
        raise TrainError(f"--lr-factor {args.lr_factor}: choose a factor above 0 (0.1: a tenth of the schedule's rate)")
    if args.head_lr_factor != 1.0 and (args.model != "ame-kpn" or not 0.0 < args.head_lr_factor <= 1e3):
        raise TrainError(f"head_lr_factor {args.head_lr_factor}: a factor above 0 for AME-KPN's blend parts "
                         f"(train.ame_from_kpn), not for {args.model}")
    lr0, _, _ = LR_SCHEDULES[args.model]
    if args.lr is None:
        args.lr = lr0
    if args.epoch_iters is None:
        args.epoch_iters = max(1, math.ceil(args.iters / 40)) if args.model in ("kpn", "ame-kpn") else 1
    if args.ckpt_every is None:
        args.ckpt_every = args.val_every
    if isinstance(args.init_from, str):
        from runtime.files import sha256_file

        source = read_checkpoint(args.init_from)
        family = (source.get("config") or {}).get("family")
        if family != args.model:
            raise TrainError(f"{args.init_from}: --init-from holds a {family} model, not {args.model}")
        # the source's own run too, so that train.release can write the whole chain of commands
        args.init_from = {"path": str(args.init_from), "sha256": sha256_file(args.init_from),
                          "step": int(source.get("step", 0)), "train_args": source.get("train_args") or {}}
    return args, ckpt


def init_weights_from(net: nn.Module, path: str) -> list[str]:
    """Copies into `net` the parameters and buffers of checkpoint `path` whose names and shapes match
    (--init-from); -> the names of `net`'s tensors left at their initialisation. Raises TrainError when
    the kernel forms differ (the same weights would mean other kernels) or nothing matches."""
    source = read_checkpoint(path)
    held = config_from_dict(source["config"])
    if getattr(held, "kernels", None) != getattr(net.cfg, "kernels", None):
        raise TrainError(f"{path}: --init-from has {held.kernels} kernels; pass --kernels {held.kernels}")
    own = net.state_dict()
    copied = {k: v for k, v in source["model"].items() if k in own and own[k].shape == v.shape}
    if not copied:
        raise TrainError(f"{path}: --init-from shares no weights with this model")
    net.load_state_dict(copied, strict=False)
    return [k for k in own if k not in copied]


def _config(args: TrainArgs, ckpt: dict | None):
    if ckpt is not None:
        return config_from_dict(ckpt["config"])
    cfg = default_config(args.model, args.width)
    if args.kernels is not None:
        if args.kernels not in KERNEL_FORMS:
            raise TrainError(f"unknown kernels {args.kernels!r}; choose {', '.join(KERNEL_FORMS)}")
        cfg = replace(cfg, kernels=args.kernels)
    if args.frames is not None and args.frames != cfg.frames:
        if args.model == "pan":
            raise TrainError("pan takes exactly 1 frame (use st-pan for clips)")
        if args.frames < 2:
            raise TrainError(f"--frames must be at least 2 for {args.model}, got {args.frames}")
        d = cfg.to_dict()
        d["frames"] = args.frames
        if args.model == "st-pan":
            d["reference_index"] = -1  # back to T // 2
        cfg = config_from_dict(d)
    for name, size in (("crop", args.crop), ("val-crop", args.val_crop)):
        if size % cfg.size_multiple:
            raise TrainError(f"--{name} {size} must be a multiple of {cfg.size_multiple} for {args.model} ({args.width})")
    return cfg


class _StepBatchDataset(torch.utils.data.Dataset):
    """Item s = the training batch of step s, drawn from the seed (seed, rank, s): the same tensors in any
    process, so worker processes change only where the batches are made."""

    def __init__(self, sampler: BurstSampler, seed: int, rank: int, batch_size: int):
        self.sampler, self.seed, self.rank, self.batch_size = sampler, seed, rank, batch_size

    def __getitem__(self, step: int):
        return self.sampler.batch(np.random.default_rng([self.seed, self.rank, step]), self.batch_size)

    def __len__(self) -> int:  # any step index is valid; the loader asks only for those it is given
        return 2**62


def step_batches(sampler: BurstSampler, seed: int, rank: int, batch_size: int, start: int, stop: int,
                 workers: int = 0, pin_memory: bool = False):
    """Yields the batches of steps start..stop-1 in order: made here when `workers` is 0, else by that many
    DataLoader processes (each kept up to 4 steps ahead; synthesis runs ~4 ms per 64x64 burst on one
    core, which a GPU step outruns)."""
    dataset = _StepBatchDataset(sampler, seed, rank, batch_size)
    if workers <= 0:
        for step in range(start, stop):
            yield dataset[step]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                         pin_memory=pin_memory, prefetch_factor=4)
    yield from loader


def train(args: TrainArgs, console=None) -> dict:
    """Runs (or resumes) a training; returns the final metrics. Raises TrainError, DataError or
    CheckpointError for user errors."""
    from rich.console import Console

    code_commit()  # the commit of the code that was imported, read now, before a long run (train.checkpoint)
    rank, world, local_rank = _dist_info()
    distributed = world > 1
    console = console or Console(stderr=True, quiet=args.quiet or rank != 0)
    args, ckpt = _resolve(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available to PyTorch here; use --device cpu")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise TrainError(f"unknown device {args.device!r}; choose cpu or cuda")
    if args.workers < 0:
        raise TrainError(f"--workers {args.workers}: must be 0 (bursts made in the training process) or more")
    cfg = _config(args, ckpt)

    if distributed:
        import torch.distributed as dist

        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        if args.device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    device = torch.device(f"cuda:{local_rank}" if args.device.startswith("cuda") and distributed else args.device)

    try:
        train_images, val_images = load_source(args.data, args.val_fraction, args.split_seed)
        sampler = BurstSampler(train_images, cfg.frames, cfg.reference_index, args.crop, downsample=args.downsample,
                               motion=args.motion, noise_range=args.noise_range, still_fraction=args.still_fraction,
                               augment=args.augment)
        val = validation_set(val_images, cfg.frames, cfg.reference_index, args.val_crop,
                             per_image=args.val_per_image, seed=args.split_seed, motion=args.motion) if rank == 0 else None

        torch.manual_seed(args.seed)
        net = build_model(cfg)
        if args.init_from is not None and ckpt is None:
            fresh = init_weights_from(net, args.init_from["path"])
            console.print(f"initialised from {args.init_from['path']} (step {args.init_from['step']}); "
                          f"{len(fresh)} tensors keep their initialisation" + (f": {', '.join(fresh)}" if fresh else ""))
        net = net.to(device)
        lr0, decay, floor = LR_SCHEDULES[cfg.family]
        optimizer = build_optimizer(net, args.lr, args.head_lr_factor)
        lr_at = lr_lambda_factory(decay, floor, args.epoch_iters, args.lr_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
        step, metrics = 0, {}
        if ckpt is not None:
            try:
                net.load_state_dict(ckpt["model"])
                if ckpt.get("optimizer"):
                    optimizer.load_state_dict(ckpt["optimizer"])
                if ckpt.get("scheduler"):
                    scheduler.load_state_dict(ckpt["scheduler"])
            except Exception as exc:
                raise CheckpointError(f"{args.resume}: cannot resume from it ({str(exc).splitlines()[0][:200]})") from None
            step, metrics = int(ckpt.get("step", 0)), dict(ckpt.get("metrics") or {})
            # The optimizer's saved rate is the old stage's; the resumed step takes this stage's (the same
            # number when --lr-factor is unchanged, so an exact resume stays exact).
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * lr_at(step)
            # A new --loss-scale changes the gradients' size by 10-100x; Adam's moment estimates belong to
            # the old loss, and with them the first updates are that much too large (measured on the
            # shipped ST-PAN, 250 steps on: 28.21 dB with the old moments, 29.39 with fresh ones, where
            # it started). The stage starts them afresh.
            stage = args.stages[-1] if args.stages else None
            if stage and stage["from_step"] == step and "loss_scale" in stage_changes(stage)[0]:
                optimizer.state.clear()
            console.print(f"resumed {args.resume} at step {step} of {args.iters}")
        try:
            loss_fn = loss_for_family(cfg.family, args.anneal_decay, args.anneal_floor, args.loss_scale, args.gradient_weight)
        except ValueError as exc:
            raise TrainError(f"--anneal-decay/--anneal-floor/--loss-scale/--gradient-weight: {exc}") from None
        forward = _TrainForward(net)
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(forward, device_ids=[local_rank] if device.type == "cuda" else None)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        train_args = args.to_dict() | {"world_size": world, "loss": loss_fn.to_dict(), "device_name": device_name}

        wall0, wall_start = float(metrics.get("wall_seconds", 0.0)), time.perf_counter()

        def checkpoint(step: int) -> None:
            metrics["wall_seconds"] = wall0 + time.perf_counter() - wall_start  # summed over resumed runs
            if rank == 0:
                save_checkpoint(args.out, net, cfg, optimizer, scheduler, step=step, metrics=metrics, train_args=train_args)
            if distributed:
                dist.barrier()

        def validate(step: int) -> None:
            if rank == 0:
                result = evaluate(net, val, device)
                metrics["val"], metrics["val_step"] = result, step
                metrics.setdefault("history", []).append({"step": step, **{g: r["psnr"] for g, r in result.items()}})
                console.print(f"step {step}: val PSNR/SSIM (gamma) " + "  ".join(
                    f"{g} {r['psnr']:.2f}/{r['ssim']:.3f} (noisy {r['psnr_noisy']:.2f})" for g, r in result.items()))
            if distributed:
                dist.barrier()

        net.train()
        losses: list[float] = []
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} it/s"),
                      TimeRemainingColumn(), console=console, transient=False) as progress:
            task = progress.add_task(f"{cfg.family} ({cfg.width})", total=args.iters, completed=step, loss="-", speed="-")
            t0, s0 = time.perf_counter(), step
            for batch in step_batches(sampler, args.seed, rank, args.batch_size, step, args.iters, args.workers,
                                      pin_memory=device.type == "cuda"):
                burst, nmap, clean = (t.to(device, non_blocking=True) for t in batch)
                denoised, aux = forward(burst, nmap)
                loss, _ = loss_fn(denoised, aux, clean, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(float(loss.detach()))
                speed = (step - s0) / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, completed=step, loss=f"{np.mean(losses[-50:]):.4g}", speed=f"{speed:.2f}")
                if step % args.val_every == 0 or step == args.iters:
                    metrics["train_loss"] = float(np.mean(losses[-50:]))
                    metrics["lr"] = float(scheduler.get_last_lr()[0])
                    validate(step)
                if step % args.ckpt_every == 0 or step == args.iters:
                    metrics["train_loss"] = float(np.mean(losses[-50:]))
                    checkpoint(step)
        if step >= args.iters and (ckpt is not None and int(ckpt.get("step", 0)) >= args.iters):
            console.print(f"{args.resume} is already at step {step} (>= --iters {args.iters}); nothing to do")
        metrics["losses"] = losses
        return metrics
    finally:
        if distributed:
            dist.destroy_process_group()


__all__ = ["TrainArgs", "TrainError", "train", "step_batches", "evaluate", "LR_SCHEDULES", "STAGE_FIELDS", "stage_changes",
           "first_stage_values", "DataError", "CheckpointError"]
