"""What the tab's buttons and controls do: each handler takes the components' values and returns their updates.

`values` is the tab's controls as {name: value}, keyed by controls.CONTROLS (tab.py hands them over as one
mapping), so a new control changes no handler's signature. The webui itself is reached through the host.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence

import gradio as gr
from PIL import Image

from ..batch import BatchSummary, caption_folder
from ..calibration import Calibration, calibrate, store
from ..calibration.generators import Generator
from ..engine import Engine
from ..errors import ModelError
from ..images import ImageError
from ..options import CALIBRATION_GENERATION, CAPTION_OPTION, REFINE_OPTION, ExtractOptions, OptionError, RefineOptions
from ..refine import Refinement, Round, checked_pair, refine
from ..scoring import NonFiniteScores
from . import controls, markup
from .http_api import NoGenerator
from .service import Service

if TYPE_CHECKING:  # the host imports the webui: only the script makes one
    from .host import WebuiHost

NO_CHECKPOINT = (
    "Calibrate generates images with a Stable Diffusion checkpoint, and the webui has none: put one in "
    "models/Stable-diffusion, choose it at the top of the page, then press Calibrate again."
)
NO_CHECKPOINT_ROUND_TRIP = (
    "Check and Refine generate images with a Stable Diffusion checkpoint, and the webui has none: put one in "
    "models/Stable-diffusion, choose it at the top of the page, then press the button again."
)
VOCABULARY_PROGRESS = "Encoding the tag vocabulary (first use of this model only)"


class Handlers:
    """The tab's handlers over one model service; the Stop buttons' flags live here."""

    def __init__(self, host: WebuiHost, service: Service) -> None:
        self.host = host
        self.service = service
        self._stop_batch = threading.Event()
        self._stop_calibration = threading.Event()
        self._calibrating = threading.Event()  # set while a calibration holds the queue
        self._stop_round_trip = threading.Event()
        self._round_trip_running = threading.Event()  # set while Check or Refine generates
        # The threshold sliders (tab.py sets them): their value is where the page shows them until moved, the
        # configured model's own or what the webui's ui-config.json restored over it.
        self.threshold_sliders: dict[str, Any] = {}

    def _options(self, values: Mapping[str, Any]) -> ExtractOptions:
        """The tab's control values as options; the captioner decodes as Settings say."""
        decoding = {name: getattr(self.host.opts, f"easy_diffuser_caption_{name}") for name in CAPTION_OPTION}
        shown = {name: slider.value for name, slider in self.threshold_sliders.items()}
        return controls.extract_options(controls.own_thresholds(values, shown), decoding)

    # -- the image, its tags and its prompts

    def extract(
        self,
        image: Optional[Image.Image],
        extracted: Optional[controls.Extracted],
        values: Mapping[str, Any],
        progress: gr.Progress = gr.Progress(),
    ) -> tuple:
        """-> prompt, negative prompt, tag bars, status, tau slider, negatives slider, state."""
        if image is None:
            return _unchanged(extracted, markup.error_html("Drop an image first."))
        try:
            options = self._options(values)
        except ValueError as error:  # caption lengths that contradict each other
            return _unchanged(extracted, markup.error_html(str(error)))
        progress(0, desc="Loading the CLIP model")
        try:
            encoding = _reporter(progress, VOCABULARY_PROGRESS, "tags")
            fresh = self.service.run(lambda engine: controls.extract(engine, image, options), progress=encoding)
        except (ImageError, ModelError, NonFiniteScores) as error:  # their messages are written for the user
            return _unchanged(extracted, markup.error_html(str(error)))
        return _shown(fresh, values)

    def extract_on_drop(
        self, image: Optional[Image.Image], extracted: Optional[controls.Extracted], *rest: Any
    ) -> tuple:
        """extract(), if Settings say that a dropped image is extracted at once; `rest`: values, progress."""
        if not self.host.opts.easy_diffuser_extract_on_drop:
            return _unchanged(extracted)
        return self.extract(image, extracted, *rest)

    def reselect(self, extracted: Optional[controls.Extracted], values: Mapping[str, Any]) -> tuple:
        """A control moved: select again from the stored embedding, outside the queue (no model forward pass)."""
        if extracted is None:  # nothing extracted yet: only the lock on the sliders follows Automatic
            locked = gr.update(interactive=not values["auto_tau"])
            return (*[gr.update()] * 4, locked, locked, None)
        engine = self.service.engine
        try:
            if engine is None:
                raise ValueError(controls.STALE)
            return _shown(controls.reselect(engine, extracted, self._options(values)), values)
        except ValueError as error:  # another model took the engine's place, or contradictory caption settings
            return _unchanged(extracted, markup.error_html(str(error)))

    @staticmethod
    def kind_controls(extracted: Optional[controls.Extracted]) -> tuple:
        """Show the controls that mean something for the model that made the tags (controls.KIND_CONTROLS)."""
        if extracted is None:
            return tuple(gr.update() for _ in controls.KIND_CONTROLS)
        return tuple(gr.update(visible=shown) for shown in controls.shown_for(extracted.kind).values())

    @staticmethod
    def click_tag(tag: str, extracted: Optional[controls.Extracted], weights: bool) -> tuple:
        """-> prompt, negative prompt, tag bars, status, state."""
        if extracted is None:
            return gr.update(), gr.update(), gr.update(), gr.update(), None
        extracted = controls.cycle_tag(extracted, tag)
        prompt, negative = controls.tab_prompts(extracted, weights)
        result = extracted.result
        return prompt, negative, markup.tag_bars_html(result.tags), markup.status_html(result), extracted

    @staticmethod
    def toggle_weights(extracted: Optional[controls.Extracted], weights: bool) -> tuple:
        if extracted is None:  # nothing extracted: keep what the user typed
            return gr.update(), gr.update()
        return controls.tab_prompts(extracted, weights)

    # -- Batch: caption a folder

    def caption(
        self,
        folder: str,
        recursive: bool,
        values: Mapping[str, Any],
        progress: gr.Progress = gr.Progress(),
    ) -> str:
        """Caption a folder; `values` holds the tab's controls and the section's caption-file controls."""
        if not folder.strip():
            return markup.error_html("Enter the folder to caption.")
        self._stop_batch.clear()
        try:
            options, caption_files = controls.batch_options(values, self._options(values))
        except ValueError as error:
            return markup.error_html(str(error))
        images = _reporter(progress, "Captioning", "images")

        def work(engine: Engine) -> BatchSummary:
            return caption_folder(
                engine,
                folder.strip(),
                options,
                recursive,
                progress=images,
                should_stop=self._stop_batch.is_set,
                caption_files=caption_files,
            )

        try:
            summary = self.service.run(work, progress=_reporter(progress, VOCABULARY_PROGRESS, "tags"))
        except (ModelError, OSError) as error:  # OSError: no such folder, or one that can't be read
            return markup.error_html(str(error))
        return markup.batch_html(summary)

    def stop_caption(self) -> None:
        self._stop_batch.set()

    # -- Calibrate tau

    def calibrate_folder(
        self,
        folder: str,
        taus_text: str,
        negatives_text: str,
        width: float,
        height: float,
        steps: float,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple:
        """-> report, loss plot, grid, status line."""
        hidden = gr.update(value=None, visible=False)  # no report: no pictures from an earlier one either
        if not folder.strip():
            return markup.error_html("Enter the folder of images to calibrate on."), hidden, hidden, gr.update()
        try:
            taus, negatives = controls.parse_taus(taus_text), controls.parse_negatives(negatives_text)
            # The sliders' ranges are the schema's; a request to gradio's API may send anything.
            width, height, steps = (
                REFINE_OPTION[name].check(value) for name, value in zip(CALIBRATION_GENERATION, (width, height, steps))
            )
        except ValueError as error:
            return markup.error_html(str(error)), hidden, hidden, gr.update()
        if self.host.no_checkpoint():
            return markup.error_html(NO_CHECKPOINT), hidden, hidden, gr.update()
        self._stop_calibration.clear()
        counts = [0, 0]  # generations done, total: for the message after a Stop
        pace = controls.Pace()

        def report(done: int, total: int) -> None:
            counts[:] = done, total
            desc = markup.calibration_progress(done, total, pace.seconds_each(done))
            progress((done, total), desc=desc, unit="generations")

        def work(engine: Engine) -> tuple[Calibration, tuple[float, str]]:
            generator = self.host.txt2img(engine.loaded, width, height, steps)
            result = self._as_job(
                lambda: calibrate(
                    engine,
                    folder.strip(),
                    generator,
                    taus,
                    negatives,
                    progress=report,
                    should_stop=self._calibration_stopped,
                )
            )
            return result, engine.resolve_tau(None)

        progress(0, desc="Loading the CLIP model")
        try:
            result, (tau, source) = self.service.run(work, progress=_reporter(progress, VOCABULARY_PROGRESS, "tags"))
        except (ModelError, OSError, ValueError) as error:  # no such folder, no images, no weights: for the user
            return markup.error_html(str(error)), hidden, hidden, gr.update()
        if result.stopped:
            return markup.calibration_stopped_html(*counts), hidden, hidden, gr.update()
        plot, grid = (_picture(result.report.get(kind)) for kind in ("plot", "grid"))
        return markup.calibration_html(result), plot, grid, markup.tau_in_force_html(result.model, tau, source)

    def change_calibration(self, change: Callable[[Path], None]) -> str:
        """Apply (or Undo) the last calibration of the current model -> the status line saying what changed."""

        def work(engine: Engine) -> str:
            before = store.InForce.of(engine)
            change(store.target_path(engine))
            verb = "applied" if change is store.apply else "undone"
            return markup.calibration_change_html(verb, before, store.InForce.of(engine))

        try:
            return self.service.run(work)
        except (ModelError, OSError, ValueError) as error:  # CalibrationFileError: no candidate, nothing to undo
            return markup.error_html(str(error))

    def stop_calibration(self) -> None:
        self._stop_calibration.set()
        if self._calibrating.is_set():  # only then: while we wait for the queue, the generation running is another's
            self.host.interrupt()

    def _calibration_stopped(self) -> bool:
        return self._stop_calibration.is_set() or self.host.interrupted()  # the webui's own Interrupt stops it too

    # -- Check and Refine by the round trip

    def check(
        self, image: Optional[Image.Image], prompt: str, negative: str, *settings: float, progress=gr.Progress()
    ) -> Iterator[tuple]:
        """Generate once from the prompt boxes as they stand -> pictures, report, prompt, negative prompt."""
        yield from self._round_trip(image, prompt, negative, (0, 1, *settings[2:]), progress)  # one generation

    def refine(
        self, image: Optional[Image.Image], prompt: str, negative: str, *settings: float, progress=gr.Progress()
    ) -> Iterator[tuple]:
        """Check, then better pairs round by round; each round shows as it is scored, and the best fills the boxes."""
        yield from self._round_trip(image, prompt, negative, settings, progress)

    def stop_round_trip(self) -> None:
        self._stop_round_trip.set()
        if self._round_trip_running.is_set():  # only then: while it waits for the queue, another job generates
            self.host.interrupt()

    def _round_trip(
        self, image: Optional[Image.Image], prompt: str, negative: str, settings: Sequence[float], progress: Any
    ) -> Iterator[tuple]:
        unchanged = (gr.update(), gr.update())
        problem = (
            "Drop an image first."
            if image is None
            else ("Extract or write a prompt first." if not prompt.strip() else "")
        )
        if not problem and self.host.no_checkpoint():
            problem = NO_CHECKPOINT_ROUND_TRIP
        try:
            names = ("rounds", "seeds", "width", "height", "steps")  # the tab's settings sliders, in order
            options = RefineOptions(**{name: REFINE_OPTION[name].check(value) for name, value in zip(names, settings)})
            checked_pair(prompt, negative)
        except (OptionError, TypeError, ValueError) as error:
            problem = problem or str(error)
        if problem:
            yield gr.update(), markup.error_html(problem), *unchanged
            return
        self._stop_round_trip.clear()
        finished: queue.Queue[Round] = queue.Queue()
        outcome: dict[str, Any] = {}

        def work(engine: Engine) -> Refinement:
            with self.generating(engine, options) as generator:
                self._round_trip_running.set()
                try:
                    return refine(engine, image, generator, prompt, negative, options, finished.put, self._stopped)
                finally:
                    self._round_trip_running.clear()

        def run() -> None:
            try:
                outcome["result"] = self.service.run(work)
            except (ModelError, NoGenerator, NonFiniteScores) as error:
                outcome["error"] = error

        progress(0, desc="Loading the CLIP model")
        try:  # here, not in the worker: gradio's progress bar follows only this thread's calls
            self.service.run(lambda engine: None, progress=_reporter(progress, VOCABULARY_PROGRESS, "tags"))
        except ModelError as error:
            yield gr.update(), markup.error_html(str(error)), *unchanged
            return
        worker = threading.Thread(target=run, name="easy-diffuser-round-trip", daemon=True)
        progress(0, desc="Generating from the prompts")
        worker.start()
        rounds: list[Round] = []
        while worker.is_alive() or not finished.empty():
            try:
                rounds.append(finished.get(timeout=0.1))
            except queue.Empty:
                continue
            latest = rounds[-1]
            progress(
                (len(rounds), options.rounds + 1), desc=f"Round {latest.index}: loss {latest.loss:.4f}", unit="rounds"
            )
            so_far = Refinement(list(rounds), [options.seed + i for i in range(options.seeds)])
            yield _round_trip_pictures(image, rounds), markup.round_trip_html(so_far), *unchanged
        worker.join()
        if "error" in outcome:
            yield gr.update(), markup.error_html(str(outcome["error"])), *unchanged
            return
        result: Refinement = outcome["result"]
        best = result.best
        filled = best is not None and len(result.rounds) > 1
        pair = (best.prompt, best.negative_prompt) if filled else unchanged
        yield _round_trip_pictures(image, result.rounds), markup.round_trip_html(result, filled), *pair

    def _stopped(self) -> bool:
        return self._stop_round_trip.is_set() or self.host.interrupted()

    @contextmanager
    def generating(self, engine: Engine, options: RefineOptions) -> Iterator[Generator]:
        """In-process txt2img with the loaded checkpoint, in a webui job (Interrupt stops it); NoGenerator without a
        checkpoint. The queue must be held already (service.run holds it)."""
        if self.host.no_checkpoint():
            raise NoGenerator(NO_CHECKPOINT_ROUND_TRIP)
        with self.host.job():
            save = bool(self.host.opts.easy_diffuser_round_trip_save)
            yield self.host.txt2img(engine.loaded, options.width, options.height, options.steps, save)

    def _as_job(self, work: Callable[[], Calibration]) -> Calibration:
        with self.host.job():
            self._calibrating.set()
            try:
                return work()
            finally:
                self._calibrating.clear()


def _round_trip_pictures(source: Image.Image, rounds: Sequence[Round]) -> list[tuple[Image.Image, str]]:
    """The source, then each round's first generation, captioned with its score: side by side in a gallery."""
    return [(source, "source"), *((r.images[0], f"round {r.index}: {r.loss:.2f}") for r in rounds if r.images)]


def _reporter(progress: gr.Progress, desc: str, unit: str) -> Callable[[int, int], None]:
    return lambda done, total: progress((done, total), desc=desc, unit=unit)


def _shown(extracted: controls.Extracted, values: Mapping[str, Any]) -> tuple:
    """-> prompt, negative prompt, tag bars, status, tau slider, negatives slider, state: all from one selection."""
    result, automatic = extracted.result, values["auto_tau"]
    prompt, negative = controls.tab_prompts(extracted, values["weights"])
    tau = gr.update(value=result.tau, interactive=not automatic)  # the tau in force; automatic locks it
    negatives = gr.update(value=extracted.negatives, interactive=not automatic)
    return prompt, negative, markup.tag_bars_html(result.tags), markup.status_html(result), tau, negatives, extracted


def _unchanged(extracted: Optional[controls.Extracted], status: Any = None) -> tuple:
    return (*[gr.update()] * 3, gr.update() if status is None else status, gr.update(), gr.update(), extracted)


def _picture(path: Optional[Path]) -> dict:
    # A PIL image, not the path: gradio 4 serves no file outside the working and temp folders.
    if path is None or not path.is_file():
        return gr.update(value=None, visible=False)
    with Image.open(path) as picture:
        return gr.update(value=picture.copy(), visible=True)
