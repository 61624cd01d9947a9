"""--engine ray on a local two-CPU Ray: the same records as the single-process CLI, bad images as error
records, a worker killed mid-job, and a rerun that does no model work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import easy_diffuser  # noqa: E402
from easy_diffuser.cli import main  # noqa: E402
from easy_diffuser.records import read_records  # noqa: E402

from conftest import draw_scene  # noqa: E402

IMAGES = 200
BROKEN = {"empty.png": b"", "text.jpg": b"hello", "cut.png": None}  # None: a real PNG cut in half


@pytest.fixture(scope="module")
def local_ray():
    # Workers import the package from where this test imports it (a checkout, not an older install).
    package_root = str(Path(easy_diffuser.__file__).parent.parent)
    ray.init(
        num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": package_root}}, log_to_driver=False
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dataset")
    colours = ["red", "green", "blue", "yellow"]
    for index in range(IMAGES):
        draw_scene(folder / f"img{index:03d}.{'jpg' if index % 2 else 'png'}", 64, colour=colours[index % 4])
    whole = (folder / "img000.png").read_bytes()
    for name, data in BROKEN.items():
        (folder / name).write_bytes(whole[: len(whole) // 2] if data is None else data)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def by_path(records) -> dict[str, dict]:
    return {item["path"]: item for item in records}


def test_ray_records_equal_the_single_process_clis_and_a_rerun_does_no_model_work(
    local_ray, dataset, cache, tmp_path, capsys
):
    from easy_diffuser import ray_job

    common = [str(dataset), "--model", "shapes-demo", "--cache-dir", str(cache), "--no-captions"]
    assert main([*common, "--output", str(tmp_path / "local.jsonl")]) == 1  # 1: the broken files
    assert main([*common, "--engine", "ray", "--output", str(tmp_path / "shards.parquet")]) == 1
    assert f"{IMAGES + len(BROKEN)} images ({len(BROKEN)} errors), 0 already in the output" in capsys.readouterr().err
    local, distributed = list(read_records(tmp_path / "local.jsonl")), list(read_records(tmp_path / "shards.parquet"))
    assert len(distributed) == len(by_path(distributed)) == IMAGES + len(BROKEN)  # every image exactly once
    assert by_path(distributed) == by_path(local)
    errors = {Path(item["path"]).name for item in distributed if item["error"]}
    assert errors == set(BROKEN)

    class NoModelWork:  # the extractor of a rerun: loading it at all would fail the job
        def __init__(self, **kwargs):
            raise AssertionError("a rerun loaded the model")

    shards = sorted((tmp_path / "shards.parquet").iterdir())
    summary = ray_job.run_job(
        ray_job.list_inputs([dataset]),
        str(tmp_path / "shards.parquet"),
        "shapes-demo",
        cache_dir=str(cache),
        extractor=NoModelWork,
    )
    assert (summary.images, summary.skipped) == (0, IMAGES + len(BROKEN))
    assert sorted((tmp_path / "shards.parquet").iterdir()) == shards


def test_a_killed_worker_costs_nothing_every_image_is_recorded_once(local_ray, dataset, cache, tmp_path):
    from ray import cloudpickle

    from easy_diffuser import ray_job

    folder = tmp_path / "images"
    shutil.copytree(dataset, folder)
    shutil.copy(folder / "img001.jpg", folder / "img000.jpg")  # img000.jpg and img000.png: one img000.txt
    marker = tmp_path / "killed"

    class DiesOnItsFirstBatch(ray_job.TagExtractor):
        def __call__(self, batch):
            if not marker.exists():  # the first batch of the first actor only: its restart works normally
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import this test module
    output = tmp_path / "records.jsonl"
    summary = ray_job.run_job(
        ray_job.list_inputs([folder]),
        str(output),
        "shapes-demo",
        cache_dir=str(cache),
        batch_size=16,
        extractor=DiesOnItsFirstBatch,
        captions=True,
    )
    assert marker.exists()  # the kill happened
    records = by_path(read_records(output))
    assert len(list(read_records(output))) == len(records) == IMAGES + len(BROKEN) + 1  # each image once
    assert summary.images == len(records) and summary.errors == len(BROKEN) + 1
    # The stem clash: img000.jpg (first by name) owns img000.txt; img000.png's record says so, prompt kept.
    assert (folder / "img000.txt").read_text() == records[str(folder / "img000.jpg")]["prompt"] + "\n"
    clash = records[str(folder / "img000.png")]
    assert "img000.txt is img000.jpg's caption" in clash["error"] and clash["prompt"]
    assert all((folder / f"img{index:03d}.txt").read_text().endswith("\n") for index in range(1, IMAGES))


def test_lists_of_paths_are_read_relative_to_the_list(tmp_path, local_ray):
    from easy_diffuser import ray_job

    (tmp_path / "sub").mkdir()
    (tmp_path / "list.txt").write_text("sub/a.png\n\n/abs/b.jpg\n")
    (tmp_path / "list.csv").write_text("caption,path\nx,sub/c.png\n")
    assert ray_job.list_inputs([tmp_path / "list.txt", tmp_path / "list.csv"]) == [
        str(tmp_path / "sub" / "a.png"),
        "/abs/b.jpg",
        str(tmp_path / "sub" / "c.png"),
    ]
    with pytest.raises(ValueError, match="no such file"):
        ray_job.list_inputs([tmp_path / "missing"])


def test_foreign_or_damaged_shards_only_cost_their_images_a_redo(tmp_path):
    from easy_diffuser.ray_job import _read_shards

    output = tmp_path / "out"
    output.mkdir()
    good = {"path": "/a.png", "prompt": "red"}
    lines = [json.dumps(good), "not json", json.dumps({"prompt": "no path"}), "[1, 2]", "[" * 100_000, '{"path": "/cut']
    (output / "part-1.jsonl").write_text("\n".join(lines))
    (output / "part-2.parquet").write_bytes(b"PAR1 garbage")
    assert _read_shards(str(output), ["path"]) == [{"path": "/a.png"}]


def test_a_tagger_runs_on_ray_with_the_records_of_the_single_process_cli(local_ray, tmp_path):
    from taggers import write_tagger

    folder = tmp_path / "images"
    folder.mkdir()
    for index, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        draw_scene(folder / f"img{index}.{'jpg' if index % 2 else 'png'}", 48, colour=colour)
    model = str(write_tagger(tmp_path / "wd-tiny", "convnext"))
    common = [str(folder), "--model", model, "--cache-dir", str(tmp_path / "cache"), "--no-captions"]
    assert main([*common, "--output", str(tmp_path / "local.jsonl")]) == 0
    assert main([*common, "--engine", "ray", "--output", str(tmp_path / "shards.jsonl")]) == 0
    local, distributed = read_records(tmp_path / "local.jsonl"), read_records(tmp_path / "shards.jsonl")
    assert by_path(distributed) == by_path(local) and len(by_path(local)) == 8
