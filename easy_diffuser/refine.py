"""Check and refine a prompt pair by the round trip: generate from it, compare with the source, improve it.

    result = refine_image(engine, image, generator, prompt, negative_prompt, rounds=4)
    result.best.prompt, result.best.negative_prompt, result.best.loss

The score is calibration's (calibration/metric.py): the **round-trip loss**, the binary cross-entropy
between the tag probabilities of the source and of the generation (lower is better), with the image
embeddings' cosine beside it. Both sides' tags come from one function, `Metric.embed`, so that any
model that gives a probability per vocabulary tag can check and refine.

The **tag diff** uses the presence the model believes (presence.py's probability p):

* lost:  the source shows the tag (p >= SHOWN) and the generation does not (p < SHOWN);
* added: the generation shows it and the source does not even maybe show it (p < MAY_BE_PRESENT,
  the negative prompt's guard), so every added tag may go into the negative prompt.

Check is round 0 alone, on one seed. Refine scores round 0 (the pair as it stands) and then up to
`rounds` new pairs, each built from the last round's pair and diff: a lost tag is added to the
prompt, or weighted up if it is there already; an added tag leaves the prompt and goes into the
negative prompt; a tag the source may show never stays in the negative prompt. Every round is scored
on the same seeds (paired comparisons), and the lowest loss wins, round 0 included: by the project's
own measure the result is never worse than the start. Stop, an interrupt or a generator error end the
rounds, and the finished ones are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from PIL import Image

from .calibration.generators import GenerationStopped, Generator
from .calibration.metric import Embedded, Metric
from .engine import Engine
from .images import ImageInput, load_image
from .options import REFINE_OPTION, ExtractOptions, OptionError, RefineOptions, checked_prompts, shown_text
from .presence import MAY_BE_PRESENT
from .prompt import escape
from .scoring import NonFiniteScores
from .vocabulary import NEGATIVE_QUALITY

SCORE_NAME = "round-trip loss"
SCORE_HELP = (
    "round-trip loss: how far the tags the model sees in the generation are from those it sees in the source "
    "(tag binary cross-entropy; lower is better); image cosine beside it (1 is the same picture)"
)
SHOWN = 0.5  # p from which an image shows a tag ("more likely than not")
WEIGHT_STEP = 0.2  # a lost tag already in the prompt is weighted up by this much per round
MAX_WEIGHT = 1.4  # higher attention weights distort Stable Diffusion's images more than they bring a tag back
# A weight the start pair may have: attention past 2 or so already ruins the picture, so a larger one is a typo,
# and (red:1 followed by 400 zeros) would be read as infinity and written back as (red:inf).
MAX_START_WEIGHT = 100
CHANGES = 3  # most lost and most added tags acted on per round, the clearest first: small steps, each measured

OnRound = Callable[["Round"], None]


@dataclass
class Round:
    index: int  # 0: the pair as it stood
    prompt: str
    negative_prompt: str
    loss: float  # round-trip loss, mean over the seeds
    cosine: float  # image-embedding cosine, mean over the seeds
    lost: list[str]  # tags the source shows and the generation lost, clearest first
    added: list[str]  # tags the generation shows and the source does not, clearest first
    images: list[Image.Image] = field(repr=False)  # one generation per seed

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "loss": round(self.loss, 5),
            "lost": self.lost,
            "added": self.added,
        }


@dataclass
class Refinement:
    rounds: list[Round]  # round 0 first; only finished rounds
    seeds: list[int]  # the seeds every round was scored on
    stopped: bool = False  # Stop or an interrupt ended it
    error: str = ""  # a generator failure ended it: what failed

    @property
    def best(self) -> Round | None:
        """The lowest loss; a tie goes to the earlier round (the fewer changes)."""
        return min(self.rounds, key=lambda r: (r.loss, r.index)) if self.rounds else None

    @property
    def generations(self) -> int:
        return sum(len(r.images) for r in self.rounds)

    def to_dict(self) -> dict:
        best = self.best
        return {
            "rounds": [r.to_dict() for r in self.rounds],
            "best": best
            and {**{k: best.to_dict()[k] for k in ("prompt", "negative_prompt", "loss")}, "round": best.index},
        }


def refine_image(
    engine: Engine,
    image: ImageInput,
    generator: Generator,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    rounds: int = REFINE_OPTION["rounds"].default,
    seeds: int = REFINE_OPTION["seeds"].default,
    seed: int = REFINE_OPTION["seed"].default,
    options: ExtractOptions = ExtractOptions(),
    on_round: OnRound | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Refinement:
    """Generate from the pair (None: extracted from the image with `options`), score it against the image,
    and try up to `rounds` better pairs. The best round is `result.best`, round 0 included."""
    settings = RefineOptions(rounds=rounds, seeds=seeds, seed=seed)  # checked before any work
    loaded = load_image(image)
    if prompt is None:
        start = engine.extract_many([loaded], options)[0]
        prompt, negative_prompt = start.prompt, start.negative_prompt
    return refine(engine, loaded, generator, prompt, negative_prompt or "", settings, on_round, should_stop)


def check_image(
    engine: Engine,
    image: ImageInput,
    generator: Generator,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    seed: int = REFINE_OPTION["seed"].default,
    options: ExtractOptions = ExtractOptions(),
) -> Refinement:
    """The pair as it stands, generated once (round 0 alone): its score and tag diff."""
    return refine_image(
        engine, image, generator, prompt, negative_prompt, rounds=0, seeds=1, seed=seed, options=options
    )


def refine(
    engine: Engine,
    image: Image.Image,
    generator: Generator,
    prompt: str,
    negative_prompt: str,
    options: RefineOptions = RefineOptions(),
    on_round: OnRound | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    metric: Metric | None = None,
) -> Refinement:
    """Round 0 and up to `options.rounds` refined pairs, each scored on `options.seeds` seeds. OptionError (before
    anything is generated) for a pair `checked_pair` refuses; NonFiniteScores when the model can't score the source
    image."""
    prompt, negative_prompt = checked_pair(prompt, negative_prompt)
    metric = metric or Metric(engine)
    source = metric.embed([image])
    result = Refinement([], [options.seed + i for i in range(options.seeds)])
    pair, tried = (prompt, negative_prompt), set()
    for index in range(options.rounds + 1):
        if pair in tried:  # the diff asks for nothing new: more rounds would repeat a score
            break
        tried.add(pair)
        try:
            images = [_generate(generator, pair, seed, should_stop) for seed in result.seeds]
        except GenerationStopped:
            result.stopped = True
            break
        except (RuntimeError, OSError, ValueError) as error:  # WebuiError, an unreadable answer: keep what is done
            result.error = f"round {index}: {error}"
            break
        try:
            scored = score(engine, metric, source, images, index, pair)
        except NonFiniteScores as error:  # a generation the model can't score (fp16 overflow): keep what is done
            result.error = f"round {index}: a generated image: {error}"
            break
        result.rounds.append(scored)
        if on_round:
            on_round(scored)
        pair = next_pair(engine, pair, scored, source.probabilities[0])
    return result


def checked_pair(prompt: str, negative_prompt: str) -> tuple[str, str]:
    """The pair to start from, checked by the options schema (length, characters) and for weights a round can
    write back; OptionError naming the field otherwise. Every surface checks the pair with this before it works."""
    pair = checked_prompts(prompt, negative_prompt)
    for name, text in zip(("prompt", "negative_prompt"), pair):
        for part in text.split(","):
            weighted = _WEIGHTED.match(part.strip())
            if weighted and not float(weighted["weight"]) <= MAX_START_WEIGHT:  # float("1" + 400 zeros) is inf
                raise OptionError(
                    name, f"the weight of {shown_text(part.strip())} must be a number up to {MAX_START_WEIGHT}"
                )
    return pair


def _generate(generator: Generator, pair: tuple[str, str], seed: int, should_stop: Callable[[], bool]) -> Image.Image:
    if should_stop():
        raise GenerationStopped("stopped")
    return generator.generate(pair[0], pair[1], seed)


def score(
    engine: Engine, metric: Metric, source: Embedded, images: Sequence[Image.Image], index: int, pair: tuple[str, str]
) -> Round:
    """One round: the generations against the source, by loss, cosine and tag diff."""
    generated = metric.embed(images)
    loss, cosine = metric.compare(source, generated)  # one source row against every generation
    lost, added = tag_diff(engine.vocabulary.tags, source.probabilities[0], generated.probabilities.mean(dim=0))
    return Round(index, *pair, loss.mean().item(), cosine.mean().item(), lost, added, list(images))


def tag_diff(tags: Sequence[str], source: torch.Tensor, generated: torch.Tensor) -> tuple[list[str], list[str]]:
    """(lost, added) from tag probabilities [tags] of the source and the generation, clearest first."""
    gap = source - generated
    lost = ((source >= SHOWN) & (generated < SHOWN)).nonzero().flatten()
    added = ((generated >= SHOWN) & (source < MAY_BE_PRESENT)).nonzero().flatten()
    return (
        [tags[i] for i in lost[torch.argsort(gap[lost], descending=True)].tolist()],
        [tags[i] for i in added[torch.argsort(gap[added])].tolist()],
    )


# -- the next pair ------------------------------------------------------------------------------------

_WEIGHTED = re.compile(r"^\((?P<text>.+):(?P<weight>\d+(?:\.\d+)?)\)$")
_ESCAPED = re.compile(r"\\(.)")


@dataclass
class _Term:
    """One comma-separated part of a prompt: a vocabulary tag with its weight, or other text kept as written."""

    text: str  # as written
    tag: str | None = None  # the vocabulary tag it names, if any
    weight: float = 1.0

    def render(self) -> str:
        if self.tag is None:
            return self.text
        return escape(self.tag) if self.weight == 1.0 else f"({escape(self.tag)}:{round(self.weight, 2):g})"

    def plain(self) -> str:
        """The text the webui counts tokens of: attention syntax costs none."""
        return self.tag if self.tag is not None else self.text


class _Prompt:
    """A prompt as terms, edited tag by tag within the token budget."""

    def __init__(self, text: str, engine: Engine) -> None:
        self.engine = engine
        self.budget = engine.token_budget(ExtractOptions())  # one CLIP chunk, or a tagger's longer prompt
        self.index = {tag: i for i, tag in enumerate(engine.vocabulary.tags)}
        self.terms = [self._term(part.strip()) for part in text.split(",") if part.strip()]

    def _term(self, text: str) -> _Term:
        weighted = _WEIGHTED.match(text)
        name, weight = (weighted["text"], float(weighted["weight"])) if weighted else (text, 1.0)
        name = _ESCAPED.sub(r"\1", name)
        return _Term(text, name, weight) if name in self.index else _Term(text)

    def __str__(self) -> str:
        return ", ".join(term.render() for term in self.terms)

    def find(self, tag: str) -> _Term | None:
        return next((term for term in self.terms if term.tag == tag), None)

    def remove(self, tags: set[str]) -> None:
        self.terms = [term for term in self.terms if term.tag not in tags]

    def add(self, tag: str) -> bool:
        """Append the tag if it fits the token budget (and its comma)."""
        used = self.engine.scorer.token_count(", ".join(term.plain() for term in self.terms))
        cost = self.engine.token_costs[self.index[tag]] + (1 if self.terms else 0)
        if used + cost > self.budget:
            return False
        self.terms.append(_Term(escape(tag), tag))
        return True

    def strengthen(self, tag: str) -> None:
        """Weight the tag up, or add it when it is not there."""
        term = self.find(tag)
        if term is None:
            self.add(tag)
        elif term.weight < MAX_WEIGHT:
            term.weight = min(MAX_WEIGHT, term.weight + WEIGHT_STEP)


def next_pair(engine: Engine, pair: tuple[str, str], last: Round, source: torch.Tensor) -> tuple[str, str]:
    """The next round's (prompt, negative prompt) from the last round's pair and diff."""
    positive, negative = _Prompt(pair[0], engine), _Prompt(pair[1], engine)
    tags = engine.vocabulary.tags
    # Never a negative what the source may show: the guard's rule, also for hand edits and earlier rounds.
    negative.remove({tags[i] for i in (source >= MAY_BE_PRESENT).nonzero().flatten().tolist()})
    added = last.added[:CHANGES]
    positive.remove(set(added))
    for tag in added:
        if negative.find(tag) is None:
            negative.add(tag)
    quality = set(engine.vocabulary.in_category(NEGATIVE_QUALITY))
    for tag in [tag for tag in last.lost if positive.index[tag] not in quality][:CHANGES]:
        positive.strengthen(tag)  # a quality fault ("blurry") the source shows is never asked for
    return str(positive), str(negative)
