"""The console in a real browser: Debian's Chromium driven by Playwright (no browser download).

Screenshots go to ``tests/artifacts/`` (git-ignored). ``FNRT_CONSOLE_SCREENSHOT=1`` also
refreshes ``docs/console.png``, the README's picture. Without chromium or playwright the test
skips, except under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

import fnrt

pytest.importorskip("aiohttp")

from fnrt.http import InvokeServer

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUEUED_OR_LEASED = """name => ["queued", "leased"].reduce((n, metric) => n + Number(
    document.querySelector(`#sec-queues [data-metric="${metric}"][data-function="${name}"]`)
        ?.textContent || 0), 0) >= 1"""
WAIT_MS = 15_000  # for the page to show what the runtime did (synchronization, not timing)


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the browser test must run under CI: {why}")
    pytest.skip(why)


def _chromium() -> str:
    path = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if path is None:
        _unavailable("no chromium: apt-get install chromium (.ci/run does)")
    assert path is not None
    return path


async def test_the_console_in_a_browser(release_file):
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        _unavailable("no playwright: pip install -e '.[test]'")
    chromium = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    async with fnrt.Runtime(concurrency_limit=10, unreserved_minimum=0) as rt:
        await rt.deploy("handlers.echo")
        await rt.deploy("handlers.shop")
        await rt.add_function("hold", "handlers.chaos:hold", reserved_concurrency=1, timeout=60)
        stream = await rt.create_stream("orders", shard_count=2)
        mapping = await rt.add_stream_mapping("orders", "noop", batch_size=10)
        server = InvokeServer(rt, port=0)
        server.console.interval = 0.2  # a livelier page for the test
        held: asyncio.Future[object] | None = None
        async with server, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
                await page.goto(f"{server.url}/console/")
                await expect(page.get_by_role("heading", name="fnrt console")).to_be_visible()
                await expect(page.locator("#live-status")).to_contain_text("Live", timeout=WAIT_MS)

                # Invoke from the form, with the keyboard: the result and the log appear.
                form = page.locator("#invoke-form")
                await form.get_by_label("Function").select_option("echo")
                await page.get_by_label("Payload (JSON)").fill('{"hello": "browser"}')
                await page.get_by_role("button", name="Invoke").focus()
                await page.keyboard.press("Enter")
                await expect(page.locator("#invoke-output")).to_contain_text('"hello": "browser"')
                await expect(page.locator("#invoke-log")).to_contain_text("REPORT RequestId")
                rid = rt.recent.select("echo")[0].request_id
                recent = page.locator("#sec-recent")
                await expect(recent.get_by_role("link", name=rid)).to_be_visible(timeout=WAIT_MS)
                await page.screenshot(path=ARTIFACTS / "console-invoked.png")

                # A live update does not take the keyboard focus away: the list holding it
                # waits, and catches up once the focus leaves.
                link = recent.get_by_role("link", name=rid)
                await link.focus()
                newer = (await rt.invoke_detailed("noop")).request_id
                ticks = await page.evaluate("() => window.fnrtConsole.ticks")
                await page.wait_for_function(
                    f"() => window.fnrtConsole.ticks >= {ticks + 2}", timeout=WAIT_MS
                )
                await expect(link).to_be_focused()
                await expect(recent.get_by_role("link", name=newer)).to_have_count(0)
                await page.get_by_label("Payload (JSON)").focus()
                await expect(recent.get_by_role("link", name=newer)).to_be_visible(timeout=WAIT_MS)

                # Hold the one reserved slot, then cause a throttle from the form.
                held = asyncio.ensure_future(rt.invoke("hold", {"release": release_file}))
                await wait_until(lambda: rt.stats()["functions"]["hold"]["in_flight"] == 1, "hold busy")
                await form.get_by_label("Function").select_option("hold")
                await page.get_by_label("Payload (JSON)").fill(f'{{"release": "{release_file}"}}')
                await page.get_by_role("button", name="Invoke").click()
                await expect(page.locator("#invoke-result")).to_contain_text(
                    "ReservedFunctionConcurrentInvocationLimitExceeded"
                )
                throttles = page.locator('#sec-functions [data-metric="throttles"][data-function="hold"]')
                await expect(throttles).to_have_text("1", timeout=WAIT_MS)
                await expect(page.locator('[data-chart="counts:hold"] .chart-summary')).to_have_attribute(
                    "data-throttles", "1", timeout=WAIT_MS
                )
                plotted = await page.evaluate(
                    "() => window.fnrtConsole.plots['counts:hold'].data[3].reduce((a, v) => a + (v || 0), 0)"
                )
                assert plotted == 1  # the throttles series of the chart moved

                # An Event for the held function waits in the async queue.
                await page.get_by_label("Event (queued)").check()
                await page.get_by_role("button", name="Invoke").click()
                await expect(page.locator("#invoke-result")).to_contain_text("status 202")
                await page.wait_for_function(QUEUED_OR_LEASED, arg="hold", timeout=WAIT_MS)
                open(release_file, "w").close()
                await held

                # A stream's records are read: its iterator age shows, and gets a chart.
                await stream.put_records([("a", "k1"), ("b", "k2"), ("c", "k3")])
                await wait_until(lambda: mapping.iterator_age().get("count", 0) >= 1, "a batch read")
                age = page.locator(f'[data-metric="iterator-age"][data-mapping="{mapping.uuid}"]')
                await expect(age).not_to_have_text("\u2013", timeout=WAIT_MS)
                await expect(page.locator(f'[data-chart="age:{mapping.uuid}"]')).to_be_visible(
                    timeout=WAIT_MS
                )
                await expect(page.locator("#sec-streams")).to_contain_text("shardId-000000000001")
                await page.screenshot(path=ARTIFACTS / "console-live.png", full_page=True)
                if os.environ.get("FNRT_CONSOLE_SCREENSHOT"):  # the README's picture: the top
                    await page.evaluate("window.scrollTo(0, 0)")
                    await page.screenshot(path=ROOT / "docs" / "console.png")

                assert errors == []  # no script error, no asset missing
                # The detail view of the invocation from the form (leaving ends the event stream).
                await recent.get_by_role("link", name=rid).first.click()
                await expect(page.get_by_role("heading", name=f"Invocation {rid}")).to_be_visible()
                await expect(page.locator("main")).to_contain_text("Billed duration")
                await expect(page.locator("main")).to_contain_text('{"hello":"browser"}')
                await page.screenshot(path=ARTIFACTS / "console-detail.png")

                # Without JavaScript: the tables are there and the form still invokes.
                context = await browser.new_context(java_script_enabled=False)
                static = await context.new_page()
                await static.goto(f"{server.url}/console/")
                await expect(static.locator("#sec-functions")).to_contain_text("handlers.echo.echo")
                await expect(static.locator("#sec-queues")).to_contain_text("hold")
                await static.locator("#invoke-form").get_by_label("Function").select_option("echo")
                await static.get_by_label("Payload (JSON)").fill('{"no": "script"}')
                await static.get_by_role("button", name="Invoke").click()
                await expect(static.locator("#invoke-output")).to_contain_text('"no": "script"')
                await static.screenshot(path=ARTIFACTS / "console-no-javascript.png")
                await context.close()
            finally:
                open(release_file, "w").close()
                await browser.close()
            if held is not None:
                await held  # released at the latest by the finally above
