"""Round trips with files written by GIMP (Script-Fu, ``gimp -i -b``) and Krita
(``krita --export`` under ``xvfb-run``), in batch mode (issue 17, item 4).

GIMP builds a scene the way a user would: a background, a masked layer at an offset, a
group at 80% opacity holding a feathered disc and a 60%-opaque layer that reaches past the
canvas, and a hidden layer; it saves it as 8- and 16-bit PSD and flattens it to PNG. Krita
converts GIMP's PSD to its own OpenRaster (nested stacks, x/y offsets, visibility, opacity)
and PSD (NUL-padded names, 16 bits) and flattens it. Our readers must reproduce each
program's own flattening; and our PSD / ORA, re-saved by GIMP and Krita, must read back as
the layered image we wrote. GIMP 2.10 cannot write OpenRaster in batch mode (its ORA
plug-in needs Python 2), so ORA files come from Krita only.

Debian packages: ``gimp``, ``krita``, ``xvfb`` (and ``xauth``); the tests skip, naming the
missing program, without them. Each program start takes a few seconds (Krita ~10 s).
"""

import io
import logging
import os
import select
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layergen.export import load_layered, load_ora, load_psd, save_layered
from layergen.layers import LayeredImage, chw_to_hwc, to_unit, unit_to_uint8

pytestmark = pytest.mark.slow

GIMP = shutil.which("gimp")
KRITA = shutil.which("krita")
XVFB = shutil.which("Xvfb")
needs_gimp = pytest.mark.skipif(GIMP is None, reason="GIMP is not installed (apt-get install gimp)")
needs_krita = pytest.mark.skipif(
    KRITA is None or XVFB is None,
    reason="Krita or Xvfb is not installed (apt-get install krita xvfb)",
)
TIMEOUT_S = 300

# GIMP 2.10 blends "Normal" layers in linear light by default; PSD records only "normal",
# which Photoshop, Krita and we blend in sRGB, so the scene uses GIMP's legacy (sRGB)
# normal mode for GIMP's own flattening to be comparable. The group holds layers that do
# not overlap, where a group's opacity equals its layers' opacities multiplied.
SCENE = """
(let* ((img (car (gimp-image-new 64 48 RGB)))
       (sky (car (gimp-layer-new img 64 48 RGB-IMAGE "sky" 100 LAYER-MODE-NORMAL-LEGACY)))
       (box (car (gimp-layer-new img 20 16 RGBA-IMAGE "red box" 100 LAYER-MODE-NORMAL-LEGACY)))
       (grp (car (gimp-layer-group-new img)))
       (disc (car (gimp-layer-new img 24 24 RGBA-IMAGE "soft disc" 100 LAYER-MODE-NORMAL-LEGACY)))
       (glass (car (gimp-layer-new img 30 10 RGBA-IMAGE "glass" 60 LAYER-MODE-NORMAL-LEGACY)))
       (ghost (car (gimp-layer-new img 10 10 RGBA-IMAGE "ghost" 100 LAYER-MODE-NORMAL-LEGACY))))
  (gimp-image-insert-layer img sky 0 0)
  (gimp-context-set-foreground '(40 80 200))
  (gimp-drawable-fill sky FILL-FOREGROUND)
  (gimp-image-insert-layer img box 0 0)
  (gimp-context-set-foreground '(220 30 30))
  (gimp-drawable-fill box FILL-FOREGROUND)
  (gimp-layer-set-offsets box 6 20)
  (let ((mask (car (gimp-layer-create-mask box ADD-MASK-WHITE))))
    (gimp-layer-add-mask box mask)
    (gimp-image-select-rectangle img CHANNEL-OP-REPLACE 6 20 8 16)
    (gimp-context-set-foreground '(0 0 0))
    (gimp-drawable-edit-fill mask FILL-FOREGROUND)
    (gimp-selection-none img))
  (gimp-image-insert-layer img grp 0 0)
  (gimp-item-set-name grp "things")
  (gimp-layer-set-opacity grp 80)
  (gimp-layer-set-mode grp LAYER-MODE-NORMAL-LEGACY)
  (gimp-image-insert-layer img disc grp 0)
  (gimp-drawable-fill disc FILL-TRANSPARENT)
  (gimp-layer-set-offsets disc 30 4)
  (gimp-context-set-foreground '(250 220 40))
  (gimp-context-set-feather TRUE)
  (gimp-context-set-feather-radius 6 6)
  (gimp-image-select-ellipse img CHANNEL-OP-REPLACE 32 6 20 20)
  (gimp-drawable-edit-fill disc FILL-FOREGROUND)
  (gimp-selection-none img)
  (gimp-image-insert-layer img glass grp 0)
  (gimp-context-set-foreground '(30 200 90))
  (gimp-drawable-fill glass FILL-FOREGROUND)
  (gimp-layer-set-offsets glass -5 36)
  (gimp-image-insert-layer img ghost 0 0)
  (gimp-context-set-foreground '(255 0 255))
  (gimp-drawable-fill ghost FILL-FOREGROUND)
  (gimp-layer-set-offsets ghost 50 30)
  (gimp-item-set-visible ghost FALSE)
  (file-psd-save RUN-NONINTERACTIVE img sky "{psd8}" "{psd8}" 1 0)
  (let ((flat (car (gimp-image-duplicate img))))
    (gimp-image-flatten flat)
    (file-png-save2 RUN-NONINTERACTIVE flat (car (gimp-image-get-active-drawable flat))
                    "{flat}" "{flat}" 0 9 0 0 0 0 0 0 0))
  (gimp-image-convert-precision img PRECISION-U16-GAMMA)
  (file-psd-save RUN-NONINTERACTIVE img sky "{psd16}" "{psd16}" 1 0))
"""

# Open a PSD, save it again as PSD and flatten it to PNG (GIMP as a user's round trip).
RESAVE = """
(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE "{src}" "{src}")))
       (bottom (vector-ref (cadr (gimp-image-get-layers img)) 0)))
  (gimp-message (string-append "layers " (number->string (car (gimp-image-get-layers img)))))
  (file-psd-save RUN-NONINTERACTIVE img bottom "{psd}" "{psd}" 1 0)
  (gimp-image-flatten img)
  (file-png-save2 RUN-NONINTERACTIVE img (car (gimp-image-get-active-drawable img))
                  "{flat}" "{flat}" 0 9 0 0 0 0 0 0 0))
"""

LAYER_NAMES = ["sky", "red box", "soft disc", "glass"]


def _scheme_path(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace('"', '\\"')


def _env(home: Path) -> dict[str, str]:
    """A private HOME, so the programs' first-run configuration stays in the test folder."""
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def run_gimp(script: str, home: Path) -> str:
    """Run one Script-Fu expression in GIMP's batch mode; returns its output."""
    done = subprocess.run(
        [GIMP, "-i", "-d", "-f", "-b", script, "-b", "(gimp-quit 0)"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=_env(home),
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "execution error" not in output, output[-3000:]
    return output


@pytest.fixture(scope="module")
def display():
    """One virtual X display (Xvfb) for every Krita run of the module: Krita needs one even
    in batch mode. The first display number from 99 without a lock file (Krita could not
    connect to an Xvfb on :0 in CI, while the same server on :1 worked); ``-noreset``: by
    default the server resets when its last client leaves, and a Krita starting during the
    reset cannot connect. Xvfb writes the number to ``-displayfd`` once it accepts connections."""
    free = next(n for n in range(99, 200) if not Path(f"/tmp/.X{n}-lock").exists())
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        [XVFB, f":{free}", "-displayfd", str(write_end), "-screen", "0", "640x480x24",
         "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 60)
        number = os.read(read_end, 16).decode().strip() if ready else ""
        if not number:
            pytest.fail("Xvfb did not start within 60 s")
        yield f":{number}"
    finally:
        os.close(read_end)
        server.terminate()
        server.wait(timeout=30)


def run_krita_export(source: Path, target: Path, home: Path, display: str) -> Path:
    """``krita --export``: Krita opens ``source`` and writes ``target`` with its own writer
    (a flattened image for .png)."""
    done = subprocess.run(
        [KRITA, "--export", "--export-filename", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**_env(home), "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"},
        check=False,
    )
    assert done.returncode == 0 and target.exists(), (done.stdout + done.stderr)[-3000:]
    return target


def composite_u8(image: LayeredImage) -> np.ndarray:
    return unit_to_uint8(chw_to_hwc(to_unit(image.composite()))).astype(int)


def flat_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


def ours() -> LayeredImage:
    """A layered image with soft, overlapping masks, as our pipeline writes them."""
    g = torch.Generator().manual_seed(0)
    background = torch.rand(3, 32, 40, generator=g) * 2 - 1
    foregrounds = torch.rand(2, 3, 32, 40, generator=g) * 2 - 1
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(40.0), indexing="ij")
    disc = lambda cx, cy, r: (r - ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()).clamp(0, 1)  # noqa: E731
    masks = torch.stack([disc(14, 14, 10), disc(24, 18, 9) * 0.7])[:, None]
    masks[0] = masks[0] * (1 - masks[1])  # visible masks: sum <= 1
    prompts = ["the background", "a red circle", "a blue square"]
    return LayeredImage(background, foregrounds, masks, "a scene", prompts).validate()


@pytest.fixture(scope="module")
def gimp_scene(tmp_path_factory):
    """GIMP's scene: ``{"psd8", "psd16", "flat"}`` paths."""
    if GIMP is None:
        pytest.skip("GIMP is not installed (apt-get install gimp)")
    folder = tmp_path_factory.mktemp("gimp")
    files = {
        name: folder / f"gimp-{name}.{ext}"
        for name, ext in (("psd8", "psd"), ("psd16", "psd"), ("flat", "png"))
    }
    run_gimp(SCENE.format(**{k: _scheme_path(v) for k, v in files.items()}), folder / "home")
    return files


@needs_gimp
@pytest.mark.parametrize("depth", ["psd8", "psd16"])
def test_gimp_psd_offsets_mask_group_hidden(gimp_scene, depth, caplog):
    with caplog.at_level(logging.INFO, logger="layergen.export.reading"):
        image = load_psd(gimp_scene[depth])
    assert image.layer_prompts == LAYER_NAMES
    assert "skipped 1 layer(s): 1 hidden ('ghost')" in caplog.text
    # GIMP's own flattening of the same image, within 1/255
    assert max_diff(composite_u8(image), flat_png(gimp_scene["flat"])) <= 1


@needs_gimp
def test_our_psd_resaved_by_gimp_reads_back(tmp_path):
    image = ours()
    src = save_layered(image, tmp_path / "ours.psd")
    psd, flat = tmp_path / "by-gimp.psd", tmp_path / "by-gimp.png"
    paths = {"src": src, "psd": psd, "flat": flat}
    output = run_gimp(RESAVE.format(**{k: _scheme_path(v) for k, v in paths.items()}), tmp_path)
    assert "layers 3" in output  # GIMP saw every layer
    assert max_diff(flat_png(flat), composite_u8(image)) <= 1
    shutil.copy(tmp_path / "ours.json", tmp_path / "by-gimp.json")  # the manifest sidecar
    back = load_psd(psd)
    assert back.layer_prompts == image.layer_prompts and back.prompt == "a scene"
    assert (back.masks - image.masks).abs().max() <= 2 / 255
    assert max_diff(composite_u8(back), composite_u8(image)) <= 1


@needs_gimp
@needs_krita
@pytest.mark.parametrize("source", ["psd8", "psd16"])
def test_krita_ora_and_psd_of_gimps_scene(gimp_scene, source, tmp_path, caplog, display):
    """Krita's ORA keeps GIMP's group as a nested stack, the offsets (one negative) as x/y,
    the hidden layer as visibility="hidden" and the layer opacities; its PSD pads names with
    NUL and keeps 16 bits. Both must read as Krita flattens them. (Krita 5.1 drops the
    opacity of GIMP's PSD group on import, so its flattening differs from GIMP's there.)"""
    home = tmp_path / "home"
    ora = run_krita_export(gimp_scene[source], tmp_path / "krita.ora", home, display)
    psd = run_krita_export(gimp_scene[source], tmp_path / "krita.psd", home, display)
    flat = run_krita_export(gimp_scene[source], tmp_path / "krita.png", home, display)
    with caplog.at_level(logging.INFO, logger="layergen.export.reading"):
        from_ora, from_psd = load_ora(ora), load_psd(psd)
    assert from_ora.layer_prompts == LAYER_NAMES and from_psd.layer_prompts == LAYER_NAMES
    assert caplog.text.count("skipped 1 layer(s): 1 hidden ('ghost')") == 2
    for image in (from_ora, from_psd):
        assert max_diff(composite_u8(image), flat_png(flat)) <= 1


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def krita_style_ora(path: Path) -> Path:
    """An ORA with a nested stack at 50% opacity, a layer reaching past the canvas, a hidden
    stack and a hidden layer, as Krita writes them: stacks at x = y = 0 (Krita 5.1 ignores
    a stack's own x/y, which we add to its layers' as the OpenRaster spec says)."""
    yy, xx = np.mgrid[0:20, 0:20]
    disc = np.zeros((20, 20, 4), np.uint8)
    disc[..., :3] = (250, 220, 40)
    disc[..., 3] = np.clip((9 - np.hypot(xx - 9.5, yy - 9.5)) * 60, 0, 255).astype(np.uint8)
    sky = np.zeros((48, 64, 4), np.uint8)
    sky[...] = (40, 80, 200, 255)
    sky[24:, :, :3] = (30, 120, 40)
    bar = np.zeros((8, 30, 4), np.uint8)
    bar[...] = (220, 30, 30, 200)
    ghost = np.full((6, 6, 4), 255, np.uint8)
    layer = '<layer name="{}" src="data/{}.png" x="{}" y="{}" opacity="{}" visibility="{}"/>'
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><image version="0.0.1" w="64" h="48">'
        '<stack name="root" x="0" y="0" opacity="1" visibility="visible">'
        + layer.format("ghost", "ghost", 2, 2, 1, "hidden")
        + '<stack name="old" x="0" y="0" opacity="1" visibility="hidden">'
        + layer.format("inside", "ghost", 40, 30, 1, "visible")
        + "</stack>"
        + '<stack name="things" x="0" y="0" opacity="0.5" visibility="visible">'
        + layer.format("bar", "bar", -6, 34, 0.7, "visible")
        + layer.format("disc", "disc", 34, 6, 1, "visible")
        + "</stack>"
        + layer.format("sky", "sky", 0, 0, 1, "visible")
        + "</stack></image>"
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), "image/openraster")
        archive.writestr("stack.xml", xml)
        for name, array in (("sky", sky), ("disc", disc), ("bar", bar), ("ghost", ghost)):
            archive.writestr(f"data/{name}.png", _png(array))
    return path


@needs_krita
def test_nested_stacks_read_as_krita_flattens_them(tmp_path, caplog, display):
    """Our reading of stack offsets, stack opacity and visibility agrees with Krita's, on the
    input ORA and on Krita's own ORA and PSD of it."""
    home = tmp_path / "home"
    source = krita_style_ora(tmp_path / "in.ora")
    flat = flat_png(run_krita_export(source, tmp_path / "krita.png", home, display))
    ora = run_krita_export(source, tmp_path / "krita.ora", home, display)
    psd = run_krita_export(source, tmp_path / "krita.psd", home, display)
    with caplog.at_level(logging.INFO, logger="layergen.export.reading"):
        images = [load_ora(source), load_ora(ora), load_psd(psd)]
    assert "skipped 2 layer(s): 2 hidden ('ghost', 'group old')" in caplog.text
    for image in images:
        assert image.layer_prompts == ["sky", "disc", "bar"]
        assert max_diff(composite_u8(image), flat) <= 1


@needs_krita
@pytest.mark.parametrize("suffix", [".ora", ".psd"])
def test_our_files_resaved_by_krita_read_back(tmp_path, suffix, display):
    image = ours()
    src = save_layered(image, tmp_path / f"ours{suffix}")
    home = tmp_path / "home"
    other = ".psd" if suffix == ".ora" else ".ora"
    for target in (tmp_path / f"krita{suffix}", tmp_path / f"krita{other}"):
        run_krita_export(src, target, home, display)
        back = load_layered(target)
        assert back.layer_prompts == image.layer_prompts
        assert (back.masks - image.masks).abs().max() <= 2 / 255
        assert max_diff(composite_u8(back), composite_u8(image)) <= 1
    flat = run_krita_export(src, tmp_path / "krita.png", home, display)
    assert max_diff(flat_png(flat), composite_u8(image)) <= 1
