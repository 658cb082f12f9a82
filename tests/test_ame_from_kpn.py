"""train.ame_from_kpn: an AME-KPN started from a trained KPN starts level with it, its blend parts learn
at their own rate, and train.release's command lines rebuild the whole chain bit for bit."""

import shlex

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from train.ame_from_kpn import FIT_SEED, ame_from_kpn
from train.ame_from_kpn import app as convert_app
from train.checkpoint import load_checkpoint
from train.data import BurstSampler, load_source
from train.metrics import linear_to_srgb, psnr_gamma
from train.trainer import LR_SCHEDULES, TrainArgs, TrainError, is_blend_part, lr_lambda_factory, train

TINY = dict(crop=16, val_crop=16, val_per_image=1, batch_size=2, quiet=True)
WEIGHT, HEAD_LR = 0.9, 30.0


@pytest.fixture(scope="module")
def kpn_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kpn")
    source = folder / "kpn.pt"
    train(TrainArgs(model="kpn", kernels="projected", iters=3, lr=3e-4, seed=3, out=str(source), **TINY))
    converted = folder / "ame.pt"
    ame_from_kpn(str(source), str(converted), weight=WEIGHT, head_lr_factor=HEAD_LR, fit_batches=3, log=lambda *a: None)
    return source, converted


def _fit_batches(kpn_ckpt: dict, count: int):
    """The conversion's fitting batches, drawn again from the KPN run's sampler and FIT_SEED."""
    ta = kpn_ckpt["train_args"]
    images, _ = load_source(ta["data"])
    sampler = BurstSampler(images, 8, 0, ta["crop"], downsample=ta["downsample"], motion=ta["motion"],
                           noise_range=ta["noise_range"], augment=ta["augment"])
    rng = np.random.default_rng(FIT_SEED)
    return [sampler.batch(rng, ta["batch_size"]) for _ in range(count)]


def test_the_ame_kpn_starts_as_the_kpn_with_a_fitted_residual_branch(kpn_run):
    source, converted = kpn_run
    kpn, kck = load_checkpoint(source)
    ame, ack = load_checkpoint(converted)
    assert ack["config"]["family"] == "ame-kpn" and ack["step"] == kck["step"] == 3
    kpn.eval(), ame.eval()
    burst, noise = torch.rand(2, 8, 32, 32), torch.full((2, 1, 32, 32), 0.02)
    with torch.no_grad():
        features = ame.backbone(torch.cat([burst, noise], 1))
        weights = torch.sigmoid(ame.weight_head(features))
        assert torch.allclose(weights, torch.full_like(weights, WEIGHT), atol=1e-6)
        # the kernel branch alone (weight map at 1) is the KPN, up to the open gates' 0.9997
        ame.weight_head.bias.fill_(30.0)
        assert torch.allclose(ame(burst, noise), kpn(burst, noise), atol=2e-3)
    # The residual rows are the weighted least-squares fit of 0.9 x KPN + 0.1 x R to the clean images of
    # the fitting batches, in the loss's gamma space to first order: each pixel's linear error weighed by
    # the sRGB slope G'(clean)^2 (here by central differences), each burst by 1 / the KPN's squared error
    # after G. Moving the rows any way raises that error, and zero rows (the blend 10% dark) are worse.
    ame, _ = load_checkpoint(converted)
    ame.eval()
    batches = _fit_batches(kck, 3)
    with torch.no_grad():
        def slope(x, h=1e-6):
            x = x.double().clamp(h, 1 - h)
            return (linear_to_srgb(x + h) - linear_to_srgb(x - h)) / (2 * h)

        pixel_weights = [slope(c) ** 2 for _, _, c in batches]
        bursts_weights = [1.0 / ((linear_to_srgb(kpn(b, m)) - linear_to_srgb(c)) ** 2).mean(dim=(1, 2, 3)).double()
                          for b, m, c in batches]

        def weighted_error() -> float:
            return sum(float((w * (s * (ame(b, m) - c).double() ** 2).mean(dim=(1, 2, 3))).sum())
                       for (b, m, c), s, w in zip(batches, pixel_weights, bursts_weights))

        rows = slice(200, None)
        head_w, head_b = ame.kernel_residual_head.weight, ame.kernel_residual_head.bias
        fitted_w, fitted_b = head_w[rows].clone(), head_b[rows].clone()
        best = weighted_error()
        gen = torch.Generator().manual_seed(0)
        for scale in (0.9, 1.1):
            head_w[rows] = fitted_w * scale
            assert weighted_error() > best * (1 + 1e-4)
        head_w[rows] = fitted_w
        for _ in range(3):
            head_w[rows] = fitted_w + 0.05 * fitted_w.abs().mean() * torch.randn(fitted_w.shape, generator=gen)
            assert weighted_error() > best * (1 + 1e-4)
        head_w[rows] = fitted_w
        for shift in (-0.01, 0.01):
            head_b[rows] = fitted_b + shift
            assert weighted_error() > best * (1 + 1e-4)
        head_w[rows], head_b[rows] = 0.0, 0.0
        assert weighted_error() > 1.3 * best


def test_from_the_shipped_kpn_the_kernel_branch_is_the_kpn(tmp_path):
    """On the shipped kpn-small (trained weights), converted with 3 fitting batches: on those batches the
    AME-KPN's kernel branch alone (weight map at 1, gates open) scores what the KPN scores, and the fitted
    residual branch is in the output. The blended start is not asserted level: from kpn-small's step
    58500 (lambda 1) it was (28.950 dB on validation against 28.952); from its 71000-step one
    (trained with --gradient-weight 0) it starts 0.2 dB under on its fitting batches (measured; 0.3
    with the earlier fit on linear errors): R, a 3x3 read-out of the features, is a far worse image than
    the KPN's, and its 2% share costs that much (docs/training-findings.md)."""
    from pathlib import Path

    # The shipped kpn-small's last stage trained on builtin+data/photos, a folder `python -m train.photos`
    # makes (git-ignored, absent in a clean clone); the property tested holds on any fitting batches, so
    # a copy of the checkpoint draws them from the builtin photographs alone.
    ckpt = torch.load(Path(__file__).resolve().parent.parent / "models" / "kpn-small.pt", weights_only=True)
    ckpt["train_args"]["data"] = "builtin"
    shipped = tmp_path / "kpn-small.pt"
    torch.save(ckpt, shipped)
    out = tmp_path / "ame.pt"
    ame_from_kpn(str(shipped), str(out), weight=0.98, fit_batches=3, log=lambda *a: None)
    kpn, kck = load_checkpoint(shipped)
    ame, _ = load_checkpoint(out)
    kpn.eval(), ame.eval()
    ps_kpn, ps_kernels, moved = [], [], []
    with torch.no_grad():
        for burst, noise, clean in _fit_batches(kck, 3):
            k, blended = kpn(burst, noise), ame(burst, noise)
            moved.append(float((blended - k).abs().mean()))
            ame.weight_head.bias.fill_(30.0)
            kernels = ame(burst, noise)
            ame.weight_head.bias.fill_(float(np.log(0.98 / 0.02)))
            ps_kpn += [psnr_gamma(p, c) for p, c in zip(k, clean)]
            ps_kernels += [psnr_gamma(p, c) for p, c in zip(kernels, clean)]
    assert abs(np.mean(ps_kernels) - np.mean(ps_kpn)) < 0.02, (np.mean(ps_kpn), np.mean(ps_kernels))
    assert min(moved) > 1e-5  # the residual branch is in the output


def test_the_blend_parts_learn_at_their_own_rate_and_the_adam_moments_carry_over(kpn_run, tmp_path):
    source, converted = kpn_run
    kck = torch.load(source, weights_only=True)
    ack = torch.load(converted, weights_only=True)
    ame, _ = load_checkpoint(converted)
    names = [n for n, _ in ame.named_parameters()]
    blend = [n for n in names if is_blend_part(n)]
    assert len(blend) == 2 + 6 * 3  # weight map (2) and 3 decoders' channel (4) and spatial (2) gates
    assert all(n.startswith("weight_head.") or "_attention." in n for n in blend)
    # the optimizer numbers its tensors group after group: the KPN's parts first, then the blend parts
    by_index = [n for n in names if n not in blend] + blend
    slow, fast = ack["optimizer"]["param_groups"]
    assert slow["params"] == list(range(len(names) - len(blend))) and fast["params"] == list(range(len(names) - len(blend), len(names)))
    assert ack["scheduler"]["base_lrs"] == pytest.approx([3e-4, 3e-4 * HEAD_LR])
    # the KPN's moments on every tensor it had (the kernel rows of the head included)
    kpn_names = [n for n, _ in load_checkpoint(source)[0].named_parameters()]
    kstate = {kpn_names[i]: s for i, s in kck["optimizer"]["state"].items()}
    astate = {by_index[i]: s for i, s in ack["optimizer"]["state"].items()}
    assert torch.equal(astate["backbone.encoders.0.0.weight"]["exp_avg_sq"], kstate["backbone.encoders.0.0.weight"]["exp_avg_sq"])
    assert torch.equal(astate["kernel_residual_head.weight"]["exp_avg"][:200], kstate["kernel_head.weight"]["exp_avg"])
    assert float(astate["weight_head.bias"]["exp_avg_sq"].min()) > 0  # estimated, not the fresh-Adam zeros

    out = tmp_path / "resumed.pt"
    train(TrainArgs(model="ame-kpn", resume=str(converted), out=str(out), iters=5, **TINY))
    ck = torch.load(out, weights_only=True)
    _, decay, floor = LR_SCHEDULES["ame-kpn"]
    rate = 3e-4 * lr_lambda_factory(decay, floor, ck["train_args"]["epoch_iters"])(5)
    assert [g["lr"] for g in ck["optimizer"]["param_groups"]] == pytest.approx([rate, rate * HEAD_LR])
    assert ck["train_args"]["head_lr_factor"] == HEAD_LR and ck["train_args"]["from_kpn"]["step"] == 3


def test_the_release_command_rebuilds_the_chain_bit_for_bit(kpn_run, tmp_path, monkeypatch):
    from runtime.files import sha256_file
    from train.cli import app as train_app
    from train.release import train_command

    source, converted = kpn_run
    direct = tmp_path / "direct.pt"
    direct.write_bytes(converted.read_bytes())
    train(TrainArgs(model="ame-kpn", resume=str(direct), out=str(direct), iters=5, **TINY))
    train(TrainArgs(model="ame-kpn", resume=str(direct), out=str(direct), iters=6, augment="dihedral", **TINY))
    ck = torch.load(direct, weights_only=True)
    origin = ck["train_args"]["from_kpn"]
    assert origin["path"] == str(source) and origin["sha256"] == sha256_file(source) and origin["weight"] == WEIGHT
    commands = train_command(ck["train_args"], "again.pt").split(" && ")
    assert commands[0].startswith("kpn-train --model kpn ")
    assert "--iters 3 " in commands[0] and commands[0].endswith("--out again.kpn.pt")
    assert commands[1] == "python -m train.ame_from_kpn again.kpn.pt again.pt --weight 0.9 --head-lr-factor 30.0 --fit-batches 3"
    assert commands[2] == "kpn-train --model ame-kpn --resume again.pt --iters 5 --out again.pt"
    assert commands[3] == "kpn-train --model ame-kpn --resume again.pt --iters 6 --augment dihedral --out again.pt"

    monkeypatch.chdir(tmp_path)
    for command in commands:  # as a user runs them
        argv = shlex.split(command)
        if argv[:3] == ["python", "-m", "train.ame_from_kpn"]:
            r = CliRunner().invoke(convert_app, argv[3:])
        else:
            r = CliRunner().invoke(train_app, argv[1:] + ["--quiet", "--val-crop", "16", "--val-per-image", "1"])
        assert r.exit_code == 0, r.output
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    for k, v in ck["model"].items():
        assert torch.equal(v, again["model"][k]), k


def test_bad_input_gets_a_one_line_error_and_nothing_is_written(kpn_run, tmp_path):
    source, converted = kpn_run
    for args, message in [
        ([str(converted), str(tmp_path / "x.pt")], "holds a ame-kpn model, not a KPN"),
        ([str(source), str(source)], "is the KPN checkpoint itself"),
        ([str(source), str(tmp_path / "x.pt"), "--weight", "1"], "--weight 1.0: the weight map's start"),
        ([str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")], "missing.pt"),
    ]:
        r = CliRunner().invoke(convert_app, args)
        assert r.exit_code == 2, r.output
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "x.pt").exists()
    bare = tmp_path / "bare.pt"
    ck = torch.load(source, weights_only=True)
    ck["optimizer"] = None
    torch.save(ck, bare)
    with pytest.raises(TrainError, match="has no optimizer state"):
        ame_from_kpn(str(bare), str(tmp_path / "x.pt"))
    with pytest.raises(TrainError, match="not for kpn"):
        train(TrainArgs(model="kpn", head_lr_factor=3.0, iters=1, out=str(tmp_path / "k.pt"), **TINY))
