"""The web app end to end in headless Chromium (playwright driving Debian's ``chromium``):
type a prompt, generate, replace a layer, download the PSD and re-open it with psd-tools,
reorder and hide layers, open the PSD again. Skips, saying why, without playwright or
chromium (``.ci/run`` installs both)."""

import shutil
import threading
from pathlib import Path

import pytest
from pipeline_components import tiny_pipeline
from psd_tools import PSDImage

from layergen.app import AppSession, make_app_server

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)

PROMPT = "a large red star on the left and a small blue circle <b>on</b> a plain background"
LAYER_PROMPTS = ["a plain background", "a large red star", "a small blue circle"]


@pytest.fixture
def base_url(tmp_path):
    session = AppSession(tiny_pipeline(tmp_path), model_name="tiny", workdir=tmp_path / "work")
    server = make_app_server(session, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    session.close()


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(60_000)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        browser.close()
        assert not errors, errors


def wait_for_version(page, version: int) -> None:
    page.wait_for_selector(f"body[data-version='{version}'][data-busy='0']")
    assert "error" not in (page.get_attribute("#status", "class") or ""), page.text_content(
        "#status"
    )


def layer_prompts(page) -> list[str]:
    """The layer prompts on the page, background first (the panel lists the front first)."""
    return page.locator(".layer .prompt").all_text_contents()[::-1]


def test_generate_replace_download_in_chromium(base_url, page, tmp_path):
    page.goto(base_url)
    page.wait_for_selector("body[data-version='0']")
    page.fill("#prompt", PROMPT)
    page.fill("#layer-prompts", "\n".join(LAYER_PROMPTS))
    page.fill("#steps", "2")
    page.fill("#guidance", "1")
    page.click("#generate")
    wait_for_version(page, 1)
    assert layer_prompts(page) == LAYER_PROMPTS
    # the prompt is shown as text: its <b> is not an element
    assert page.text_content("#doc-prompt") == PROMPT
    assert page.locator("#doc-prompt b").count() == 0
    for image in ("#composite", ".layer[data-layer='2'] .rgba", ".layer[data-layer='2'] .mask"):
        assert page.eval_on_selector(image, "e => e.complete && e.naturalWidth") == 16

    # replace the front layer
    row = page.locator(".layer[data-layer='2']")
    row.locator(".new-prompt").fill("a small green heart")
    row.locator(".replace").click()
    wait_for_version(page, 2)
    assert layer_prompts(page) == [*LAYER_PROMPTS[:2], "a small green heart"]

    # download the PSD and re-open it with psd-tools
    with page.expect_download() as download:
        page.click("#download-psd")
    psd_path = tmp_path / "downloaded.psd"
    download.value.save_as(psd_path)
    psd = PSDImage.open(psd_path)
    assert [layer.name for layer in psd] == [*LAYER_PROMPTS[:2], "a small green heart"]
    assert psd.size == (16, 16)

    # reorder (bring layer 1 forward), hide a layer, then open the downloaded PSD again
    page.locator(".layer[data-layer='1'] .up").click()
    wait_for_version(page, 3)
    assert layer_prompts(page) == [LAYER_PROMPTS[0], "a small green heart", LAYER_PROMPTS[1]]
    page.locator(".layer[data-layer='2'] .visible").uncheck()
    wait_for_version(page, 4)
    assert page.locator(".layer.hidden-layer").count() == 1
    page.set_input_files("#upload", str(Path(psd_path)))
    wait_for_version(page, 5)
    assert layer_prompts(page) == [*LAYER_PROMPTS[:2], "a small green heart"]

    # a refused request shows its reason, naming the field
    page.fill("#steps", "0")
    page.click("#generate")
    page.wait_for_selector("#status.error")
    assert page.text_content("#status").startswith("steps:")
