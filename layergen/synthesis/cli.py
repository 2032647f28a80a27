"""``synthesize.py``: the synthesis job from a YAML config (LightningCLI, predict only).

The config has ``trainer`` (any Lightning trainer: one CPU, or DDP over GPUs and nodes),
``model`` (:class:`~layergen.synthesis.runner.SynthesisModule` with its stage chain) and
``data`` (:class:`~layergen.synthesis.runner.SynthesisDataModule`); ``data.output_dir`` is
linked to ``model.output_dir``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch.distributed as dist
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from layergen.synthesis.runner import SUMMARY_FILE, SynthesisDataModule, SynthesisModule


class SynthesisCLI(LightningCLI):
    """LightningCLI with ``data.output_dir`` linked to ``model.output_dir``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.output_dir", "model.output_dir")


def synthesize_main(args: list[str] | None = None) -> dict[str, Any]:
    """Parse ``args`` (``sys.argv`` when ``None``), run the job, return ``summary.json``."""
    cli = SynthesisCLI(
        SynthesisModule,
        SynthesisDataModule,
        run=False,
        save_config_callback=None,
        args=args,
    )
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    with open(os.path.join(cli.datamodule.output_dir, SUMMARY_FILE)) as handle:
        summary = json.load(handle)
    if dist.is_available() and dist.is_initialized():
        # every rank has read the summary; a gloo group left to interpreter exit can abort
        # the process ("terminate called without an active exception")
        cli.trainer.strategy.barrier("synthesis done")
        dist.destroy_process_group()
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of ``summary.json``."""
    run, total = summary["run"], summary["total"]
    lines = [
        f"this run: {run['samples']} samples in {run['seconds']:.1f} s "
        f"({run['samples_per_second']:.2f} samples/s, {run['world_size']} process(es))",
        f"all runs: {total['shards']} shards, {total['samples']} samples, kept {total['kept']}, "
        f"rejected {sum(total['rejected'].values())} {json.dumps(total['rejected'])}",
    ]
    lines += [
        f"  {name:<16} {seconds:8.2f} s  {100 * total['stage_share'].get(name, 0.0):5.1f}%"
        for name, seconds in total["stage_seconds"].items()
    ]
    lines += [
        f"failed shard {shard}: {failure}"
        for shard, failure in total.get("failed_shards", {}).items()
    ]
    return "\n".join(lines)
