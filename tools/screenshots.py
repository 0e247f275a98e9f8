"""Take the README's screenshots from a running webui with sd-ov installed, in headless Chromium.

    python tools/screenshots.py --url http://127.0.0.1:7860 --out docs/img [--chromium /usr/bin/chromium]

Needs `pip install playwright` (its own browser download is not needed: `--chromium` names the
system's Chromium, e.g. Debian's `chromium` package). Writes accordion.png (txt2img with the
OpenVINO accordion open), settings.png (Settings → OpenVINO) and tab.png (the OpenVINO tab).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import Page, sync_playwright


def shoot_accordion(page: Page, out: Path) -> None:
    page.locator("#tab_txt2img").wait_for()
    accordion = page.locator("#sd_ov_txt2img_accordion")
    accordion.locator(".label-wrap").first.click()
    page.locator("#sd_ov_txt2img_status").first.wait_for()
    page.wait_for_timeout(1000)
    accordion.screenshot(path=str(out / "accordion.png"))


def shoot_settings(page: Page, out: Path) -> None:
    page.locator("#tabs > .tab-nav > button", has_text="Settings").first.click()
    page.locator("#settings").get_by_text("OpenVINO", exact=True).first.click()
    page.locator("#settings_openvino").first.wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out / "settings.png"))


def shoot_tab(page: Page, out: Path) -> None:
    page.locator("#tabs > .tab-nav > button", has_text="OpenVINO").first.click()
    page.locator("#sd_ov_preset").first.wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out / "tab.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(args.url, wait_until="networkidle", timeout=300_000)
        shoot_accordion(page, out)
        shoot_settings(page, out)
        shoot_tab(page, out)
        browser.close()
    print("wrote", ", ".join(str(out / n) for n in ("accordion.png", "settings.png", "tab.png")))


if __name__ == "__main__":
    main()
