// sd-ov: hover hints for the OpenVINO accordion (txt2img and img2img).
(function () {
    const hints = {
        enabled: "Run this job's UNet through OpenVINO. Off: the torch UNet makes the picture, settings unchanged.",
        status: "What the next job runs: device, recipe, and whether the OpenVINO UNet is cached already.",
        refresh: "Read the settings and the cache again.",
    };

    function addHints() {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [name, text] of Object.entries(hints)) {
                const el = gradioApp().getElementById(`sd_ov_${tab}_${name}`);
                if (el && !el.title) {
                    el.title = text;
                }
            }
        }
    }

    onUiLoaded(addHints);
})();
