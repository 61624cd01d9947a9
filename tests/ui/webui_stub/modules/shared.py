"""Stand-in for modules/shared.py (opts, cmd_opts, state, sd_model), OptionInfo/Options of modules/options.py
and State of modules/shared_state.py."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]


class OptionInfo:
    def __init__(
        self,
        default=None,
        label="",
        component=None,
        component_args=None,
        onchange=None,
        section=None,
        refresh=None,
        comment_before="",
        comment_after="",
        infotext=None,
        restrict_api=False,
        category_id=None,
    ):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh


class Options:
    def __init__(self):
        self.__dict__["data"] = {}
        self.__dict__["data_labels"] = {}

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def __setattr__(self, key, value):
        if key not in self.data_labels:
            raise AttributeError(f"no setting {key!r}")
        self.data[key] = value

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        raise AttributeError(item)


class State:
    """modules/shared_state.py: the flags the Interrupt button sets and generation reads."""

    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_count = 0

    def interrupt(self):
        self.interrupted = True

    def begin(self, job: str = "(unknown)"):
        self.job_count = -1
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.job = job

    def end(self):
        self.job = ""
        self.job_count = 0


WEBUI_FLAGS = {  # the webui flags the extension reads (modules/cmd_args.py)
    "--no-half": dict(action="store_true"),
    "--medvram": dict(action="store_true"),
    "--lowvram": dict(action="store_true"),
    "--use-cpu": dict(nargs="+", default=[], type=str.lower),
    "--hide-ui-dir-config": dict(action="store_true", default=False),
    "--api": dict(action="store_true"),
    "--api-auth": dict(type=str, default=None),
    "--nowebui": dict(action="store_true"),
}
lacking_flags: set[str] = set()  # those the host stood for has not (tests/ui/webui_host.py HOSTS)


def make_parser() -> argparse.ArgumentParser:
    """The webui flags the extension reads, less those the host lacks, then the extension's preload.py."""
    parser = argparse.ArgumentParser()
    for flag, settings in WEBUI_FLAGS.items():
        if flag not in lacking_flags:
            parser.add_argument(flag, **settings)
    spec = importlib.util.spec_from_file_location("preload", ROOT / "preload.py")
    preload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preload)
    preload.preload(parser)
    return parser


def reset(args: list[str] = ()) -> None:
    """A fresh start: new settings and a command line (the tests' way of restarting the webui)."""
    global opts, cmd_opts, state
    opts = Options()
    cmd_opts = make_parser().parse_args(list(args))
    state = State()


opts: Options
cmd_opts: argparse.Namespace
state: State
sd_model = None  # the loaded checkpoint; the stand-in processing draws shapes-world scenes without one
reset()
