"""What a model kind is: the contract every kind module fulfils (kinds/clip.py, kinds/wd_tagger.py, a plugin's).

A kind is everything one family of models means to the pipeline, in one place:
  * which specs it claims: registry names (`models`, declared where the kind is) and folders or files (`claims`);
  * how it loads (`load` -> a `Loaded`, which models.load_model caches, moves between devices and unloads);
  * its scorer (scorers.TagScorer, the seam: a score per vocabulary tag);
  * its policy: how the positive tags are chosen (`rule`), the token budget, the checkpoint family preset it
    takes (`preset`), the style its tags are (`writes`) and the options only it takes (`controls`: the tab
    shows them for its models).
The engine, selection, the tab and every surface ask the kind; none of them branches on which kind it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence

import torch

from ..errors import ModelError
from ..options import TOKEN_BUDGET, ExtractOptions
from ..settings_files import SettingsFileError, check_model_defaults, read_json_object

if TYPE_CHECKING:
    from ..checkpoint_family import Detected
    from ..embedding import ProgressFn
    from ..families import Preset
    from ..scorers import TagScorer
    from ..selection import TagRule

DATA_DIR = Path(__file__).parent.parent / "data"  # models shipped in the package


@dataclass(frozen=True)
class ModelInfo:
    """A model a kind knows by name: what it is for, its defaults, and where its files come from."""

    name: str
    use: str
    defaults: dict[str, Any] = field(default_factory=dict)
    hf_hub: str = ""  # a hub repository, where the name alone does not say it
    shipped: str = ""  # a folder under data/ that ships with the package


class Loaded(Protocol):
    """A loaded model, whatever its kind: what caching, devices, the pipeline and the hosts use of it."""

    model_id: str  # the name users see and calibrations are filed under
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> CxHxW tensor (pipeline.py runs its PIL steps in decode workers)
    defaults: dict[str, Any]  # tau, negatives, ... from the registry and the model folder's easy_diffuser.json
    cache_key: str  # model_id plus a hash of the weights: new weights, new caches and calibrations

    @property
    def image_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Loaded": ...


class Kind(ABC):
    """One kind of model. Subclass it in one module, list it in kinds/__init__.py (or, from another package, in
    the `easy_diffuser.kinds` entry-point group), and every surface takes its models."""

    name: ClassVar[str]  # "clip", "wd-tagger": what messages and the tab call the kind
    models: ClassVar[Sequence[ModelInfo]] = ()  # the registry names this kind answers to
    writes: ClassVar[str | None] = (
        None  # the prompt style its tags are ("booru"); None: automatic follows the checkpoint
    )
    token_budget: ClassVar[int] = TOKEN_BUDGET  # the positive prompt's tokens unless the option sets them
    controls: ClassVar[frozenset[str]] = frozenset()  # options only this kind takes (the tab shows them for it)

    def claims(self, spec: str) -> bool:
        """Whether a spec that is no registry name (a folder, a file) is this kind's."""
        return False

    @abstractmethod
    def load(self, spec: str, cache_dir: Path) -> Loaded:
        """The model a spec names, on the CPU; ModelError in one line naming the cause and the fix otherwise."""

    @abstractmethod
    def scorer(
        self,
        loaded: Any,
        cache_dir: Path,
        vocabulary_dirs: Sequence[str | Path] = (),
        progress: "ProgressFn | None" = None,
    ) -> "TagScorer":
        """The scorer of a model this kind loaded."""

    def rule(self, options: ExtractOptions, preset: "Preset | None") -> "TagRule":
        """How the positive prompt's tags are chosen: the most relevant, unless the kind says otherwise."""
        from ..selection import TopRelevance

        return TopRelevance()

    def preset(self, options: ExtractOptions, target: "Detected | None") -> "Preset | None":
        """The checkpoint family preset this kind's prompts take for the target checkpoint; None: none."""
        return None

    def info(self, spec: str) -> ModelInfo | None:
        return next((info for info in self.models if info.name == spec), None)


def folder_defaults(path: Path) -> dict[str, Any]:
    """A model folder's own defaults (tau, negatives, ...); none when the file is absent."""
    if not path.exists():
        return {}
    try:
        return check_model_defaults(read_json_object(path), path)
    except SettingsFileError as error:
        raise ModelError(f"{error}; fix it or delete it to use the built-in defaults") from None


def shipped_defaults(info: ModelInfo) -> dict[str, Any]:
    """A shipped model's defaults: the registry's, then what its folder's easy_diffuser.json learnt (calibration)."""
    return {**info.defaults, **folder_defaults(DATA_DIR / info.shipped / "easy_diffuser.json")}
