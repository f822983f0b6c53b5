"""Proxies from the environment: HTTP(S)_PROXY honoured for API calls and downloads, NO_PROXY
and ``trust_env=False`` bypass them, and a refusing proxy is a clear error without secrets.

Every proxy here is :class:`tests._proxy.ForwardProxy` on loopback, in front of the simulator.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import wan_async
from wan_async import (
    BadRequestError,
    ConfigurationError,
    RetryPolicy,
    SubmitOutcomeUnknown,
    VideoRequest,
    WanClient,
    WanConnectionError,
)
from wan_async._transport import EnvProxies, _exempt, _no_userinfo
from wan_async.testing import FakeGateway

from ._proxy import ForwardProxy
from .conftest import make_client

pytestmark = pytest.mark.anyio

REQUEST = VideoRequest(prompt="a lighthouse at dusk", model="wan2.6-t2v", size="1280*720")
SUBMIT = "/v1/video/generations"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD")
#: A proxy password with characters that must be percent-encoded in a URL.
PASSWORD = "p@ss:w/rd-7Qx"
ENCODED = "p%40ss%3Aw%2Frd-7Qx"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy variable from the machine running the tests, and an empty netrc."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    async with ForwardProxy() as p:
        yield p


def with_credentials(url: str, user: str = "alice", password: str = ENCODED) -> str:
    return url.replace("http://", f"http://{user}:{password}@")


async def generate_and_download(gateway: FakeGateway, client: WanClient, folder: Path) -> Path:
    async with client:
        result = await client.generate(REQUEST)
        return await client.download(result, folder)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
async def test_generate_and_download_go_through_the_proxy(
    gateway: FakeGateway,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variable: str,
) -> None:
    """Submit, polls and the video download all pass through HTTP_PROXY (either case); the
    storage host gets no key through it."""
    monkeypatch.setenv(variable, proxy.url)
    saved = await generate_and_download(gateway, make_client(gateway), tmp_path)
    assert saved.stat().st_size > 0
    assert proxy.relayed == len(proxy.seen) > 0
    targets = [(seen.method, seen.target.partition("?")[0]) for seen in proxy.seen]
    assert ("POST", gateway.base_url + SUBMIT) in targets
    assert any(m == "GET" and t.startswith(gateway.base_url + SUBMIT + "/") for m, t in targets)
    downloads = [s for s in proxy.seen if s.target.startswith(gateway.storage_url)]
    assert len(downloads) == 1
    assert "Authorization" not in downloads[0].headers
    assert gateway.stats.download_auth_headers == [False]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NO_PROXY", "127.0.0.1"),
        ("no_proxy", "localhost,127.0.0.1"),
        ("NO_PROXY", "example.com, 127.0.0.0/8"),
        ("NO_PROXY", "*"),
    ],
)
async def test_no_proxy_bypasses_the_proxy(
    gateway: FakeGateway,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variable: str,
    value: str,
) -> None:
    """Hosts NO_PROXY lists are reached directly, API and storage alike."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv(variable, value)
    await generate_and_download(gateway, make_client(gateway), tmp_path)
    assert proxy.seen == []


async def test_trust_env_false_ignores_the_environment(
    gateway: FakeGateway, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``trust_env=False``: no proxy, even a broken one (it is not even parsed)."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    await generate_and_download(gateway, make_client(gateway, trust_env=False), tmp_path)
    assert proxy.seen == []


@pytest.mark.parametrize("trust_env", [False, True])
async def test_a_session_passed_in_keeps_its_own_trust_env(
    gateway: FakeGateway,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    trust_env: bool,
) -> None:
    """The client never changes a caller's session: its own trust_env decides, whatever
    WanClient's says."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with aiohttp.ClientSession(
        trust_env=trust_env, trace_configs=[wan_async.trace_config()]
    ) as session:
        client = make_client(gateway, session=session, trust_env=not trust_env)
        await generate_and_download(gateway, client, tmp_path)
    assert bool(proxy.seen) is trust_env


async def test_proxy_credentials_are_sent_to_the_proxy_only(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """user:password in the proxy URL (percent-decoded) goes as Proxy-Authorization, is not
    forwarded, and shows nowhere: not in the client's repr, nor in the logs."""
    caplog.set_level(logging.DEBUG)
    async with ForwardProxy(mode="auth", credentials=("alice", PASSWORD)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", with_credentials(proxy.url))
        client = make_client(gateway)
        try:
            created = await client.create_task(REQUEST)
            assert (await client.get_task(created.task_id)).task_id == created.task_id
        finally:
            await client.aclose()
    assert proxy.relayed == 2
    assert PASSWORD not in repr(client)
    assert ENCODED not in repr(client)
    assert PASSWORD not in caplog.text
    assert ENCODED not in caplog.text
    assert repr(EnvProxies.from_env()).count("alice") == 0


@contextlib.asynccontextmanager
async def a_session(kind: str) -> AsyncIterator[dict[str, object]]:
    """WanClient options: our own session, or a caller's that reads the environment itself
    (aiohttp's trust_env) and has no trace_config()."""
    if kind == "ours":
        yield {}
        return
    async with aiohttp.ClientSession(trust_env=True) as session:
        yield {"session": session}


@pytest.mark.parametrize("kind", ["ours", "callers"])
async def test_a_proxy_asking_for_credentials_is_a_clear_error(
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """A 407 to a plain-http request names the proxy's demand; nothing was created (only a
    forward proxy sends 407, before forwarding), so it is no SubmitOutcomeUnknown."""
    caplog.set_level(logging.DEBUG)
    async with (
        ForwardProxy(mode="auth", credentials=("alice", "right")) as proxy,
        a_session(kind) as options,
    ):
        monkeypatch.setenv("HTTP_PROXY", with_credentials(proxy.url))
        client = make_client(gateway, retry=RetryPolicy.no_wait(), **options)
        try:
            with pytest.raises(BadRequestError) as info:
                await client.create_task(REQUEST)
        finally:
            await client.aclose()
    error = info.value
    assert error.status == 407
    assert not error.task_may_exist
    assert not error.retryable
    assert len(proxy.seen) == 1  # not retried
    text = f"{error} {error!r} {caplog.text}"
    assert "Proxy Authentication Required" in text
    assert "HTTPS_PROXY / HTTP_PROXY" in str(error)
    for secret in (PASSWORD, ENCODED, gateway.api_key):
        assert secret not in text
    assert gateway.stats.requests.total() == 0


@pytest.mark.parametrize("kind", ["ours", "callers"])
async def test_a_proxy_refusing_the_tunnel_is_nothing_sent(
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """For https the proxy is asked to CONNECT first; its 407 proves the gateway got nothing
    (trace or not), and the error says what to do, without the key or the proxy's password."""
    caplog.set_level(logging.DEBUG)
    async with (
        ForwardProxy(mode="auth", credentials=("alice", "right")) as proxy,
        a_session(kind) as options,
    ):
        monkeypatch.setenv("HTTPS_PROXY", with_credentials(proxy.url))
        client = WanClient(
            api_key="sk-secret-key-1234",
            base_url=f"https://127.0.0.1:{closed_port}",
            retry=RetryPolicy.no_wait(),
            **options,  # type: ignore[arg-type]
        )
        try:
            with pytest.raises(BadRequestError) as info:
                await client.create_task(REQUEST)
        finally:
            await client.aclose()
    assert [s.method for s in proxy.seen] == ["CONNECT"]
    error = info.value
    assert error.status == 407
    assert not error.task_may_exist
    text = f"{error} {caplog.text}"
    assert "HTTPS_PROXY / HTTP_PROXY" in str(error)
    if kind == "ours":
        assert f"through the proxy {proxy.url}" in str(error)
    for secret in (PASSWORD, ENCODED, "right", "sk-secret-key-1234"):
        assert secret not in text


async def test_a_proxy_that_closes_is_a_clear_error(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that takes the request and hangs up: the submit may have been forwarded, so
    its outcome is unknown; the error names the proxy (without its password)."""
    async with ForwardProxy(mode="close") as proxy:
        monkeypatch.setenv("HTTP_PROXY", with_credentials(proxy.url))
        client = make_client(gateway, retry=RetryPolicy.no_wait(attempts=2))
        try:
            with pytest.raises(SubmitOutcomeUnknown) as submitted:
                await client.create_task(REQUEST)
            with pytest.raises(WanConnectionError) as polled:
                await client.get_task("task_x")
        finally:
            await client.aclose()
    methods = [seen.method for seen in proxy.seen]
    assert methods.count("POST") == 1  # never resubmitted
    assert methods.count("GET") >= 2  # retried (aiohttp itself retries an idempotent GET too)
    for error in (submitted.value.cause, polled.value):
        assert isinstance(error, WanConnectionError)
        assert f"through the proxy {proxy.url}" in str(error)
        assert ENCODED not in str(error)
        assert PASSWORD not in str(error)
        assert gateway.api_key not in str(error)


async def test_an_unreachable_proxy_is_nothing_sent(
    gateway: FakeGateway, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens where the proxy should be: could not connect, certainly not created."""
    monkeypatch.setenv("HTTP_PROXY", with_credentials(f"http://127.0.0.1:{closed_port}"))
    client = make_client(gateway, retry=RetryPolicy.no_wait(attempts=1))
    try:
        with pytest.raises(WanConnectionError) as info:
            await client.create_task(REQUEST)
    finally:
        await client.aclose()
    assert not info.value.task_may_exist
    assert f"could not connect to the proxy 127.0.0.1:{closed_port}" in str(info.value)
    assert ENCODED not in str(info.value)


# -- reading the environment (no network) --------------------------------------------------


def test_a_remote_proxy_is_not_used_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy elsewhere cannot reach our loopback, and plain http to it would carry the key
    across the network: loopback hosts are reached directly; other hosts use the proxy."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("HTTPS_PROXY", "proxy.invalid:3129")  # no scheme: http://
    proxies = EnvProxies.from_env()
    for url in ("http://127.0.0.1:8080/v1", "http://localhost/v1", "https://[::1]:8443/"):
        assert proxies.for_url(url) is None, url
    http = proxies.for_url("http://gateway.example:8080/v1")
    https = proxies.for_url("https://gateway.example/v1")
    assert http is not None
    assert http.url == "http://proxy.invalid:3128"
    assert https is not None
    assert https.url == "http://proxy.invalid:3129"


def test_lower_case_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """As curl and urllib: https_proxy over HTTPS_PROXY, no_proxy over NO_PROXY."""
    monkeypatch.setenv("HTTPS_PROXY", "http://upper.invalid:1")
    monkeypatch.setenv("https_proxy", "http://lower.invalid:2")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "example.com")
    proxies = EnvProxies.from_env()
    chosen = proxies.for_url("https://gateway.invalid/v1")
    assert chosen is not None
    assert chosen.host == "lower.invalid"
    assert proxies.for_url("https://api.example.com/v1") is None


@pytest.mark.parametrize(
    ("host", "no_proxy", "exempt"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "localhost", False),
        ("localhost", "localhost:8080", True),
        ("api.example.com", "example.com", True),
        ("api.example.com", ".example.com", True),
        ("api.example.com", "*.example.com", True),
        ("badexample.com", "example.com", False),
        ("EXAMPLE.com", "example.COM", True),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("11.1.2.3", "10.0.0.0/8", False),
        ("::1", "[::1]", True),
        ("::1", "::1", True),
        ("gateway.example", "", False),
        ("gateway.example", " , ,", False),
        ("gateway.example", "*", True),
    ],
)
def test_no_proxy_entries(host: str, no_proxy: str, exempt: bool) -> None:
    """Hosts, domain suffixes, networks and ``*``; ports in entries ignored."""
    assert _exempt(host, no_proxy) is exempt


@pytest.mark.parametrize(
    "value", [f"socks5://alice:{ENCODED}@127.0.0.1:1080", f"http://alice:{ENCODED}@host:port"]
)
def test_an_unusable_proxy_is_refused_at_construction(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Rather than quietly connecting around the proxy the environment names, and without
    showing its password."""
    monkeypatch.setenv("HTTPS_PROXY", value)
    with pytest.raises(ConfigurationError) as info:
        WanClient(api_key="sk-test", base_url="https://gateway.example")
    assert "HTTPS_PROXY" in str(info.value)
    assert "trust_env=False" in str(info.value)
    assert ENCODED not in str(info.value)
    assert "alice" not in str(info.value)


def test_credentials_are_scrubbed_from_aiohttp_texts() -> None:
    """aiohttp names the proxy URL it was given, credentials included, in some errors."""
    text = "407, message='Proxy Authentication Required', url='http://alice:p%40ss@127.0.0.1:3128'"
    assert _no_userinfo(RuntimeError(text)) == text.replace("alice:p%40ss@", "")
    assert _no_userinfo(RuntimeError("Server disconnected")) == "Server disconnected"
