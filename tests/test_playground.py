"""The playground page in a real headless Chromium (Debian's ``chromium`` driven by ``playwright``):
load it from a server on a free loopback port, choose a model and a tool, type, run, see the result,
then an error for bad input; a screenshot is saved. Nothing on the page may come from elsewhere."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from test_serve import Server, build_models  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = os.environ.get("LMZOO_PLAYGROUND_SCREENSHOT")  # e.g. docs/playground.png to refresh the README's

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                                   reason="needs Debian's chromium (apt-get install chromium)")]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folders = build_models(tmp_path_factory.mktemp("playground"))
    server = Server({k: folders[k] for k in ("gpt", "bert", "t5", "cls")})
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1200, "height": 820})
        foreign: list[str] = []
        tab.on("request", lambda r: None if r.url.startswith(server.url) else foreign.append(r.url))
        tab.goto(server.url + "/")
        tab.wait_for_selector("body[data-ready=true]")
        yield tab, foreign, tmp_path_factory
        browser.close()
    server.stop()


def choose(tab, model: str, tool: str, text: str) -> None:
    tab.get_by_test_id("model-select").select_option(model)
    tab.get_by_test_id("tool-select").select_option(tool)
    tab.get_by_test_id("input-text").fill(text)
    tab.get_by_test_id("run-button").click()


def test_fill_mask_shows_top_k_bars(page):
    tab, foreign, _ = page
    choose(tab, "bert", "fill-mask", "the king [MASK] the queen")
    tab.wait_for_selector("[data-testid=output] .bar")
    assert tab.locator("[data-testid=output] .bar").count() == 5  # top-k 5
    assert tab.get_by_test_id("output").inner_text().startswith("mask 1")
    assert tab.get_by_test_id("error").inner_text() == ""
    assert foreign == []


def test_generation_streams_into_the_output(page):
    tab, _, _ = page
    choose(tab, "gpt", "generate", "the king")
    tab.wait_for_function("document.querySelector('#run').disabled === false")
    streamed = tab.get_by_test_id("stream").inner_text()
    assert len(streamed) > 0
    assert tab.get_by_test_id("output").inner_text().startswith("the king")


def test_classify_translate_and_explain(page):
    tab, foreign, _ = page
    choose(tab, "cls", "predict", "the king speaks")
    tab.wait_for_selector("[data-testid=output] .bar")
    assert {"neg", "pos"} <= set(tab.locator("[data-testid=output] .bar .label").all_inner_texts())
    choose(tab, "t5", "text2text", "translate: the king")
    tab.wait_for_selector("[data-testid=output] .text")
    tab.get_by_test_id("model-select").select_option("bert")
    tab.get_by_test_id("tool-select").select_option("explain")
    tab.get_by_test_id("objective-select").select_option("mlm")
    tab.get_by_test_id("input-text").fill("the king and the queen of the castle speak with a knight")
    tab.get_by_test_id("run-button").click()
    tab.wait_for_selector("[data-testid=output] .chip")
    assert tab.locator("[data-testid=output] .chip.masked, [data-testid=output] .chip.kept, "
                       "[data-testid=output] .chip.replaced").count() >= 1
    assert foreign == []


def test_bad_input_shows_an_error_and_a_screenshot_is_saved(page):
    tab, _, factory = page
    choose(tab, "bert", "fill-mask", "no blank in this text")
    tab.wait_for_function("document.querySelector('[data-testid=error]').textContent.length > 0")
    assert "no mask in the text" in tab.get_by_test_id("error").inner_text()
    choose(tab, "bert", "fill-mask", "the king and [MASK] of the castle")  # the page recovers
    tab.wait_for_selector("[data-testid=output] .bar")
    assert tab.get_by_test_id("error").inner_text() == ""
    shot = factory.mktemp("shots") / "playground.png"
    tab.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if SCREENSHOT:
        shutil.copy(shot, SCREENSHOT)
