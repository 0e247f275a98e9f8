"""Take the README's screenshots from a running webui with sd-ov installed, in headless Chromium.

    python tools/screenshots.py --url http://127.0.0.1:7860 --out docs/img [--chromium /usr/bin/chromium]
    python tools/screenshots.py --url http://127.0.0.1:7861 --out docs/img --prefix forge-   # Forge

Needs `pip install playwright` (its own browser download is not needed: `--chromium` names the
system's Chromium, e.g. Debian's `chromium` package). Writes <prefix>accordion.png (txt2img with
the OpenVINO accordion open), <prefix>settings.png (Settings → OpenVINO) and <prefix>tab.png (the
OpenVINO tab), from A1111's gradio 3 page or Forge's gradio 4 one (their tab buttons differ).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from playwright.sync_api import Page, sync_playwright


def open_tab(page: Page, name: str) -> None:
    """A top-level tab: gradio 3's `.tab-nav` buttons, gradio 4's `role="tab"` ones."""
    exact = re.compile(rf"^\s*{re.escape(name)}\s*$")
    tabs = page.locator("#tabs")
    tabs.get_by_role("tab", name=name, exact=True).or_(
        tabs.locator("> .tab-nav > button", has_text=exact)
    ).first.click()


def shoot_accordion(page: Page, out: Path, name: str) -> None:
    page.locator("#tab_txt2img").wait_for()
    accordion = page.locator("#sd_ov_txt2img_accordion")
    accordion.locator(".label-wrap").first.click()
    page.locator("#sd_ov_txt2img_status").first.wait_for()
    page.wait_for_timeout(1000)
    accordion.screenshot(path=str(out / name))


def shoot_settings(page: Page, out: Path, name: str) -> None:
    open_tab(page, "Settings")
    page.locator("#settings").get_by_text("OpenVINO", exact=True).first.click()
    page.locator("#settings_openvino").first.wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out / name))


def shoot_tab(page: Page, out: Path, name: str) -> None:
    open_tab(page, "OpenVINO")
    page.locator("#sd_ov_preset").first.wait_for()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out / name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--prefix", default="", help="before each file name, e.g. forge-")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # "load", not "networkidle": gradio 4 keeps a connection open for its queue
        page.goto(args.url, wait_until="load", timeout=300_000)
        names = [f"{args.prefix}{n}.png" for n in ("accordion", "settings", "tab")]
        shoot_accordion(page, out, names[0])
        shoot_settings(page, out, names[1])
        shoot_tab(page, out, names[2])
        browser.close()
    print("wrote", ", ".join(str(out / n) for n in names))


if __name__ == "__main__":
    main()
