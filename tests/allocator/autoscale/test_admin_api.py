"""The admin API client: a proxy's answers (HTML error pages, a 200 that is not the API) are
AdminApiErrors naming the call, never a JSONDecodeError that escapes the retries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from allocator.autoscale.admin_api import AdminApiError, GatewayPool, admin_call


@pytest.fixture
async def proxy() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        if request.path.endswith("/broken"):
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if request.path.endswith("/login"):
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        if request.path.endswith("/binary"):
            return web.Response(body=b"\xff\xfe\x00junk", content_type="text/plain")
        return web.json_response({"instances": [{"model": "m"}]})  # no names: not the gateway's list

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_an_html_error_page_is_an_admin_api_error_with_its_status(proxy: str) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(AdminApiError, match=r"DELETE .*/broken: 502, not JSON: '<html>") as info:
            await admin_call(s, {}, "DELETE", f"{proxy}/broken", (200,))
    assert info.value.status == 502 and not info.value.refused  # a proxy's 5xx: worth retrying


@pytest.mark.parametrize("path", ["/login", "/binary"])
async def test_a_2xx_that_is_not_json_is_an_admin_api_error_to_retry(proxy: str, path: str) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(AdminApiError, match=r"GET .*: 200") as info:
            await admin_call(s, {}, "GET", f"{proxy}{path}", (200,))
    assert info.value.status is None and not info.value.refused


async def test_an_instance_list_without_names_is_an_admin_api_error(proxy: str) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(AdminApiError, match="no list of named instances"):
            await GatewayPool(s, proxy).instances()
