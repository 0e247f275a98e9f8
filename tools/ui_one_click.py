"""Drive the accordion's one-click Optimize in headless Chromium, as a first-time user would, and
keep what the user sees at each step as screenshots.

    python tools/ui_one_click.py --url http://127.0.0.1:7860 --out docs/img [--chromium /usr/bin/chromium]

Needs a webui started with `--api` (the UI and its API on one port) with sd-ov installed and a
loaded checkpoint that has no recipe yet, and `pip install playwright` (the system's Chromium is
used). Steps: txt2img → open the OpenVINO accordion (the invite: one-click-invite.png) → "Make the
fastest recipe" → the progress bar while Optimize runs (one-click-progress-1/2.png, minutes
apart) → the report, and the accordion's status naming the new recipe (one-click-done.png) →
Generate with the page's defaults, nothing else changed (one-click-picture.png, its infotext).
Exits non-zero, saying why, when a step does not happen: no invite, a bar that never moves, a
recipe that is not the current SD Unet, a picture that did not run on it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def options(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/sdapi/v1/options", timeout=60) as answer:
        return json.loads(answer.read())


def html(page: Page, elem_id: str):
    """A gr.HTML's text: gradio 3 gives its block and its inner `prose` div the same id."""
    return page.locator(f"#{elem_id}").last


def fail(message: str) -> None:
    print(f"one click: {message}", file=sys.stderr)
    sys.exit(1)


def watch_progress(page: Page, out: Path, minutes: float) -> list[str]:
    """The progress texts gradio shows over the accordion's report while Optimize runs, until the
    report is written; two screenshots, the first at the first text, the second once the bar
    is past a quarter (or four minutes later)."""
    made = html(page, "sd_ov_txt2img_made")
    texts: list[str] = []
    shots, first_shot = 0, 0.0
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline:
        bar = page.locator(".progress-text")
        text = bar.first.inner_text(timeout=2000).strip() if bar.count() else ""
        level = page.locator(".progress-level-inner")
        detail = level.first.inner_text(timeout=2000).strip() if level.count() else ""
        seen = f"{text} {detail}".strip()
        if seen and (not texts or texts[-1] != seen):
            texts.append(seen)
            print(f"[progress] {seen}", flush=True)
        later = _percent(seen) >= 25 or time.monotonic() - first_shot > 240
        if seen and (shots == 0 or (shots == 1 and len(texts) >= 4 and later)):
            shots, first_shot = shots + 1, first_shot or time.monotonic()
            accordion = page.locator("#sd_ov_txt2img_accordion")
            accordion.screenshot(path=str(out / f"one-click-progress-{shots}.png"))
        if not seen and made.inner_text().strip():
            return texts
        page.wait_for_timeout(3000)
    fail(f"Optimize did not end within {minutes} minutes; progress seen: {texts[-3:]}")
    return texts


def _percent(text: str) -> float:
    found = re.search(r"(\d+(?:\.\d+)?)%", text)
    return float(found.group(1)) if found else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--minutes", type=float, default=40, help="how long Optimize may take")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    before = options(args.url)["sd_unet"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(args.url, wait_until="load", timeout=300_000)
        page.locator("#tab_txt2img").wait_for()
        accordion = page.locator("#sd_ov_txt2img_accordion")
        accordion.locator(".label-wrap").first.click()
        invite = html(page, "sd_ov_txt2img_invite")
        invite.wait_for()
        page.wait_for_timeout(1000)
        if "Make the fastest recipe for" not in invite.inner_text():
            fail(f"no invite in the accordion: {invite.inner_text()!r}")
        print(f"[invite] {invite.inner_text().strip()}", flush=True)
        accordion.screenshot(path=str(out / "one-click-invite.png"))

        started = time.monotonic()
        page.locator("#sd_ov_txt2img_make_fastest").click()
        texts = watch_progress(page, out, args.minutes)
        seconds = time.monotonic() - started
        if len({_percent(t) for t in texts}) < 3:  # the texts differ anyway: they carry the seconds
            fail(f"the progress bar did not move: {texts}")
        report = html(page, "sd_ov_txt2img_made").inner_text().strip()
        status = html(page, "sd_ov_txt2img_status").inner_text().strip()
        print(f"[report] {report[:600]}\n[status] {status}", flush=True)
        current = options(args.url)["sd_unet"]
        if not current.startswith("[OpenVINO") or current == before or current not in status:
            fail(f"the recipe is not the current SD Unet: {current!r} (before: {before!r}); status: {status}")
        if html(page, "sd_ov_txt2img_invite").inner_text().strip():
            fail("the invite is still shown after the recipe was made")
        page.wait_for_timeout(500)
        accordion.screenshot(path=str(out / "one-click-done.png"))

        # the fastest picture: the page's own defaults, only a prompt typed
        page.locator("#txt2img_prompt textarea").fill(PROMPT)
        page.locator("#txt2img_generate").click()
        info = html(page, "html_info_txt2img")
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and "OpenVINO" not in (info.inner_text() or ""):
            page.wait_for_timeout(3000)
        text = info.inner_text()
        print(f"[picture] {text.strip()}", flush=True)
        page.locator("#txt2img_results").screenshot(path=str(out / "one-click-picture.png"))
        browser.close()
    if "OpenVINO DeepCache:" not in text or "(the recipe's)" not in text:
        fail(f"the picture did not run the recipe's DeepCache schedule: {text}")
    print(f"one click: Optimize took {seconds:.0f} s; {current} is current; the picture ran on it")


if __name__ == "__main__":
    main()
