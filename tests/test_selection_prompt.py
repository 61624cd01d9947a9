"""Tag selection rules and webui prompt syntax, on hand-made scores so each rule is visible."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from easy_diffuser.errors import ModelError
from easy_diffuser.presence import TagCalibration, model_tag_calibration
from easy_diffuser.prompt import escape, format_prompt, prompts
from easy_diffuser.scoring import Scores, score
from easy_diffuser.selection import SelectionOptions, TagScore, select, with_role
from easy_diffuser.vocabulary import Vocabulary

TAGS = ("cat", "kitten", "dog", "sofa", "tractor", "oil painting", "blurry", "lowres")
CATEGORIES = ("subject", "subject", "subject", "subject", "subject", "medium", "negative_quality", "negative_quality")
VOCAB = Vocabulary(TAGS, CATEGORIES)


def embeddings(twins: bool = False) -> torch.Tensor:
    """One orthogonal direction per tag; with twins, "kitten" is almost "cat"."""
    vectors = torch.eye(len(TAGS))
    if twins:
        vectors[1] = torch.nn.functional.normalize(vectors[0] + 0.05 * vectors[1], dim=0)
    return vectors


def scores_of(relevance: list[float]) -> Scores:
    values = torch.tensor(relevance)
    return Scores(values / 10, values)


RELEVANCE = [3.0, 2.5, 1.2, 1.0, -2.0, 2.0, 0.5, 0.1]  # cat, kitten, dog, sofa, tractor, oil painting, blurry, lowres


def run(options: SelectionOptions, twins: bool = False, relevance=RELEVANCE) -> list[TagScore]:
    return select(scores_of(relevance), VOCAB, embeddings(twins), [1] * len(TAGS), options)


def names(tags, role):
    return [tag.tag for tag in tags if tag.role == role]


def test_negatives_are_the_lowest_tags_inside_the_relevant_subset():
    tags = run(SelectionOptions(max_tags=2, max_per_category=3, tau=1.0, negatives=2, quality_negatives=0))
    assert names(tags, "positive") == ["cat", "kitten"]
    # Relevant subset (>= 1.0) minus positives: oil painting 2.0, dog 1.2, sofa 1.0 -> lowest two.
    assert names(tags, "negative") == ["sofa", "dog"]
    assert "tractor" not in names(tags, "negative")  # least related overall, meaningless as a negative


def test_no_tag_is_in_both_prompts_and_quality_tags_are_never_positive():
    tags = run(SelectionOptions(max_tags=20, max_per_category=20, tau=-5, negatives=20, quality_negatives=2))
    assert not set(names(tags, "positive")) & set(names(tags, "negative"))
    assert {"blurry", "lowres"} <= set(names(tags, "negative"))
    assert not {"blurry", "lowres"} & set(names(tags, "positive"))


def test_per_category_cap():
    tags = run(SelectionOptions(max_tags=10, max_per_category=1, tau=9, quality_negatives=0))
    assert names(tags, "positive") == ["cat", "oil painting"]


def test_near_duplicates_are_merged_keeping_the_better():
    tags = run(SelectionOptions(max_tags=3, max_per_category=3, tau=9, quality_negatives=0), twins=True)
    assert names(tags, "positive") == ["cat", "oil painting", "dog"]


def test_token_budget_is_respected():
    costs = [30] * len(TAGS)
    tags = select(
        scores_of(RELEVANCE),
        VOCAB,
        embeddings(),
        costs,
        SelectionOptions(max_tags=10, max_per_category=10, token_budget=75),
    )
    assert len(names(tags, "positive")) == 2  # 30 + (1 + 30) <= 75 < 30 + 31 + 31


def test_relevance_is_the_same_whatever_the_cosine_level():
    text = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(1, 16), dim=-1)
    base = score(image, text)[0]
    assert abs(base.relevance.mean()) < 1e-5 and abs(base.relevance.std() - 1) < 1e-4
    # Same ranking with cosines squeezed and shifted (another model's range) gives the same relevance.
    squeezed = (base.score * 0.1 + 0.2).unsqueeze(0)
    relevance = (squeezed - squeezed.mean()) / squeezed.std()
    assert torch.allclose(relevance[0], base.relevance, atol=1e-4)


def tag(name, relevance=1.0, role="positive"):
    return TagScore(name, "subject", 0.3, relevance, role)


def test_escaping_of_attention_syntax():
    assert escape(r"smile (happy) [v2] back\slash") == r"smile \(happy\) \[v2\] back\\slash"
    assert format_prompt([tag("a (b)"), tag("c")]) == r"a \(b\), c"


def test_weights_follow_relevance_and_stay_in_range():
    text = format_prompt([tag("red", 6.0), tag("circle", 1.0), tag("star", -4.0)], weights=True)
    assert text == "(red:1.30), circle, (star:0.80)"


def test_prompts_split_by_role_and_with_role_moves_a_tag():
    tags = [tag("red"), tag("circle"), tag("blue", role="negative")]
    assert prompts(tags) == ("red, circle", "blue")
    moved = with_role(tags, "red", "negative")
    assert prompts(moved) == ("circle", "red, blue")
    assert prompts(with_role(moved, "red", "off")) == ("circle", "blue")


def test_a_tag_the_image_may_show_is_never_a_negative_even_when_the_prompt_leaves_it_out():
    # max_tags 1: only "cat" is named; kitten 2.5 and oil painting 2.0 are above the built-in guard
    # (p >= MAY_BE_PRESENT from relevance 1.56), so the image may show them: not negatives.
    options = SelectionOptions(max_tags=1, max_per_category=3, tau=1.0, negatives=3, quality_negatives=0)
    assert names(run(options), "positive") == ["cat"]
    assert names(run(options), "negative") == ["sofa", "dog"]
    assert names(run(replace(options, presence=None)), "negative") == ["sofa", "dog", "oil painting"]  # the old rule


def test_the_guard_holds_for_the_whole_vocabulary_baseline_too():
    options = SelectionOptions(max_tags=1, max_per_category=3, tau=float("-inf"), negatives=10, quality_negatives=0)
    negatives = names(run(options), "negative")
    assert negatives[0] == "tractor" and not {"kitten", "oil painting"} & set(negatives)


def test_a_near_twin_of_a_tag_the_image_may_show_is_no_negative():
    vectors = torch.eye(len(TAGS))
    vectors[3] = torch.nn.functional.normalize(vectors[2] + 0.05 * vectors[3], dim=0)  # "sofa" is almost "dog"
    relevance = [3.0, 0.0, 2.2, 1.0, -2.0, 0.5, 0.5, 0.1]  # dog may be shown but max_tags 1 leaves it out
    options = SelectionOptions(max_tags=1, max_per_category=3, tau=0.0, negatives=3, quality_negatives=0)

    def negatives(options):
        return names(select(scores_of(relevance), VOCAB, vectors, [1] * len(TAGS), options), "negative")

    assert negatives(options) == ["kitten", "oil painting"]
    assert negatives(replace(options, presence=None)) == ["kitten", "oil painting", "sofa"]


def test_tag_probabilities_from_a_model_folder_are_checked():
    assert model_tag_calibration({}) == TagCalibration()
    assert model_tag_calibration({"prob_center": 0.7, "prob_temperature": 0.07}) == TagCalibration(
        0.7, 0.07, "model default"
    )
    bad = [
        ({"prob_center": 0.7}, "set both or neither"),
        ({"prob_center": "x", "prob_temperature": 1}, "prob_center"),
        ({"prob_center": 0.7, "prob_temperature": 0}, "prob_temperature"),
        ({"prob_center": float("nan"), "prob_temperature": 1}, "finite"),
    ]
    for defaults, message in bad:
        with pytest.raises(ModelError, match=message) as error:
            model_tag_calibration(defaults, "shapes-demo/easy_diffuser.json")
        assert str(error.value).startswith("shapes-demo/easy_diffuser.json: ") and "\n" not in str(error.value)
