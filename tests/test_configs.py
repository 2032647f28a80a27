"""Every shipped YAML parses against the typed ``__init__`` arguments it fills.

Full-size configs name Stable Diffusion weights and shards that tests cannot have, so they are
parsed and type-checked (jsonargparse validates every ``class_path`` and its ``init_args``)
without instantiating the classes; the tiny configs are trained elsewhere in the tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI

from layergen.synthesis.cli import SynthesisCLI
from layergen.synthesis.runner import SynthesisDataModule, SynthesisModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TRAIN_STACKS = [
    ["ae.yaml"],
    ["ae.yaml", "data/shards.yaml"],
    ["ae.yaml", "data/shapes.yaml"],
    ["ldm.yaml"],
    ["ldm.yaml", "ldm_fsdp.yaml"],
    ["ldm.yaml", "cluster/multinode.yaml"],
    ["ldm.yaml", "data/latents.yaml"],
    ["ldm.yaml", "decompose.yaml"],
    ["ldm_text2layer.yaml"],
    ["ldm_text2layer.yaml", "baselines/sd_ae_unet.yaml"],
    ["ldm_text2layer.yaml", "baselines/sd_ae_unet_ft.yaml"],
    ["classifier_mask.yaml"],
    ["classifier_inpaint.yaml"],
    ["demo/ae.yaml"],
    ["demo/ldm.yaml"],
    ["demo/ldm.yaml", "demo/reference.yaml"],
    ["demo/ldm.yaml", "demo/decompose.yaml"],
    ["repro/ae_common.yaml", "repro/ae_cat2i.yaml"],
    ["repro/ae_common.yaml", "repro/ae_cat2i_nosup.yaml"],
    ["repro/ae_common.yaml", "repro/ae_layer.yaml"],
    ["repro/ldm_common.yaml", "repro/ldm_layerdiff.yaml"],
    ["repro/ldm_common.yaml", "repro/ldm_text2layer.yaml"],
    ["repro/ldm_common.yaml", "repro/ldm_sd_ae_unet.yaml"],
    ["repro/ldm_common.yaml", "repro/ldm_t2i_composite.yaml"],
]


class _ParseOnly:
    """Mixin: parse and validate the configuration, instantiate nothing."""

    def instantiate_classes(self) -> None:
        pass


class ParseOnlyCLI(_ParseOnly, LightningCLI):
    pass


class ParseOnlySynthesisCLI(_ParseOnly, SynthesisCLI):
    pass


def _args(stack: list[str]) -> list[str]:
    args = [arg for name in stack for arg in ("--config", str(CONFIGS / name))]
    if stack[0] == "repro/ldm_common.yaml":  # scripts/reproduce_tables.py sets these two
        args += ["--model.init_args.autoencoder=ae", "--model.init_args.text_encoder=clip"]
    return args


def test_every_config_is_covered():
    covered = {name for stack in TRAIN_STACKS for name in stack} | {
        "synth/text2layer.yaml",
        "synth/layerdiff.yaml",
    }
    shipped = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    assert shipped == covered


@pytest.mark.parametrize("stack", TRAIN_STACKS, ids=lambda s: "+".join(s))
def test_train_config_parses(stack):
    cli = ParseOnlyCLI(
        subclass_mode_model=True, subclass_mode_data=True, run=False, args=_args(stack)
    )
    assert cli.config["model"]["class_path"].startswith("layergen.")
    assert cli.config["data"]["class_path"].startswith("layergen.")


@pytest.mark.parametrize("name", ["synth/text2layer.yaml", "synth/layerdiff.yaml"])
def test_synthesis_config_parses(name):
    cli = ParseOnlySynthesisCLI(
        SynthesisModule, SynthesisDataModule, run=False, save_config_callback=None,
        args=_args([name]),
    )  # fmt: skip
    assert cli.config["model"]["chain"]["class_path"].startswith("layergen.synthesis.")
