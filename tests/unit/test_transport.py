"""The aiohttp transport keeps httpx's contract: its exceptions, its headers, streamed bodies."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from pathlib import Path

import httpx
import msgspec
import pytest

import adapters.guard as guard_module
from adapters.describe import describe
from adapters.guard import AddressRefused, ConnectGuard, GuardedResolver, RefusedConnection, urls_in
from adapters.transport import new_client
from adapters.urlpolicy import URLPolicy
from tests.fakes.forward_proxy import ForwardProxy
from tests.fakes.raw_http import answering, read_head, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_is_a_connect_error_described_as_such() -> None:
    async with new_client(timeout=5) as client:
        with pytest.raises(httpx.ConnectError) as raised:
            await client.get(f"http://127.0.0.1:{free_port()}/v2/")
    assert describe(raised.value) == "connection refused"


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(5)

    async with serve(silent) as url, new_client(timeout=httpx.Timeout(0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url)


async def test_garbage_instead_of_http_is_a_protocol_error() -> None:
    async with serve(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as url, new_client(timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(url)


async def test_a_body_cut_short_is_a_read_error_while_streaming() -> None:
    ten_of_a_thousand = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10

    async with (
        serve(answering(ten_of_a_thousand)) as url,
        new_client(timeout=5) as client,
        client.stream("GET", url) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.ReadError):
            await response.aread()


async def test_headers_keep_their_case_and_bodies_stream_in_pieces() -> None:
    seen: list[str] = []
    body = b"0123456789" * 300_000
    response_bytes = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Thing: yes\r\n\r\n" % len(body) + body

    async with (
        serve(answering(response_bytes, seen)) as url,
        new_client(timeout=5, headers={"User-Agent": "harbor-preheat-gateway/test"}) as client,
        client.stream("GET", url, headers={"X-Origin-Token": "t0k"}) as response,
    ):
        pieces = [piece async for piece in response.aiter_bytes()]
    assert b"".join(pieces) == body and len(pieces) > 1
    assert response.headers["x-thing"] == "yes"
    assert "X-Origin-Token: t0k" in seen and "User-Agent: harbor-preheat-gateway/test" in seen


async def test_redirects_are_handed_back_not_followed() -> None:
    to_metadata = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n"

    async with serve(answering(to_metadata)) as url, new_client(timeout=5) as client:
        response = await client.get(url)
    assert response.status_code == 307 and response.headers["location"] == "http://169.254.169.254/"


async def test_proxies_from_the_environment_are_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ForwardProxy() as proxy:
        async with serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")) as url:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            async with new_client(timeout=5) as client:
                assert (await client.get(f"{url}/through")).text == "ok"
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            async with new_client(timeout=5) as client:
                assert (await client.get(f"{url}/direct")).text == "ok"
    assert proxy.count("/through") == 1 and proxy.count("/direct") == 0


async def test_a_closed_response_is_freed_at_once_without_the_cycle_collector() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with serve(answering(ok)) as url, new_client(timeout=5) as client:
        gc.collect()
        gc.disable()
        try:
            read = await client.get(url)
            async with client.stream("GET", url) as streamed:
                await streamed.aread()
            gone = [weakref.ref(read), weakref.ref(streamed)]
            del read, streamed
            assert [ref() for ref in gone] == [None, None]
        finally:
            gc.enable()


# --- the connect-time URL policy (adapters.guard): DNS rebinding --------------------------------

PUBLIC = "192.88.99.7"
"""A global address (the deprecated 6to4 relay prefix; TEST-NET ones are not global to ``ipaddress``),
only ever handed to the resolver here: no test connects to it."""
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class ScriptedResolver:
    """An aiohttp resolver whose answers per name the test scripts (a rebinding DNS in miniature)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[dict[str, object]]:
        self.calls.append(host)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> ScriptedResolver:
    scripted = ScriptedResolver({})
    monkeypatch.setattr(guard_module, "DefaultResolver", lambda: scripted)
    return scripted


async def test_a_name_that_answers_loopback_at_connect_time_is_refused_before_a_byte_is_sent(
    dns: ScriptedResolver,
) -> None:
    heads: list[str] = []
    async with serve(answering(OK, heads)) as url:
        port = int(url.rpartition(":")[2])
        dns.answers["registry.rebind.test"] = ["127.0.0.1"]
        async with new_client(timeout=5, guard=ConnectGuard(URLPolicy())) as client:
            with pytest.raises(RefusedConnection) as raised:
                await client.get(f"http://registry.rebind.test:{port}/v2/", headers={"Authorization": "Bearer s3cret"})
    assert heads == [], "the loopback service received nothing"
    assert isinstance(raised.value, httpx.ConnectError), "callers that handle ConnectError report it"
    message = describe(raised.value)
    assert message == (
        f"host registry.rebind.test:{port} resolved to 127.0.0.1, a non-public address, at connect time: loopback, private, "
        "link-local and metadata addresses are refused unless the host is listed in registries.allow"
    )
    assert len(message) < 300, "describe keeps 300 characters: the whole message reaches the row"


@pytest.mark.parametrize(
    "answers",
    [
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["192.168.0.1"],
        ["::1"],
        ["fe80::1"],
        ["::ffff:127.0.0.1"],
        ["224.0.0.1"],
        ["0.0.0.0"],
        [PUBLIC, "127.0.0.1"],  # one bad answer spoils them all: aiohttp would fall back on it
    ],
)
async def test_every_answer_must_be_public_for_a_host_neither_allowed_nor_configured(answers: list[str]) -> None:
    resolver = GuardedResolver(ConnectGuard(URLPolicy()), inner=ScriptedResolver({"evil.test": answers}))  # type: ignore[arg-type]
    with pytest.raises(AddressRefused, match=r"evil\.test:443 resolved to .*, a non-public address, at connect time"):
        await resolver.resolve("evil.test", 443)


@pytest.mark.parametrize("allow", [("127.0.0.1",), ("127.0.0.1:8080",), ("*.evil.test",), ("10.0.0.0/8",)])
async def test_an_ip_pattern_names_an_ip_literal_host_not_the_addresses_of_other_names(allow: tuple[str, ...]) -> None:
    resolver = GuardedResolver(ConnectGuard(URLPolicy(allow)), inner=ScriptedResolver({"evil.test": ["127.0.0.1"]}))  # type: ignore[arg-type]
    with pytest.raises(AddressRefused, match=r"resolved to 127\.0\.0\.1"):
        await resolver.resolve("evil.test", 8080)


async def test_public_answers_are_handed_on_exactly_as_checked() -> None:
    inner = ScriptedResolver({"cdn.example.test": [PUBLIC, "192.88.99.8"]})
    answers = await GuardedResolver(ConnectGuard(URLPolicy()), inner=inner).resolve("cdn.example.test", 443)  # type: ignore[arg-type]
    assert [a["host"] for a in answers] == [PUBLIC, "192.88.99.8"]


@pytest.mark.parametrize(
    ("allow", "configured", "host"),
    [
        (["harbor.corp.test"], [], "harbor.corp.test"),
        (["*.corp.test"], [], "harbor.corp.test"),
        (["harbor.corp.test:{port}"], [], "harbor.corp.test"),
        (["127.0.0.0/8"], [], "anything.test"),  # a CIDR pattern is checked against the connected address
        (["*"], [], "anything.test"),
        ([], ["http://mirror.corp.test:{port}/"], "mirror.corp.test"),
        ([], ["http://MIRROR.corp.test.:{port}"], "mirror.corp.test"),
    ],
)
async def test_hosts_allowed_by_name_or_configured_by_the_operator_connect_to_any_address(
    dns: ScriptedResolver,
    allow: list[str],
    configured: list[str],
    host: str,
) -> None:
    async with serve(answering(OK)) as url:
        port = int(url.rpartition(":")[2])
        guard = ConnectGuard(
            URLPolicy(tuple(p.format(port=port) for p in allow)), configured=[c.format(port=port) for c in configured]
        )
        dns.answers[host] = ["127.0.0.1"]
        async with new_client(timeout=5, guard=guard) as client:
            assert (await client.get(f"http://{host}:{port}/")).text == "ok"


async def test_a_configured_host_is_trusted_on_its_own_port_only() -> None:
    guard = ConnectGuard(configured=["http://mirror.corp.test:5000"])
    assert guard.trusts("mirror.corp.test", 5000) and not guard.trusts("mirror.corp.test", 5001)
    assert ConnectGuard(configured=["https://idp.corp.test/jwks.json"]).trusts("idp.corp.test", 443)


async def test_an_ip_literal_is_judged_by_its_ip_before_anything_is_sent() -> None:
    heads: list[str] = []
    async with serve(answering(OK, heads)) as url:
        port = int(url.rpartition(":")[2])
        async with new_client(timeout=5, guard=ConnectGuard(URLPolicy())) as client:
            for literal in (
                f"http://127.0.0.1:{port}/",
                f"http://[::ffff:127.0.0.1]:{port}/",
                "http://169.254.169.254/latest/meta-data/",
            ):
                with pytest.raises(
                    RefusedConnection, match="is not public: loopback, private, link-local and metadata"
                ):
                    await client.get(literal)
        assert heads == []
        async with new_client(timeout=5, guard=ConnectGuard(URLPolicy(("127.0.0.1",)))) as client:
            assert (await client.get(f"{url}/")).text == "ok"
        async with new_client(timeout=5, guard=ConnectGuard(configured=[url])) as client:
            assert (await client.get(f"{url}/")).text == "ok"


async def test_a_decision_is_made_once_per_resolution_not_per_request(dns: ScriptedResolver) -> None:
    async with serve(_keep_answering(OK)) as url:
        port = int(url.rpartition(":")[2])
        dns.answers["harbor.corp.test"] = ["127.0.0.1"]
        async with new_client(timeout=5, guard=ConnectGuard(URLPolicy(("harbor.corp.test",)))) as client:
            for _ in range(50):
                assert (await client.get(f"http://harbor.corp.test:{port}/")).text == "ok"
    assert dns.calls == ["harbor.corp.test"], "aiohttp's DNS cache keeps the checked answers"


def _keep_answering(raw: bytes):  # type: ignore[no-untyped-def]
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_head(reader)
                writer.write(raw)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return answer


async def test_a_proxy_from_the_environment_is_trusted_and_resolves_what_it_fetches(
    monkeypatch: pytest.MonkeyPatch, dns: ScriptedResolver
) -> None:
    with ForwardProxy() as proxy:
        async with serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")) as url:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            async with new_client(timeout=5, guard=ConnectGuard(URLPolicy())) as client:
                # Through a proxy the proxy resolves the name: the gateway checks the name only.
                assert (await client.get(f"{url.replace('127.0.0.1', 'localhost')}/through")).text == "ok"
                with pytest.raises(RefusedConnection):  # an IP literal is judged by its IP, proxy or not
                    await client.get(f"{url}/literal")
    assert proxy.count("/through") == 1 and proxy.count("/literal") == 0
    assert dns.calls == [], "the gateway resolves neither the proxy literal nor what the proxy fetches"


def test_the_operators_endpoints_are_found_in_any_adapters_options() -> None:
    class Endpoint(msgspec.Struct):
        url: str
        username: str = ""

    class Options(msgspec.Struct):
        endpoints: list[Endpoint]
        manager: str = "http://df-manager:8080"
        note: str = "not a url"

    found = urls_in([Options([Endpoint("http://mirror-a.eu:5000"), Endpoint("https://harbor-eu.example.com")])])
    assert sorted(found) == ["http://df-manager:8080", "http://mirror-a.eu:5000", "https://harbor-eu.example.com"]


def test_every_outbound_client_of_the_service_is_guarded() -> None:
    root = Path(__file__).resolve().parents[2]
    calls = []
    for path in [*root.joinpath("adapters").rglob("*.py"), *root.joinpath("gateway").rglob("*.py")]:
        text = path.read_text()
        start = 0
        while (at := text.find("new_client(", start)) != -1:
            start = at + 1
            if text[at - 4 : at] == "def ":
                continue
            depth, end = 0, at
            for end in range(at + len("new_client"), len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.relative_to(root).as_posix(), text[at : end + 1]))
    assert {path for path, _ in calls} >= {
        "gateway/services.py",
        "gateway/jwtauth.py",
        "adapters/proxy.py",
        "adapters/dragonfly.py",
        "adapters/kraken.py",
    }
    unguarded = [f"{path}: {call}" for path, call in calls if "guard=" not in call]
    assert not unguarded, unguarded


def test_no_other_http_client_is_made_by_the_service() -> None:
    root = Path(__file__).resolve().parents[2]
    makers = ("httpx.AsyncClient(", "aiohttp.ClientSession(", "aiohttp.TCPConnector(", "urlopen(")
    found = [
        f"{path.relative_to(root)}: {maker}"
        for path in [*root.joinpath("adapters").rglob("*.py"), *root.joinpath("gateway").rglob("*.py")]
        if path.name != "transport.py"
        for maker in makers
        if maker in path.read_text()
    ]
    assert found == [], "outbound HTTP goes through adapters.transport.new_client(guard=...)"


def test_the_shared_client_trusts_the_allowlist_and_every_cluster_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import build_config
    from gateway.services import _connect_guard

    monkeypatch.setenv("DF_TOKEN", "t")
    config = build_config(
        {
            "server": {"state_dir": str(tmp_path)},
            "registries": {"allow": ["harbor.corp.test", "10.0.0.0/8"]},
            "clusters": [
                {
                    "id": 1,
                    "name": "eu",
                    "adapter": "mirror",
                    "endpoints": [{"url": "http://mirror-a.corp.test:5000"}, {"url": "https://harbor-eu.corp.test"}],
                },
                {
                    "id": 2,
                    "name": "df",
                    "adapter": "dragonfly",
                    "manager": "http://df-manager:8080",
                    "token_env": "DF_TOKEN",
                },
                {"id": 3, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
            ],
        },
        source="test",
    )
    guard = _connect_guard(config)
    assert (
        guard.trusts("harbor.corp.test", 443)
        and guard.trusts("mirror-a.corp.test", 5000)
        and guard.trusts("harbor-eu.corp.test", 443)
    )
    assert guard.trusts("df-manager", 8080)
    assert not guard.trusts("mirror-a.corp.test", 80) and not guard.trusts("evil.test", 443)
    assert guard.refusal("evil.test", 443, ["10.1.2.3"]) is None, "a CIDR pattern admits the addresses in it"
    assert guard.refusal("evil.test", 443, ["192.168.1.1"]) is not None
