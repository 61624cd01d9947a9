"""Booru tags the way the anime checkpoints (Illustrious, NoobAI, Pony, Animagine) want them, from a tagger's
probabilities: which tags go in (a threshold, or MCut, per category) and in what order (tag_text.py writes them).

    order:     always-first tags, count (1girl, 2boys, multiple girls, no humans), character, series
               (copyright), the rating, then general tags by probability
    rating:    the most likely of selected_tags.csv's four, in the words of the checkpoint family (RatingWords)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from .budget import TokenBudget, within_budget

if TYPE_CHECKING:
    from .scoring import Scores
    from .selection import SelectionOptions
    from .vocabulary import Vocabulary

COUNT_TAG = re.compile(r"^(\d+\+?(girl|boy|other)s?|multiple (girls|boys|others)|no humans)$")
RATINGS = ("general", "sensitive", "questionable", "explicit")  # selected_tags.csv's, in its order
CHARACTER_MCUT_FLOOR = 0.15  # the demo's: MCut alone may pass a weak character when one stands out a little
# What the webui reads in a prompt as syntax rather than text (prompt.escape makes brackets and backslashes text):
# <lora:name:1> loads an extra network, BREAK starts a new chunk, AND splits the prompt (composable diffusion).


@dataclass(frozen=True)
class BooruRule:
    """How a tagger's probabilities become the positive prompt (a selection.TagRule: a tagger kind's rule)."""

    general_threshold: float = 0.35
    character_threshold: float = 0.85
    general_mcut: bool = False  # the threshold is the middle of the largest gap in the sorted probabilities
    character_mcut: bool = False
    # The rating tag in the checkpoint family's words (WD's word -> the family's; "" leaves it out). The
    # families (families.py) give theirs; without one the rating is WD's word, which Illustrious/NoobAI use.
    rating_words: tuple[tuple[str, str], ...] = ()

    def rating_word(self, rating: str) -> str:
        return dict(self.rating_words).get(rating, rating)

    def positives(
        self,
        scores: "Scores",
        vocabulary: "Vocabulary",
        twins: torch.Tensor | None,
        token_costs: Sequence[int],
        options: "SelectionOptions",
        excluded: set[int],
        first: list[int],
    ) -> list[int]:
        ordered = positives(scores.score, vocabulary.tags, vocabulary.categories, self, excluded, first)
        return within_budget(ordered, token_costs, TokenBudget(options.token_budget))

    def never_negative(self, vocabulary: "Vocabulary") -> set[int]:
        """Only general tags are the negative prompt's: a character, series or rating never is."""
        return {index for index, category in enumerate(vocabulary.categories) if category != "general"}

    def written(self, tag: str, category: str) -> str:
        return self.rating_word(tag) if category == "rating" else tag

    @staticmethod
    def words(mapping: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(mapping.items()))


def mcut(probabilities: torch.Tensor) -> float:
    """Maximum Cut Thresholding: the middle of the largest gap between neighbours in the sorted probabilities."""
    if probabilities.numel() < 2:
        return 0.0
    ordered = torch.sort(probabilities.float(), descending=True).values
    gap = int(torch.argmax(ordered[:-1] - ordered[1:]))
    return float(ordered[gap] + ordered[gap + 1]) / 2


def thresholds(probabilities: torch.Tensor, categories: Sequence[str], rule: BooruRule) -> dict[str, float]:
    """The threshold of each category (general, character) for this image."""
    general = torch.tensor([c == "general" for c in categories])
    character = torch.tensor([c == "character" for c in categories])
    general_threshold = mcut(probabilities[general]) if rule.general_mcut else rule.general_threshold
    character_threshold = rule.character_threshold
    if rule.character_mcut:
        character_threshold = max(CHARACTER_MCUT_FLOOR, mcut(probabilities[character]))
    return {"general": general_threshold, "character": character_threshold}


def positives(
    probabilities: torch.Tensor,
    tags: Sequence[str],
    categories: Sequence[str],
    rule: BooruRule,
    blocked: set[int],
    first: Sequence[int],
) -> list[int]:
    """The positive tags in prompt order (before the token budget): those over their category's threshold
    (copyright and character share one, artist and meta go with general), and the most likely rating."""
    limits = thresholds(probabilities, categories, rule)
    limit_of = {"character": limits["character"], "copyright": limits["character"]}
    over = (probabilities > torch.tensor([limit_of.get(c, limits["general"]) for c in categories])).tolist()
    by_probability = torch.argsort(probabilities, descending=True, stable=True).tolist()
    passed = [i for i in by_probability if over[i] and categories[i] != "rating" and i not in blocked]
    ratings = [i for i in by_probability if categories[i] == "rating" and i not in blocked]
    rating = [ratings[0]] if ratings and rule.rating_word(tags[ratings[0]]) else []

    def group(index: int) -> int:
        if COUNT_TAG.match(tags[index]):
            return 0
        return {"character": 1, "copyright": 2}.get(categories[index], 4)

    groups = {i: group(i) for i in passed}
    ordered = sorted(passed, key=groups.__getitem__)  # stable: by probability within each group
    count_to_series = [i for i in ordered if groups[i] < 4]
    general = [i for i in ordered if groups[i] == 4]
    chosen = count_to_series + rating + general
    in_chosen = set(chosen)
    leading = [i for i in first if i in in_chosen]
    led = set(leading)
    return leading + [i for i in chosen if i not in led]
