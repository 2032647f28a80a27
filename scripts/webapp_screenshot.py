"""Make the README's screenshot of the web app (``docs/webapp.png``) in headless Chromium.

    python scripts/webapp_screenshot.py                       # the shipped reference weights
    python scripts/webapp_screenshot.py --model outputs/demo/ldm/pretrained --out shot.png

Serves the app on a free port of 127.0.0.1, types a prompt, generates, replaces the front
layer under a new layer prompt and saves a picture of the page. Needs playwright (the dev
extra) and Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import layergen.openmp  # noqa: F401  (first: OpenMP waiting set before torch loads)

# isort: split
import argparse
import shutil
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

from layergen.app import AppSession, make_app_server
from layergen.pipelines import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a large red star on the left and a small yellow circle on a blue striped background"
REPLACEMENT = "a small green heart"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "weights" / "demo-reference"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "webapp.png"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    session = AppSession(pipe, model_name=Path(args.model).name)
    server = make_app_server(session, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-background-networking"]
            )
            page = browser.new_page(viewport={"width": 1180, "height": 820})
            page.set_default_timeout(300_000)
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.fill("#prompt", PROMPT)
            page.fill("#seed", str(args.seed))
            page.click("#generate")
            page.wait_for_selector("body[data-version='1'][data-busy='0']")
            front = page.locator(".layer").first  # the panel lists the front layer first
            front.locator(".new-prompt").fill(REPLACEMENT)
            front.locator(".replace").click()
            page.wait_for_selector("body[data-version='2'][data-busy='0']")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        session.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
