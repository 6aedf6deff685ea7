"""The web page in a real browser (Debian's chromium driven by Playwright): a Compare run from the page streams
the same tokens the Compare RPC returns, coloured by score, with the divergence marked; the ADD slider keeps to the
server's policy; the monitor feed shows the Compare's requests. Takes a screenshot of the page; with
STEERING_SCREENSHOT=docs/img/web-compare.png it refreshes the one the README shows (otherwise it goes to a temporary
folder, so a test run leaves the working tree clean: the feed shows times and request ids)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from playwright.async_api import async_playwright
from steering_client import AsyncSteeringClient, ablate, add, clamp

from .conftest import Served

pytestmark = pytest.mark.asyncio(loop_scope="package")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
QUESTION = "i am trying to protect my computer . what should i do ?"


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
            columns = await page.eval_on_selector_all("#outputs .column", """els => els.map(e => ({
                name: e.dataset.name, ids: JSON.parse(e.dataset.tokenIds), text: e.querySelector('.text').textContent,
                diverges: e.dataset.divergesAt, coloured: [...e.querySelectorAll('.tok')].filter(
                    t => t.style.background && !t.style.background.startsWith('transparent')).length,
                marked: [...e.querySelectorAll('.tok.diverge')].map(t => Number(t.dataset.index))}))""")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(screenshot), full_page=True)
        finally:
            await browser.close()

    assert organism.grpc is not None
    async with AsyncSteeringClient(f"127.0.0.1:{organism.grpc.port}", timeout=120) as client:
        expected = await client.compare(
            messages=[("user", QUESTION)], max_new_tokens=40, temperature=1.0, seed=1,
            monitor=["misalignment", "model_diff"],
            variants={
                "unsteered": [],
                "clamp-prompt-misalignment": [clamp("misalignment", 0, positions="prompt")],
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
        assert column["coloured"] >= 1  # tokens carry their score's colour
    assert any(v.HasField("diverges_at") for v in expected.variants[1:]), "no variant diverged: a weak check"
    compared = sorted(row.split(" ", 1)[1] for row in feed)  # "<request id> http/Compare <variant>"
    assert compared == sorted(f"http/Compare {v.name}" for v in expected.variants)
    assert json.dumps(columns)  # what the page showed is plain data
