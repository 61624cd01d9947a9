"""Tags as text: how a prompt writes a tag, and how a tag a user types in a list is matched.

written:  long_hair -> long hair, saber_(fate) -> saber (fate) (prompt.py escapes it: saber \\(fate\\)),
          kaomoji such as ^_^ stay as they are
normal:   "Long_Hair", "long hair", "saber \\(fate\\)" -> "long hair", "saber (fate)"
"""

from __future__ import annotations

import json
import re
import unicodedata

# SmilingWolf's demo keeps these as they are: their underscore is part of the face.
_EXTRA_NETWORK = re.compile(r"<\w+:[^>]*>")
_KEYWORD = re.compile(r"\b(AND|BREAK)\b")
KAOMOJI = frozenset("0_0 (o)_(o) +_+ +_- ._. <o>_<o> <|>_<|> =_= >_< 3_3 6_9 >_o @_@ ^_^ o_o u_u x_x |_| ||_||".split())


def written(name: str) -> str:
    """A tag as prompts write it: underscores become spaces, except in kaomoji."""
    return name if name in KAOMOJI else name.replace("_", " ")


def prompt_syntax(name: str) -> str:
    """What in a tag's name would be more than text in a prompt or a caption file ("" when nothing is): a comma
    (it separates tags), a line break, tab or other control character (a caption is one line), extra-network
    syntax, or the keywords BREAK and AND, also as booru writes them (rock_AND_roll)."""
    if "," in name:
        problem = "a comma, which separates tags"
    elif any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name):
        problem = "a line break, tab or other control character"
    elif _EXTRA_NETWORK.search(name):
        problem = "extra-network syntax (<name:...>)"
    elif _KEYWORD.search(name.replace("_", " ")):
        problem = "BREAK or AND, which the webui reads as keywords"
    else:
        return ""
    quoted = json.dumps(name)
    return f"the tag {quoted if len(quoted) <= 60 else quoted[:60] + '...'} holds {problem}"


def normal(tag: str) -> str:
    """A tag as a user may type it in a list (exclude, always first): case, underscores, escapes don't matter."""
    text = tag.strip().replace("\\(", "(").replace("\\)", ")")
    return text if text in KAOMOJI else " ".join(text.replace("_", " ").lower().split())


def tag_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of tags, each made `normal`."""
    return tuple(dict.fromkeys(tag for tag in map(normal, text.split(",")) if tag))
