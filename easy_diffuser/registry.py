"""Which kind a model is: the kinds in the order they are asked, and the names they know.

    kind_for("SmilingWolf/wd-vit-tagger-v3")  -> the WD tagger kind (a registry name)
    kind_for("~/models/my-tagger")            -> the first kind that claims the folder

As the webui's Lora asks each network module in turn: a registry name is its kind's; any other spec goes to the
first kind that claims it: plugins first, then the built-in kinds, CLIP last (it takes the ARCH/TAG pairs, files
and folders no other kind claims). A plugin is a package that declares a kinds.base.Kind (class or instance) in
the `easy_diffuser.kinds` entry-point group (docs/kinds.md); one that fails to import or breaks the contract is
one warning line naming it, and everything else works as before.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import EntryPoint, entry_points

from .errors import ModelError, one_line
from .kinds.base import Kind, ModelInfo
from .kinds.clip import ClipKind
from .kinds.jtp import JtpKind
from .kinds.pixai import PixaiKind
from .kinds.wd_tagger import WdTaggerKind

ENTRY_POINT_GROUP = "easy_diffuser.kinds"
# Asked in this order: the particular kinds first (a PixAI or JTP folder may hold a WD-style config.json), CLIP last.
BUILTIN_KINDS: tuple[Kind, ...] = (PixaiKind(), JtpKind(), WdTaggerKind(), ClipKind())
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def kinds() -> tuple[Kind, ...]:
    """Every kind, in the order they are asked: plugins (found once per process), then the built-in ones."""
    return (*_plugins(), *BUILTIN_KINDS)


def registry() -> dict[str, tuple[Kind, ModelInfo]]:
    """Every registry name, with its kind and what the kind knows of it."""
    return {info.name: (kind, info) for kind in reversed(kinds()) for info in kind.models}


def list_models() -> list[str]:
    return list(registry())


def model_info(name: str) -> ModelInfo | None:
    entry = registry().get(name)
    return entry[1] if entry else None


def kind_for(spec: str) -> Kind:
    """The kind of a model spec; ModelError when no kind takes it, listing what a model can be."""
    entry = registry().get(spec)
    if entry is not None:
        return entry[0]
    for kind in kinds():
        if _claims(kind, spec):
            return kind
    raise ModelError(
        f"unknown model {spec!r}: use one of {', '.join(list_models())}, an open_clip ARCH/TAG pair, "
        "a model or tagger folder or a checkpoint file path"
    )


def is_plugin(kind: Kind) -> bool:
    return kind not in BUILTIN_KINDS


def _claims(kind: Kind, spec: str) -> bool:
    try:
        return bool(kind.claims(spec))
    except Exception as error:  # a plugin's fault must not stop the other kinds from being asked
        _warn(f"easy-diffuser: the {kind.name!r} kind failed to look at {spec!r}, so it is skipped ({one_line(error)})")
        return False


def _plugins() -> list[Kind]:
    found: list[Kind] = []
    taken = {kind.name for kind in BUILTIN_KINDS}
    names = {info.name for kind in BUILTIN_KINDS for info in kind.models}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            kind = _checked(entry_point, taken, names)
        except (Exception, SystemExit) as error:  # a broken plugin is a warning, never a broken start
            _warn(
                f"easy-diffuser: kind plugin {entry_point.name!r} ({entry_point.value}) is not loaded: "
                f"{type(error).__name__}: {one_line(error, 200)}"
            )
            continue
        found.append(kind)
        taken.add(kind.name)
        names |= {info.name for info in kind.models}
    return found


def _checked(entry_point: EntryPoint, taken: set[str], names: set[str]) -> Kind:
    """The plugin's kind, if it keeps the contract (kinds.base.Kind, a new name, ModelInfo entries, new names)."""
    kind = entry_point.load()
    if isinstance(kind, type) and issubclass(kind, Kind):
        kind = kind()
    if not isinstance(kind, Kind):
        raise TypeError("it is not a subclass or an instance of easy_diffuser.kinds.base.Kind")
    if not isinstance(kind.name, str) or not kind.name.strip() or kind.name in taken:
        raise ValueError(f"its name {kind.name!r} is empty or already taken ({', '.join(sorted(taken))})")
    for info in kind.models:
        if not isinstance(info, ModelInfo):
            raise TypeError(f"its models must be easy_diffuser.kinds.base.ModelInfo entries, not {type(info).__name__}")
        if info.name in names:
            raise ValueError(f"its model name {info.name!r} is already another kind's")
    return kind


_warned: set[str] = set()


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
