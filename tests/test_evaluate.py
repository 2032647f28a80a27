import json

import pytest
import torch
from pipeline_components import tiny_pipeline
from test_metrics import TinyFeatures

import evaluate
from layergen.apps.evaluation import (
    EvaluationSettings,
    check_resume,
    generate_missing,
    load_references,
    run_evaluation,
)
from layergen.data.shapes import ShapeScenes
from layergen.metrics import FidelityMetrics
from layergen.metrics.samples import SampleStore, sample_key


class CountingPipe:
    """Wraps a pipeline and counts the prompts it is asked to generate."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.prompts = 0

    def __call__(self, **kwargs):
        self.prompts += len(kwargs["prompt"])
        return self.pipe(**kwargs)


def _half_mask(composites):
    mask = torch.zeros(composites.shape[0], 1, *composites.shape[-2:])
    mask[..., : composites.shape[-2] // 2, :] = 1.0
    return mask


def test_run_evaluation_reports_and_resume(tmp_path):
    pipe = CountingPipe(tiny_pipeline(tmp_path / "models"))
    references = load_references("synthetic", 4, size=32, min_foregrounds=1, max_foregrounds=2)
    settings = EvaluationSettings(model="tiny", num_samples=4, steps=1, guidance=1.0, batch_size=2, clip_model=None)
    out = tmp_path / "eval"

    def run():
        fidelity = FidelityMetrics(feature=TinyFeatures(), image_size=16)
        return run_evaluation(pipe, references, out, settings, saliency=_half_mask, fidelity=fidelity)

    result = run()
    assert pipe.prompts == 4
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["all"]["num_samples"] == 4 and "fid" in metrics["all"]
    assert {"mask_iou_saliency", "mask_iou_reference"} <= set(metrics["all"])
    groups = [g for g in metrics if g != "all"]
    assert groups and sum(metrics[g]["num_samples"] for g in groups) == 4
    report = (out / "report.md").read_text()
    assert "| all | 4 |" in report and "mask_iou_saliency" in report
    assert (out / "grids" / "all.png").is_file()
    assert list(result["paths"]["tensorboard"].glob("events.out.tfevents*"))
    assert SampleStore(out / "samples").done() == {sample_key(i) for i in range(4)}
    first = SampleStore(out / "samples").load(sample_key(1))
    assert first.prompt == references[1].prompt and first.num_layers == references[1].num_layers

    run()  # everything is there: nothing is generated again
    assert pipe.prompts == 4
    SampleStore(out / "samples").path(sample_key(2)).unlink()
    rerun = run()
    assert pipe.prompts == 5  # only the missing sample
    assert rerun["metrics"]["all"]["mask_iou_reference"] == pytest.approx(metrics["all"]["mask_iou_reference"])


def test_resume_refuses_other_settings(tmp_path):
    check_resume(tmp_path, EvaluationSettings(model="a", steps=2))
    check_resume(tmp_path, EvaluationSettings(model="a", steps=2, batch_size=4))  # not a generation key
    with pytest.raises(ValueError, match="steps=2"):
        check_resume(tmp_path, EvaluationSettings(model="a", steps=3))
    # sample i is the same test scene whatever the count: a run can be extended
    check_resume(tmp_path, EvaluationSettings(model="a", steps=2, num_samples=8))
    changes = [({"size": 64}, "size=None"), ({"min_foregrounds": 2}, "min_foregrounds=1"),
               ({"max_foregrounds": 2}, "max_foregrounds=3"), ({"autoencoder": "ae"}, "autoencoder=None")]
    for change, message in changes:
        with pytest.raises(ValueError, match=message):
            check_resume(tmp_path, EvaluationSettings(model="a", steps=2, **change))


def test_run_json_is_written_atomically(tmp_path, monkeypatch):
    check_resume(tmp_path, EvaluationSettings(model="a", steps=2))
    before = (tmp_path / "run.json").read_text()

    def killed(*args):  # the process dies after writing the temporary, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr("layergen.atomic.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        check_resume(tmp_path, EvaluationSettings(model="a", steps=2, num_samples=8))
    monkeypatch.undo()
    assert (tmp_path / "run.json").read_text() == before
    # a kill -9 mid-write leaves a partial temporary: ignored, then replaced
    (tmp_path / ".run.json.tmp").write_text('{"mod')
    check_resume(tmp_path, EvaluationSettings(model="a", steps=2))
    assert json.loads((tmp_path / "run.json").read_text())["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_resume_refuses_samples_of_other_prompts(tmp_path):
    def never_called(**kwargs):
        raise AssertionError("nothing should be generated")

    settings = EvaluationSettings(model="a", batch_size=2)
    references = load_references("synthetic", 2, size=32)
    store = SampleStore(tmp_path)
    for i, reference in enumerate(references):
        store.save(sample_key(i), reference)
    assert [g.prompt for g in generate_missing(never_called, references, store, settings)] == [
        r.prompt for r in references]
    changed = load_references("synthetic", 2, size=32, seed=1)  # e.g. shards rewritten in place
    assert changed[0].prompt != references[0].prompt
    with pytest.raises(ValueError, match="sample_000000.safetensors was generated for .* data changed"):
        generate_missing(never_called, changed, store, settings)


def test_joint_models_keep_matching_layer_counts():
    refs = load_references("synthetic", 3, size=32, max_foregrounds=3, num_layers=2)
    assert [r.num_layers for r in refs] == [2, 2, 2]


def test_shard_references(tmp_path):
    from layergen.data.shards import write_shards

    scenes = ShapeScenes(size=32, min_foregrounds=1, max_foregrounds=2, split="test", length=5)
    write_shards([scenes[i] for i in range(5)], tmp_path / "shards")
    refs = load_references(str(tmp_path / "shards"), 3)
    assert len(refs) == 3 and refs[0].prompt == scenes[0].prompt
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        load_references(str(tmp_path), 3)


def test_cli_end_to_end_and_missing_weights(tmp_path, capsys):
    model_dir = tmp_path / "pipe"
    tiny_pipeline(tmp_path / "models").save_pretrained(model_dir)
    args = ["--model", str(model_dir), "--num-samples", "2", "--steps", "1", "--guidance", "1",
            "--batch-size", "2", "--out", str(tmp_path / "eval"), "--no-clip", "--saliency", "none"]
    assert evaluate.main([*args, "--no-fid"]) == 0
    assert "| all | 2 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="max_foregrounds=3, this run asks for 2"):
        evaluate.main([*args, "--no-fid", "--max-foregrounds", "2"])
    assert evaluate.main([*args, "--inception-weights", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05" in err and "--inception-weights" in err


def test_cli_missing_generator_and_saliency_weights(tmp_path, capsys):
    out = ["--num-samples", "1", "--steps", "1", "--out", str(tmp_path / "eval"), "--no-fid",
           "--no-clip"]
    checkpoint = tmp_path / "diffusion.ckpt"
    checkpoint.write_bytes(b"")
    model_dir = tmp_path / "pipe"
    tiny_pipeline(tmp_path / "models").save_pretrained(model_dir)
    cases = [
        (["--model", str(tmp_path / "no-pipe")], "--model", "no-pipe", "save_pretrained"),
        (["--ckpt", str(tmp_path / "no.ckpt")], "--ckpt", "no.ckpt", "checkpoints/"),
        (["--ckpt", str(checkpoint), "--autoencoder", str(tmp_path / "no-ae")], "--autoencoder",
         "no-ae", "copy the autoencoder"),
        (["--model", str(model_dir), "--saliency", str(tmp_path / "no-saliency")], "--saliency",
         "no-saliency", "huggingface-cli download"),
    ]
    for argv, argument, missing, where in cases:
        assert evaluate.main([*argv, *out]) == 2, argument
        err = capsys.readouterr().err.lower()
        assert argument in err and missing in err and where.lower() in err
    assert not (tmp_path / "eval" / "samples").exists()  # failed before any generation
