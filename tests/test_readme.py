"""What the README and docs/ tell a user stays true: the quick start's two commands and their output, its size,
every link, and the manual's promises that moved from the README into docs/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from easy_diffuser.captioner import ARCHITECTURES
from easy_diffuser.command import main

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
PYPROJECT = (ROOT / "pyproject.toml").read_text()
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def blocks(text: str, after: str) -> list[str]:
    """The fenced blocks of the section whose heading starts with `after`, without their fences."""
    section = text.split(f"## {after}", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n", 1)[1].rsplit("```", 1)[0] for block in FENCE.findall(section)]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_readme_is_a_quick_start_well_under_15_kb():
    assert len(README.encode()) < 15_000


def test_try_it_is_the_four_commands_of_a_fresh_machine_and_prints_what_it_shows(tmp_path, monkeypatch, capsys):
    commands, shown = blocks(README, "Try it")
    assert commands.splitlines() == [
        "python3 -m venv .venv",
        ".venv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu  "
        "# no GPU: CPU-only torch",
        ".venv/bin/pip install -e .",
        ".venv/bin/easy-diffuser docs/sample.png --model shapes-demo",
    ]
    assert 'easy-diffuser = "easy_diffuser.command:main"' in PYPROJECT.split("[project.scripts]")[1]  # .venv/bin/'s
    monkeypatch.chdir(ROOT)
    argv = commands.splitlines()[-1].split()[1:]
    assert main([*argv, "--cache-dir", str(tmp_path)]) == 0  # a fresh cache, as on a fresh machine
    assert capsys.readouterr().out.strip() == shown.strip()


def test_run_the_tests_is_what_ci_runs():
    (command,) = blocks(README, "Run the tests")
    assert command.strip() == "bash .ci/test.sh"
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec bash .ci/test.sh")  # CI's entry point


@pytest.mark.parametrize("name", ["README.md", *(f"docs/{name}" for name in DOCS)])
def test_every_relative_link_resolves(name):
    path = ROOT / name
    text = FENCE.sub("", path.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(linked.read_text()), f"{name}: {target} names no heading"


def test_every_topic_page_is_linked_from_the_readme():
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(README) if target.startswith("docs/")}
    assert set(DOCS) <= linked


# What the README promised before it became a quick start: each promise now lives in one topic page.
MOVED = [
    ("webui.md", "| **Batch: caption a folder** |"),
    ("webui.md", "## Settings (Settings → Postprocessing → Easy Diffuser)"),
    ("webui.md", "--easy-diffuser-model-path DIR"),
    ("cli.md", "| exit code | means |"),
    ("cli.md", "`--output FILE.jsonl`"),
    ("http-api.md", "`POST /easy-diffuser/v1/extract`"),
    ("http-api.md", "413 for a body over the limit"),
    ("python.md", "ed.send2ui("),
    ("models.md", "| name | kind | for | download | licence (as its card states) |"),
    ("models.md", "## Offline use"),
    ("refused.md", "torch.load(weights_only=True)"),
    ("refused.md", "**Numbers that aren't numbers.**"),
    ("refused.md", "`checkpoint.pth`"),
    ("how-it-works.md", "`MAY_BE_PRESENT`"),
    ("how-it-works.md", "## Speed"),
    ("booru.md", "## Checkpoint families"),
    ("booru.md", "## In the tab"),
    ("captioner.md", "| checkpoint family | style | why |"),
    ("testing.md", "| venv | pins | runs |"),
    ("install.md", "## Uninstall"),
    ("troubleshooting.md", "| What you see | Why, and what to do |"),
]


@pytest.mark.parametrize("page, promise", MOVED)
def test_what_the_readme_promised_is_kept_in_docs(page, promise):
    assert promise in DOCS[page]


def venvs_ci_makes() -> list[str]:
    setup = (ROOT / ".ci" / "setup-ui-venvs.sh").read_text()
    return [".venv", *re.findall(r"^make_venv (\.venv-\S+)", setup, re.M)]


def test_uninstall_and_the_venvs_table_name_every_venv_ci_makes():
    venvs = venvs_ci_makes()
    assert len(venvs) == 6 and ".venv-timm095" in venvs and ".venv-transformers448" in venvs
    uninstall = DOCS["install.md"].split("## Uninstall", 1)[1]
    table = [line.strip() for line in DOCS["testing.md"].splitlines() if line.strip().startswith("| `.venv")]
    for venv in venvs:
        assert f"`{venv}`" in uninstall
        assert any(line.startswith(f"| `{venv}` |") for line in table), venv


def test_install_lists_every_extra():
    section = PYPROJECT.split("[project.optional-dependencies]")[1].split("\n[", 1)[0]
    extras = re.findall(r"^([\w-]+) = \[", section, re.M)  # tomllib is Python 3.11+, the project runs on 3.10
    assert "caption" in extras and "parquet" in extras
    for extra in extras:
        assert re.search(rf"`{extra}`\s+\(", DOCS["install.md"]), extra


def test_the_captioner_page_says_the_transformers_each_class_needs():
    for architecture in ARCHITECTURES.values():
        release = ".".join(architecture.since.split(".")[:2])  # "4.45.0" -> "4.45"
        assert f"{release} or newer" in DOCS["captioner.md"]


def test_the_one_line_flag_error_the_cli_page_shows_is_what_the_cli_prints(capsys):
    shown = next(line for line in DOCS["cli.md"].splitlines() if line.startswith("easy-diffuser: error:"))
    with pytest.raises(SystemExit):
        main(["image.png", "--tags", "0"])
    assert capsys.readouterr().err == shown + "\n"


def release(version: str) -> tuple[int, int]:
    """ "2.14.1+cpu" -> (2, 14); patch levels are not paired (torch 2.0.1 went with torchvision 0.15.2)."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def torchvision_for(torch_version: str) -> tuple[int, int]:
    """The troubleshooting rule: torch 2.N.x goes with torchvision 0.(N+15).x."""
    major, minor = release(torch_version)
    assert major == 2
    return 0, minor + 15


def test_the_torchvision_row_names_the_pair_ci_installs_from_one_index_and_its_rule_holds():
    import torch
    import torchvision

    row = next(line for line in DOCS["troubleshooting.md"].splitlines() if "torchvision::nms" in line)
    torch_pin, vision_pin = re.search(r"pip install --force-reinstall torch==(\S+) torchvision==(\S+)`", row).groups()
    assert "--index-url https://download.pytorch.org/whl/cpu" in row  # the CPU build, as an alternative to PyPI
    assert f"pip install -q torch=={torch_pin} torchvision=={vision_pin}" in (ROOT / ".ci" / "test.sh").read_text()
    assert torchvision_for(torch_pin) == release(vision_pin)
    assert torchvision_for(torch.__version__) == release(torchvision.__version__)  # the rule, on a real pair


def test_the_cli_page_names_every_key_of_the_json_object(capsys, tmp_path):
    sentence = DOCS["cli.md"].split("`--json` prints one object per image", 1)[1].split(".\n", 1)[0]
    named = set(re.findall(r"`(\w+)`", sentence)) - {"reselect", "null"}
    assert (
        main([str(ROOT / "docs" / "sample.png"), "--model", "shapes-demo", "--cache-dir", str(tmp_path), "--json"]) == 0
    )
    assert set(json.loads(capsys.readouterr().out)) == named
