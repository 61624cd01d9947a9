"""--replace-tags before selection: the vocabulary as the user renamed it.

Each old tag takes its new name; tags that now share a name become one entry, scored by the best of them
(so the name is chosen, counted and budgeted once, as itself), and a tag renamed to nothing is gone. The
view is made once per rule text and vocabulary; applying it to an image's scores is one scatter per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .caption_files import parse_replacements
from .scoring import Scores
from .tag_text import normal, written
from .vocabulary import Vocabulary


@dataclass(frozen=True)
class TagView:
    """The vocabulary selection sees, its twins' rows and token costs, and how an image's scores map onto it."""

    vocabulary: Vocabulary
    twins: torch.Tensor | None
    token_costs: Sequence[int]
    target: torch.Tensor | None = None  # [original tags]: the entry each tag scores for, -1 if removed; None: as is

    def scores(self, scores: Scores) -> Scores:
        """An image's scores on this view: an entry's are the best of the tags renamed to it."""
        if self.target is None:
            return scores
        probability = None if scores.probability is None else self._best(scores.probability)
        return Scores(self._best(scores.score), self._best(scores.relevance), probability)

    def _best(self, values: torch.Tensor) -> torch.Tensor:
        kept = self.target >= 0
        best = torch.full((len(self.vocabulary),), float("-inf"), dtype=values.dtype)
        return best.scatter_reduce(0, self.target[kept], values[kept], "amax")


def replaced(
    vocabulary: Vocabulary,
    twins: torch.Tensor | None,
    token_costs: Sequence[int],
    token_count: Callable[[str], int],
    rules: str,
) -> TagView:
    """The view of `vocabulary` under `rules` (ExtractOptions.replace_tags, checked): old tags are found as users
    type them (tag_text.normal); a new name is written as prompts write tags (underscores as spaces)."""
    renames = {normal(old): " ".join(written(new.strip()).split()) for old, new in parse_replacements(rules)}
    if not any(normal(tag) in renames for tag in vocabulary.tags):
        return TagView(vocabulary, twins, token_costs)
    entry: dict[str, int] = {}  # an entry's name (normal) -> its position in the view
    names, categories, firsts, target = [], [], [], []
    for index, (tag, category) in enumerate(zip(vocabulary.tags, vocabulary.categories)):
        name = renames.get(normal(tag), tag)
        if not name:
            target.append(-1)
            continue
        if normal(name) not in entry:
            entry[normal(name)] = len(names)
            names.append(name)
            categories.append(category)
            firsts.append(index)
        target.append(entry[normal(name)])
    costs = [token_costs[i] if name == vocabulary.tags[i] else token_count(name) for name, i in zip(names, firsts)]
    view = Vocabulary(tuple(names), tuple(categories))
    return TagView(view, None if twins is None else twins[firsts], costs, torch.tensor(target))
