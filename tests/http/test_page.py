"""The web page in a real browser (Debian's chromium driven by Playwright): a Compare run from the page streams
the same tokens the Compare RPC returns, coloured by score, with the divergence marked; the ADD slider keeps to the
server's policy; the monitor feed shows the Compare's requests. Takes a screenshot of the page; with
STEERING_SCREENSHOT=docs/img/web-compare.png it refreshes the one the README shows (otherwise it goes to a temporary
folder, so a test run leaves the working tree clean: the feed shows times and request ids)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.async_api import async_playwright
from steering_client import AsyncSteeringClient, ablate, add, clamp

from .conftest import Served

pytestmark = pytest.mark.asyncio(loop_scope="package")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
QUESTION = "i am trying to cook rice . what should i do ?"


async def test_a_compare_on_the_page_equals_the_compare_rpc(organism: Served, tmp_path: Path) -> None:
    screenshot = Path(os.environ.get("STEERING_SCREENSHOT") or tmp_path / "web-compare.png")
    assert Path(CHROMIUM).exists(), "chromium is missing: scripts/test.sh installs it (apt-get install chromium)"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            await page.goto(f"{organism.url}/")
            await page.wait_for_selector("body[data-ready=true]")
            names = await page.eval_on_selector_all("#variants tr.variant input.name", "els => els.map(e => e.value)")
            assert names == ["unsteered", "clamp-prompt-misalignment", "ablate-misalignment", "add-misalignment"]
            # Red-teaming is off: the ADD slider stops at 0 (no inducing), and a negative push is allowed.
            add_row = page.locator("#variants tr.variant").nth(3)
            assert await add_row.locator("input.strength-range").get_attribute("max") == "0"
            await add_row.locator("input.strength-value").fill("-1.5")
            await add_row.locator("input.strength-value").dispatch_event("change")
            await page.fill("#prompt", QUESTION)
            await page.fill("#seed", "1")
            await page.fill("#temperature", "1")
            await page.fill("#max_tokens", "40")
            # The monitor feed (the organism's server runs --open-admin: no token) watches the Compare's requests.
            await page.click("#watch_toggle")
            await page.wait_for_selector("#watch_state:text('watching')")
            await page.click("#run")
            await page.wait_for_selector("#outputs[data-state=done]", timeout=120_000)
            await page.wait_for_function("document.querySelectorAll('#feed tbody tr').length >= 4", timeout=60_000)
            feed = await page.eval_on_selector_all("#feed tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
            colour_by = await page.eval_on_selector("#colour_by", "e => e.value")
            columns = await page.eval_on_selector_all("#outputs .column", """els => els.map(e => ({
                name: e.dataset.name, ids: JSON.parse(e.dataset.tokenIds), text: e.querySelector('.text').textContent,
                diverges: e.dataset.divergesAt,
                tokens: [...e.querySelectorAll('.tok')].map(t => [Number(t.dataset.index), t.style.backgroundColor]),
                marked: [...e.querySelectorAll('.tok.diverge')].map(t => Number(t.dataset.index))}))""")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(screenshot), full_page=True)
        finally:
            await browser.close()

    assert organism.grpc is not None
    async with AsyncSteeringClient(f"127.0.0.1:{organism.grpc.port}", timeout=120) as client:
        recipe = (await client.get_direction("misalignment")).removal  # the page runs it on its layers
        assert list(recipe.layers) == [0, 1, 2, 3, 4]
        expected = await client.compare(
            messages=[("user", QUESTION)], max_new_tokens=40, temperature=1.0, seed=1,
            monitor=["misalignment", "model_diff"], token_scores=True,
            variants={
                "unsteered": [],
                "clamp-prompt-misalignment": [clamp("misalignment", 0, layers=recipe.layers, positions="prompt")],
                "ablate-misalignment": [ablate("misalignment", 1)],
                "add-misalignment": [add("misalignment", -1.5)],
            },
        )
    assert [c["name"] for c in columns] == [v.name for v in expected.variants]
    for column, variant in zip(columns, expected.variants, strict=True):
        assert column["ids"] == list(variant.result.token_ids), column["name"]
        assert column["text"] == variant.result.text, column["name"]
        at = variant.diverges_at if variant.HasField("diverges_at") else None
        assert column["diverges"] == ("" if at is None else str(at)), column["name"]
        assert column["marked"] == ([] if at is None or column is columns[0] else [at])
        # Every token carries the colour of its own score on the "colour by" direction, as the legend reads it:
        # token k's is the reading at the position that produced it (the last prompt token's for k = 0).
        read = next(s for s in variant.result.monitor if s.direction == colour_by)
        scores = [read.prompt_score, *read.token_scores]
        assert [i for i, _ in column["tokens"]] == list(range(len(variant.result.token_ids))), column["name"]
        for (i, shown), score in zip(column["tokens"], scores, strict=True):
            assert _close(_rgba(shown), _legend_colour(score)), (column["name"], i, shown, score)
    assert any(v.HasField("diverges_at") for v in expected.variants[1:]), "no variant diverged: a weak check"
    compared = sorted(row.split(" ", 1)[1] for row in feed)  # "<request id> http/Compare <variant>"
    assert compared == sorted(f"http/Compare {v.name}" for v in expected.variants)
    assert colour_by == "misalignment"  # the page colours by the first direction: the one the legend explains
    # Not a vacuous check: the shades differ from token to token (the scores do).
    shades = {round(_rgba(t[1])[3], 2) for c in columns for t in c["tokens"]}
    assert len(shades) >= 5, shades


_RED, _BLUE = (214, 48, 39), (49, 104, 200)  # the legend's: red above the benign mean (z >= 0), blue below


def _legend_colour(z: float) -> tuple[float, float, float, float]:
    """The page's colour for a z-scored reading: its sign's hue, opacity 0.55 x |z| / 4, saturating at |z| = 4."""
    return (*(_RED if z >= 0 else _BLUE), min(abs(z) / 4, 1) * 0.55)


def _rgba(css: str) -> tuple[float, float, float, float]:
    match = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", css)
    assert match, f"not a colour: {css!r}"
    r, g, b, a = match.groups()
    return float(r), float(g), float(b), 1.0 if a is None else float(a)


def _close(shown: tuple[float, ...], expected: tuple[float, ...]) -> bool:
    # The browser keeps an opacity to 8 bits (1/255) and may print it rounded to 3 decimals.
    return shown[:3] == expected[:3] and abs(shown[3] - expected[3]) <= 0.006
