"""Checks on the shipped tag vocabulary in easy_diffuser/data/vocabulary/.

Each ``<category>.txt`` file holds one tag per line: UTF-8, lowercase,
stripped, sorted, no blank lines, no duplicates, and a tag belongs to
exactly one category.
"""

from __future__ import annotations

from pathlib import Path

import pytest

VOCAB_DIR = Path(__file__).resolve().parent.parent / "easy_diffuser" / "data" / "vocabulary"

CATEGORIES = (
    "subject",
    "medium",
    "style",
    "lighting",
    "colour",
    "composition",
    "mood",
    "quality",
    "negative_quality",
)

FORBIDDEN_CHARS = set("()[]\\:,")
MIN_TOTAL = 3000
MAX_WORDS = 5


def _read_raw(category: str) -> str:
    data = (VOCAB_DIR / f"{category}.txt").read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf"), f"{category}.txt starts with a BOM"
    return data.decode("utf-8")


def _lines(category: str) -> list[str]:
    text = _read_raw(category)
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n")


def _present_categories() -> tuple[str, ...]:
    """The nine required categories plus any other .txt file shipped there."""
    extra = sorted({p.stem for p in VOCAB_DIR.glob("*.txt")} - set(CATEGORIES))
    return CATEGORIES + tuple(extra)


ALL_CATEGORIES = _present_categories()


def test_vocabulary_directory_exists():
    assert VOCAB_DIR.is_dir(), f"missing {VOCAB_DIR}"


@pytest.mark.parametrize("category", CATEGORIES)
def test_category_file_exists(category):
    assert (VOCAB_DIR / f"{category}.txt").is_file(), f"missing {category}.txt"


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_file_is_well_formed(category):
    text = _read_raw(category)
    assert text.strip(), f"{category}.txt is empty"
    assert "\r" not in text, f"{category}.txt has CR line endings"
    assert text.endswith("\n"), f"{category}.txt does not end with a newline"
    assert not text.endswith("\n\n"), f"{category}.txt ends with a blank line"


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_lines_are_clean(category):
    problems = []
    for number, line in enumerate(_lines(category), start=1):
        where = f"{category}.txt:{number}: {line!r}"
        if not line.strip():
            problems.append(f"{where} empty line")
            continue
        if line != line.strip():
            problems.append(f"{where} leading/trailing whitespace")
        if "  " in line or "\t" in line:
            problems.append(f"{where} repeated or tab whitespace")
        if line != line.lower():
            problems.append(f"{where} not lowercase")
        bad = sorted(FORBIDDEN_CHARS.intersection(line))
        if bad:
            problems.append(f"{where} forbidden characters {bad}")
        if not 1 <= len(line.split()) <= MAX_WORDS:
            problems.append(f"{where} not 1-{MAX_WORDS} words")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_sorted(category):
    lines = _lines(category)
    assert lines == sorted(lines), f"{category}.txt is not sorted"


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_no_duplicates_within_file(category):
    lines = _lines(category)
    seen, dups = set(), set()
    for line in lines:
        (dups if line in seen else seen).add(line)
    assert not dups, f"duplicates in {category}.txt: {sorted(dups)}"


def test_no_duplicates_across_files():
    owner: dict[str, str] = {}
    clashes = []
    for category in ALL_CATEGORIES:
        for tag in set(_lines(category)):
            if tag in owner:
                clashes.append(f"{tag!r} in {owner[tag]} and {category}")
            else:
                owner[tag] = category
    assert not clashes, "\n".join(sorted(clashes))


def test_no_plural_or_spelling_variants():
    tags = {tag for category in ALL_CATEGORIES for tag in _lines(category)}
    problems = []
    for tag in sorted(tags):
        for suffix in ("s", "es"):
            if tag + suffix in tags:
                problems.append(f"{tag!r} / {tag + suffix!r}")
        for a, b in (("colour", "color"), ("grey", "gray")):
            if a in tag and tag.replace(a, b) in tags:
                problems.append(f"{tag!r} / {tag.replace(a, b)!r}")
    assert not problems, "\n".join(problems)


def test_total_size():
    total = sum(len(_lines(category)) for category in ALL_CATEGORIES)
    assert total >= MIN_TOTAL, f"only {total} tags in total"


def test_negative_quality_size():
    assert 40 <= len(_lines("negative_quality")) <= 80
