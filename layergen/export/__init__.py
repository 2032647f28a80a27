"""Export and import of layered images: PSD, OpenRaster, PNG folders, contact sheets."""

from layergen.export.contact_sheet import make_contact_sheet, save_contact_sheet
from layergen.export.layered_file import load_layered, save_layered
from layergen.export.manifest import build_manifest, read_manifest, write_manifest
from layergen.export.ora import load_ora, ora_merged_image, save_ora
from layergen.export.png import load_layer_dir, save_layer_pngs
from layergen.export.psd import load_psd, psd_composite, save_psd

__all__ = [
    "build_manifest",
    "load_layer_dir",
    "load_layered",
    "load_ora",
    "load_psd",
    "make_contact_sheet",
    "ora_merged_image",
    "psd_composite",
    "read_manifest",
    "save_contact_sheet",
    "save_layer_pngs",
    "save_layered",
    "save_ora",
    "save_psd",
    "write_manifest",
]
