"""`easy-diffuser dataset FOLDER`: the tag report, bulk edits and undo, on folders made here, byte for byte."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from easy_diffuser.command import main
from easy_diffuser.dataset import journal
from easy_diffuser.dataset.edits import Edit, parse_renames
from easy_diffuser.options import DATASET_OPTION, OptionError

PNG = b"\x89PNG\r\n\x1a\n"  # the images are never opened: only their names pair them with captions


def dataset(folder: Path, captions: dict[str, bytes | None], image_suffix: str = ".png") -> Path:
    """An image per name; its caption's bytes beside it (None: no caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, caption in captions.items():
        (folder / f"{name}{image_suffix}").write_bytes(PNG)
        if caption is not None:
            (folder / f"{name}.txt").write_bytes(caption)
    return folder


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder` (the journal aside): its kind, its bytes or link target, its permission bits."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.relative_to(folder).parts[0] == journal.JOURNAL_NAME:
            continue
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            found[str(path.relative_to(folder))] = ("link", os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            found[str(path.relative_to(folder))] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
        else:
            found[str(path.relative_to(folder))] = ("other", stat.S_IFMT(info.st_mode))
    return found


def run(*args: str | Path) -> int:
    return main(["dataset", *map(str, args)])


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_the_dataset_command_starts_without_torch(tmp_path):
    """A trainer runs it many times in a row: it started in 4 s, most of it importing torch for nothing."""
    import subprocess

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.txt").write_text("red, circle\n")
    code = (
        "import sys; from easy_diffuser.command import main; "
        f"code = main(['dataset', {str(tmp_path)!r}, '--remove-tag', 'red']); "
        "print(code, 'torch' in sys.modules)"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert process.stdout.splitlines()[-1] == "0 False", process.stderr
    assert (tmp_path / "a.txt").read_text() == "circle\n"


# -- the report


def test_the_report_lists_every_tag_with_its_count_share_and_images(tmp_path, capsys):
    folder = dataset(
        tmp_path / "train",
        {
            "a": b"1girl, red hair, smile\n",
            "b": b"1girl,smile, smile",  # a tag written twice is on the image once
            "c": b"  \n",  # empty
            "d": None,  # no caption
            "e": b"\xef\xbb\xbfsolo, 1girl\r\n",  # a BOM and CRLF, as Windows editors write them
        },
    )
    (folder / "notes.txt").write_bytes(b"not, a, caption")  # no image of that name
    (folder / "a.caption").write_bytes(b"other, extension")
    assert run(folder, "--report", tmp_path / "report") == 0
    out = capsys.readouterr().out
    assert f"{folder}: 5 images, 3 with tags, 1 with an empty caption, 1 without a .txt caption, 4 different" in out

    assert (tmp_path / "report" / "tags.csv").read_text(encoding="utf-8") == (
        "kind,tag,count,share,images\n"
        'tag,1girl,3,0.6,"a.png\nb.png\ne.png"\n'
        'tag,smile,2,0.4,"a.png\nb.png"\n'
        "tag,red hair,1,0.2,a.png\n"
        "tag,solo,1,0.2,e.png\n"
        "no caption,,1,0.2,d.png\n"
        "empty caption,,1,0.2,c.png\n"
    )
    assert json.loads((tmp_path / "report" / "tags.json").read_text(encoding="utf-8")) == {
        "folder": str(folder),
        "caption_extension": ".txt",
        "images": 5,
        "no_caption": ["d.png"],
        "empty_caption": ["c.png"],
        "skipped": [],
        "tags": [
            {"tag": "1girl", "count": 3, "share": 0.6, "images": ["a.png", "b.png", "e.png"]},
            {"tag": "smile", "count": 2, "share": 0.4, "images": ["a.png", "b.png"]},
            {"tag": "red hair", "count": 1, "share": 0.2, "images": ["a.png"]},
            {"tag": "solo", "count": 1, "share": 0.2, "images": ["e.png"]},
        ],
    }
    assert (tmp_path / "report" / "tags.png").read_bytes().startswith(PNG)


def test_without_matplotlib_the_tables_are_written_and_the_output_says_why_no_chart(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it now fails, as when it isn't installed
    folder = dataset(tmp_path / "train", {"a": b"x"})
    assert run(folder, "--report", tmp_path / "out") == 0
    assert "chart not drawn: it needs matplotlib, pip install 'easy-diffuser[report]'" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["tags.csv", "tags.json"]


def test_the_caption_extension_says_which_files_are_captions(tmp_path, capsys):
    folder = dataset(tmp_path / "train", {"a": b"from, txt"})
    (folder / "a.caption").write_bytes(b"from caption")
    assert run(folder, "--report", tmp_path / "out", "--caption-extension", "caption") == 0
    report = json.loads((tmp_path / "out" / "tags.json").read_text())
    assert [entry["tag"] for entry in report["tags"]] == ["from caption"]
    assert report["caption_extension"] == ".caption"


def test_recursive_reads_the_sub_folders_and_names_images_by_their_path(tmp_path, capsys):
    folder = dataset(tmp_path / "train", {"a": b"x"})
    dataset(folder / "10_mychar", {"b": b"x, y"})
    assert run(folder, "--report", tmp_path / "flat") == 0
    assert run(folder, "--report", tmp_path / "deep", "--recursive") == 0
    flat, deep = (json.loads((tmp_path / name / "tags.json").read_text()) for name in ("flat", "deep"))
    assert flat["tags"] == [{"tag": "x", "count": 1, "share": 1.0, "images": ["a.png"]}]
    assert deep["tags"][0] == {"tag": "x", "count": 2, "share": 1.0, "images": ["10_mychar/b.png", "a.png"]}


def test_min_share_lists_the_rare_tags_rarest_first(tmp_path, capsys):
    captions = {
        f"i{n:02d}": b"common" + (b", rare" if n == 0 else b"") + (b", few" if n < 3 else b"") for n in range(20)
    }
    folder = dataset(tmp_path / "train", captions)
    assert run(folder, "--report", tmp_path / "out", "--min-share", "0.2") == 0
    out = capsys.readouterr().out
    assert "2 tags on fewer than 20.0% of the images:\n  rare (1)\n  few (3)\n" in out
    report = json.loads((tmp_path / "out" / "tags.json").read_text())
    assert (report["min_share"], report["rare_tags"]) == (0.2, ["rare", "few"])
    assert run(folder, "--min-share", "0.1") == 0  # alone: the list, no files
    assert "1 tag on fewer than 10.0% of the images:\n  rare (1)\n" in capsys.readouterr().out


def test_a_report_inside_the_dataset_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    folder = dataset(tmp_path / "train", {"a": b"x"})
    before = snapshot(folder)
    for out in (folder / "report", folder):
        assert run(folder, "--report", out) == 2
        assert one_error_line(capsys).startswith(f"error: {out}: lies inside the dataset")
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--report", "OUT", "--caption-extension", "../x"], "argument --caption-extension: must be a file extension"),
        (["--report", "OUT", "--caption-extension", ".png"], "argument --caption-extension: must be a file extension"),
        (["--report", "OUT", "--min-share", "nan"], "argument --min-share: must be a number from 0 to 1"),
        ([], "give one thing to do"),
        (["--report", "OUT", "--undo"], "give one thing to do"),
        (["--where", "x"], "give one thing to do"),
        (["--report", "OUT", "--where", "x"], "--where and --dry-run go with an edit"),
        (["--remove-tag", "a", "--where", " , "], "argument --where: no tag in ' , '"),
        (["--rename-tag", "a"], "argument --rename-tag: rename: 'a' is not old=new"),
        (["--remove-tag", "x", "--add-tag", "a\tb"], "argument --add-tag: add: 'a\\tb' is not a tag"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, capsys, args, message):
    folder = dataset(tmp_path / "train", {"a": b"x"})
    with pytest.raises(SystemExit) as exit:
        run(folder, *(str(tmp_path / "out") if arg == "OUT" else arg for arg in args))
    assert exit.value.code == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_missing_folder_is_one_line(tmp_path, capsys):
    assert run(tmp_path / "nowhere", "--report", tmp_path / "out") == 2
    assert one_error_line(capsys) == f"error: {tmp_path / 'nowhere'}: no such folder"


def test_the_extension_option_refuses_paths_and_image_extensions():
    extension = DATASET_OPTION["caption_extension"]
    assert [extension.parse(text) for text in ("txt", ".caption", ".tags.txt")] == [".txt", ".caption", ".tags.txt"]
    for bad in ("a/b", "..", ".txt/..", ".PNG", ".tags.jpg", "", "." + "x" * 40):
        with pytest.raises(OptionError):
            extension.parse(bad)


# -- bulk edits


def test_edits_change_only_the_tags_they_name(tmp_path, capsys):
    folder = dataset(
        tmp_path / "train",
        {
            "a": b"1girl, red hair,  smile\n",
            "b": b"\xef\xbb\xbfred hair,1girl\r\n",  # BOM, no spaces, CRLF: kept as they are
            "c": b"solo, hair, hair",  # the user's own duplicate of a tag the edit doesn't name stays
            "d": b"red hair, long hair, 1girl",  # renamed onto a tag it has: once
            "e": None,  # no caption: --add-tag creates one
            "f": b" \n",  # only a space and a line end
        },
    )
    assert run(folder, "--rename-tag", "red hair=red_hair", "--rename-tag", "long hair=red_hair", "--add-tag", "x") == 0
    assert (folder / "a.txt").read_bytes() == b"1girl, red_hair,  smile, x\n"
    assert (folder / "b.txt").read_bytes() == b"\xef\xbb\xbfred_hair,1girl, x\r\n"
    assert (folder / "c.txt").read_bytes() == b"solo, hair, hair, x"
    assert (folder / "d.txt").read_bytes() == b"red_hair, 1girl, x"
    assert (folder / "e.txt").read_bytes() == b"x\n"
    assert (folder / "f.txt").read_bytes() == b"x \n"
    assert "6 captions changed (1 created), 0 unchanged" in capsys.readouterr().out


def test_remove_and_where(tmp_path, capsys):
    folder = dataset(
        tmp_path / "train",
        {"a": b"watermark, 1girl, text\n", "b": b"1boy, watermark", "c": b"watermark", "d": None},
    )
    assert run(folder, "--remove-tag", "watermark, text", "--add-tag", "solo", "--where", "1girl") == 0
    assert (folder / "a.txt").read_bytes() == b"1girl, solo\n"
    assert (folder / "b.txt").read_bytes() == b"1boy, watermark"  # no 1girl: untouched
    assert not (folder / "d.txt").exists()  # --where: no caption to have the tag, none created
    assert run(folder, "--remove-tag", "watermark") == 0
    assert [(folder / f"{n}.txt").read_bytes() for n in "bc"] == [b"1boy", b""]  # an emptied caption stays


def test_a_dry_run_prints_every_change_and_changes_nothing(tmp_path, capsys):
    folder = dataset(tmp_path / "train", {"a": b"red, circle\n", "b": b"blue", "c": None})
    before = snapshot(folder)
    assert run(folder, "--rename-tag", "red=crimson", "--add-tag", "shape", "--dry-run") == 0
    out = capsys.readouterr().out
    assert 'a.txt: "red, circle\\n" -> "crimson, circle, shape\\n"' in out
    assert 'b.txt: "blue" -> "blue, shape"' in out
    assert 'c.txt: (no caption) -> "shape\\n"' in out
    assert "3 captions would change (1 created), 0 unchanged" in out
    assert snapshot(folder) == before
    assert not (folder / journal.JOURNAL_NAME).exists()


def test_files_that_are_not_captions_are_never_touched(tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside, the folder")
    folder = dataset(
        tmp_path / "train",
        {"latin1": b"caf\xe9, x", "binary": b"x\x00y", "link": None, "fifo": None, "big": b"x, " * 2**19, "ok": b"x"},
    )
    (folder / "link.txt").symlink_to(outside)
    os.mkfifo(folder / "fifo.txt")
    (folder / "notes.txt").write_bytes(b"x")  # no image named notes
    (folder / "ok.caption").write_bytes(b"x")  # not the caption extension
    before = snapshot(folder)
    assert run(folder, "--rename-tag", "x=y", "--add-tag", "z") == 0
    captured = capsys.readouterr()
    assert "1 caption changed (0 created), 0 unchanged, 5 not captions to touch" in captured.out
    skipped = sorted(line.split(":")[0] for line in captured.err.splitlines())
    assert skipped == [f"skipped {name}.txt" for name in ("big", "binary", "fifo", "latin1", "link")]
    after = snapshot(folder)
    assert after.pop("ok.txt")[1] == b"y, z"
    before.pop("ok.txt")
    assert after == before  # the link is still a link, the FIFO a FIFO, every other file's bytes the same
    assert outside.read_bytes() == b"outside, the folder"


def test_a_rewritten_caption_keeps_its_permissions(tmp_path, capsys):
    folder = dataset(tmp_path / "train", {"a": b"x"})
    (folder / "a.txt").chmod(0o600)
    assert run(folder, "--add-tag", "y") == 0
    assert stat.S_IMODE((folder / "a.txt").stat().st_mode) == 0o600


def test_renames_take_an_escaped_equals_sign_and_the_journal_names_the_edit_as_typed():
    assert parse_renames(r"\=_\==smile, a=b") == (("=_=", "smile"), ("a", "b"))
    edit = Edit(renames=(("=_=", "smile"),), removes=("red hair",))
    assert edit.apply("=_=, 1girl, red hair") == "smile, 1girl"
    assert edit.describe() == "--rename-tag '\\=_\\==smile' --remove-tag 'red hair'"


# -- undo


def test_undo_restores_a_thousand_file_edit_byte_for_byte(tmp_path, capsys):
    captions = {f"img{n:04d}": None if n % 10 == 0 else f"tag{n % 7}, common, t{n}\n".encode() for n in range(1000)}
    folder = dataset(tmp_path / "train", captions)
    (folder / "img0001.txt").chmod(0o640)
    before = snapshot(folder)
    assert run(folder, "--rename-tag", "common=shared", "--remove-tag", "tag3", "--add-tag", "new") == 0
    assert "1000 captions changed (100 created)" in capsys.readouterr().out
    assert (folder / "img0003.txt").read_bytes() == b"shared, t3, new\n"
    assert (folder / "img0010.txt").read_bytes() == b"new\n"
    assert run(folder, "--undo") == 0
    assert "900 captions restored, 100 removed" in capsys.readouterr().out
    assert snapshot(folder) == before
    assert list((folder / journal.JOURNAL_NAME).glob("*.jsonl")) == []


def test_undo_refuses_a_caption_changed_since_and_restores_the_rest(tmp_path, capsys):
    folder = dataset(tmp_path / "train", {"a": b"x", "b": b"x", "c": None})
    assert run(folder, "--add-tag", "y") == 0
    (folder / "b.txt").write_bytes(b"my own words")
    (folder / "c.txt").write_bytes(b"mine too")
    assert run(folder, "--undo") == 1
    line = one_error_line(capsys)
    assert line.startswith("error: not restored, changed after the edit: b.txt, c.txt;")
    assert [(folder / f"{n}.txt").read_bytes() for n in "abc"] == [b"x", b"my own words", b"mine too"]
    # Put back as the edit left them, the next undo takes them back too.
    (folder / "b.txt").write_bytes(b"x, y")
    (folder / "c.txt").write_bytes(b"y\n")
    assert run(folder, "--undo") == 0
    assert (folder / "b.txt").read_bytes() == b"x" and not (folder / "c.txt").exists()


def test_each_undo_takes_back_the_edit_before(tmp_path, capsys):
    folder = dataset(tmp_path / "train", {"a": b"x"})
    assert run(folder, "--add-tag", "one") == 0
    assert run(folder, "--add-tag", "two") == 0
    assert run(folder, "--undo") == 0
    assert (folder / "a.txt").read_bytes() == b"x, one"
    assert run(folder, "--undo") == 0
    assert (folder / "a.txt").read_bytes() == b"x"
    capsys.readouterr()
    assert run(folder, "--undo") == 2
    assert one_error_line(capsys).startswith(f"error: {folder}: no edit to undo")


def test_the_journal_goes_beside_a_folder_that_cannot_take_it(tmp_path, capsys, monkeypatch):
    folder = dataset(tmp_path / "train", {"a": b"x"})
    monkeypatch.setattr(journal, "_writable", lambda path: path != folder)
    assert run(folder, "--add-tag", "y") == 0
    assert not (folder / journal.JOURNAL_NAME).exists()
    assert len(list((tmp_path / f"{journal.JOURNAL_NAME}-train").glob("*.jsonl"))) == 1
    assert run(folder, "--undo") == 0
    assert (folder / "a.txt").read_bytes() == b"x"


def test_a_damaged_journal_is_one_line_and_undoes_nothing(tmp_path, capsys):
    folder = dataset(tmp_path / "train", {"a": b"x"})
    assert run(folder, "--add-tag", "y") == 0
    (entry_file,) = (folder / journal.JOURNAL_NAME).glob("*.jsonl")
    header, entry = entry_file.read_text().splitlines()
    entry_file.write_text(header + "\n" + entry.replace('"a.txt"', '"../outside.txt"') + "\n")
    capsys.readouterr()
    assert run(folder, "--undo") == 2
    assert one_error_line(capsys).startswith(f"error: {entry_file}: not a journal this version can read")
    assert (folder / "a.txt").read_bytes() == b"x, y"


def test_a_caption_that_cannot_be_written_is_one_line_and_the_rest_are_undone(tmp_path, capsys, monkeypatch):
    from easy_diffuser.dataset import edits

    folder = dataset(tmp_path / "train", {"a": b"x", "b": b"x", "c": b"x"})
    write = edits.write_atomically

    def full_disk(path, *args, **kwargs):
        if path.name == "b.txt":
            raise OSError(28, "No space left on device")
        write(path, *args, **kwargs)

    monkeypatch.setattr(edits, "write_atomically", full_disk)
    assert run(folder, "--add-tag", "y") == 1
    assert one_error_line(capsys) == "error: b.txt: cannot write it (No space left on device)"
    assert [(folder / f"{n}.txt").read_bytes() for n in "abc"] == [b"x, y", b"x", b"x, y"]
    assert run(folder, "--undo") == 0
    assert "2 captions restored, 0 removed, 1 already as before" in capsys.readouterr().out
    assert [(folder / f"{n}.txt").read_bytes() for n in "abc"] == [b"x", b"x", b"x"]
