"""python -m train.release: shipped files, their hashes, the manifest, the runtime's default model."""

import hashlib
import json
import shlex

import pytest

from train.release import release, train_command
from train.trainer import TrainArgs, train

TINY = dict(crop=16, val_crop=16, val_per_image=1, batch_size=2, quiet=True, iters=2, val_every=2)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    train(TrainArgs(model="kpn", out=str(d / "a.pt"), seed=1, **TINY))
    train(TrainArgs(model="pan", out=str(d / "b.pt"), seed=1, **TINY))
    return d / "a.pt", d / "b.pt"


def test_release_writes_models_and_manifest(two_runs, tmp_path, monkeypatch):
    out = tmp_path / "models"
    manifest = release(list(two_runs), out, log=lambda *_: None)
    assert json.loads((out / "MANIFEST.json").read_text()) == manifest
    names = {e["name"]: e for e in manifest["models"]}
    assert set(names) == {"kpn-small", "pan-small"}
    for e in names.values():
        for key in ("checkpoint", "onnx", "onnx_fp16"):
            data = (out / e[key]).read_bytes()
            assert e["sha256"][e[key]] == hashlib.sha256(data).hexdigest()
        assert e["training"]["steps"] == 2 and e["training"]["wall_seconds"] is not None
        gains = [g for g in e["validation"] if g.startswith("gain")]
        assert gains == ["gain1", "gain2", "gain3", "gain4"]
        assert e["validation"]["mean_psnr"] == pytest.approx(sum(e["validation"][g]["psnr"] for g in gains) / 4, abs=1e-3)
    # the default is the best mean validation PSNR
    best = max(names.values(), key=lambda e: e["validation"]["mean_psnr"])
    assert manifest["default"] == best["name"]
    # the shipped checkpoint is byte-identical to the run's, so --resume continues it exactly
    src = dict(zip(("kpn-small", "pan-small"), two_runs))
    for name, path in src.items():
        assert (out / names[name]["checkpoint"]).read_bytes() == path.read_bytes()

    import runtime.model as rm

    monkeypatch.setattr(rm, "MODELS_DIR", out)
    assert rm.resolve_model(None) == out / best["onnx"]
    info = rm.onnx_info(out / best["onnx"])
    assert info.family == best["family"]


def test_release_keeps_earlier_models_and_honours_default(two_runs, tmp_path):
    out = tmp_path / "models"
    release([two_runs[0]], out, log=lambda *_: None)
    manifest = release([two_runs[1]], out, default="kpn-small", log=lambda *_: None)
    assert [e["name"] for e in manifest["models"]] == ["kpn-small", "pan-small"]
    assert manifest["default"] == "kpn-small"
    assert manifest["default_reason"] == "chosen by hand (--default)"
    manifest = release([], out, default="pan-small", default_reason="level on validation, ahead elsewhere", log=lambda *_: None)
    assert manifest["default"] == "pan-small"
    assert manifest["default_reason"] == "chosen by hand (--default): level on validation, ahead elsewhere"
    with pytest.raises(ValueError, match="--default-reason: give it with --default"):
        release([], out, default_reason="why", log=lambda *_: None)
    with pytest.raises(ValueError, match="--default nope"):
        release([], out, default="nope", log=lambda *_: None)


def test_train_command_round_trips_the_options():
    args = TrainArgs(model="st-pan", iters=3500, crop=64, batch_size=8, lr=3e-4, noise_range="wide", downsample=2, out="x.pt").to_dict()
    cmd = shlex.split(train_command(args, "models/st-pan-small.pt"))
    opts = dict(zip(cmd[1::2], cmd[2::2]))
    assert cmd[0] == "kpn-train"
    assert opts["--model"] == "st-pan" and opts["--iters"] == "3500" and opts["--crop"] == "64"
    assert opts["--batch-size"] == "8" and float(opts["--lr"]) == 3e-4 and opts["--out"] == "models/st-pan-small.pt"
    assert opts["--noise-range"] == "wide" and opts["--downsample"] == "2"
    # a run stopped by hand at step 2750 of its 3500: the command ends where the weights are
    stopped = dict(zip(*[iter(shlex.split(train_command(args, "m.pt", steps=2750))[1:])] * 2))
    assert stopped["--iters"] == "2750" and stopped["--crop"] == "64"


def test_the_manifest_names_the_gpu_of_a_run_that_trained_on_one():
    from train.release import machine, trained_on

    assert trained_on({"device": "cpu"}) == machine() and trained_on({}) == machine()
    assert "CUDA GPU (NVIDIA H200)" in trained_on({"device": "cuda", "device_name": "NVIDIA H200"})
    assert "name not recorded" in trained_on({"device": "cuda:1"})


def test_a_run_on_the_registry_photographs_is_described_with_their_collecting_command(tmp_path, monkeypatch):
    import train.release as R
    from train.photos import REGISTRY_PHOTOS

    folder = str(tmp_path / "where-the-run-had-them")
    monkeypatch.setattr(R, "is_registry_folder", lambda f: f == folder)  # the folder's sha256 check is test_photos'
    args = {**TrainArgs(model="kpn", iters=10, data="builtin").to_dict(), "data": f"builtin+{folder}",
            "downsample": 4, "still_fraction": 0.0, "augment": "none", "lr_factor": 1.0, "anneal_floor": 0.0,
            "loss_scale": "linear", "stages": [{"from_step": 6, "set": {"data": f"builtin+{folder}"}, "previous": {"data": "builtin"}}]}
    command = R.reproducible_command(args, "models/kpn-small.pt", 8)
    assert command.startswith("python -m train.photos data/photos && kpn-train --model kpn ")
    assert "--data builtin " in command.split(" && ")[1] and folder not in command
    assert command.endswith("kpn-train --model kpn --resume models/kpn-small.pt --iters 8 --data builtin+data/photos --out models/kpn-small.pt")
    words = R.data_description(args)
    assert words.startswith("builtin: scikit-image's") and "; then builtin+data/photos: scikit-image's" in words
    assert all(p.file in words for p in REGISTRY_PHOTOS)
    licences = R.image_licences([{"training": {"data": words}}])
    assert licences["data/photos/china.jpg"].startswith("CC BY 2.0; danielbuechele on Flickr")
    assert "data/photos/china.jpg" not in R.image_licences([{"training": {"data": "builtin: ..."}}])
    # another folder is named as it is
    other = {**args, "data": f"builtin+{tmp_path}", "stages": [{"from_step": 6, "set": {"data": f"builtin+{tmp_path}"}, "previous": {"data": "builtin"}}]}
    assert R.reproducible_command(other, "m.pt", 8).endswith(f"--data builtin+{tmp_path} --out m.pt")
