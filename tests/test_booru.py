"""Booru tags the way the anime checkpoints want them (issue 15 §3), on hand-made tagger probabilities."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from easy_diffuser import booru
from easy_diffuser.kinds.wd_tagger import TaggerScorer
from easy_diffuser.prompt import prompts
from easy_diffuser.scoring import Scores, standardised
from easy_diffuser.selection import SelectionOptions, select
from easy_diffuser.tag_text import tag_list, written
from easy_diffuser.vocabulary import Vocabulary

NAMES = {
    "general": "rating", "sensitive": "rating", "questionable": "rating", "explicit": "rating",
    "1girl": "general", "2girls": "general", "multiple_girls": "general", "solo": "general",
    "long_hair": "general", "smile": "general", "^_^": "general", ">_<": "general", "standing": "general",
    "outdoors": "general", "indoors": "general", "sword": "general",
    "saber_(fate)": "character", "rin_(fate)": "character", "fate_(series)": "copyright",
}  # fmt: skip
VOCAB = Vocabulary(tuple(written(name) for name in NAMES), tuple(NAMES.values()))
COSTS = [2] * len(NAMES)


def scores_of(probabilities: dict[str, float], rest: float = 0.001) -> Scores:
    p = torch.tensor([probabilities.get(name, rest) for name in NAMES])
    return Scores(p, standardised(torch.logit(p)), p)


def rule(**changes) -> SelectionOptions:
    base = SelectionOptions(tau=0.0, negatives=3, quality_negatives=0, token_budget=225, rule=booru.BooruRule())
    return replace(base, **changes)


def positive(tags):
    return [tag.tag for tag in tags if tag.role == "positive"]


def negative(tags):
    return [tag.tag for tag in tags if tag.role == "negative"]


def run(probabilities, options=None):
    return select(scores_of(probabilities), VOCAB, None, COSTS, options or rule())


IMAGE = {
    "general": 0.8, "sensitive": 0.3, "1girl": 0.99, "solo": 0.97, "long_hair": 0.6, "smile": 0.4, "sword": 0.36,
    "saber_(fate)": 0.95, "fate_(series)": 0.9, "standing": 0.2, "outdoors": 0.05, "indoors": 0.02,
}  # fmt: skip


def test_order_is_count_character_series_rating_then_general_by_probability():
    assert positive(run(IMAGE)) == [
        "1girl", "saber (fate)", "fate (series)", "general", "solo", "long hair", "smile", "sword",
    ]  # fmt: skip


def test_each_category_has_its_own_threshold():
    tags = run({**IMAGE, "saber_(fate)": 0.8}, rule(rule=booru.BooruRule(general_threshold=0.5)))
    assert "saber (fate)" not in positive(tags)  # 0.8 < the character threshold 0.85
    assert "smile" not in positive(tags) and "long hair" in positive(tags)
    tags = run({**IMAGE, "saber_(fate)": 0.8}, rule(rule=booru.BooruRule(character_threshold=0.7)))
    assert positive(tags)[1] == "saber (fate)"


def test_mcut_puts_the_threshold_in_the_largest_gap():
    assert booru.mcut(torch.tensor([0.9, 0.85, 0.3, 0.25])) == pytest.approx(0.575)
    tags = run(IMAGE, rule(rule=booru.BooruRule(general_mcut=True)))
    assert [t for t in positive(tags) if t in ("solo", "long hair", "smile", "sword")] == ["solo"]


def test_character_mcut_is_floored_at_015():
    weak = {**IMAGE, "saber_(fate)": 0.12, "rin_(fate)": 0.001, "fate_(series)": 0.001}
    tags = run(weak, rule(rule=booru.BooruRule(character_mcut=True)))
    assert "saber (fate)" not in positive(tags)  # MCut alone would put it in at (0.12 + 0.001) / 2
    assert "saber (fate)" in positive(
        run({**weak, "saber_(fate)": 0.3}, rule(rule=booru.BooruRule(character_mcut=True)))
    )


def test_underscores_become_spaces_except_in_kaomoji_and_parentheses_are_escaped():
    tags = run({**IMAGE, "^_^": 0.9, ">_<": 0.8})
    prompt, _ = prompts(tags)
    assert "^_^" in positive(tags) and ">_<" in positive(tags) and "long hair" in positive(tags)
    assert r"saber \(fate\), fate \(series\)" in prompt


def test_count_tags_lead_whatever_their_probability():
    tags = run({**IMAGE, "1girl": 0.4, "2girls": 0.5, "multiple_girls": 0.45})
    assert positive(tags)[:3] == ["2girls", "multiple girls", "1girl"]


def test_exclude_and_always_first_lists():
    options = rule(exclude=tag_list("Saber_(fate), smile"), first=tag_list("long hair, sword, absent tag"))
    tags = run(IMAGE, options)
    assert positive(tags)[:2] == ["long hair", "sword"]
    assert "saber (fate)" not in positive(tags) + negative(tags) and "smile" not in positive(tags) + negative(tags)


def test_the_rating_is_written_in_the_family_words():
    pony = booru.BooruRule(rating_words=booru.BooruRule.words({"general": "rating_safe"}))
    assert "rating_safe" in positive(run(IMAGE, rule(rule=pony)))
    silent = booru.BooruRule(rating_words=booru.BooruRule.words({"general": ""}))
    assert not {"general", "sensitive"} & set(positive(run(IMAGE, rule(rule=silent))))


def test_the_token_budget_decides_the_tail_not_one_chunk():
    assert len(positive(run(IMAGE, rule(token_budget=75)))) == 8  # 8 tags of 2 tokens and 7 commas fit in 75
    assert positive(run(IMAGE, rule(token_budget=8))) == ["1girl", "saber (fate)", "fate (series)"]


def test_negatives_are_general_tags_the_image_does_not_show_and_never_what_it_may_show():
    tags = run(IMAGE, rule(tau=-5, negatives=5))
    negatives = negative(tags)
    assert negatives and all(VOCAB.categories[VOCAB.tags.index(tag)] == "general" for tag in negatives)
    assert "standing" not in negatives  # p 0.2 >= 0.1: the image may show it, though the prompt leaves it out
    assert not set(negatives) & set(positive(tags))


def test_tagger_relevance_survives_the_fp16_token(tmp_path):
    """The reselect token carries the probabilities as fp16 log-odds: re-selection sees the same relevance."""
    p = torch.rand(1, 500) ** 8
    features = p.clamp(1e-4, 1 - 1e-4)
    scorer = TaggerScorer.__new__(TaggerScorer)
    scorer.vocabulary = Vocabulary(tuple(map(str, range(500))), ("general",) * 500)
    back = scorer.checked(scorer.for_token(features[0]))
    assert back is not None and torch.allclose(
        scorer.scores(back)[0].relevance, scorer.scores(features)[0].relevance, atol=5e-3
    )
    assert scorer.checked(torch.full((500,), 20.0)) is None and scorer.checked(torch.zeros(499)) is None
    assert scorer.checked(torch.full((500,), float("nan"))) is None
