"""Tags as text: how a prompt writes a tag, and how a tag a user types in a list is matched.

written:  long_hair -> long hair, saber_(fate) -> saber (fate) (prompt.py escapes it: saber \\(fate\\)),
          kaomoji such as ^_^ stay as they are
normal:   "Long_Hair", "long hair", "saber \\(fate\\)" -> "long hair", "saber (fate)"
"""

from __future__ import annotations

# SmilingWolf's demo keeps these as they are: their underscore is part of the face.
KAOMOJI = frozenset("0_0 (o)_(o) +_+ +_- ._. <o>_<o> <|>_<|> =_= >_< 3_3 6_9 >_o @_@ ^_^ o_o u_u x_x |_| ||_||".split())


def written(name: str) -> str:
    """A tag as prompts write it: underscores become spaces, except in kaomoji."""
    return name if name in KAOMOJI else name.replace("_", " ")


def normal(tag: str) -> str:
    """A tag as a user may type it in a list (exclude, always first): case, underscores, escapes don't matter."""
    text = tag.strip().replace("\\(", "(").replace("\\)", ")")
    return text if text in KAOMOJI else " ".join(text.replace("_", " ").lower().split())


def tag_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of tags, each made `normal`."""
    return tuple(dict.fromkeys(tag for tag in map(normal, text.split(",")) if tag))
