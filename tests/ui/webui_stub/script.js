// Stand-in for the webui's script.js and the parts of javascript/*.js the extension calls.

function gradioApp() {
    const elems = document.getElementsByTagName('gradio-app');
    const elem = elems.length == 0 ? document : elems[0];

    if (elem !== document) {
        elem.getElementById = function(id) {
            return document.getElementById(id);
        };
    }
    return elem.shadowRoot ? elem.shadowRoot : elem;
}

function updateInput(target) {
    let e = new Event("input", {bubbles: true});
    Object.defineProperty(e, "target", {value: target});
    target.dispatchEvent(e);
}

// javascript/token-counters.js; here they record that they were called.
window.tokenCountersUpdated = [];

function recalculate_prompts_txt2img() {
    window.tokenCountersUpdated.push('txt2img');
    return Array.from(arguments);
}

function recalculate_prompts_img2img() {
    window.tokenCountersUpdated.push('img2img');
    return Array.from(arguments);
}
