"""bench/bench_bad_samples.py's core on tiny inputs: good samples delivered, bad ones counted."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_bad_samples import run  # noqa: E402


def test_half_bad_inputs_deliver_the_good_samples_and_count_the_bad(tmp_path):
    result = run(str(tmp_path), minutes=0, shards=2, per_shard=10, synthesis_shards=1,
                 synthesis_per_shard=6)
    arms = {name: (arm.good, arm.records) for name, arm in result["arms"].items()}
    assert result["rounds"] == 1
    assert arms == {
        "train/good": (20, 20), "train/bad": (10, 20),
        "synthesis/good": (6, 6), "synthesis/bad": (3, 6),
    }
    assert all(arm.seconds > 0 for arm in result["arms"].values())
    (main, workers), _ = result["rss_start"], result["rss_end"]
    assert main > 0 and workers > 0  # the training loaders' persistent workers
