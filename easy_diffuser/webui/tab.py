"""The tab's layout and its wiring to the handlers.

A new control goes in three places, each once: its name in controls.CONTROLS (and RESELECTING if a move
should re-select at once; and in a kind's `controls` if some kinds of model alone use it), its component in
`_controls()` below, and what it means in
controls.extract_options(). Every handler wired with `_wire` then receives it in its `values` mapping.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from ..calibration import DEFAULT_NEGATIVES, DEFAULT_TAUS, store
from ..captioner import CAPTIONERS, memory_note
from ..engine import DEFAULT_TAU, automatic_values
from ..options import CALIBRATION_GENERATION, CAPTION_FILE_OPTION, OPTION, REFINE_OPTION, REFINE_OPTIONS, Option
from . import controls, dataset_panel
from .handlers import Handlers

if TYPE_CHECKING:  # the host imports the webui: only the script makes one
    from .host import WebuiHost

GRADIO_3 = gr.__version__.startswith("3.")


def build_tab(host: WebuiHost, handlers: Handlers) -> gr.Blocks:
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row(equal_height=False):
            with gr.Column():
                image_sources = {} if GRADIO_3 else {"sources": ["upload", "clipboard"]}
                image = gr.Image(label="Image", type="pil", elem_id="easy_diffuser_image", **image_sources)
                extract_button = gr.Button("Extract", variant="primary", elem_id="easy_diffuser_extract")
                inputs = _controls(host)
                handlers.threshold_sliders = {name: inputs[name] for name in controls.THRESHOLDS}
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="easy_diffuser_prompt")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="easy_diffuser_neg_prompt")
                with gr.Row():
                    to_txt2img = gr.Button("Send to txt2img", elem_id="easy_diffuser_send_txt2img")
                    to_img2img = gr.Button("Send to img2img", elem_id="easy_diffuser_send_img2img")
                _round_trip_section(handlers, image, prompt, negative)
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
        kind_controls = [inputs[name] for name in controls.KIND_CONTROLS]
        for event, handler in ((extract_button.click, handlers.extract), (image.upload, handlers.extract_on_drop)):
            extracted_event = _wire(event, handler, [image, extracted], inputs, results)
            # The model setting may have changed since the page was built: show the new model's controls.
            extracted_event.then(handlers.kind_controls, inputs=[extracted], outputs=kind_controls, queue=False)
        for name in controls.RESELECTING:  # unqueued: they answer while a generation holds the queue
            for event in _finished_moves(inputs[name]):
                _wire(event, handlers.reselect, [extracted], inputs, results, queue=False)
        weights = inputs["weights"]
        clicked_outputs = [prompt, negative, bars, status, extracted]
        click.click(handlers.click_tag, inputs=[clicked, extracted, weights], outputs=clicked_outputs, queue=False)
        weights.input(handlers.toggle_weights, inputs=[extracted, weights], outputs=[prompt, negative], queue=False)
        _wire_send(to_txt2img, [prompt, negative], host.prompt_fields("txt2img"), "txt2img")
        _wire_send(
            to_img2img, [prompt, negative, image], [*host.prompt_fields("img2img"), host.img2img_image()], "img2img"
        )
        if not host.cmd_opts.hide_ui_dir_config:  # server folders are off limits then, as in the webui's own tabs
            _batch_section(handlers, inputs)
            _calibrate_section(handlers, status)
    return tab


def _round_trip_section(handlers: Handlers, image: gr.Image, prompt: gr.Textbox, negative: gr.Textbox) -> None:
    """Check by generating and Refine, on the prompt boxes as they stand; the best pair comes back into them."""
    with gr.Row():
        check = gr.Button("Check by generating", elem_id="easy_diffuser_check")
        refine = gr.Button("Refine", elem_id="easy_diffuser_refine")
        stop = gr.Button("Stop", elem_id="easy_diffuser_refine_stop")
    with gr.Accordion("Check and Refine settings", open=False, elem_id="easy_diffuser_round_trip_settings"):
        settings = [
            _slider(option, option.default, elem_id=f"easy_diffuser_refine_{option.name}")
            for option in REFINE_OPTIONS
            if option.name != "seed"
        ]
    report = gr.HTML(elem_id="easy_diffuser_round_trip_report")
    pictures = gr.Gallery(
        label="Source and generations", columns=4, height=240, elem_id="easy_diffuser_round_trip_images"
    )
    outputs = [pictures, report, prompt, negative]
    for button, handler in ((check, handlers.check), (refine, handlers.refine)):
        button.click(handler, inputs=[image, prompt, negative, *settings], outputs=outputs)
    stop.click(handlers.stop_round_trip, queue=False)  # unqueued, so it runs while the round trip holds the queue


def _controls(host: WebuiHost) -> dict[str, gr.components.Component]:
    """The tab's controls, keyed by controls.CONTROLS; ranges from the options schema, starting values from Settings
    (a tagger's thresholds: the configured model's own)."""
    opts = host.opts
    # The configured model's controls; after each extraction, those of the model that made the tags.
    model = host.resolve_model(None)
    shown = controls.shown_for(controls.kind_name(model))
    thresholds = controls.model_thresholds(model)
    made = {
        "max_tags": _slider(
            OPTION["max_tags"], opts.easy_diffuser_max_tags, elem_id="easy_diffuser_max_tags", visible=shown["max_tags"]
        )
    }
    with gr.Row():
        made["auto_tau"] = gr.Checkbox(True, label="Automatic tau and negatives", elem_id="easy_diffuser_auto_tau")
        made["weights"] = gr.Checkbox(
            opts.easy_diffuser_weights, label=OPTION["weights"].label, elem_id="easy_diffuser_weights"
        )
    # Locked while automatic: they show the values in force (read without loading the model where it can be;
    # a model folder's are known after the first extraction), and every extraction shows them again.
    tau, negatives = automatic_values(model, host.weights_folder()) or (
        DEFAULT_TAU,
        OPTION["negatives"].default,
    )
    made["tau"] = _slider(OPTION["tau"], tau, elem_id="easy_diffuser_tau", interactive=False)
    made["negatives"] = _slider(OPTION["negatives"], negatives, elem_id="easy_diffuser_negatives", interactive=False)
    made["quality_negatives"] = _slider(
        OPTION["quality_negatives"], opts.easy_diffuser_quality_negatives, elem_id="easy_diffuser_quality"
    )
    for category in ("general", "character"):  # a tagger's threshold per category, or MCut's
        with gr.Row():
            threshold, mcut = OPTION[f"{category}_threshold"], OPTION[f"{category}_mcut"]
            made[threshold.name] = _slider(
                threshold,
                thresholds[threshold.name],
                elem_id=f"easy_diffuser_{threshold.name}",
                visible=shown[threshold.name],
            )
            made[mcut.name] = gr.Checkbox(
                mcut.default, label=mcut.label, elem_id=f"easy_diffuser_{mcut.name}", visible=shown[mcut.name]
            )
    family = OPTION["family"]
    made["family"] = gr.Dropdown(
        list(family.choices),
        value=family.default,
        label=family.label,
        elem_id="easy_diffuser_family",
        visible=shown["family"],
    )
    with gr.Row():  # CLIP models and taggers both take them
        for option in (OPTION["exclude_tags"], OPTION["first_tags"]):
            made[option.name] = gr.Textbox(
                option.default, label=option.label, info=option.help, elem_id=f"easy_diffuser_{option.name}"
            )
    with gr.Row():
        made["caption"] = gr.Checkbox(
            opts.easy_diffuser_caption, label="Caption first", elem_id="easy_diffuser_caption"
        )
        made["caption_model"] = gr.Dropdown(
            list(CAPTIONERS),
            value=opts.easy_diffuser_caption_model,
            label="Captioner",
            info=memory_note(),
            elem_id="easy_diffuser_caption_model",
        )
    style = OPTION["prompt_style"]
    made["prompt_style"] = gr.Radio(
        list(style.choices), value=style.default, label=style.label, elem_id="easy_diffuser_prompt_style"
    )
    return {name: made[name] for name in controls.CONTROLS}


def _wire(event: Callable, handler: Callable, fixed: list, inputs: dict, outputs: list, queue: bool = True) -> Any:
    """handler(*values of `fixed`, {control name: value}[, progress]). The inputs go as a set, which gradio
    hands over as one dict: the controls are listed once, in _controls(), not in every handler's signature."""

    def values(data: dict) -> tuple:
        controlled = {name: data[component] for name, component in inputs.items()}
        return (*(data[component] for component in fixed), controlled)

    def queued(data: dict, progress: gr.Progress = gr.Progress()) -> Any:
        return handler(*values(data), progress)

    def unqueued(data: dict) -> Any:  # gradio tracks progress only in the queue
        return handler(*values(data))

    return event(queued if queue else unqueued, inputs={*fixed, *inputs.values()}, outputs=outputs, queue=queue)


def _finished_moves(control: gr.components.Component) -> tuple[Callable, ...]:
    """The events of a control's new value. A list of tags counts once typed (Enter, or leaving the box), not at
    every key: a half-typed tag would re-select, and answers to a burst of keys may arrive out of order."""
    if isinstance(control, gr.Textbox):
        return control.submit, control.blur
    return (control.input,)


def _slider(option: Option, value: float, **kwargs: Any) -> gr.Slider:
    """A slider over the option's range (the schema's), so the tab can't send what the schema refuses."""
    return gr.Slider(option.minimum, option.maximum, value=value, step=option.step, label=option.label, **kwargs)


def _js(code: str) -> dict[str, str]:
    return {"_js" if GRADIO_3 else "js": code}


def _wire_send(button: gr.Button, sources: list, targets: list, tab: str) -> None:
    """Copy straight into the tab's components (not the infotext paste path), then let the page switch tabs."""
    copy = button.click(_keep_empty, inputs=sources, outputs=targets, queue=False)
    copy.then(None, **_js(f"() => easyDiffuserShow('{tab}')"))


def _keep_empty(*values: Any) -> tuple:
    """The values as they are, except that no image leaves the target's image alone."""
    return tuple(gr.update() if value is None else value for value in values)


def _batch_section(handlers: Handlers, inputs: dict) -> None:
    with gr.Accordion("Batch: caption a folder", open=False, elem_id="easy_diffuser_batch"):
        folder = gr.Textbox(
            label="Folder", placeholder="a folder on the webui's machine", elem_id="easy_diffuser_batch_folder"
        )
        recursive = gr.Checkbox(label="Include sub-folders", elem_id="easy_diffuser_batch_recursive")
        files = _caption_file_controls()
        with gr.Row():
            run = gr.Button("Caption folder", variant="primary", elem_id="easy_diffuser_batch_run")
            stop = gr.Button("Stop", elem_id="easy_diffuser_batch_stop")
        report = gr.HTML(elem_id="easy_diffuser_batch_report")
        dataset_panel.build(folder, recursive, files["caption_extension"])
    _wire(run.click, handlers.caption, [folder, recursive], {**inputs, **files}, [report])
    stop.click(handlers.stop_caption, queue=False)  # unqueued, so it runs while the batch holds the queue


def _caption_file_controls() -> dict[str, gr.components.Component]:
    """The caption-file options (controls.CAPTION_FILE_CONTROLS) and Replace tags, from the options schema."""

    def control(option: Option) -> gr.components.Component:
        common = {"label": option.label, "elem_id": f"easy_diffuser_batch_{option.name}"}
        if option.choices:
            return gr.Radio(list(option.choices), value=option.default, info=option.help, **common)
        if option.kind is bool:
            return gr.Checkbox(option.default, **common)
        return gr.Textbox(option.default, info=option.help, **common)

    made = {}
    with gr.Row():
        for name in ("caption_extension", "existing", "underscores"):
            made[name] = control(CAPTION_FILE_OPTION[name])
    with gr.Row():
        for name in ("trigger", "separator"):
            made[name] = control(CAPTION_FILE_OPTION[name])
    made["replace_tags"] = control(OPTION["replace_tags"])
    with gr.Row():
        for name in ("escape_parentheses", "character_first", "character_expand"):
            made[name] = control(CAPTION_FILE_OPTION[name])
    return {name: made[name] for name in controls.CAPTION_FILE_CONTROLS}


def _calibrate_section(handlers: Handlers, status: gr.HTML) -> None:
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
            width, height, steps = (
                _slider(REFINE_OPTION[name], default, elem_id=f"easy_diffuser_calibrate_{name}")
                for name, default in CALIBRATION_GENERATION.items()
            )
        with gr.Row():
            run = gr.Button("Calibrate", variant="primary", elem_id="easy_diffuser_calibrate_run")
            stop = gr.Button("Stop", elem_id="easy_diffuser_calibrate_stop")
            apply = gr.Button("Apply", elem_id="easy_diffuser_calibrate_apply")
            undo = gr.Button("Undo apply", elem_id="easy_diffuser_calibrate_undo")
        report = gr.HTML(elem_id="easy_diffuser_calibrate_report")
        with gr.Row(equal_height=False):  # the plot keeps its shape beside the tall grid
            plot, grid = (
                gr.Image(
                    label=label, type="pil", interactive=False, visible=False, elem_id=f"easy_diffuser_calibrate_{name}"
                )
                for name, label in (("plot", "Loss against tau"), ("grid", "Source | best tau | poor tau"))
            )
    run.click(
        handlers.calibrate_folder,
        inputs=[folder, taus, negatives, width, height, steps],
        outputs=[report, plot, grid, status],
    )
    stop.click(handlers.stop_calibration, queue=False)  # unqueued, so it runs while the calibration holds the queue
    apply.click(partial(handlers.change_calibration, store.apply), outputs=[status])
    undo.click(partial(handlers.change_calibration, store.undo), outputs=[status])
