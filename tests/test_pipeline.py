"""Folders at scale, as a user sees them: records (--output), resume, and the batch's failure modes
(stem clashes, captions that can't be written, names stdout can't encode) as one line each."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from easy_diffuser import files
from easy_diffuser.batch import caption_folder
from easy_diffuser.cli import main
from easy_diffuser.records import journal_path, read_records

from conftest import draw_scene

CLI = [sys.executable, "-m", "easy_diffuser"]
COLOURS = ["red", "green", "blue", "yellow"]


def make_folder(folder: Path, count: int, suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [draw_scene(folder / f"img{index:03d}{suffix}", 64, colour=COLOURS[index % 4]) for index in range(count)]


def shapes(*args: str, cache: Path) -> list[str]:
    return [*map(str, args), "--model", "shapes-demo", "--cache-dir", str(cache)]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_records_hold_every_image_with_its_tags_and_a_rerun_does_nothing(tmp_path, cache_dir, capsys):
    images = make_folder(tmp_path / "set", 5)
    (tmp_path / "set" / "broken.png").write_bytes(b"not a png")
    output = tmp_path / "records.jsonl"
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 1
    # --no-captions: no .txt was written, so the summary counts records, never "captioned" (issue 19).
    assert "6 records written, 0 already recorded, 1 failed" in capsys.readouterr().err
    records = {Path(item["path"]).name: item for item in read_records(output)}
    assert sorted(records) == sorted([image.name for image in images] + ["broken.png"])
    assert "red" in records["img000.png"]["prompt"] and records["img000.png"]["error"] is None
    assert set(records["img001.png"]["tags"][0]) == {"tag", "score", "relevance", "category", "role"}
    assert records["img000.png"]["model"] == "shapes-demo" and isinstance(records["img000.png"]["tau"], float)
    assert "not an image" in records["broken.png"]["error"] and records["broken.png"]["prompt"] is None
    assert not list((tmp_path / "set").glob("*.txt"))  # --no-captions: records only
    capsys.readouterr()
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 0
    assert "0 records written, 6 already recorded, 0 failed" in capsys.readouterr().err
    assert len(list(read_records(output))) == 6


def test_pipeline_gives_the_same_prompts_as_extracting_one_by_one(tmp_path, shapes_engine):
    images = make_folder(tmp_path / "set", 11, ".jpg")  # 11: a last batch that isn't full
    summary = caption_folder(shapes_engine, tmp_path / "set", batch_size=4, workers=3)
    assert summary.written == images and not summary.failed
    for image in images:
        assert image.with_suffix(".txt").read_text() == shapes_engine.extract(image).prompt + "\n"


def test_stop_ends_after_the_current_batch_and_every_caption_handed_over_is_written(tmp_path, shapes_engine):
    make_folder(tmp_path / "set", 20)
    reports = []
    summary = caption_folder(
        shapes_engine,
        tmp_path / "set",
        progress=lambda done, total: reports.append(done),
        should_stop=lambda: bool(reports),
        batch_size=8,
    )
    assert summary.stopped and reports == [8]
    assert len(list((tmp_path / "set").glob("*.txt"))) == 8 == len(summary.written)


def test_parquet_output_matches_jsonl_and_a_killed_runs_journal_is_kept(tmp_path, cache_dir):
    pytest.importorskip("pyarrow")
    make_folder(tmp_path / "set", 4)
    jsonl, parquet = tmp_path / "out.jsonl", tmp_path / "out.parquet"
    assert main(shapes(tmp_path / "set", "--output", jsonl, "--no-captions", cache=cache_dir)) == 0
    first = next(read_records(jsonl))
    # What a run killed after one record leaves: its journal, the last line cut short.
    journal_path(parquet).write_text(json.dumps(first) + "\n" + '{"path": "cut sh')
    assert main(shapes(tmp_path / "set", "--output", parquet, "--no-captions", cache=cache_dir)) == 0
    assert not journal_path(parquet).exists()
    by_path = lambda path: sorted(read_records(path), key=lambda item: item["path"])  # noqa: E731
    assert by_path(parquet) == by_path(jsonl)  # each image once: the journal's record was not redone


def test_a_records_line_cut_by_a_kill_is_dropped_and_redone(tmp_path, cache_dir):
    images = make_folder(tmp_path / "set", 3)
    output = tmp_path / "out.jsonl"
    assert main(shapes(images[0], "--output", output, cache=cache_dir)) == 0
    output.write_text(output.read_text() + '{"path": "' + str(images[1]))  # killed while writing image 1
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 0
    lines = output.read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == [str(image) for image in images]


def test_images_sharing_a_stem_get_one_caption_and_the_others_are_named(tmp_path, cache_dir, capsys):
    folder = tmp_path / "set"
    make_folder(folder, 2)
    draw_scene(folder / "a.png", 64, colour="red")
    draw_scene(folder / "a.jpg", 64, colour="blue")
    draw_scene(folder / "a.webp", 64, colour="green")
    assert main(shapes(folder, cache=cache_dir)) == 1
    err = capsys.readouterr().err
    assert "blue" in (folder / "a.txt").read_text()  # a.jpg, the first by name, owns a.txt
    clashes = error_lines(err)
    assert len(clashes) == 2 and all("a.txt is a.jpg's caption" in line for line in clashes)
    assert {line.split()[1].rstrip(":") for line in clashes} == {str(folder / "a.png"), str(folder / "a.webp")}
    assert "3 captioned, 0 already captioned, 2 failed" in err
    (folder / "a.txt").write_text("my own caption\n")
    assert main(shapes(folder, "--overwrite", cache=cache_dir)) == 1  # a rerun names them again...
    assert len(error_lines(capsys.readouterr().err)) == 2
    assert "blue" in (folder / "a.txt").read_text()  # ...and never writes a.png's caption over a.jpg's


def test_a_folder_where_the_caption_should_be_is_one_error_line(tmp_path, cache_dir, capsys):
    images = make_folder(tmp_path / "set", 3)
    images[1].with_suffix(".txt").mkdir()
    assert main(shapes(tmp_path / "set", cache=cache_dir)) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [f"error: {images[1].with_suffix('.txt')}: cannot write the caption (Is a directory)"]
    assert "Traceback" not in err and "2 captioned, 0 already captioned, 1 failed" in err
    assert images[2].with_suffix(".txt").read_text().endswith("\n")  # the batch went on


@pytest.mark.parametrize(
    "code, cause", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")]
)
def test_a_full_disk_or_read_only_folder_is_an_error_line_per_image(
    tmp_path, cache_dir, capsys, monkeypatch, code, cause
):
    images = make_folder(tmp_path / "set", 3)

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)  # where a caption's write starts
    assert main(shapes(tmp_path / "set", cache=cache_dir)) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [
        f"error: {image.with_suffix('.txt')}: cannot write the caption ({cause})" for image in images
    ]
    assert "Traceback" not in err and "0 captioned, 0 already captioned, 3 failed" in err
    assert sorted(os.listdir(tmp_path / "set")) == [image.name for image in images]  # no caption, no temp file


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_really_read_only_folder_is_an_error_line_per_image(tmp_path, cache_dir, capsys):
    images = make_folder(tmp_path / "set", 2)
    (tmp_path / "set").chmod(0o555)
    try:
        assert main(shapes(tmp_path / "set", cache=cache_dir)) == 1
    finally:
        (tmp_path / "set").chmod(0o755)
    assert len(error_lines(capsys.readouterr().err)) == len(images)


def test_json_names_stdout_cannot_encode_are_printed_escaped(tmp_path, cache_dir):
    folder = tmp_path / "set"
    folder.mkdir()
    names = ["caf\u00e9 \U0001f3a8.png", os.fsdecode(b"raw\xff.png")]  # an emoji; bytes that aren't UTF-8
    for name in names:
        draw_scene(folder / name, 64, colour="red")
    environment = dict(os.environ, PYTHONIOENCODING="ascii")
    process = subprocess.run(
        [*CLI, *shapes(folder, "--json", cache=cache_dir)], capture_output=True, env=environment, timeout=300
    )
    err = process.stderr.decode("ascii")
    assert process.returncode == 0 and "Traceback" not in err and "2 captioned" in err
    sources = sorted(json.loads(line)["source"] for line in process.stdout.decode("ascii").splitlines())
    assert sources == sorted(str(folder / name) for name in names)  # JSON escapes: the exact names come back


def test_the_core_never_imports_ray():
    code = "import sys, easy_diffuser.cli, easy_diffuser.batch, easy_diffuser.pipeline; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_worker_preprocessing_is_bit_identical_to_the_models_own(shapes_engine, tmp_path):
    from PIL import Image

    from easy_diffuser.images import load_image
    from easy_diffuser.pipeline import Preprocessor

    # Every uint8 value in every channel (3k mod 256 covers them all), at the model's own 64 pixels.
    values = np.arange(256 * 3).astype(np.uint8).reshape(16, 16, 3)
    every_value = Image.fromarray(values.repeat(4, axis=0).repeat(4, axis=1))
    every_value.save(tmp_path / "values.png")
    draw_scene(tmp_path / "scene.jpg", 300, colour="red")
    prepare = Preprocessor(shapes_engine.loaded)
    for path in (tmp_path / "values.png", tmp_path / "scene.jpg"):
        expected = shapes_engine.loaded.preprocess(load_image(path, min_side=prepare.min_side))
        assert torch.equal(prepare(path, str(path)), expected)


def test_an_image_whose_name_is_near_the_systems_limit_gets_its_caption(tmp_path, shapes_engine):
    name = "é" * 120 + "x" * 6  # 246 bytes in UTF-8: a legal name, its caption too, but not ".NAME.XXXXXXXX.tmp"
    (tmp_path / "set").mkdir()
    image = draw_scene(tmp_path / "set" / f"{name}.png", 64, colour="red")
    leftover = image.parent / f".{files._temp_prefix(image.with_suffix('.txt').name)[1:]}k1ll3d.tmp"
    leftover.write_text("red, cir")  # what a killed run leaves
    summary = caption_folder(shapes_engine, tmp_path / "set")
    assert summary.written == [image] and not summary.failed
    assert "red" in image.with_suffix(".txt").read_text()
    assert sorted(os.listdir(tmp_path / "set")) == sorted([image.name, image.with_suffix(".txt").name])


def parquet_bytes(columns: dict, schema=None) -> bytes:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table(columns, schema=schema), buffer)
    return buffer.getvalue().to_pybytes()


def a_record(**changes) -> dict:
    tag = {"tag": "red", "score": 0.3, "relevance": 2.0, "category": "colour", "role": "positive"}
    return {
        "path": "/a.png",
        "prompt": "red",
        "negative_prompt": "blue",
        "tags": [tag],
        "model": "m",
        "tau": 1.0,
        "error": None,
    } | changes


def records_schema_with(name: str, kind):
    from easy_diffuser.records import arrow_schema

    schema = arrow_schema()
    return schema.set(schema.get_field_index(name), schema.field(name).with_type(kind))


# A user's own files given as --output (issue 18 §1): none is a records file, so none may count its images as
# done, be appended to, rewritten, or deleted by --overwrite.
FOREIGN_OUTPUTS = {
    "text.jsonl": lambda: b"my notes\nnot json at all\n",
    "no-newline.jsonl": lambda: b"my only line, no newline",
    "nan.jsonl": lambda: b'{"path": "/x.png", "tau": NaN}\n',
    "not-objects.jsonl": lambda: b"[1, 2]\n",
    "no-path.jsonl": lambda: b'{"name": "a.png"}\n',
    "nested.jsonl": lambda: b"[" * 100_000 + b"\n",
    "garbage.parquet": lambda: b"PAR1 this is not parquet",
    # A path column is not enough: the user's labels would be lost at the end, and its images counted as done.
    "labels.parquet": lambda: parquet_bytes({"path": ["/a.png", "/b.png"], "label": ["cat", "dog"]}),
    "labels.jsonl": lambda: b'{"path": "/a.png", "label": "cat"}\n{"path": "/b.png", "label": "dog"}\n',
    "extra-key.jsonl": lambda: (json.dumps(a_record(label="cat")) + "\n").encode(),
    "tau-text.jsonl": lambda: (json.dumps(a_record(tau="1.0")) + "\n").encode(),
    "tag-without-score.jsonl": lambda: (json.dumps(a_record(tags=[{"tag": "red"}])) + "\n").encode(),
    "tau-text.parquet": lambda: parquet_bytes(
        {**{key: [value] for key, value in a_record(tau="1.0").items()}},
        records_schema_with("tau", __import__("pyarrow").string()),
    ),
    "long-line.jsonl": lambda: (json.dumps(a_record(prompt="x" * (5 * 2**20))) + "\n").encode(),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
@pytest.mark.parametrize("name", sorted(FOREIGN_OUTPUTS))
def test_an_output_that_is_not_a_records_file_is_one_line_and_left_as_it_was(
    tmp_path, cache_dir, capsys, name, overwrite
):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    make_folder(tmp_path / "set", 1)
    output = tmp_path / name
    output.write_bytes(FOREIGN_OUTPUTS[name]())
    before = output.read_bytes()
    flags = ["--overwrite"] if overwrite else []
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", *flags, cache=cache_dir)) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {output}: ") and line.endswith(
        "it was left as it is: give another --output, or move it away"
    )
    assert output.read_bytes() == before  # neither appended to, rewritten, truncated nor deleted
    assert sorted(os.listdir(tmp_path)) == sorted(["set", "cache", name])  # no journal, no lock left


def test_overwrite_starts_a_records_file_again(tmp_path, cache_dir, capsys):
    pytest.importorskip("pyarrow")
    make_folder(tmp_path / "set", 2)
    output = tmp_path / "out.parquet"
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 0
    capsys.readouterr()
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", "--overwrite", cache=cache_dir)) == 0
    assert "2 records written, 0 already recorded" in capsys.readouterr().err
    assert len(list(read_records(output))) == 2


def test_a_whole_last_record_missing_its_newline_is_kept(tmp_path, cache_dir, capsys):
    images = make_folder(tmp_path / "set", 2)
    output = tmp_path / "out.jsonl"
    assert main(shapes(images[0], "--output", output, cache=cache_dir)) == 0
    output.write_text(output.read_text().rstrip("\n"))  # as an editor saving without a final newline leaves it
    capsys.readouterr()
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 0
    assert "1 records written, 1 already recorded" in capsys.readouterr().err  # image 0's record was kept
    assert sorted(item["path"] for item in read_records(output)) == [str(image) for image in images]
    assert len(output.read_text().splitlines()) == 2  # image 0 not redone


def test_a_second_run_on_the_same_output_is_refused_and_a_killed_holder_never_blocks(tmp_path, cache_dir, capsys):
    make_folder(tmp_path / "set", 2)
    output = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from easy_diffuser.files import OutputLock; OutputLock({str(output)!r}); print(1)"
            "; import time; time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    try:
        assert holder.stdout.readline() == b"1\n"  # it holds the lock, as a run writing out.jsonl would
        assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 2
        [line] = error_lines(capsys.readouterr().err)
        assert line == (
            f"error: {output}: another easy-diffuser run (process {holder.pid}) is writing it; "
            "wait for it to end, or give another --output"
        )
        assert not output.exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup, its lock file stays behind
        holder.wait()
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 0
    assert len(list(read_records(output))) == 2
    assert sorted(os.listdir(tmp_path)) == ["cache", "out.jsonl", "set"]  # the lock file goes with the run


def test_two_runs_at_once_record_every_image_once(tmp_path, cache_dir):
    pytest.importorskip("pyarrow")
    make_folder(tmp_path / "set", 40)
    output = tmp_path / "out.parquet"
    main(shapes(tmp_path / "set", "--output", tmp_path / "warm.jsonl", "--no-captions", cache=cache_dir))
    command = [
        *CLI,
        *shapes(tmp_path / "set", "--output", output, "--no-captions", "--batch-size", "4", cache=cache_dir),
    ]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert all("Traceback" not in err for _, err in results)
    assert sorted(code for code, _ in results) in ([0, 0], [0, 2])  # the second refused, or it came after
    refusals = [err for code, err in results if code == 2]
    assert all("another easy-diffuser run" in err for err in refusals)
    paths = [item["path"] for item in read_records(output)]
    assert len(paths) == len(set(paths)) == 40


def test_a_parquet_output_that_cannot_be_written_keeps_its_journal_and_a_rerun_merges_it(
    tmp_path, cache_dir, capsys, monkeypatch
):
    pytest.importorskip("pyarrow")
    make_folder(tmp_path / "set", 3)
    output = tmp_path / "out.parquet"

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with monkeypatch.context() as patch:
        patch.setattr(files.tempfile, "mkstemp", refuse)  # where the Parquet file's atomic write starts
        assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and error_lines(err) == [
        f"error: {output}: cannot write it (Permission denied); its 3 new records are kept in "
        f"{journal_path(output).name}, and the next run merges them"
    ]
    assert not output.exists() and len(journal_path(output).read_text().splitlines()) == 3
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 0  # cause gone
    assert "0 records written, 3 already recorded" in capsys.readouterr().err  # the journal's records, not redone
    assert len(list(read_records(output))) == 3 and not journal_path(output).exists()


def test_names_that_are_not_utf8_are_recorded_in_parquet_and_skipped_by_a_rerun(tmp_path, cache_dir):
    pytest.importorskip("pyarrow")
    folder = tmp_path / "set"
    folder.mkdir()
    raw = draw_scene(folder / os.fsdecode(b"raw\xff.png"), 64, colour="red")
    (folder / os.fsdecode(b"bad\xfe.png")).write_bytes(b"not a png")  # an error record naming it too
    output = tmp_path / "out.parquet"
    command = [*CLI, *shapes(folder, "--output", output, "--no-captions", cache=cache_dir)]
    first = subprocess.run(command, capture_output=True, text=True, errors="backslashreplace", timeout=300)
    assert first.returncode == 1 and "Traceback" not in first.stderr and not journal_path(output).exists()
    records = {item["path"]: item for item in read_records(output)}
    assert set(records) == {str(folder / "raw\\xff.png"), str(folder / "bad\\xfe.png")}  # \xNN: valid Unicode
    assert "red" in records[str(folder / "raw\\xff.png")]["prompt"] and raw.exists()
    assert "bad\\xfe.png" in records[str(folder / "bad\\xfe.png")]["error"]
    again = subprocess.run(command, capture_output=True, text=True, errors="backslashreplace", timeout=300)
    assert again.returncode == 0 and "0 records written, 2 already recorded" in again.stderr


def test_a_journal_of_the_previous_version_with_a_raw_name_merges(tmp_path, cache_dir):
    pytest.importorskip("pyarrow")
    make_folder(tmp_path / "set", 1)
    output = tmp_path / "out.parquet"
    old = a_record(path="/old/raw\udcff.png")  # the previous version wrote the undecodable byte as \udcff
    journal_path(output).write_text(json.dumps(old) + "\n")
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 0
    assert sorted(item["path"] for item in read_records(output)) == [
        "/old/raw\\xff.png",
        str(tmp_path / "set" / "img000.png"),
    ]


@pytest.mark.parametrize("kind", ["dangling link", "link to a records file", "link as the journal", "fifo"])
def test_an_output_that_is_a_link_or_a_fifo_is_refused_and_nothing_is_created(tmp_path, cache_dir, capsys, kind):
    pytest.importorskip("pyarrow")
    make_folder(tmp_path / "set", 1)
    target = tmp_path / "elsewhere" / "target.jsonl"
    target.parent.mkdir()
    output = tmp_path / ("out.parquet" if kind == "link as the journal" else "out.jsonl")
    if kind == "fifo":
        os.mkfifo(output)
    elif kind == "link as the journal":
        journal_path(output).symlink_to(target)
    else:
        if kind == "link to a records file":
            target.write_text(json.dumps(a_record()) + "\n")
        output.symlink_to(target)
    before = target.read_bytes() if target.exists() else None
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 2
    [line] = error_lines(capsys.readouterr().err)
    reason = "not a regular file" if kind == "fifo" else "is a symbolic link"
    assert line.startswith(f"error: {tmp_path}/out.") and reason in line
    assert (target.read_bytes() if target.exists() else None) == before  # a dangling link's target not created


def test_a_cut_last_line_is_set_aside_with_a_warning_never_silently_dropped(tmp_path, cache_dir, caplog):
    images = make_folder(tmp_path / "set", 2)
    output = tmp_path / "out.jsonl"
    assert main(shapes(images[0], "--output", output, cache=cache_dir)) == 0
    cut = '{"path": "' + str(images[1]) + '", "prompt": "red, ci'
    output.write_text(output.read_text() + cut)  # killed while writing image 1's record
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 0
    assert sorted(item["path"] for item in read_records(output)) == [str(image) for image in images]
    kept = tmp_path / "out.jsonl.cut"
    assert kept.read_text() == cut + "\n"  # the cut text is kept, not lost
    assert f"{output}: its last line was cut short" in caplog.text and "moved to out.jsonl.cut" in caplog.text


def test_parquet_without_pyarrow_names_the_extra_and_exits_as_a_setup_error(tmp_path, cache_dir, capsys, monkeypatch):
    make_folder(tmp_path / "set", 1)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    output = tmp_path / "out.parquet"
    assert main(shapes(tmp_path / "set", "--output", output, "--no-captions", cache=cache_dir)) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: Parquet output needs pyarrow: pip install 'easy-diffuser[parquet]' "
        "(in a webui's venv: pip install pyarrow); or write .jsonl"
    ]
    assert not output.exists()


def test_a_caption_the_user_wrote_is_kept_and_counted_as_already_captioned_when_records_are_added(
    tmp_path, cache_dir, capsys
):
    images = make_folder(tmp_path / "set", 3)
    own = images[0].with_suffix(".txt")
    own.write_text("my own words\n")  # written by hand before the run: not overwritten, so not captioned now
    output = tmp_path / "out.jsonl"
    assert main(shapes(tmp_path / "set", "--output", output, cache=cache_dir)) == 0
    summary = capsys.readouterr().err.splitlines()[-1]
    assert "2 captioned, 3 records written, 1 already captioned, 0 failed" in summary and "images/s" in summary
    assert own.read_text() == "my own words\n" and len(list(read_records(output))) == 3
    assert main(shapes(tmp_path / "set", "--output", output, cache=cache_dir)) == 0  # nothing left to do
    assert "0 captioned, 3 already captioned, 0 failed" in capsys.readouterr().err


def test_records_only_still_count_their_speed(tmp_path, cache_dir, capsys):
    make_folder(tmp_path / "set", 2)
    assert main(shapes(tmp_path / "set", "--output", tmp_path / "out.jsonl", "--no-captions", cache=cache_dir)) == 0
    summary = capsys.readouterr().err.splitlines()[-1]
    assert "2 records written, 0 already recorded, 0 failed (" in summary and "images/s)" in summary
