"""The demo page in a real browser: a user's key buys a WebSocket token, and a
payment made over REST shows up live, then a partial refund of it.

Chromium is Debian's (`make tools` installs it); Playwright only drives it and
never downloads a browser of its own. Playwright's async API runs on the test's
own loop, the same one that serves the app, so nothing here needs a thread.
"""

from __future__ import annotations

import os
import urllib.parse

import pytest
from playwright.async_api import async_playwright, expect

from tests.helpers import service_process, wait_healthy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000  # each step's deadline in the browser


@pytest.mark.tools
@pytest.mark.gen_test
async def test_demo_page_shows_a_new_payment_live(api, base_url):
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run `make tools`"
    user = await api.new_user()
    users_key = (await api.as_user(user["id"])).key

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))

            # As a person would: the user id is filled in from the link, the key is typed.
            await page.goto(f"{base_url}/demo?user_id={user['id']}")
            await page.fill("input[name=api_key]", users_key)
            await page.click("button")
            await expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
            assert users_key not in page.url

            payment = await api.new_payment(user["id"], amount="100.50", currency="USD")
            item = page.locator(f'#events li[data-type="payment_created"][data-id="{payment["id"]}"]')
            await expect(item).to_contain_text("100.50", timeout=WAIT_MS)

            # What a person sees: one line for the payment, the status still connected.
            assert await item.inner_text() == "payment_created 100.50 USD pending"
            assert await page.locator("#events li").count() == 1
            assert await page.locator("#status").inner_text() == "connected"

            # A partial refund: the refund's own line, then the payment's, with what went back.
            await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
            code, refund, _ = await api.post(
                f"/api/v1/payments/{payment['id']}/refunds", {"amount": "30.00", "reason": "requested_by_customer"}
            )
            assert code == 201, refund
            refunded = page.locator(f'#events li[data-type="refund_created"][data-id="{refund["id"]}"]')
            await expect(refunded).to_have_text("refund_created 30.00 USD requested_by_customer", timeout=WAIT_MS)
            updated = page.locator(f'#events li[data-type="payment_updated"][data-id="{payment["id"]}"]').last
            await expect(updated).to_have_text("payment_updated 100.50 USD completed refunded 30.00", timeout=WAIT_MS)
            assert page_errors == []
        finally:
            await browser.close()


TTL_S, GRACE_S = 4, 1  # the short-lived instance's token lifetime and expiry grace


@pytest.fixture(scope="module")
def short_lived(io_loop, services):
    """A second instance whose WebSocket tokens expire after TTL_S."""
    env = {"SINGLETON_AUTH__TOKEN_TTL_S": str(TTL_S), "SINGLETON_WEBSOCKET__TOKEN_EXPIRY_GRACE_S": str(GRACE_S)}
    with service_process(io_loop, "--role", "api", env=env) as (proc, url):
        io_loop.run_sync(lambda: wait_healthy(proc, urllib.parse.urlsplit(url).port), timeout=70)
        yield url


@pytest.mark.tools
@pytest.mark.gen_test(timeout=60)
async def test_demo_page_refreshes_its_token_before_it_expires(api, short_lived):
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: run `make tools`"
    user = await api.new_user()
    users_key = (await api.as_user(user["id"])).key

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            await page.goto(f"{short_lived}/demo?user_id={user['id']}")
            await page.fill("input[name=api_key]", users_key)
            await page.click("button")
            await expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
            # Two refreshes take it past its first token's expiry plus the grace, still connected.
            refreshed = page.locator('#events li[data-type="refreshed"]')
            await expect(refreshed).to_have_count(2, timeout=(2 * TTL_S + GRACE_S + 5) * 1000)
            assert await page.locator("#status").inner_text() == "connected"
            assert page_errors == []
        finally:
            await browser.close()
