// sd-ov: hover hints for the OpenVINO accordion (txt2img and img2img) and the OpenVINO tab.
(function () {
    const accordionHints = {
        enabled: "Run this job's UNet through OpenVINO. Off: the torch UNet makes the picture, settings unchanged.",
        status: "What the next job runs: device, recipe, and whether the OpenVINO UNet is cached already.",
        refresh: "Read the settings and the cache again.",
    };
    const tabHints = {
        sd_ov_int8: "hybrid: convolutions after a normalization INT8 end to end, the residual-stream ones FP32, MatMul weights INT8 (fast, close to torch). weights: smaller only. full: fastest, furthest from torch.",
        sd_ov_sq: "SmoothQuant moves activation outliers into the weights before quantizing the MatMuls (INT8 full only: hybrid keeps MatMul activations in float).",
        sd_ov_tome: "Merge similar tokens before the top-level self-attention (tomesd's algorithm, compiled into the UNet). 0: off.",
        sd_ov_prune: "ffn: cut the least active feed-forward neurons (dense work shrinks). magnitude: zero the smallest weights (no speed on CPUs).",
        sd_ov_prompts: "The webui samples these prompts with the FP32 OpenVINO UNet; the UNet inputs it sees calibrate INT8 and FFN pruning.",
        sd_ov_samples: "UNet calls kept for calibration, spread over the noise levels. More: slower Optimize, rarely better.",
        sd_ov_sizes: "Picture sizes (WIDTHxHEIGHT, comma separated) compiled ahead, so the first picture starts at once.",
        sd_ov_optimize: "Export, calibrate, compress, compile and measure against torch. The result appears in Settings → SD Unet.",
        sd_ov_cancel: "Stop Optimize. Nothing is added to the cache.",
        sd_ov_delete: "Delete the chosen optimized UNet from the cache.",
    };

    function addHints() {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [name, text] of Object.entries(accordionHints)) {
                const el = gradioApp().getElementById(`sd_ov_${tab}_${name}`);
                if (el && !el.title) {
                    el.title = text;
                }
            }
        }
        for (const [id, text] of Object.entries(tabHints)) {
            const el = gradioApp().getElementById(id);
            if (el && !el.title) {
                el.title = text;
            }
        }
    }

    onUiLoaded(addHints);
})();
