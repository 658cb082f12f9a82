"""kpn-train end to end on the CPU: a tiny run whose loss falls, checkpoints that reproduce the model,
exact resume, the learning-rate schedules, DistributedDataParallel with gloo (2 processes), and the
one-line errors of bad input."""

import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checkpoint import load_checkpoint
from train.data import BurstSampler, load_source, validation_set
from train.losses import loss_for_family
from train.models import build_model, default_config
from train.trainer import LR_SCHEDULES, TrainArgs, TrainError, evaluate, lr_lambda_factory, step_batches, train

TINY = dict(crop=16, val_crop=16, val_per_image=1, batch_size=2, quiet=True)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run_as_a_user(commands: list[str], folder: Path, monkeypatch, out: str) -> dict:
    """Runs kpn-train command lines (train.release's) in `folder` through the CLI; -> the checkpoint `out`."""
    from typer.testing import CliRunner

    from train.cli import app

    monkeypatch.chdir(folder)
    for command in commands:
        argv = shlex.split(command)[1:] + ["--quiet", "--val-crop", "16", "--val-per-image", "1"]
        r = CliRunner().invoke(app, argv)
        assert r.exit_code == 0, r.output
    return torch.load(folder / out, weights_only=True)


def test_tiny_training_loss_falls_and_checkpoint_reproduces_validation(tmp_path):
    out = tmp_path / "kpn.pt"
    m = train(TrainArgs(model="kpn", iters=40, val_every=40, out=str(out), lr=3e-4, seed=3, **{**TINY, "crop": 32}))
    losses = m["losses"]
    assert len(losses) == 40 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    model, ckpt = load_checkpoint(out)
    assert ckpt["step"] == 40 and ckpt["config"]["family"] == "kpn"
    # the checkpoint names the code that trained it (this checkout's commit, when it is one)
    head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert ckpt["versions"]["kpn-deploy-git"].split("+")[0] == head.stdout.strip()
    assert set(ckpt["metrics"]["val"]) == {"gain1", "gain2", "gain3", "gain4"}
    # the reloaded model gives exactly the validation numbers the trainer measured
    _, val_images = load_source("builtin")
    val = validation_set(val_images, 8, 0, 16, per_image=1, seed=0)
    again = evaluate(model, val, torch.device("cpu"))
    for g, r in ckpt["metrics"]["val"].items():
        assert again[g]["psnr"] == r["psnr"] and again[g]["ssim"] == r["ssim"]
    burst, nmap, _ = val["gain2"]
    model2, _ = load_checkpoint(out)
    with torch.no_grad():
        assert torch.equal(model(burst, nmap), model2(burst, nmap))


@pytest.mark.parametrize("family", ["ame-kpn", "st-pan"])
def test_resume_equals_uninterrupted_run(tmp_path, family):
    full, part = tmp_path / "full.pt", tmp_path / "part.pt"
    common = dict(model=family, val_every=100, lr=1e-3, epoch_iters=2, seed=1, **TINY)
    a = train(TrainArgs(iters=6, out=str(full), **common))
    train(TrainArgs(iters=3, out=str(part), **common))
    _, c3 = load_checkpoint(part)
    assert c3["step"] == 3
    wall3 = c3["metrics"]["wall_seconds"]
    assert wall3 > 0
    # resume with other (run-defining) options given: the checkpoint's win
    b = train(TrainArgs(model=family, iters=6, out=str(part), resume=str(part), crop=64, seed=99, quiet=True, val_every=100))
    assert b["losses"] == a["losses"][3:]
    _, ca = load_checkpoint(full)
    _, cb = load_checkpoint(part)
    assert cb["step"] == 6
    assert cb["metrics"]["wall_seconds"] > wall3  # training time adds up over resumed runs
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    assert ca["scheduler"] == cb["scheduler"]
    for k, s in ca["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg_sq"], cb["optimizer"]["state"][k]["exp_avg_sq"])


def test_downsample_option_scales_the_training_bursts(tmp_path):
    """--downsample 2: training windows of 2x the crop (4x the image content per photograph) and the run
    records it, so a resume keeps it; validation stays at the papers' 4x."""
    train_images, _ = load_source("builtin")
    s2 = BurstSampler(train_images[:1], 8, 0, 16, downsample=2)
    s4 = BurstSampler(train_images[:1], 8, 0, 16)
    assert s2.window == 2 * 16 + 2 * 64 and s4.window == 4 * 16 + 2 * 64
    assert s2.sample(np.random.default_rng(0))[0].shape == (8, 16, 16)
    out = tmp_path / "pan.pt"
    train(TrainArgs(model="pan", iters=1, downsample=2, out=str(out), **TINY))
    assert torch.load(out, weights_only=True)["train_args"]["downsample"] == 2
    train(TrainArgs(model="pan", iters=2, resume=str(out), out=str(out), **TINY))
    resumed = torch.load(out, weights_only=True)
    assert resumed["step"] == 2 and resumed["train_args"]["downsample"] == 2 and resumed["train_args"]["stages"] == []


def test_resume_with_a_new_stage_field_is_a_stage_that_the_release_command_reproduces(tmp_path, monkeypatch):
    from train.release import train_command

    staged = tmp_path / "staged.pt"
    train(TrainArgs(model="pan", iters=2, out=str(staged), seed=5, **TINY))
    train(TrainArgs(model="pan", iters=3, resume=str(staged), downsample=2, out=str(staged), **TINY))
    train(TrainArgs(model="pan", iters=4, resume=str(staged), still_fraction=0.5, out=str(staged), **TINY))
    train(TrainArgs(model="pan", iters=5, resume=str(staged), lr_factor=0.5, augment="dihedral",
                    anneal_floor=0.3, loss_scale="log", out=str(staged), **TINY))
    ckpt = torch.load(staged, weights_only=True)
    assert ckpt["train_args"]["downsample"] == 2 and ckpt["train_args"]["still_fraction"] == 0.5
    assert ckpt["train_args"]["lr_factor"] == 0.5
    assert ckpt["train_args"]["stages"] == [
        {"from_step": 2, "set": {"downsample": 2}, "previous": {"downsample": 4}},
        {"from_step": 3, "set": {"still_fraction": 0.5}, "previous": {"still_fraction": 0.0}},
        {"from_step": 4, "set": {"augment": "dihedral", "lr_factor": 0.5, "anneal_floor": 0.3, "loss_scale": "log"},
         "previous": {"augment": "none", "lr_factor": 1.0, "anneal_floor": 0.0, "loss_scale": "linear"}}]
    assert ckpt["train_args"]["loss"]["floor"] == 0.3 and ckpt["train_args"]["loss"]["scale"] == "log"
    lr0, decay, _ = LR_SCHEDULES["pan"]
    assert ckpt["metrics"]["lr"] == pytest.approx(0.5 * lr0 * decay**5)
    # the release's command lines, run as a user would, give the same weights bit for bit
    commands = train_command(ckpt["train_args"], "again.pt").split(" && ")
    assert len(commands) == 4 and "--iters 2 " in commands[0]
    assert "--downsample 4 " in commands[0] and "--still-fraction 0.0 " in commands[0] and "--lr-factor 1.0 " in commands[0]
    assert "--augment none " in commands[0] and "--loss-scale linear " in commands[0]
    assert commands[1] == "kpn-train --model pan --resume again.pt --iters 3 --downsample 2 --out again.pt"
    assert commands[2] == "kpn-train --model pan --resume again.pt --iters 4 --still-fraction 0.5 --out again.pt"
    assert commands[3] == "kpn-train --model pan --resume again.pt --iters 5 --augment dihedral --lr-factor 0.5 --anneal-floor 0.3 --loss-scale log --out again.pt"
    again = _run_as_a_user(commands, tmp_path, monkeypatch, "again.pt")
    assert again["train_args"]["stages"] == ckpt["train_args"]["stages"]
    for k, v in ckpt["model"].items():
        assert torch.equal(v, again["model"][k]), k


def test_a_gradient_weight_stage_trains_with_that_lambda_and_the_release_command_reproduces_it(tmp_path, monkeypatch):
    """--gradient-weight on a resume is a stage of the run; the loss it trains with is eq. 7 with that
    lambda; a run that never set it keeps its command line without the flag (the shipped manifests')."""
    from train.release import train_command

    run = tmp_path / "kpn.pt"
    train(TrainArgs(model="kpn", kernels="projected", iters=2, seed=4, out=str(run), **TINY))
    before = torch.load(run, weights_only=True)["train_args"]
    assert before["gradient_weight"] == 1.0 and before["loss"]["gradient_weight"] == 1.0
    assert "--gradient-weight" not in train_command(before, "again.pt")
    train(TrainArgs(model="kpn", iters=3, resume=str(run), gradient_weight=0.01, out=str(run), **TINY))
    train(TrainArgs(model="kpn", iters=4, resume=str(run), out=str(run), **TINY))  # the checkpoint's lambda
    ckpt = torch.load(run, weights_only=True)
    assert ckpt["train_args"]["stages"] == [{"from_step": 2, "set": {"gradient_weight": 0.01}, "previous": {"gradient_weight": 1.0}}]
    assert ckpt["train_args"]["loss"]["gradient_weight"] == 0.01
    commands = train_command(ckpt["train_args"], "again.pt").split(" && ")
    assert "--gradient-weight" not in commands[0]
    assert commands[1] == "kpn-train --model kpn --resume again.pt --iters 4 --gradient-weight 0.01 --out again.pt"
    again = _run_as_a_user(commands, tmp_path, monkeypatch, "again.pt")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, again["model"][k]), k
    # ... and the weights differ from the same steps at lambda 1: the option reaches the loss
    plain = tmp_path / "plain.pt"
    train(TrainArgs(model="kpn", kernels="projected", iters=2, seed=4, out=str(plain), **TINY))
    train(TrainArgs(model="kpn", iters=4, resume=str(plain), out=str(plain), **TINY))
    other = torch.load(plain, weights_only=True)["model"]
    assert not torch.equal(other["kernel_head.weight"], ckpt["model"]["kernel_head.weight"])
    # a new run with it writes it in its first command
    fresh = tmp_path / "fresh.pt"
    train(TrainArgs(model="kpn", iters=1, gradient_weight=0.5, out=str(fresh), **TINY))
    assert "--gradient-weight 0.5 " in train_command(torch.load(fresh, weights_only=True)["train_args"], "f.pt")


def test_a_batch_size_stage_trains_at_that_batch_and_the_release_command_reproduces_it(tmp_path, monkeypatch):
    """--batch-size on a resume is a stage (a CPU run continued on a GPU at 4x the batch, say): the
    checkpoint records it, its steps draw that many bursts, and the release's commands reproduce it."""
    from train.release import train_command

    tiny = {k: v for k, v in TINY.items() if k != "batch_size"}
    run, same = tmp_path / "run.pt", tmp_path / "same.pt"
    for path in (run, same):
        train(TrainArgs(model="pan", iters=2, seed=6, batch_size=2, out=str(path), **tiny))
    train(TrainArgs(model="pan", iters=4, resume=str(run), batch_size=3, out=str(run), **tiny))
    train(TrainArgs(model="pan", iters=4, resume=str(same), out=str(same), **tiny))  # no --batch-size: the checkpoint's
    ckpt, plain = torch.load(run, weights_only=True), torch.load(same, weights_only=True)
    assert ckpt["train_args"]["batch_size"] == 3 and plain["train_args"]["batch_size"] == 2
    assert ckpt["train_args"]["stages"] == [{"from_step": 2, "set": {"batch_size": 3}, "previous": {"batch_size": 2}}]
    assert plain["train_args"]["stages"] == []
    assert any(not torch.equal(v, plain["model"][k]) for k, v in ckpt["model"].items())  # the batch reached the steps
    commands = train_command(ckpt["train_args"], "again.pt").split(" && ")
    assert "--batch-size 2 " in commands[0] and "--iters 2 " in commands[0]
    assert commands[1] == "kpn-train --model pan --resume again.pt --iters 4 --batch-size 3 --out again.pt"
    again = _run_as_a_user(commands, tmp_path, monkeypatch, "again.pt")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, again["model"][k]), k


def test_resume_with_new_data_is_a_stage(tmp_path):
    from train.release import train_command

    import imageio.v3 as iio

    photos = tmp_path / "photos"
    photos.mkdir()
    iio.imwrite(photos / "p.png", (np.random.default_rng(0).random((300, 300)) * 255).astype(np.uint8))
    ckpt = tmp_path / "m.pt"
    train(TrainArgs(model="pan", iters=2, out=str(ckpt), **TINY))
    train(TrainArgs(model="pan", iters=3, resume=str(ckpt), data=f"builtin+{photos}", out=str(ckpt), **TINY))
    train(TrainArgs(model="pan", iters=4, resume=str(ckpt), out=str(ckpt), **TINY))  # no --data: the checkpoint's
    args = torch.load(ckpt, weights_only=True)["train_args"]
    assert args["data"] == f"builtin+{photos}"
    assert args["stages"] == [{"from_step": 2, "set": {"data": f"builtin+{photos}"}, "previous": {"data": "builtin"}}]
    commands = train_command(args, "again.pt").split(" && ")
    assert "--data builtin " in commands[0]
    assert commands[1] == f"kpn-train --model pan --resume again.pt --iters 4 --data builtin+{photos} --out again.pt"


def test_a_new_loss_scale_starts_adams_moments_afresh(tmp_path):
    """The log loss's gradients are 10-100x the linear one's: a --loss-scale stage drops Adam's moment
    estimates (its first update is a fresh Adam step), and a plain resume keeps them."""
    ckpt = tmp_path / "m.pt"
    train(TrainArgs(model="pan", iters=2, out=str(ckpt), **TINY))

    def adam_steps(path):
        state = torch.load(path, weights_only=True)["optimizer"]["state"]
        return {float(v["step"]) for v in state.values()}

    assert adam_steps(ckpt) == {2.0}
    train(TrainArgs(model="pan", iters=3, resume=str(ckpt), loss_scale="log", out=str(ckpt), **TINY))
    assert adam_steps(ckpt) == {1.0}
    train(TrainArgs(model="pan", iters=4, resume=str(ckpt), out=str(ckpt), **TINY))
    assert adam_steps(ckpt) == {2.0}
    train(TrainArgs(model="pan", iters=5, resume=str(ckpt), lr_factor=0.5, out=str(ckpt), **TINY))
    assert adam_steps(ckpt) == {3.0}  # other stage fields keep them


def test_stages_in_the_first_format_still_read():
    from train.release import train_command
    from train.trainer import first_stage_values, stage_changes

    old = {"from_step": 4500, "downsample": 1, "previous": 2}
    assert stage_changes(old) == ({"downsample": 1}, {"downsample": 2})
    args = {"model": "st-pan", "iters": 9000, "downsample": 1, "stages": [old]}
    assert first_stage_values(args) == {"data": "builtin", "downsample": 2, "still_fraction": 0.0, "augment": "none", "lr_factor": 1.0,
                                        "anneal_floor": 0.0, "loss_scale": "linear", "gradient_weight": 1.0, "batch_size": 4}
    first, second = train_command(args, "m.pt").split(" && ")
    assert "--iters 4500 --batch-size 4 --downsample 2 " in first
    assert second == "kpn-train --model st-pan --resume m.pt --iters 9000 --downsample 1 --out m.pt"


def test_lr_schedules_follow_the_papers():
    lr0, decay, floor = LR_SCHEDULES["ame-kpn"]
    f = lr_lambda_factory(decay, floor, epoch_iters=2000)
    assert lr0 == 1e-4 and f(1999) == 1.0 and f(2000) == pytest.approx(10**-0.05)
    assert lr0 * f(80000) == pytest.approx(5e-6)  # floor reached (after 26 epochs)
    assert lr0 * f(25 * 2000) > 5e-6
    lr0, decay, floor = LR_SCHEDULES["st-pan"]
    f = lr_lambda_factory(decay, floor, epoch_iters=1)
    assert lr0 == 2e-4 and lr0 * f(1000) == pytest.approx(2e-4 * 0.999991**1000)
    assert lr0 * f(200000) == pytest.approx(1e-4)


def test_lr_factor_on_resume_takes_effect_from_the_first_resumed_step(tmp_path):
    # Adam moves each weight by about lr per step: at a millionth of the rate one step leaves the weights
    # within 1e-8, where the saved (old) rate would move them by ~1e-4.
    ckpt = tmp_path / "c.pt"
    train(TrainArgs(model="pan", iters=2, out=str(ckpt), **TINY))
    before = torch.load(ckpt, weights_only=True)["model"]
    train(TrainArgs(model="pan", iters=3, resume=str(ckpt), lr_factor=1e-6, out=str(ckpt), **TINY))
    after = torch.load(ckpt, weights_only=True)["model"]
    moved = max(float((after[k] - v).abs().max()) for k, v in before.items() if v.is_floating_point())
    assert 0 < moved < 1e-8


def test_ddp_two_processes_gloo_matches_one_process_on_both_batches(tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "train.cli", "--model", "kpn", "--iters", "2", "--crop", "16", "--val-crop", "16",
           "--val-per-image", "1", "--batch-size", "2", "--seed", "4", "--lr", "1e-3", "--epoch-iters", "100", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    model, ckpt = load_checkpoint(out)
    assert ckpt["step"] == 2 and ckpt["train_args"]["world_size"] == 2
    # the same two steps in one process on the union of both ranks' batches (DDP averages gradients;
    # every loss term is a mean over equal-size items)
    cfg = default_config("kpn", "small")
    torch.manual_seed(4)
    net = build_model(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    train_images, _ = load_source("builtin")
    sampler = BurstSampler(train_images, 8, 0, 16)
    loss_fn = loss_for_family("kpn")
    for step in range(2):
        parts = [sampler.batch(np.random.default_rng([4, rank, step]), 2) for rank in (0, 1)]
        burst, nmap, clean = (torch.cat([p[i] for p in parts]) for i in range(3))
        den, aux = net.forward_train(burst, nmap)
        loss, _ = loss_fn(den, aux, clean, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref = net.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=1e-5, msg=k)
    # and the run did move the weights (two Adam steps of 1e-3)
    torch.manual_seed(4)
    init = build_model(cfg).state_dict()
    assert max(float((v - init[k]).abs().max()) for k, v in model.state_dict().items()) > 5e-4


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "train.cli", *args], env=ENV, capture_output=True, text=True, timeout=120)


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_worker_processes_make_the_same_batches_and_the_same_run(tmp_path):
    train_images, _ = load_source("builtin")
    sampler = BurstSampler(train_images, 8, 0, 16, noise_range="wide", augment="dihedral")
    here = list(step_batches(sampler, 5, 0, 3, 2, 6))
    there = list(step_batches(sampler, 5, 0, 3, 2, 6, workers=2))
    assert len(here) == len(there) == 4
    for a, b in zip(here, there):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # step s's batch is the seed (seed, rank, s)'s wherever the loader starts: a resume sees the same bursts
    assert all(torch.equal(x, y) for x, y in zip(list(step_batches(sampler, 5, 0, 3, 4, 5))[0], here[2]))
    common = dict(model="kpn", iters=4, val_every=100, lr=1e-3, seed=2, **TINY)
    a = train(TrainArgs(out=str(tmp_path / "a.pt"), **common))
    b = train(TrainArgs(out=str(tmp_path / "b.pt"), workers=2, **common))
    assert a["losses"] == b["losses"]


def test_cli_bad_input_one_line_exit_2(tmp_path):
    out = str(tmp_path / "o.pt")
    _one_line_error(_cli("--model", "unet", "--out", out), "unknown model 'unet'")
    _one_line_error(_cli("--model", "kpn", "--noise-range", "huge", "--out", out), "unknown noise range 'huge'")
    _one_line_error(_cli("--model", "kpn", "--downsample", "3", "--out", out), "--downsample 3", "choose 1, 2 or 4")
    _one_line_error(_cli("--model", "kpn", "--still-fraction", "1.5", "--out", out), "--still-fraction 1.5", "[0, 1]")
    _one_line_error(_cli("--model", "kpn", "--lr-factor", "0", "--out", out), "--lr-factor 0", "above 0")
    _one_line_error(_cli("--model", "kpn", "--augment", "mirror", "--out", out), "unknown augmentation 'mirror'")
    _one_line_error(_cli("--model", "kpn", "--anneal-floor", "-1", "--out", out), "--anneal-floor", "floor -1.0")
    _one_line_error(_cli("--model", "kpn", "--loss-scale", "db", "--out", out), "--loss-scale", "unknown loss scale 'db'")
    _one_line_error(_cli("--model", "kpn", "--kernels", "sigmoid", "--out", out), "unknown kernels 'sigmoid'")
    _one_line_error(_cli("--model", "kpn", "--gradient-weight", "-0.1", "--out", out), "--gradient-weight", "gradient weight -0.1")
    _one_line_error(_cli("--model", "st-pan", "--gradient-weight", "0.5", "--out", out), "--gradient-weight", "no gradient term")
    _one_line_error(_cli("--model", "st-pan", "--kernels", "projected", "--out", out), "--kernels", "st-pan predicts no kernels")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_cli("--model", "kpn", "--data", str(empty), "--out", out), str(empty), "no images")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "good.png").write_bytes(b"")  # zero bytes
    import imageio.v3 as iio

    iio.imwrite(bad / "ok.png", np.zeros((8, 8), np.uint8))
    _one_line_error(_cli("--model", "kpn", "--data", str(bad), "--out", out), "good.png", "unreadable image")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 garbage, not a checkpoint")
    _one_line_error(_cli("--model", "kpn", "--resume", str(corrupt), "--out", out), "corrupt.pt")
    _one_line_error(_cli("--model", "kpn", "--crop", "20", "--out", out), "--crop 20", "multiple of 8")
    _one_line_error(_cli("--model", "kpn", "--workers", "-1", "--out", out), "--workers -1", "0")
    assert not os.path.exists(out)
    good = tmp_path / "good.pt"
    train(TrainArgs(model="pan", iters=1, out=str(good), **TINY))
    _one_line_error(_cli("--model", "kpn", "--resume", str(good), "--out", out), "holds a pan model")


def test_code_commit_is_read_once_per_process(monkeypatch):
    """A `git pull` in the checkout during a long run must not relabel its later checkpoints: the commit
    is read once (the trainer asks at start) and kept."""
    import subprocess

    from train.checkpoint import code_commit

    first = code_commit()

    def no_git(*args, **kwargs):
        raise AssertionError("git was asked again")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert code_commit() == first


def test_kernels_option_sets_a_new_runs_model_and_its_release_command(tmp_path):
    """--kernels chooses a new KPN's kernel form (in the checkpoint's config and in the release command);
    a resume keeps the checkpoint's form and refuses another one; checkpoints from before the option keep
    their command without it."""
    from train.release import train_command

    out = tmp_path / "p.pt"
    train(TrainArgs(model="kpn", iters=1, kernels="projected", out=str(out), **TINY))
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["config"]["kernels"] == "projected" and ckpt["train_args"]["kernels"] == "projected"
    assert train_command(ckpt["train_args"], "p.pt").startswith("kpn-train --model kpn --width small --kernels projected ")
    train(TrainArgs(model="kpn", iters=2, resume=str(out), out=str(out), **TINY))
    assert torch.load(out, weights_only=True)["config"]["kernels"] == "projected"
    with pytest.raises(TrainError, match="has projected kernels"):
        train(TrainArgs(model="kpn", iters=3, resume=str(out), kernels="softmax", out=str(out), **TINY))
    legacy = {k: v for k, v in ckpt["train_args"].items() if k != "kernels"}
    assert "--kernels" not in train_command(legacy, "p.pt")


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_on_cpu_keeps_the_structure_and_values():
    from train.checkpoint import on_cpu

    w = torch.arange(6.0, requires_grad=True)
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": w * 2}}, "param_groups": [{"lr": 1e-3, "params": [0]}],
             "pair": (w, "x")}
    moved = on_cpu(state)
    assert moved["param_groups"] == state["param_groups"] and moved["pair"][1] == "x" and isinstance(moved["pair"], tuple)
    assert torch.equal(moved["state"][0]["exp_avg"], torch.arange(6.0) * 2) and not moved["state"][0]["exp_avg"].requires_grad
    assert all(t.device.type == "cpu" for t in _tensors(moved))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: a checkpoint written by a GPU run")
def test_a_gpu_runs_checkpoint_holds_only_cpu_tensors_and_resumes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.pt"
    train(TrainArgs(model="kpn", iters=2, val_every=100, out=str(out), device="cuda", **TINY))
    raw = torch.load(out, weights_only=False)  # no map_location: tensors come back where they were saved
    assert all(t.device.type == "cpu" for t in _tensors(raw))
    m = train(TrainArgs(model="kpn", iters=3, val_every=100, out=str(out), resume=str(out), device="cpu", quiet=True))
    assert len(m["losses"]) == 1


def test_init_from_starts_a_new_run_from_a_checkpoint_and_the_release_reproduces_the_chain(tmp_path, monkeypatch):
    """--init-from copies the weights whose names and shapes match (a net of the same shape starts with
    the source's output; one with other --frames keeps its own first convolution and head), records
    the source (path, sha256, step, its own run), and the release's command lines, run as a user would,
    rebuild the source and then the new run bit for bit."""
    from runtime.files import sha256_file
    from train.release import train_command
    from train.trainer import init_weights_from

    source = tmp_path / "source.pt"
    train(TrainArgs(model="kpn", kernels="projected", iters=2, out=str(source), seed=3, **TINY))
    net, held = load_checkpoint(source)
    same = build_model(replace(default_config("kpn"), kernels="projected"))
    assert init_weights_from(same, str(source)) == []
    burst, noise = torch.rand(1, 8, 16, 16), torch.full((1, 1, 16, 16), 0.03)
    with torch.no_grad():
        assert torch.equal(same.eval()(burst, noise), net.eval()(burst, noise))
    four = build_model(replace(default_config("kpn"), kernels="projected", frames=4))
    fresh = init_weights_from(four, str(source))
    assert fresh == ["backbone.encoders.0.0.weight", "kernel_head.weight", "kernel_head.bias"]
    for name, tensor in four.state_dict().items():
        if name not in fresh:
            assert torch.equal(tensor, held["model"][name]), name

    child = tmp_path / "child.pt"
    train(TrainArgs(model="kpn", kernels="projected", init_from=str(source), iters=2, lr=5e-5, anneal_decay=0.0,
                    out=str(child), **TINY))
    train(TrainArgs(model="kpn", iters=3, resume=str(child), out=str(child), **TINY))  # the record survives a resume
    ckpt = torch.load(child, weights_only=True)
    init = ckpt["train_args"]["init_from"]
    assert init["path"] == str(source) and init["sha256"] == sha256_file(source) and init["step"] == 2
    commands = train_command(ckpt["train_args"], "again.pt").split(" && ")
    assert len(commands) == 2 and "--iters 2 " in commands[0] and commands[0].endswith("--out again.start.pt")
    assert "--iters 3 " in commands[1] and "--anneal-decay 0.0 " in commands[1]
    assert commands[1].endswith("--init-from again.start.pt --out again.pt")
    again = _run_as_a_user(commands, tmp_path, monkeypatch, "again.pt")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, again["model"][k]), k


def test_init_from_refuses_what_it_cannot_do(tmp_path):
    source = tmp_path / "source.pt"
    train(TrainArgs(model="kpn", kernels="projected", iters=1, out=str(source), **TINY))
    with pytest.raises(TrainError, match="pass --kernels projected"):
        train(TrainArgs(model="kpn", init_from=str(source), iters=1, out=str(tmp_path / "a.pt"), **TINY))
    with pytest.raises(TrainError, match="holds a kpn model, not ame-kpn"):
        train(TrainArgs(model="ame-kpn", init_from=str(source), iters=1, out=str(tmp_path / "b.pt"), **TINY))
    with pytest.raises(TrainError, match="pass one of them"):
        train(TrainArgs(model="kpn", init_from=str(source), resume=str(source), iters=2, out=str(source), **TINY))
