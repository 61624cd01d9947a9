"""Step 4 of the data flow: scores -> the tags of the positive and the negative prompt.

Positive: the most relevant tags, at most `max_per_category` from each category, near-duplicates
merged (of two tags whose text embeddings are almost the same, the better one stays), until
`max_tags` or the token budget is reached (TopRelevance, CLIP's rule). A kind may choose otherwise (its
`rule`: a tagger's are the tags over their category's threshold, in booru order, booru.py). Excluded tags
are never in either prompt; always-first tags lead the positive prompt when chosen.

Negative, the product's own rule: the tags with relevance >= tau are the image's relevant
subset; the negatives are the lowest-scoring tags inside that subset, i.e. things the image is
related to but does not show. The least related tags of the whole vocabulary would be
meaningless ("a tractor" as a negative for a portrait). A tag the image may show (presence.py:
p >= MAY_BE_PRESENT), or a near-twin of one, is never a negative, whether the positive prompt names
it or not: with few positive tags the image's own background or colour would otherwise be the
lowest of a small subset. A tagger's probabilities are that guard directly, and a kind's rule may keep
tags out of the negatives (a tagger's: all but general tags; never a character, series or rating).
Optionally the standard negative-quality tags the image is most associated with follow. No tag is in both prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, Sequence

import numpy as np
import torch

from .budget import TokenBudget
from .options import TOKEN_BUDGET, ExtractOptions
from .presence import BUILT_IN, MAY_BE_PRESENT, TagCalibration
from .scoring import Scores
from .vocabulary import NEGATIVE_QUALITY, Vocabulary

Role = Literal["positive", "negative", "off"]
_DEFAULTS = ExtractOptions()


@dataclass(frozen=True)
class SelectionOptions:
    """What select() needs, resolved: tau is a number here (Engine resolves "automatic").

    Not checked like ExtractOptions: calibration's whole-vocabulary baseline uses tau = -inf."""

    max_tags: int = _DEFAULTS.max_tags  # CLIP's positive prompt; a tagger's thresholds decide instead
    max_per_category: int = _DEFAULTS.max_per_category
    tau: float = 1.0  # relevance threshold of the negative prompt's subset (see scoring.py)
    negatives: int = _DEFAULTS.negatives
    quality_negatives: int = _DEFAULTS.quality_negatives  # standard quality negatives appended; 0 for none
    token_budget: int = TOKEN_BUDGET
    dedup_threshold: float = _DEFAULTS.dedup_threshold  # text-embedding cosine above which two tags count as one
    presence: TagCalibration | None = BUILT_IN  # tags the image may show are never negatives; None: no guard
    rule: "TagRule" = field(default_factory=lambda: TopRelevance())  # how the model's kind picks positive tags
    exclude: tuple[str, ...] = ()  # tags (tag_text.normal) never in either prompt
    first: tuple[str, ...] = ()  # tags (tag_text.normal) that lead the positive prompt when chosen


@dataclass(frozen=True)
class TagScore:
    tag: str
    category: str
    score: float  # the model's score: CLIP's cosine similarity of image and tag, a tagger's probability
    relevance: float  # standardised score, comparable across images and models
    role: Role

    def to_dict(self) -> dict:
        return {
            "tag": self.tag,
            "score": round(self.score, 4),
            "relevance": round(self.relevance, 3),
            "category": self.category,
            "role": self.role,
        }


class TagRule(Protocol):
    """How a kind chooses the positive prompt's tags and writes them (kinds.base.Kind.rule)."""

    def positives(
        self,
        scores: Scores,
        vocabulary: Vocabulary,
        twins: torch.Tensor | None,
        token_costs: Sequence[int],
        options: SelectionOptions,
        excluded: set[int],
        first: list[int],
    ) -> list[int]:
        """The positive tags' indices in prompt order, within options.token_budget."""
        ...

    def never_negative(self, vocabulary: Vocabulary) -> set[int]:
        """Tags that are never negatives, whatever their relevance."""
        ...

    def written(self, tag: str, category: str) -> str:
        """A tag as the prompt writes it."""
        ...


@dataclass(frozen=True)
class TopRelevance:
    """CLIP's rule: the most relevant tags, at most max_per_category each, near-duplicates merged, to max_tags."""

    def positives(self, scores, vocabulary, twins, token_costs, options, excluded, first) -> list[int]:
        return _first(first, _pick_positives(scores, vocabulary, twins, token_costs, options, excluded))

    def never_negative(self, vocabulary: Vocabulary) -> set[int]:
        return set()

    def written(self, tag: str, category: str) -> str:
        return tag


def select(
    scores: Scores,
    vocabulary: Vocabulary,
    text_embeddings: torch.Tensor | None,
    token_costs: Sequence[int],
    options: SelectionOptions,
) -> list[TagScore]:
    """Positive tags as the kind's rule picks them, then negative tags by rising relevance.

    `text_embeddings`: unit rows by which near-duplicate tags are found (CLIP's); None for a vocabulary
    without near-duplicates (a tagger's)."""
    quality = set(vocabulary.in_category(NEGATIVE_QUALITY))
    excluded = set(vocabulary.indices(options.exclude))
    first = vocabulary.indices(options.first)
    rule = options.rule
    # The standard quality faults are never positive tags, whatever the rule.
    positives = rule.positives(scores, vocabulary, text_embeddings, token_costs, options, excluded | quality, first)
    blocked = rule.never_negative(vocabulary) | quality | excluded
    negative_budget = TokenBudget(options.token_budget)
    negatives = _pick_negatives(scores, text_embeddings, token_costs, options, blocked, positives, negative_budget)
    extras = _pick_quality_negatives(scores, token_costs, options, quality - excluded, negative_budget)

    def tag(index: int, role: Role) -> TagScore:
        name, category = (
            rule.written(vocabulary.tags[index], vocabulary.categories[index]),
            vocabulary.categories[index],
        )
        return TagScore(name, category, float(scores.score[index]), float(scores.relevance[index]), role)

    return [tag(i, "positive") for i in positives] + [tag(i, "negative") for i in negatives + extras]


def _pick_positives(scores, vocabulary, text_embeddings, token_costs, options, quality) -> list[int]:
    chosen: list[int] = []
    per_category: dict[str, int] = {}
    budget = TokenBudget(options.token_budget)
    twins = _Twins(text_embeddings, [], options.dedup_threshold)
    for index in torch.argsort(scores.relevance, descending=True).tolist():
        if len(chosen) >= options.max_tags:
            break
        category = vocabulary.categories[index]
        if index in quality or per_category.get(category, 0) >= options.max_per_category:
            continue
        if twins.near(index) or not budget.take(token_costs[index]):
            continue
        chosen.append(index)
        twins.add(index)
        per_category[category] = per_category.get(category, 0) + 1
    return chosen


def _first(first: list[int], chosen: list[int]) -> list[int]:
    """The chosen tags with those of the always-first list in front, in the list's order."""
    leading = [index for index in first if index in chosen]
    return leading + [index for index in chosen if index not in leading]


def _pick_negatives(scores, text_embeddings, token_costs, options, blocked, positives, budget) -> list[int]:
    relevant = (scores.relevance >= options.tau).nonzero().flatten()
    ascending = relevant[torch.argsort(scores.relevance[relevant])].tolist()
    shown = positives + _may_be_present(scores, options)
    excluded = blocked | set(shown)
    # A near-twin of a tag the prompt names or the image shows would fight them.
    twins = _Twins(text_embeddings, shown, options.dedup_threshold)
    chosen: list[int] = []
    for index in ascending:
        if len(chosen) >= options.negatives:
            break
        if index in excluded or twins.near(index):
            continue
        if budget.take(token_costs[index]):
            chosen.append(index)
            twins.add(index)
    return chosen


def _may_be_present(scores: Scores, options: SelectionOptions) -> list[int]:
    """The tags the image may show: by the model's own probabilities where it gives them (a tagger's)."""
    if options.presence is None:
        return []
    if scores.probability is None:
        return options.presence.may_be_present(scores.relevance).nonzero().flatten().tolist()
    return (scores.probability >= MAY_BE_PRESENT).nonzero().flatten().tolist()


def _pick_quality_negatives(scores, token_costs, options, quality, budget) -> list[int]:
    """The standard quality faults this image's content is most associated with."""
    chosen: list[int] = []
    for index in sorted(quality, key=lambda index: float(scores.relevance[index]), reverse=True):
        if len(chosen) >= options.quality_negatives:
            break
        if budget.take(token_costs[index]):
            chosen.append(index)
    return chosen


class _Twins:
    """The tags a candidate must not nearly repeat (text-embedding cosine above the threshold), growing as
    tags are chosen. numpy, not torch: for one row against a few dozen, torch's per-op and thread-pool
    overhead was 90% of a re-selection; the tensor's memory is shared, not copied."""

    def __init__(self, text_embeddings: torch.Tensor | None, indices: list[int], threshold: float) -> None:
        self.embeddings = None if text_embeddings is None else text_embeddings.numpy()
        self.rows = None if self.embeddings is None else self.embeddings[indices]
        self.threshold = threshold

    def near(self, index: int) -> bool:
        if self.rows is None or not len(self.rows):
            return False
        return float((self.rows @ self.embeddings[index]).max()) > self.threshold

    def add(self, index: int) -> None:
        if self.rows is not None:
            self.rows = np.vstack([self.rows, self.embeddings[index][None]])


def with_role(tags: Sequence[TagScore], tag: str, role: Role) -> list[TagScore]:
    """The tags with one tag moved to another role (the tab's click on a tag)."""
    return [replace(item, role=role) if item.tag == tag else item for item in tags]
