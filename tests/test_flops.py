"""bench/flops.py: the meta-device counts equal the CPU ones, attention is counted, and the
projections follow from the counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_lit_diffusion import UNET_CONFIG

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import flops  # noqa: E402

LAYERDIFF = dict(layer_blocks=True, mask_channels=4, latent_layout="stacked",
                 prompt_enhancer="s+c", prompt_enhancer_heads=2, max_layers=4)


@pytest.mark.slow  # ~20 s on a loaded 2-core machine
def test_meta_counts_equal_cpu_counts():
    config = {**UNET_CONFIG, "cross_attention_dim": 16}
    meta, cpu = flops.Counter("meta"), flops.Counter("cpu")
    assert meta.unet(config, latent=8) == cpu.unet(config, latent=8) > 0
    assert meta.layered_unet(LAYERDIFF, config, 2) == cpu.layered_unet(LAYERDIFF, config, 2) > 0


def test_attention_matmuls_are_counted():
    # one more text token adds cross-attention (scores and values) work only
    config = {**UNET_CONFIG, "cross_attention_dim": 16}
    counter = flops.Counter("meta")
    base = counter.unet(config, latent=8)
    flops.PROMPT_TOKENS, tokens = flops.PROMPT_TOKENS + 64, flops.PROMPT_TOKENS
    try:
        longer = counter.unet(config, latent=8)
    finally:
        flops.PROMPT_TOKENS = tokens
    assert longer > base


def test_projection_arithmetic():
    assert flops.samples_per_second(flops.A100_BF16_FLOPS, 0.5) == pytest.approx(0.5)
    assert flops.a100_days(86400 * 10, 10.0) == pytest.approx(1.0)
    ldm = flops.load_yaml("ldm.yaml")
    assert flops.training_samples(ldm) == 100_000 * 4 * 8 * 8  # steps x batch x GPUs x accum
