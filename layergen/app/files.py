"""The web app's downloads (PSD, OpenRaster, a ZIP of PNG layers) and uploads.

Both go through the project's writers and readers (:func:`layergen.export.save_layered`,
:func:`layergen.export.load_layered`) in a working folder of the app's own, under fixed
names: a name sent by the browser only chooses the format by its suffix, and never
becomes a path. A ZIP upload is a folder of PNG layers: its members are extracted by their
plain file names (``layer_00.png``, ``0.png``, ``manifest.json``, ...), never by their
paths, each bounded by ``layergen.limits`` before it is read.
"""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from layergen import limits
from layergen.export import load_layered, save_layered
from layergen.layers import LayeredImage, LayeredImageError

DOWNLOADS = {
    "layered.psd": "image/vnd.adobe.photoshop",
    "layered.ora": "image/openraster",
    "layers.zip": "application/zip",
}
"""The download names (fixed routes ``/download/NAME``) and their content types."""

UPLOAD_SUFFIXES = (".psd", ".ora", ".zip")
ZIP_MEMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.(png|json)", re.IGNORECASE)
"""Names of the ZIP members read; any other member (a folder, ``__MACOSX/...``) is skipped."""


def download_bytes(
    image: LayeredImage, name: str, workdir: Path, manifest: dict[str, Any] | None = None
) -> bytes:
    """The file ``name`` (one of :data:`DOWNLOADS`) of ``image``, written in ``workdir``."""
    if name not in DOWNLOADS:
        raise LayeredImageError(f"download: expected one of {sorted(DOWNLOADS)}, got {name!r}")
    out = workdir / "download"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if name != "layers.zip":
        return save_layered(image, out / name, manifest).read_bytes()
    folder = save_layered(image, out / "layers", manifest)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"layers/{file.name}")
    return buffer.getvalue()


def upload_suffix(name: str) -> str:
    """The format of an uploaded file from its name: ``.psd``, ``.ora`` or ``.zip``."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise LayeredImageError(
            f"name: {name[:80]!r}: expected a .psd, .ora or .zip (of PNG layers) file"
        )
    return suffix


def _extract_layers(data: bytes, folder: Path) -> None:
    """Write the PNG and JSON members of a ZIP into ``folder`` by their plain names."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise LayeredImageError(f"not a readable ZIP file ({error})") from None
    with archive:
        members = [
            member
            for member in archive.infolist()
            if not member.is_dir() and ZIP_MEMBER.fullmatch(PurePosixPath(member.filename).name)
        ]
        limits.check_layers(sum(m.filename.lower().endswith(".png") for m in members), "ZIP")
        total = 0
        for member in members:
            name = PurePosixPath(member.filename).name
            if (folder / name).exists():
                raise LayeredImageError(f"ZIP: two members are named {name!r}")
            with archive.open(member) as handle:
                content = handle.read(limits.MAX_MEMBER_BYTES + 1)  # sizes in a ZIP may lie
            total += len(content)
            if len(content) > limits.MAX_MEMBER_BYTES or total > limits.MAX_MEMBER_BYTES:
                raise LayeredImageError(
                    f"ZIP: {name}: over layergen.limits.MAX_MEMBER_BYTES = "
                    f"{limits.MAX_MEMBER_BYTES} bytes unpacked"
                )
            (folder / name).write_bytes(content)


def read_upload(data: bytes, name: str, workdir: Path) -> LayeredImage:
    """The layered image of an uploaded ``.psd``, ``.ora`` or ``.zip`` of PNG layers.

    Args:
        data: the file's bytes.
        name: the file's name in the browser; only its suffix is used.
        workdir: the app's working folder.

    Raises:
        LayeredImageError: naming the upload (never the working folder) and what is wrong.
    """
    suffix = upload_suffix(name)
    folder = workdir / "upload"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = folder / ("layers" if suffix == ".zip" else f"upload{suffix}")
    try:
        if suffix == ".zip":
            source.mkdir()
            _extract_layers(data, source)
        else:
            source.write_bytes(data)
        return load_layered(source)
    except LayeredImageError as error:
        message = str(error).replace(str(source), "").lstrip(": ")
        raise LayeredImageError(f"upload {name[:80]!r}: {message}") from None
