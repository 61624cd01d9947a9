"""The command line as a user runs it: images, folders, JSON, bad files, kills and reruns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from easy_diffuser.cli import main

from scenes import draw_scene

CLI = [sys.executable, "-m", "easy_diffuser"]


def run_cli(*args: str, cache: Path) -> tuple[int, str, str]:
    process = subprocess.run(
        [*CLI, *args, "--model", "shapes-demo", "--cache-dir", str(cache)], capture_output=True, text=True, timeout=300
    )
    return process.returncode, process.stdout, process.stderr


def test_json_output_for_an_image(shapes_red_circle, cache_dir, capsys):
    assert main([str(shapes_red_circle), "--model", "shapes-demo", "--cache-dir", str(cache_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"prompt", "negative_prompt", "tags"} <= result.keys()
    assert {"tag", "score", "category"} <= result["tags"][0].keys()
    assert "red" in result["prompt"] and "circle" in result["prompt"]


def test_json_always_says_the_preset_as_the_http_answer_does(shapes_red_circle, cache_dir, capsys):
    """null for a CLIP model (it takes no family preset), the preset and why for a tagger: the same keys either way."""
    answers = {}
    for model in ("shapes-demo", "shapes-booru"):
        assert main([str(shapes_red_circle), "--model", model, "--cache-dir", str(cache_dir), "--json"]) == 0
        answers[model] = json.loads(capsys.readouterr().out)
    assert answers["shapes-demo"]["preset"] is None
    assert answers["shapes-booru"]["preset"].startswith("No preset")  # no checkpoint named: automatic finds none
    assert answers["shapes-demo"].keys() == answers["shapes-booru"].keys()


def test_bad_files_cost_one_line_each_and_the_rest_still_run(tmp_path, shapes_red_circle, cache_dir):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    code, out, err = run_cli(
        str(tmp_path / "empty.png"),
        str(shapes_red_circle),
        str(tmp_path / "text.png"),
        str(tmp_path / "missing.jpg"),
        "--json",
        cache=cache_dir,
    )
    assert code == 1
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert [Path(line.split()[1].rstrip(":")).name for line in errors] == ["empty.png", "text.png", "missing.jpg"]
    assert len(out.strip().splitlines()) == 1 and "circle" in json.loads(out)["prompt"]


def test_unknown_model_is_one_line_and_exit_2(shapes_red_circle):
    process = subprocess.run([*CLI, str(shapes_red_circle), "--model", "no-such-model"], capture_output=True, text=True)
    assert process.returncode == 2
    assert process.stderr.strip().startswith("error: unknown model 'no-such-model'")


def test_a_hub_name_no_kind_knows_says_what_a_model_can_be(shapes_red_circle, cache_dir):
    """An ORG/NAME that is no registry entry (a tagger's hub name, say) is not read as open_clip's ARCH/TAG alone."""
    command = [*CLI, str(shapes_red_circle), "--model", "SomeOrg/some-tagger", "--cache-dir", str(cache_dir)]
    process = subprocess.run(command, capture_output=True, text=True)
    assert process.returncode == 2 and len(process.stderr.strip().splitlines()) == 1
    message = process.stderr
    assert "unknown model 'SomeOrg/some-tagger'" in message and "WD taggers included" in message
    assert "'SomeOrg' is no open_clip architecture" in message and "download its files into a folder" in message


def make_folder(folder: Path, count: int, pixels: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    colours = ["red", "green", "blue", "yellow"]
    return [draw_scene(folder / f"img{index:03d}.png", pixels, colour=colours[index % 4]) for index in range(count)]


def test_folder_gets_captions_skips_done_and_recurses_on_request(tmp_path, cache_dir, capsys):
    images = make_folder(tmp_path / "set", 3)
    nested = make_folder(tmp_path / "set" / "sub", 1)
    (images[0].with_suffix(".txt")).write_text("my own caption\n")
    args = [str(tmp_path / "set"), "--model", "shapes-demo", "--cache-dir", str(cache_dir)]
    assert main(args) == 0
    assert images[0].with_suffix(".txt").read_text() == "my own caption\n"  # never overwritten by default
    assert "green" in images[1].with_suffix(".txt").read_text()
    assert not nested[0].with_suffix(".txt").exists()
    assert main(args + ["--recursive", "--overwrite"]) == 0
    assert "red" in images[0].with_suffix(".txt").read_text()
    assert nested[0].with_suffix(".txt").exists()


def test_killed_batch_leaves_no_half_caption_and_rerun_finishes(tmp_path, cache_dir):
    images = make_folder(tmp_path / "big", 240)
    run_cli(str(images[0]), cache=cache_dir)  # warm the embedding cache so the kill lands mid-batch
    process = subprocess.Popen(
        [*CLI, str(tmp_path / "big"), "--model", "shapes-demo", "--cache-dir", str(cache_dir)],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list((tmp_path / "big").glob("*.txt")) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    captions = list((tmp_path / "big").glob("*.txt"))
    assert 0 < len(captions) < len(images), "the kill should land mid-batch"
    assert all(caption.read_text().endswith("\n") for caption in captions)  # whole, never cut short
    code, _, err = run_cli(str(tmp_path / "big"), cache=cache_dir)
    assert code == 0 and f"{len(images) - len(captions)} captioned, {len(captions)} already captioned" in err
    assert len(list((tmp_path / "big").glob("*.txt"))) == len(images)
    # A temp file the kill left (SIGKILL runs no cleanup) is gone after the rerun.
    assert [name for name in os.listdir(tmp_path / "big") if name.endswith(".tmp")] == []


def test_rerun_removes_temp_files_a_killed_run_left(tmp_path, cache_dir, capsys):
    images = make_folder(tmp_path / "set", 2)
    leftover = tmp_path / "set" / f".{images[0].stem}.txt.k1ll3d.tmp"
    leftover.write_text("red, cir")  # what a SIGKILL during the write leaves: never a caption
    assert main([str(tmp_path / "set"), "--model", "shapes-demo", "--cache-dir", str(cache_dir)]) == 0
    assert not leftover.exists() and images[0].with_suffix(".txt").read_text().endswith("\n")


def test_captions_get_the_permissions_a_plain_file_would(tmp_path, cache_dir):
    images = make_folder(tmp_path / "set", 1)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert main([str(tmp_path / "set"), "--model", "shapes-demo", "--cache-dir", str(cache_dir)]) == 0
    assert images[0].with_suffix(".txt").stat().st_mode == plain.stat().st_mode  # not mkstemp's private 0600


def test_a_name_too_long_for_the_system_is_one_line_and_the_rest_still_run(shapes_red_circle, cache_dir, capsys):
    too_long = str(shapes_red_circle.parent / ("y" * 300 + ".png"))  # over NAME_MAX: even stat() refuses it
    code = main([too_long, str(shapes_red_circle), "--model", "shapes-demo", "--cache-dir", str(cache_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {too_long}: cannot read (File name too long)"
    ]
    assert "circle" in json.loads(out)["prompt"]
