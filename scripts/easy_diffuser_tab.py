"""Easy Diffuser tab for AUTOMATIC1111's webui and Forge: the thin part that talks to the webui.

The logic lives in the webui-free package easy_diffuser.webui (model service, tab logic and HTML,
routes); this file supplies the host's rules: settings, flags, device and
memory handling, the queue lock, in-process txt2img for calibration, and the wiring to the txt2img
and img2img components.
"""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import gradio as gr
import torch
from modules import call_queue, devices, lowvram, paths, processing, script_callbacks, sd_models, shared, ui_components
from PIL import Image

try:
    from modules.infotext_utils import paste_fields
except ImportError:  # webui before 1.8
    from modules.generation_parameters_copypaste import paste_fields

from easy_diffuser.batch import BatchSummary, caption_folder
from easy_diffuser.calibration import DEFAULT_NEGATIVES, DEFAULT_TAUS, Calibration, calibrate, store
from easy_diffuser.calibration.generators import CallableGenerator, webui_generator
from easy_diffuser.captioner import CAPTIONERS
from easy_diffuser.engine import DEFAULT_TAU, Engine, automatic_values
from easy_diffuser.images import ImageError
from easy_diffuser.models import LoadedModel, ModelError, default_dtype, list_models
from easy_diffuser.options import CAPTION_OPTION, CAPTION_OPTIONS, DEFAULT_CAPTIONER, OPTION, ExtractOptions, Option
from easy_diffuser.webui import controls, http_api, markup
from easy_diffuser.webui.service import AUTO, Placement, Service, auto_model

try:  # Forge: GPU memory belongs to its memory manager, which its own interrogator also goes through
    from backend import memory_management
    from backend.patcher.base import ModelPatcher
except ImportError:
    memory_management = None

GRADIO_3 = gr.__version__.startswith("3.")
SECTION = ("easy_diffuser", "Easy Diffuser")
CATEGORY = "postprocessing"  # Settings' group of webui 1.7+, where the webui's own CLIP interrogator is
NO_CHECKPOINT = (
    "Calibrate generates images with a Stable Diffusion checkpoint, and the webui has none: put one in "
    "models/Stable-diffusion, choose it at the top of the page, then press Calibrate again."
)
VOCABULARY_PROGRESS = "Encoding the tag vocabulary (first use of this model only)"


# -- model, device and memory: the webui's rules ---------------------------------------------


def configured_model() -> str:
    return shared.cmd_opts.easy_diffuser_model or shared.opts.easy_diffuser_model


def model_choices() -> list[str]:
    return list(dict.fromkeys([AUTO, *list_models(), configured_model()]))


def resolve_model(requested: Optional[str]) -> str:
    name = requested or configured_model()
    return auto_model(_checkpoint_is_sd2()) if name == AUTO else name


def _checkpoint_is_sd2() -> bool:
    # model_data.sd_model rather than shared.sd_model: in A1111 the latter loads a checkpoint when none is loaded.
    return bool(getattr(sd_models.model_data.sd_model, "is_sd2", False))


def weights_folder() -> Path:
    return Path(shared.cmd_opts.easy_diffuser_model_path or os.path.join(paths.models_path, "easy_diffuser"))


def placement() -> Placement:
    device = _device()
    dtype = torch.float32 if shared.cmd_opts.no_half else default_dtype(device)
    keep = shared.opts.easy_diffuser_keep_in_vram
    if memory_management is not None:
        return Placement(device, dtype, partial(_forge.acquire, device), _forge.release, keep)
    return Placement(device, dtype, partial(_acquire, device, dtype), _release, keep)


def _device() -> torch.device:
    # A1111's device_interrogate already honours --use-cpu; Forge ignores the flag, so check it for both.
    if {"interrogate", "all"} & set(shared.cmd_opts.use_cpu):
        return devices.cpu
    return memory_management.text_encoder_device() if memory_management is not None else devices.device_interrogate


def _acquire(device: torch.device, dtype: torch.dtype, loaded: LoadedModel) -> None:
    if shared.cmd_opts.lowvram or shared.cmd_opts.medvram:  # as modules/interrogate.py: the SD model leaves first
        lowvram.send_everything_to_cpu()
        devices.torch_gc()
    loaded.to(device, dtype)


def _release(loaded: LoadedModel) -> None:
    if not shared.opts.easy_diffuser_keep_in_vram:
        loaded.to(devices.cpu)
    devices.torch_gc()


class _ForgeMemory:
    """Forge moves models only through backend.memory_management, which frees room for them."""

    def __init__(self) -> None:
        self.patcher: Any = None

    def acquire(self, device: torch.device, loaded: LoadedModel) -> None:
        if self.patcher is None or self.patcher.model is not loaded.model:
            offload = memory_management.text_encoder_offload_device()
            self.patcher = ModelPatcher(loaded.model, load_device=device, offload_device=offload)
        memory_management.load_models_gpu([self.patcher])

    def release(self, loaded: LoadedModel) -> None:
        if not shared.opts.easy_diffuser_keep_in_vram:
            # What free_memory() does to the models it evicts, for ours alone.
            for entry in [e for e in memory_management.current_loaded_models if e.model is self.patcher]:
                memory_management.current_loaded_models.remove(entry)
                entry.model_unload()
        memory_management.soft_empty_cache()


def _queued(work: Callable[[], Any]) -> Any:
    return call_queue.wrap_queued_call(work)()  # never beside image generation


_forge = _ForgeMemory()
service = Service(resolve_model, weights_folder, placement, _queued)
_stop_batch = threading.Event()
_stop_calibration = threading.Event()
_calibrating = threading.Event()  # set while a calibration holds the queue


# -- handlers ------------------------------------------------------------------------------------


def _reporter(progress: gr.Progress, desc: str, unit: str) -> Callable[[int, int], None]:
    return lambda done, total: progress((done, total), desc=desc, unit=unit)


def _options(values: Mapping[str, Any]) -> ExtractOptions:
    """The tab's control values (keyed by controls.CONTROLS) as options; the captioner decodes as Settings say."""
    decoding = {name: getattr(shared.opts, f"easy_diffuser_caption_{name}") for name in CAPTION_OPTION}
    return controls.extract_options(values, decoding)


def _shown(extracted: controls.Extracted, values: Mapping[str, Any]) -> tuple:
    """-> prompt, negative prompt, tag bars, status, tau slider, negatives slider, state: all from one selection."""
    result, automatic = extracted.result, values["auto_tau"]
    prompt, negative = controls.tab_prompts(extracted, values["weights"])
    tau = gr.update(value=result.tau, interactive=not automatic)  # the tau in force; automatic locks it
    negatives = gr.update(value=extracted.negatives, interactive=not automatic)
    return prompt, negative, markup.tag_bars_html(result.tags), markup.status_html(result), tau, negatives, extracted


def _unchanged(extracted: Optional[controls.Extracted], status: Any = None) -> tuple:
    return (*[gr.update()] * 3, gr.update() if status is None else status, gr.update(), gr.update(), extracted)


def extract(
    image: Optional[Image.Image],
    extracted: Optional[controls.Extracted],
    values: Mapping[str, Any],
    progress: gr.Progress = gr.Progress(),
) -> tuple:
    """-> prompt, negative prompt, tag bars, status, tau slider, negatives slider, state."""
    if image is None:
        return _unchanged(extracted, markup.error_html("Drop an image first."))
    try:
        options = _options(values)
    except ValueError as error:  # caption lengths that contradict each other
        return _unchanged(extracted, markup.error_html(str(error)))
    progress(0, desc="Loading the CLIP model")
    try:
        encoding = _reporter(progress, VOCABULARY_PROGRESS, "tags")
        fresh = service.run(lambda engine: controls.extract(engine, image, options), progress=encoding)
    except (ImageError, ModelError) as error:  # their messages are written for the user
        return _unchanged(extracted, markup.error_html(str(error)))
    return _shown(fresh, values)


def extract_on_drop(
    image: Optional[Image.Image],
    extracted: Optional[controls.Extracted],
    values: Mapping[str, Any],
    progress: gr.Progress = gr.Progress(),
) -> tuple:
    if not shared.opts.easy_diffuser_extract_on_drop:
        return _unchanged(extracted)
    return extract(image, extracted, values, progress)


def reselect(extracted: Optional[controls.Extracted], values: Mapping[str, Any]) -> tuple:
    """A control moved: select again from the stored embedding, outside the queue (no model forward pass)."""
    if extracted is None:  # nothing extracted yet: only the lock on the sliders follows Automatic
        locked = gr.update(interactive=not values["auto_tau"])
        return (*[gr.update()] * 4, locked, locked, None)
    engine = service.engine
    try:
        if engine is None:
            raise ValueError(controls.STALE)
        return _shown(controls.reselect(engine, extracted, _options(values)), values)
    except ValueError as error:  # another model took the engine's place, or contradictory caption settings
        return _unchanged(extracted, markup.error_html(str(error)))


def click_tag(tag: str, extracted: Optional[controls.Extracted], weights: bool) -> tuple:
    """-> prompt, negative prompt, tag bars, status, state."""
    if extracted is None:
        return gr.update(), gr.update(), gr.update(), gr.update(), None
    extracted = controls.cycle_tag(extracted, tag)
    prompt, negative = controls.tab_prompts(extracted, weights)
    result = extracted.result
    return prompt, negative, markup.tag_bars_html(result.tags), markup.status_html(result), extracted


def toggle_weights(extracted: Optional[controls.Extracted], weights: bool) -> tuple:
    if extracted is None:  # nothing extracted: keep what the user typed
        return gr.update(), gr.update()
    return controls.tab_prompts(extracted, weights)


def caption(
    folder: str,
    recursive: bool,
    overwrite: bool,
    values: Mapping[str, Any],
    progress: gr.Progress = gr.Progress(),
) -> str:
    if not folder.strip():
        return markup.error_html("Enter the folder to caption.")
    _stop_batch.clear()
    try:
        options = _options(values)
    except ValueError as error:
        return markup.error_html(str(error))
    images = _reporter(progress, "Captioning", "images")

    def work(engine: Engine) -> BatchSummary:
        return caption_folder(
            engine, folder.strip(), options, recursive, overwrite, progress=images, should_stop=_stop_batch.is_set
        )

    try:
        summary = service.run(work, progress=_reporter(progress, VOCABULARY_PROGRESS, "tags"))
    except (ModelError, OSError) as error:  # OSError: no such folder, or one that can't be read
        return markup.error_html(str(error))
    return markup.batch_html(summary)


def calibrate_folder(
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
    except ValueError as error:
        return markup.error_html(str(error)), hidden, hidden, gr.update()
    if _no_checkpoint():
        return markup.error_html(NO_CHECKPOINT), hidden, hidden, gr.update()
    _stop_calibration.clear()
    counts = [0, 0]  # generations done, total: for the message after a Stop
    pace = controls.Pace()

    def report(done: int, total: int) -> None:
        counts[:] = done, total
        progress(
            (done, total), desc=markup.calibration_progress(done, total, pace.seconds_each(done)), unit="generations"
        )

    def work(engine: Engine) -> tuple[Calibration, tuple[float, str]]:
        generator = _webui_txt2img(engine, int(width), int(height), int(steps))
        result = _as_job(
            lambda: calibrate(
                engine,
                folder.strip(),
                generator,
                taus,
                negatives,
                progress=report,
                should_stop=_calibration_stopped,
            )
        )
        return result, engine.resolve_tau(None)

    progress(0, desc="Loading the CLIP model")
    try:
        result, (tau, source) = service.run(work, progress=_reporter(progress, VOCABULARY_PROGRESS, "tags"))
    except (ModelError, OSError, ValueError) as error:  # no such folder, no images, no weights: written for the user
        return markup.error_html(str(error)), hidden, hidden, gr.update()
    if result.stopped:
        return markup.calibration_stopped_html(*counts), hidden, hidden, gr.update()
    plot, grid = (_picture(result.report.get(kind)) for kind in ("plot", "grid"))
    return markup.calibration_html(result), plot, grid, markup.tau_in_force_html(result.model, tau, source)


def _no_checkpoint() -> bool:
    """No checkpoint loaded and none to load: calibration could generate nothing (the webui would try to load
    one from an empty list and print its tracebacks). model_data, not shared.sd_model, which would load one."""
    return sd_models.model_data.sd_model is None and not getattr(sd_models, "checkpoints_list", None)


def change_calibration(change: Callable[[Path], None]) -> str:
    """Apply (or Undo) the last calibration of the current model -> the status line saying what changed."""

    def work(engine: Engine) -> str:
        before = store.InForce.of(engine)
        change(store.target_path(engine))
        return markup.calibration_change_html(
            "applied" if change is store.apply else "undone", before, store.InForce.of(engine)
        )

    try:
        return service.run(work)
    except (ModelError, OSError, ValueError) as error:  # CalibrationFileError: no candidate, nothing to undo
        return markup.error_html(str(error))


def stop_calibration() -> None:
    _stop_calibration.set()
    if _calibrating.is_set():  # only then: while we wait for the queue, the generation running is someone else's
        shared.state.interrupt()


def _calibration_stopped() -> bool:
    return _stop_calibration.is_set() or shared.state.interrupted  # the webui's own Interrupt stops it too


def _as_job(work: Callable[[], Calibration]) -> Calibration:
    """A webui job, as wrap_gradio_gpu_call makes one (the queue is already held: its lock is not re-entrant)."""
    shared.state.begin()  # no job name: begin() took none before webui 1.6
    _calibrating.set()
    try:
        return work()
    finally:
        _calibrating.clear()
        shared.state.end()
        shared.state.interrupted = False  # as wrap_gradio_call does after every job


def _webui_txt2img(engine: Engine, width: int, height: int, steps: int) -> CallableGenerator:
    """The webui's txt2img, with our CLIP model off the GPU while the checkpoint generates.

    The same rule as between two extractions (Keep in VRAM decides), and under Forge the way back
    too: its memory manager may evict our model to make room for the checkpoint."""
    txt2img = webui_generator(processing, shared, width, height, steps, queue_lock=None)  # service.run holds the queue
    rules = placement()

    def generate(prompt: str, negative_prompt: str, seed: int) -> Image.Image:
        rules.release(engine.loaded)
        try:
            return txt2img.generate(prompt, negative_prompt, seed)
        finally:
            rules.acquire(engine.loaded)

    return CallableGenerator(generate, txt2img.name)


def _picture(path: Optional[Path]) -> dict:
    # A PIL image, not the path: gradio 4 serves no file outside the working and temp folders.
    if path is None or not path.is_file():
        return gr.update(value=None, visible=False)
    with Image.open(path) as picture:
        return gr.update(value=picture.copy(), visible=True)


# -- the tab -------------------------------------------------------------------------------------


def _js(code: str) -> dict[str, str]:
    return {"_js" if GRADIO_3 else "js": code}


def _prompt_fields(tab: str) -> list[gr.components.Component]:
    """The tab's prompt boxes, as the webui registered them for pasting (only the registry is used)."""
    fields = {label: component for component, label in paste_fields[tab]["fields"]}
    return [fields["Prompt"], fields["Negative prompt"]]


def on_ui_tabs() -> list[tuple[gr.Blocks, str, str]]:
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row(equal_height=False):
            with gr.Column():
                image_sources = {} if GRADIO_3 else {"sources": ["upload", "clipboard"]}
                image = gr.Image(label="Image", type="pil", elem_id="easy_diffuser_image", **image_sources)
                extract_button = gr.Button("Extract", variant="primary", elem_id="easy_diffuser_extract")
                inputs = _controls()
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="easy_diffuser_prompt")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="easy_diffuser_neg_prompt")
                with gr.Row():
                    to_txt2img = gr.Button("Send to txt2img", elem_id="easy_diffuser_send_txt2img")
                    to_img2img = gr.Button("Send to img2img", elem_id="easy_diffuser_send_img2img")
                status = gr.HTML(elem_id="easy_diffuser_status")
                bars = gr.HTML(elem_id="easy_diffuser_tags")
                # The tag bars are plain HTML: javascript/easy_diffuser.js puts a clicked tag here and presses
                # the button.
                clicked = gr.Textbox(
                    elem_id="easy_diffuser_clicked_tag", elem_classes=["easy-diffuser-hidden"], show_label=False
                )
                click = gr.Button("tag", elem_id="easy_diffuser_tag_click", elem_classes=["easy-diffuser-hidden"])
        extracted = gr.State(None)  # controls.Extracted: the image's embedding and its current tags
        results = [prompt, negative, bars, status, inputs["tau"], inputs["negatives"], extracted]
        _wire(extract_button.click, extract, [image, extracted], inputs, results)
        _wire(image.upload, extract_on_drop, [image, extracted], inputs, results)
        for name in controls.RESELECTING:  # unqueued: they answer while a generation holds the queue
            _wire(inputs[name].input, reselect, [extracted], inputs, results, queue=False)
        weights = inputs["weights"]
        clicked_outputs = [prompt, negative, bars, status, extracted]
        click.click(click_tag, inputs=[clicked, extracted, weights], outputs=clicked_outputs, queue=False)
        weights.input(toggle_weights, inputs=[extracted, weights], outputs=[prompt, negative], queue=False)
        _wire_send(to_txt2img, [prompt, negative], _prompt_fields("txt2img"), "txt2img")
        _wire_send(
            to_img2img,
            [prompt, negative, image],
            [*_prompt_fields("img2img"), paste_fields["img2img"]["init_img"]],
            "img2img",
        )
        if not shared.cmd_opts.hide_ui_dir_config:  # server folders are off limits then, as in the webui's own tabs
            _batch_section(inputs)
            _calibrate_section(status)
    return [(tab, "Easy Diffuser", "easy_diffuser")]


def _controls() -> dict[str, gr.components.Component]:
    """The tab's controls, keyed by controls.CONTROLS; ranges from the options schema, starting values from Settings."""
    opts = shared.opts
    made = {"max_tags": _slider(OPTION["max_tags"], opts.easy_diffuser_max_tags, elem_id="easy_diffuser_max_tags")}
    with gr.Row():
        made["auto_tau"] = gr.Checkbox(True, label="Automatic tau and negatives", elem_id="easy_diffuser_auto_tau")
        made["weights"] = gr.Checkbox(
            opts.easy_diffuser_weights, label=OPTION["weights"].label, elem_id="easy_diffuser_weights"
        )
    # Locked while automatic: they show the values in force (read without loading the model where it can be;
    # a model folder's are known after the first extraction), and every extraction shows them again.
    tau, negatives = automatic_values(resolve_model(None), weights_folder()) or (
        DEFAULT_TAU,
        OPTION["negatives"].default,
    )
    made["tau"] = _slider(OPTION["tau"], tau, elem_id="easy_diffuser_tau", interactive=False)
    made["negatives"] = _slider(OPTION["negatives"], negatives, elem_id="easy_diffuser_negatives", interactive=False)
    made["quality_negatives"] = _slider(
        OPTION["quality_negatives"], opts.easy_diffuser_quality_negatives, elem_id="easy_diffuser_quality"
    )
    with gr.Row():
        made["caption"] = gr.Checkbox(
            opts.easy_diffuser_caption, label="Caption first", elem_id="easy_diffuser_caption"
        )
        made["caption_model"] = gr.Dropdown(
            list(CAPTIONERS),
            value=opts.easy_diffuser_caption_model,
            label="Captioner",
            elem_id="easy_diffuser_caption_model",
        )
    return {name: made[name] for name in controls.CONTROLS}


def _wire(event: Callable, handler: Callable, fixed: list, inputs: dict, outputs: list, queue: bool = True) -> None:
    """handler(*values of `fixed`, {control name: value}[, progress]). The inputs go as a set, which gradio
    hands over as one dict: the controls are listed once, in _controls(), not in every handler's signature."""

    def values(data: dict) -> tuple:
        controlled = {name: data[component] for name, component in inputs.items()}
        return (*(data[component] for component in fixed), controlled)

    def queued(data: dict, progress: gr.Progress = gr.Progress()) -> Any:
        return handler(*values(data), progress)

    def unqueued(data: dict) -> Any:  # gradio tracks progress only in the queue
        return handler(*values(data))

    event(queued if queue else unqueued, inputs={*fixed, *inputs.values()}, outputs=outputs, queue=queue)


def _slider(option: Option, value: float, **kwargs: Any) -> gr.Slider:
    """A slider over the option's range (the schema's), so the tab can't send what the schema refuses."""
    return gr.Slider(option.minimum, option.maximum, value=value, step=option.step, label=option.label, **kwargs)


def _slider_args(option: Option) -> dict[str, float]:
    return {"minimum": option.minimum, "maximum": option.maximum, "step": option.step}


def _wire_send(button: gr.Button, sources: list, targets: list, tab: str) -> None:
    """Copy straight into the tab's components (not the infotext paste path), then let the page switch tabs."""
    copy = button.click(_keep_empty, inputs=sources, outputs=targets, queue=False)
    copy.then(None, **_js(f"() => easyDiffuserShow('{tab}')"))


def _keep_empty(*values: Any) -> tuple:
    """The values as they are, except that no image leaves the target's image alone."""
    return tuple(gr.update() if value is None else value for value in values)


def _batch_section(inputs: dict) -> None:
    with gr.Accordion("Batch: caption a folder", open=False, elem_id="easy_diffuser_batch"):
        folder = gr.Textbox(
            label="Folder", placeholder="a folder on the webui's machine", elem_id="easy_diffuser_batch_folder"
        )
        with gr.Row():
            recursive = gr.Checkbox(label="Include sub-folders")
            overwrite = gr.Checkbox(label="Overwrite existing captions")
        with gr.Row():
            run = gr.Button("Caption folder", variant="primary", elem_id="easy_diffuser_batch_run")
            stop = gr.Button("Stop", elem_id="easy_diffuser_batch_stop")
        report = gr.HTML(elem_id="easy_diffuser_batch_report")
    _wire(run.click, caption, [folder, recursive, overwrite], inputs, [report])
    stop.click(_stop_batch.set, queue=False)  # unqueued, so it runs while the batch holds the queue


def _calibrate_section(status: gr.HTML) -> None:
    with gr.Accordion("Calibrate tau", open=False, elem_id="easy_diffuser_calibrate"):
        gr.HTML(
            "<p class='easy-diffuser-hint'>Learns the tau for this model from your images: extracts their prompts, "
            "generates from them with the loaded checkpoint (fixed seeds, nothing saved) and keeps the tau whose "
            "images come closest to the sources. Press Apply to make Automatic tau use the result "
            "(Undo apply goes back).</p>"
        )
        folder = gr.Textbox(
            label="Folder",
            placeholder="a folder of images on the webui's machine",
            elem_id="easy_diffuser_calibrate_folder",
        )
        with gr.Row():
            taus = gr.Textbox(
                label="taus to try", value=controls.numbers_text(DEFAULT_TAUS), elem_id="easy_diffuser_calibrate_taus"
            )
            negatives = gr.Textbox(
                label="Numbers of negative tags to try",
                value=controls.numbers_text(DEFAULT_NEGATIVES),
                elem_id="easy_diffuser_calibrate_negatives",
            )
        with gr.Row():
            width = gr.Slider(64, 1024, value=256, step=64, label="Width", elem_id="easy_diffuser_calibrate_width")
            height = gr.Slider(64, 1024, value=256, step=64, label="Height", elem_id="easy_diffuser_calibrate_height")
            steps = gr.Slider(1, 50, value=12, step=1, label="Sampling steps", elem_id="easy_diffuser_calibrate_steps")
        with gr.Row():
            run = gr.Button("Calibrate", variant="primary", elem_id="easy_diffuser_calibrate_run")
            stop = gr.Button("Stop", elem_id="easy_diffuser_calibrate_stop")
            apply = gr.Button("Apply", elem_id="easy_diffuser_calibrate_apply")
            undo = gr.Button("Undo apply", elem_id="easy_diffuser_calibrate_undo")
        report = gr.HTML(elem_id="easy_diffuser_calibrate_report")
        with gr.Row(equal_height=False):  # the plot keeps its shape beside the tall grid
            plot = gr.Image(
                label="Loss against tau",
                type="pil",
                interactive=False,
                visible=False,
                elem_id="easy_diffuser_calibrate_plot",
            )
            grid = gr.Image(
                label="Source | best tau | poor tau",
                type="pil",
                interactive=False,
                visible=False,
                elem_id="easy_diffuser_calibrate_grid",
            )
    run.click(
        calibrate_folder, inputs=[folder, taus, negatives, width, height, steps], outputs=[report, plot, grid, status]
    )
    stop.click(stop_calibration, queue=False)  # unqueued, so it runs while the calibration holds the queue
    apply.click(partial(change_calibration, store.apply), outputs=[status])
    undo.click(partial(change_calibration, store.undo), outputs=[status])


# -- settings, API and lifecycle -----------------------------------------------------------------


def on_ui_settings() -> None:
    def add(key: str, default: Any, label: str, component: Any = None, args: Optional[dict] = None) -> None:
        info = shared.OptionInfo(default, label, component, args, section=SECTION)
        info.category_id = CATEGORY  # as options_section() does with a 3-part section; older webuis ignore it
        shared.opts.add_option(f"easy_diffuser_{key}", info)

    add(
        "model",
        AUTO,
        _model_setting_label(),
        # The webui's own editable dropdown: gradio 3's Dropdown.update() rejects allow_custom_value, and the
        # webui calls update(**args) for every setting at page load, so that argument breaks the whole Settings page.
        ui_components.DropdownEditable,
        {"choices": [AUTO, *list_models()]},
    )
    add(
        "keep_in_vram",
        False,
        "Keep the CLIP model in VRAM between uses (faster, but the VRAM stays taken during generation)",
    )
    add("extract_on_drop", True, "Extract as soon as an image is dropped")
    for name, label in (
        ("max_tags", "Default number of tags"),
        ("quality_negatives", "Default number of standard quality negatives"),
    ):
        add(name, OPTION[name].default, label, gr.Slider, _slider_args(OPTION[name]))
    add("weights", OPTION["weights"].default, "Weights on by default")
    add("caption", False, "Caption the image before the tags (BLIP or GIT; needs transformers, which the webui has)")
    add("caption_model", DEFAULT_CAPTIONER, "Captioner", gr.Dropdown, {"choices": list(CAPTIONERS)})
    for option in CAPTION_OPTIONS:
        add(f"caption_{option.name}", option.default, option.label, gr.Slider, _slider_args(option))
    add(
        "max_request_mb",
        http_api.DEFAULT_MAX_REQUEST_MB,
        "Largest HTTP request to /easy-diffuser/v1 (MB); larger ones get 413",
        gr.Slider,
        {"minimum": 1, "maximum": 500, "step": 1},
    )


def _model_setting_label() -> str:
    """What the model setting means, and when the command line overrides it: the Settings page says so."""
    forced = shared.cmd_opts.easy_diffuser_model
    if forced:
        return f"CLIP model: {forced} is in force, set by --easy-diffuser-model (this setting is ignored)"
    return "CLIP model (Auto: ViT-H-14 for SD 2.x checkpoints, else ViT-L-14/openai)"


def on_app_started(demo: Optional[gr.Blocks], app: Any) -> None:
    if demo is None or shared.cmd_opts.api:  # demo is None under --nowebui, which serves the API alone
        http_api.add_routes(
            app,
            service,
            model_choices,
            configured_model,
            shared.cmd_opts.api_auth,
            lambda: shared.opts.easy_diffuser_max_request_mb,
        )


def on_script_unloaded() -> None:
    service.unload()
    devices.torch_gc()


script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_script_unloaded(on_script_unloaded)
