// Easy Diffuser: clicks on the tag bars, and the jump to txt2img/img2img after "Send to".

(function () {
    // The bars are plain HTML: a click hands the tag to a hidden textbox and presses a hidden button,
    // whose Python handler moves the tag positive -> negative -> off and rewrites the prompts.
    document.addEventListener("click", function (event) {
        const bar = event.composedPath().find((node) => node.classList && node.classList.contains("easy-diffuser-tag"));
        if (!bar) return;
        const root = gradioApp();
        const textarea = root.querySelector("#easy_diffuser_clicked_tag textarea");
        textarea.value = bar.dataset.tag;
        updateInput(textarea);
        root.querySelector("#easy_diffuser_tag_click").click();
    });
})();

// The button of a tab inside the gr.Tabs with id `tabsId`: by its label, else by the position of its
// tab item (labels are translated by localizations). Never by a fixed index: users reorder tabs.
function easyDiffuserTabButton(tabsId, label, itemId) {
    const tabs = gradioApp().querySelector("#" + tabsId);
    if (!tabs) return null;
    const buttons = Array.from(tabs.querySelectorAll(":scope > .tab-nav > button"));
    const byLabel = buttons.find((button) => button.textContent.trim() === label);
    if (byLabel) return byLabel;
    const items = Array.from(tabs.querySelectorAll(":scope > .tabitem"));
    return buttons[items.findIndex((item) => item.id === itemId)] || null;
}

// Called after "Send to": the prompts are already in place; update the token counters, show the tab.
function easyDiffuserShow(tab) {
    easyDiffuserTabButton("tabs", tab, "tab_" + tab)?.click();
    if (tab === "img2img") {
        easyDiffuserTabButton("mode_img2img", "img2img", "img2img_img2img_tab")?.click();
    }
    const recalculate = window["recalculate_prompts_" + tab];
    if (typeof recalculate === "function") recalculate();
    return [];
}
