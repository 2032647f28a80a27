"""FLOPs per training sample of the full-size models, and what they cost on A100s.

    python bench/flops.py                      # counts on the meta device: seconds
    python bench/flops.py --device cpu         # the same counts with real tensors (slow)
    python bench/flops.py --json flops.json    # also write every number

Counts (measured here, ``torch.utils.flop_counter`` over one forward + backward at batch 1,
random weights, nothing downloaded; the meta device gives the same shape-derived counts as
real tensors without computing, ``--device cpu`` checks that): the LayerDiff UNet of
configs/ldm.yaml (SD-1.5-sized ``LayeredUNet``: stacked SD-VAE latents, layer blocks, S+C
prompt enhancer) at 256 px for L = 2..4, plain SD-1.5 and SD-2 UNets, the Text2Layer UNet
(configs/ldm_text2layer.yaml), the CaT²I-AE training step (configs/ae.yaml with LPIPS-VGG
and the PatchGAN), the frozen encoders when latents are not cached, and the synthesis
pipeline's SD-2 inpainting (configs/synth/layerdiff.yaml). Matmuls, convolutions and
attention are counted (the MFU convention), elementwise work is not; attention runs on
PyTorch's math kernel so that its matmuls are counted on CPU too.

Projections (not measured): samples/s per A100 at the MFU MosaicML's SD-2 training reached
(137 img/s/A100 at 256 px with precomputed latents; the MFU is that rate times our SD-2 count
over the A100's 312 bf16 TFLOP/s), and A100-days for the configs' training runs and for
building a 1M- and a 57M-sample dataset (Text2Layer's size) at the synthesis pipeline's
~1.2-1.4 layered samples/s/A100 with SD inpainting.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parents[1]
A100_BF16_FLOPS = 312e12  # dense bf16 peak
MOSAIC_SD2_SAMPLES_PER_S = 137.0  # MosaicML SD-2 base, 256 px, precomputed latents, per A100
MOSAIC_MFU_RANGE = (0.25, 0.29)  # the MFU range MosaicML's runs are quoted at
SYNTH_SAMPLES_PER_S = (1.2, 1.4)  # layered samples/s/A100, SD inpainting (issue 18)
DATASET_SIZES = (1_000_000, 57_000_000)  # 57M: Text2Layer's dataset
PROMPT_TOKENS = 77

SD2_UNET = dict(sample_size=32, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                use_linear_projection=True)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4,
              block_out_channels=[128, 256, 512, 512], layers_per_block=2,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, projection_dim=768)  # SD 1.x text encoder
OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                  num_attention_heads=16, projection_dim=1024)  # SD 2.x (penultimate layer)


def load_yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def count(step: Callable[[], None]) -> int:
    """Total FLOPs of ``step()`` (forward and the backward it runs)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


class Counter:
    """Builds models and inputs on one device and counts forward (+ backward) FLOPs."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)

    def build(self, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        with torch.device(self.device) if self.device.type == "meta" else nullcontext():
            torch.manual_seed(0)
            return factory().to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device)

    def train_step(self, model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> int:
        """FLOPs of ``forward()`` and the backward of a loss on its output (weights' grads)."""
        model.train().requires_grad_(True)

        def step() -> None:
            forward().float().pow(2).mean().backward()

        return count(step)

    def inference(self, model: torch.nn.Module, forward: Callable[[], object]) -> int:
        model.eval().requires_grad_(False)

        def step() -> None:
            with torch.no_grad():
                forward()

        return count(step)

    # -- models ---------------------------------------------------------------------------

    def unet(self, config: dict, in_channels: int = 4, latent: int = 32, batch: int = 1,
             steps: int = 1, train: bool = True) -> int:
        """A ``UNet2DConditionModel``: one training step, or ``steps`` sampling evaluations."""
        cfg = {**config, "in_channels": in_channels, "sample_size": latent}
        model = self.build(lambda: UNet2DConditionModel(**cfg))
        x = self.randn(batch, in_channels, latent, latent)
        text = self.randn(batch, PROMPT_TOKENS, model.config.cross_attention_dim)
        t = torch.full((batch,), 500, device=self.device)
        if train:
            return self.train_step(model, lambda: model(x, t, text).sample)
        return steps * self.inference(model, lambda: model(x, t, text))

    def layered_unet(self, init_args: dict, unet_config: dict, num_layers: int) -> int:
        """One training step of the ``LayeredUNet`` of a diffusion config on L layers."""
        from layergen.models.layered_unet import LayeredUNet

        options = {k: init_args[k] for k in ("layer_blocks", "mask_channels", "latent_layout",
                                             "prompt_enhancer", "prompt_enhancer_heads",
                                             "max_layers") if k in init_args}
        model = self.build(lambda: LayeredUNet(unet_config=unet_config, **options))
        layout = model.config.latent_layout
        latent_layers = 2 * num_layers - 1 if layout == "stacked" else num_layers
        channels = model.unet.config.in_channels if layout == "stacked" else (
            model.unet.config.in_channels + model.config.mask_channels)
        size = unet_config["sample_size"]
        x = self.randn(1, latent_layers, channels, size, size)
        t = torch.full((1, latent_layers), 500, device=self.device)
        dim = unet_config["cross_attention_dim"]
        text, layer_text = self.randn(1, PROMPT_TOKENS, dim), None
        if model.config.layer_blocks:
            layer_text = self.randn(1, num_layers, PROMPT_TOKENS, dim)
        # layer_valid None: every layer valid (padded layers cost the same; masks only
        # change values, and a data-dependent check cannot run on meta tensors)
        return self.train_step(model, lambda: model(x, t, text, layer_text, None).sample)

    def vae(self, size: int, encode: int, decode: int) -> int:
        """SD's VAE: ``encode`` encoder and ``decode`` decoder passes at ``size`` px (frozen)."""
        model = self.build(lambda: AutoencoderKL(**SD_VAE))
        image, latent = self.randn(1, 3, size, size), self.randn(1, 4, size // 8, size // 8)
        flops = encode * self.inference(model, lambda: model.encode(image))
        return flops + decode * self.inference(model, lambda: model.decode(latent))

    def text_encoder(self, config: dict, prompts: int) -> int:
        full = CLIPTextConfig(vocab_size=49408, max_position_embeddings=PROMPT_TOKENS, **config)
        model = self.build(lambda: CLIPTextModel(full))
        ids = torch.zeros(prompts, PROMPT_TOKENS, dtype=torch.long, device=self.device)
        return self.inference(model, lambda: model(ids))

    def cat2i_ae_step(self, gan: bool) -> dict[str, int]:
        """configs/ae.yaml's training step at batch 1: autoencoder, LPIPS-VGG, PatchGAN."""
        import lpips as lpips_package

        from layergen.models import JointAutoencoder
        from layergen.models.discriminator import PatchDiscriminator

        config = load_yaml("ae.yaml")
        ae_args = config["model"]["init_args"]["autoencoder"]["init_args"]
        size = config["data"]["init_args"]["image_size"]
        k = ae_args["num_foregrounds"]
        model = self.build(lambda: JointAutoencoder(**ae_args))
        images, masks = self.randn(1, k + 1, 3, size, size), self.randn(1, k + 1, 1, size, size)

        def ae_forward() -> torch.Tensor:
            out = model(images, masks, sample_posterior=True)[0]
            return torch.cat([out.images.flatten(), out.masks.flatten(), out.composite.flatten()])

        parts = {"autoencoder": self.train_step(model, ae_forward)}
        components = k + 2  # background, foregrounds, composite (Text2Layer appendix III)
        net = self.build(lambda: lpips_package.LPIPS(net="vgg", pretrained=False, pnet_rand=True,
                                                     verbose=False))
        net.eval().requires_grad_(False)
        fake = self.randn(components, 3, size, size).requires_grad_(True)
        real = self.randn(components, 3, size, size)
        parts["lpips"] = count(lambda: net(fake, real).sum().backward())  # grads to the inputs
        if gan:
            args = config["model"]["init_args"]
            disc = self.build(lambda: PatchDiscriminator(
                3, args.get("discriminator_channels", 64), args.get("discriminator_layers", 3)))
            disc.train().requires_grad_(True)
            parts["patchgan"] = count(lambda: disc(fake).mean().backward())  # generator's term
            parts["patchgan"] += count(  # the discriminator's step: real and fake
                lambda: (disc(real).mean() + disc(fake.detach()).mean()).backward())
        return parts


def samples_per_second(flops: float, mfu: float) -> float:
    return mfu * A100_BF16_FLOPS / flops


def a100_days(samples: float, per_second: float) -> float:
    return samples / per_second / 86400.0


def training_samples(config: dict) -> int:
    """``max_steps x batch x devices x accumulate_grad_batches`` of a full-size config."""
    trainer, data = config["trainer"], config["data"]["init_args"]
    devices = trainer.get("devices", 8)
    devices = 8 if devices == "auto" else int(devices)  # the configs are written for 8 GPUs
    return (trainer["max_steps"] * data["batch_size"] * devices
            * trainer.get("accumulate_grad_batches", 1) * trainer.get("num_nodes", 1))


def measure(device: str, layers: list[int]) -> dict:
    counter = Counter(device)
    ldm, t2l, synth = load_yaml("ldm.yaml"), load_yaml("ldm_text2layer.yaml"), load_yaml(
        "synth/layerdiff.yaml")
    sd15 = t2l["model"]["init_args"]["unet_config"]  # SD 1.x architecture, 32x32 latents
    counts: dict[str, float] = {}
    counts["sd15_unet"] = counter.unet(sd15)
    counts["sd2_unet"] = counter.unet(SD2_UNET)
    counts["text2layer_unet"] = counter.layered_unet(t2l["model"]["init_args"], sd15, 1)
    for num_layers in layers:
        counts[f"layerdiff_unet_L{num_layers}"] = counter.layered_unet(
            ldm["model"]["init_args"], sd15, num_layers)
    # frozen encoders when latents and text embeddings are not cached
    counts["vae_encode_256"] = counter.vae(256, encode=1, decode=0)
    counts["clip_l_prompt"] = counter.text_encoder(CLIP_L, 1)
    ae = counter.cat2i_ae_step(gan=True)
    counts.update({f"cat2i_ae_{name}": value for name, value in ae.items()})
    # synthesis: one SD-2 inpainting per layered sample, guidance doubles the batch
    inpaint = synth["model"]["chain"]["init_args"]["inpainting"]["init_args"]
    resolution, steps = inpaint["resolution"], inpaint["num_inference_steps"]
    counts["inpaint_unet_steps"] = counter.unet(SD2_UNET, in_channels=9, latent=resolution // 8,
                                                batch=2, steps=steps, train=False)
    counts["inpaint_vae"] = counter.vae(resolution, encode=1, decode=1)
    counts["openclip_h_prompt"] = counter.text_encoder(OPENCLIP_H, 2)
    return {"device": device, "counts": counts, "inpaint_steps": steps,
            "inpaint_resolution": resolution}


def project(measured: dict, layers: list[int]) -> dict:
    c = measured["counts"]
    mfu = MOSAIC_SD2_SAMPLES_PER_S * c["sd2_unet"] / A100_BF16_FLOPS
    ldm, t2l, ae = (load_yaml(n) for n in ("ldm.yaml", "ldm_text2layer.yaml", "ae.yaml"))
    max_layers = ldm["data"]["init_args"]["max_foregrounds"] + 1  # batches are padded to it
    rows = []

    def row(name: str, flops: float, note: str, samples: int | None = None) -> None:
        rate = samples_per_second(flops, mfu)
        band = [samples_per_second(flops, m) for m in MOSAIC_MFU_RANGE]
        rows.append({"name": name, "tflops_per_sample": flops / 1e12, "samples_per_s": rate,
                     "samples_per_s_range": band, "note": note,
                     "training_samples": samples,
                     "a100_days": None if samples is None else a100_days(samples, rate)})

    row("SD-2 UNet (MosaicML's run, calibrates the MFU)", c["sd2_unet"],
        f"{MOSAIC_SD2_SAMPLES_PER_S:g} img/s/A100 reported")
    row("SD-1.5 UNet (plain SD)", c["sd15_unet"], "one latent, precomputed latents and text")
    row("Text2Layer CaT²I-AE-SD UNet (ldm_text2layer.yaml)", c["text2layer_unet"],
        "joint latent, L = 1", training_samples(t2l))
    for num_layers in layers:
        flops = c[f"layerdiff_unet_L{num_layers}"]
        padded = num_layers == max_layers
        row(f"LayerDiff LayeredUNet, L = {num_layers} (ldm.yaml)", flops,
            "every batch is padded to L = 4: the config's cost" if padded else "",
            training_samples(ldm) if padded else None)
    encoders = (2 * max_layers - 1) * c["vae_encode_256"] + (max_layers + 1) * c["clip_l_prompt"]
    row(f"LayerDiff, L = {max_layers}, latents encoded on the fly",
        c[f"layerdiff_unet_L{max_layers}"] + encoders,
        f"+ {2 * max_layers - 1} SD-VAE encodes, {max_layers + 1} CLIP-L prompts")
    ae_no_gan = c["cat2i_ae_autoencoder"] + c["cat2i_ae_lpips"]
    ae_gan = ae_no_gan + c["cat2i_ae_patchgan"]
    steps = ae["trainer"]["max_steps"]
    start = ae["model"]["init_args"]["discriminator_start"]
    ae_samples = training_samples(ae)
    row("CaT²I-AE step, before the PatchGAN starts (ae.yaml)", ae_no_gan,
        "autoencoder + LPIPS-VGG on B, F, I", round(ae_samples * start / steps))
    row("CaT²I-AE step with the PatchGAN", ae_gan, "+ generator and discriminator terms",
        round(ae_samples * (steps - start) / steps))
    inpaint = c["inpaint_unet_steps"] + c["inpaint_vae"] + c["openclip_h_prompt"]
    row(f"Synthesis: SD-2 inpainting, {measured['inpaint_steps']} steps x 2 (guidance), "
        f"{measured['inpaint_resolution']} px", inpaint,
        "the inpainting alone; other stages and inference inefficiency not included")
    synthesis = [{"samples": n, "a100_days": [a100_days(n, r) for r in SYNTH_SAMPLES_PER_S[::-1]]}
                 for n in DATASET_SIZES]
    return {"mfu": mfu, "rows": rows, "synthesis": synthesis}


def markdown(measured: dict, projected: dict) -> str:
    lines = [
        f"MFU implied by MosaicML's SD-2 run: {projected['mfu']:.1%} "
        f"(quoted range {MOSAIC_MFU_RANGE[0]:.0%}-{MOSAIC_MFU_RANGE[1]:.0%}); counts on "
        f"{measured['device']}.",
        "",
        "| model (per training sample, 256 px) | TFLOPs / sample (measured) | samples/s/A100 "
        "(projected) | at 25-29 % MFU | training samples (config) | A100-days (projected) "
        "| note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in projected["rows"]:
        low, high = r["samples_per_s_range"]
        samples = "" if r["training_samples"] is None else f"{r['training_samples'] / 1e6:.1f}M"
        days = "" if r["a100_days"] is None else f"{r['a100_days']:,.1f}"
        lines.append(f"| {r['name']} | {r['tflops_per_sample']:.3f} | {r['samples_per_s']:.1f} | "
                     f"{low:.1f}-{high:.1f} | {samples} | {days} | {r['note']} |")
    lines += ["", "| dataset (synthesis, ~1.2-1.4 layered samples/s/A100) | A100-days (projected) |",
              "| --- | ---: |"]
    for s in projected["synthesis"]:
        low, high = s["a100_days"]
        lines.append(f"| {s['samples'] / 1e6:g}M samples | {low:,.0f}-{high:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="meta", choices=["meta", "cpu"])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--json", help="also write the counts and projections here")
    args = parser.parse_args(argv)
    measured = measure(args.device, args.layers)
    projected = project(measured, args.layers)
    print(markdown(measured, projected))
    if args.json:
        Path(args.json).write_text(json.dumps({**measured, **projected}, indent=2))
    assert all(math.isfinite(v) and v > 0 for v in measured["counts"].values())


if __name__ == "__main__":
    main()
