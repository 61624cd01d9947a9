"""--engine ray on a local two-CPU Ray: the same records as the single-process CLI, bad images as error
records, a worker killed mid-job, and a rerun that does no model work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

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


def test_a_clean_run_prints_neither_rays_deprecation_nor_its_restart_error(local_ray, dataset, cache, tmp_path):
    """A new driver process (Ray logs the restart error once per process) on the test's cluster, as a user runs it."""
    package_root = str(Path(easy_diffuser.__file__).parent.parent)
    images = tmp_path / "images"
    images.mkdir()
    for name in ["img000.png", "img001.jpg", "empty.png"]:
        shutil.copy(dataset / name, images / name)
    shutil.copy(dataset / "img002.png", images / os.fsdecode(b"raw\xff.png"))  # a name that isn't UTF-8
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "easy_diffuser", str(images), "--model", "shapes-demo", "--cache-dir", str(cache)]
    command += ["--engine", "ray", "--ray-address", address, "--output", str(tmp_path / "out")]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=600,
        env=dict(os.environ, PYTHONPATH=package_root),
    )
    assert run.returncode == 1, run.stderr  # 1: empty.png
    assert "Traceback" not in run.stderr
    assert "deprecated" not in run.stderr  # concurrency= (Ray 2.51)
    assert "constructor arguments in the object store" not in run.stderr  # ray-project/ray#53727
    assert "Failed to convert column" not in run.stderr  # every column Arrow can hold
    assert "4 images (1 errors), 0 already in the output" in run.stderr
    paths = {Path(item["path"]).name for item in read_records(tmp_path / "out")}
    assert paths == {"img000.png", "img001.jpg", "empty.png", "raw\\xff.png"}


def test_lists_of_paths_are_read_relative_to_the_list(tmp_path):
    from easy_diffuser import ray_job

    (tmp_path / "sub").mkdir()
    (tmp_path / "list.txt").write_text("sub/a.png\n\n/abs/b.jpg\n")
    (tmp_path / "list.csv").write_text("caption,path\nx,sub/c.png\n")
    (tmp_path / "raw.txt").write_bytes(b"sub/raw\xff.png\n")  # a name that isn't UTF-8, as the file system has it
    assert ray_job.list_inputs([tmp_path / "list.txt", tmp_path / "list.csv", tmp_path / "raw.txt"]) == [
        str(tmp_path / "sub" / "a.png"),
        "/abs/b.jpg",
        str(tmp_path / "sub" / "c.png"),
        os.fsdecode(bytes(tmp_path / "sub") + b"/raw\xff.png"),
    ]
    draw_scene(tmp_path / "sub" / os.fsdecode(b"d\xfe.png"), 64, colour="red")
    assert ray_job.list_inputs([tmp_path / "sub"]) == [str(tmp_path / "sub" / os.fsdecode(b"d\xfe.png"))]
    with pytest.raises(ValueError, match="no such file"):
        ray_job.list_inputs([tmp_path / "missing"])


def sparse(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no disk."""
    with open(path, "wb") as handle:
        handle.truncate(size)


def bad_list(tmp_path: Path, kind: str) -> Path:
    if kind == "short csv row":
        (tmp_path / "list.csv").write_text("name,path\na,x.png\nb\n")
        return tmp_path / "list.csv"
    if kind == "fifo":
        os.mkfifo(tmp_path / "list.txt")
        return tmp_path / "list.txt"
    if kind == "link to /dev/zero":
        (tmp_path / "list.txt").symlink_to("/dev/zero")
        return tmp_path / "list.txt"
    if kind == "utf-16":
        (tmp_path / "list.txt").write_bytes("a.png\n".encode("utf-16"))
        return tmp_path / "list.txt"
    if kind == "huge":
        sparse(tmp_path / "list.txt", 2**30 + 1)
        return tmp_path / "list.txt"
    if kind == "broken parquet":
        (tmp_path / "list.parquet").write_bytes(b"PAR1 not parquet")
        return tmp_path / "list.parquet"
    raise AssertionError(kind)


BAD_LISTS = {
    "short csv row": "list.csv: row 3 has 1 field(s), no path column",
    "fifo": "list.txt: not a regular file (a FIFO, device or socket)",
    "link to /dev/zero": "list.txt: not a regular file (a FIFO, device or socket)",
    "utf-16": "list.txt: not a text list of paths (it holds NUL bytes: UTF-16? save it as UTF-8)",
    "huge": "list.txt: larger than 1024 MiB, too large for a list of paths; split it",
    "broken parquet": "list.parquet: not a Parquet file",
}


@pytest.mark.parametrize("kind", sorted(BAD_LISTS))
def test_a_bad_list_is_one_line_naming_it_never_a_hang_or_a_traceback(tmp_path, capsys, kind):
    listed = bad_list(tmp_path, kind)
    code = main([str(listed), "--model", "shapes-demo", "--engine", "ray", "--output", str(tmp_path / "out")])
    assert code == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {tmp_path}/{BAD_LISTS[kind]}")
    assert not (tmp_path / "out").exists()


def our_shard(folder: Path, name: str, paths: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from easy_diffuser.records import arrow_schema, error_record

    pq.write_table(
        pa.Table.from_pylist([error_record(path, "bad") for path in paths], schema=arrow_schema()), folder / name
    )


FOREIGN_SHARDS = {
    "labels.parquet": lambda path: __import__("pyarrow.parquet").parquet.write_table(
        __import__("pyarrow").table({"path": ["/a.png"], "label": ["cat"]}), path
    ),
    "labels.jsonl": lambda path: path.write_text('{"path": "/a.png", "label": "cat"}\n'),
    "notes.jsonl": lambda path: path.write_text("my notes\n"),
    "fifo.jsonl": lambda path: os.mkfifo(path),
    "dev-zero.jsonl": lambda path: path.symlink_to("/dev/zero"),
    "huge.jsonl": lambda path: sparse(path, 2**30 + 1),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
@pytest.mark.parametrize("name", sorted(FOREIGN_SHARDS))
def test_a_foreign_file_in_the_output_folder_is_refused_and_nothing_is_deleted(tmp_path, name, overwrite):
    from easy_diffuser import ray_job
    from easy_diffuser.records import RecordsError

    output = tmp_path / "out"
    output.mkdir()
    our_shard(output, "ours.parquet", ["/b.png"])
    FOREIGN_SHARDS[name](output / name)
    before = sorted(os.listdir(output))
    with pytest.raises(RecordsError, match=f"^{output / name}: .*it was left as it is"):
        ray_job.run_job(["/a.png", "/b.png"], str(output), "shapes-demo", overwrite=overwrite)
    assert sorted(os.listdir(output)) == before  # --overwrite deleted nothing, ours included


def test_overwrite_removes_only_our_shards_and_a_damaged_one_costs_a_redo(tmp_path):
    from easy_diffuser import ray_job

    output = tmp_path / "out"
    (output / "sub").mkdir(parents=True)
    our_shard(output, "ours.parquet", ["/a.png"])
    (output / "sub" / "ours.jsonl").write_text(json.dumps(next(read_records(output / "ours.parquet"))) + "\n")
    (output / "killed.parquet").write_bytes(b"PAR1 cut short")  # unreadable: anyone's, so never deleted
    (output / "README.txt").write_text("my notes")
    assert ray_job._read_output(str(output), ["path"])[1] == [{"path": "/a.png"}, {"path": "/a.png"}]
    summary = ray_job.run_job([], str(output), "shapes-demo", overwrite=True)  # nothing to do: no model
    assert summary.images == 0
    assert sorted(str(path.relative_to(output)) for path in output.rglob("*")) == [
        "README.txt",
        "killed.parquet",
        "sub",
    ]


def test_a_second_job_on_the_same_output_folder_is_refused(tmp_path):
    from easy_diffuser import ray_job
    from easy_diffuser.files import OutputBusy, OutputLock

    output = tmp_path / "out"
    held = OutputLock(output)
    try:
        with pytest.raises(OutputBusy, match=f"^{output}: another easy-diffuser run .* is writing it"):
            ray_job.run_job(["/a.png"], str(output), "shapes-demo")
    finally:
        held.release()
    assert ray_job.run_job([], str(output), "shapes-demo").images == 0  # released: the next one runs


@pytest.mark.parametrize("kind", ["wd-tagger", "pixai", "jtp"])
def test_a_tagger_runs_on_ray_with_the_records_of_the_single_process_cli(local_ray, tmp_path, kind):
    """Every tagger kind, through the same job: JTP's transparency over grey (kept beside the decoded image) and
    PixAI's copyrights survive the trip to the actors."""
    import numpy as np
    from PIL import Image

    import taggers

    folder = tmp_path / "images"
    folder.mkdir()
    for index, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        draw_scene(folder / f"img{index}.{'jpg' if index % 2 else 'png'}", 48, colour=colour)
    pixels = np.random.default_rng(2).integers(0, 256, (40, 70, 4), dtype=np.uint8)
    pixels[:, :20, 3] = 0
    Image.fromarray(pixels, "RGBA").save(folder / "transparent.png")
    writers = {"wd-tagger": lambda path: taggers.write_tagger(path, "convnext"), "pixai": taggers.write_pixai}
    model = str(writers.get(kind, taggers.write_jtp)(tmp_path / f"{kind}-tiny"))
    common = [str(folder), "--model", model, "--cache-dir", str(tmp_path / "cache"), "--no-captions"]
    assert main([*common, "--output", str(tmp_path / "local.jsonl")]) == 0
    assert main([*common, "--engine", "ray", "--output", str(tmp_path / "shards.jsonl")]) == 0
    local, distributed = (
        by_path(read_records(tmp_path / "local.jsonl")),
        by_path(read_records(tmp_path / "shards.jsonl")),
    )
    assert distributed == local and len(local) == 9


def test_ray_prompts_follow_the_checkpoint_as_the_single_process_clis_do(local_ray, tmp_path):
    """--checkpoint reaches every actor: a checkpoint's name alone (no file) gives shapes-booru's prompts Pony's
    quality tags under --family automatic, in the captions and the records, as without Ray."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index, colour in enumerate(["red", "green", "blue", "yellow"]):
        draw_scene(folder / f"img{index}.png", 48, colour=colour)
    common = [str(folder), "--model", "shapes-booru", "--cache-dir", str(tmp_path / "cache")]
    common += ["--checkpoint", "ponyDiffusionV6XL.safetensors"]
    assert main([*common, "--no-captions", "--output", str(tmp_path / "local.jsonl")]) == 0
    assert main([*common, "--engine", "ray", "--captions", "--output", str(tmp_path / "shards.jsonl")]) == 0
    captions = [path.read_text() for path in sorted(folder.glob("*.txt"))]
    assert len(captions) == 4
    assert all(
        caption.startswith("score_9, score_8_up, score_7_up, score_6_up, score_5_up, score_4_up, ")
        for caption in captions
    )
    distributed = by_path(read_records(tmp_path / "shards.jsonl"))
    assert distributed == by_path(read_records(tmp_path / "local.jsonl"))
    assert sorted(item["prompt"] + "\n" for item in distributed.values()) == sorted(captions)


def test_every_actor_asks_the_vlm_server_with_the_records_of_the_single_process_cli(local_ray, tmp_path):
    """Sentences on Ray from a VLM server: the actors load no captioner (none is placed, and the hub is off),
    ask the server, and a description the server fails is that image's error record, as without Ray."""
    from vlm_server import PARAGRAPH, StandInServer

    folder = tmp_path / "images"
    folder.mkdir()
    for index, colour in enumerate(["red", "green", "blue", "yellow"]):
        draw_scene(folder / f"img{index}.png", 48, colour=colour)
    Image.new("RGB", (13, 48), "red").save(folder / "narrow.png")  # the stand-in fails images 13 pixels wide
    with StandInServer(refuse_width=13) as server:
        common = [str(folder), "--model", "shapes-demo", "--cache-dir", str(tmp_path / "cache"), "--no-captions"]
        common += ["--prompt-style", "sentences", "--caption-url", server.url, "--caption-server-model", "vlm"]
        assert main([*common, "--output", str(tmp_path / "local.jsonl")]) == 1
        assert main([*common, "--engine", "ray", "--output", str(tmp_path / "shards.jsonl")]) == 1
    assert len(server.requests) == 2 * 5 and server.problems == []
    local, distributed = (
        by_path(read_records(tmp_path / "local.jsonl")),
        by_path(read_records(tmp_path / "shards.jsonl")),
    )
    assert distributed == local and len(local) == 5
    failed = {Path(path).name: item["error"] for path, item in distributed.items() if item["error"]}
    assert list(failed) == ["narrow.png"] and "CUDA out of memory" in failed["narrow.png"]
    assert all(item["prompt"].startswith(PARAGRAPH) for item in distributed.values() if not item["error"])


def test_ray_writes_the_caption_files_the_single_process_cli_writes(local_ray, tmp_path):
    """The caption-file options reach every actor: extension, append to the user's caption, trigger, underscores,
    character expansion and tag replacement give the same bytes as without Ray."""
    folders = [tmp_path / "local", tmp_path / "ray"]
    for folder in folders:
        folder.mkdir()
        draw_scene(folder / "star.png", colour="yellow", shape="star", background="white")
        draw_scene(folder / "circle.png", colour="red", shape="circle", background="white")
        (folder / "circle.caption").write_text("my words, red\n")
    options = ["--model", "shapes-booru", "--cache-dir", str(tmp_path / "cache"), "--caption-extension", ".caption"]
    options += ["--existing", "append", "--trigger", "ohwx", "--underscores", "keep", "--character-expand"]
    options += ["--replace-tags", "circle,ring"]
    assert main([str(folders[0]), *options]) == 0
    assert main([str(folders[1]), *options, "--engine", "ray", "--captions", "--output", str(tmp_path / "out")]) == 0
    written = [{path.name: path.read_text() for path in folder.glob("*.caption")} for folder in folders]
    assert (
        written[0]
        == written[1]
        == {
            "circle.caption": "ohwx, my words, red, general, ring, large, white_background\n",
            "star.caption": "ohwx, twinkle, shapes, general, yellow, white_background, large, star\n",
        }
    )
    assert not list(folders[1].glob("*.txt"))
