"""A job's TLS to its origin, and the operator's per registry: which requests carry which context.

A job's ``certificate_chain`` or ``insecure_skip_verify`` becomes an ``ssl.SSLContext`` that the
registry client hands the transport with every request to the job's own origin (the registry,
its token service when on the same host and port, a file's server), never to hosts it is sent
on to. ``registries.tls`` gives the transport a context per ``host[:port]`` for requests that
carry none. Small in-process https servers with certificates from a private CA show each rule.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

from adapters.base import AdapterContext, ClusterInfo, Credentials, OriginTLS, PreheatRequest
from adapters.dedupe import Deduper
from adapters.dragonfly import DragonflyAdapter, DragonflyOptions
from adapters.files import file_ref, stream_url
from adapters.oci import OciClient, RegistryAuth
from adapters.origintls import job_context, ssl_context
from adapters.redirects import get_following_redirects
from adapters.reference import OCI_MANIFEST, parse_manifest_url
from adapters.retry import FetchError, RegistryError
from adapters.streaming import DiscardSink
from adapters.transport import CertificateRejected, new_client, tls_authority
from adapters.urlpolicy import URLPolicy
from tests.pki import PrivateCA

pytestmark = pytest.mark.anyio
LOOPBACK = URLPolicy(allow=("127.0.0.1",))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- a private CA and https servers it vouches for -------------------------------------------


@dataclass
class Heard:
    """One request a test server answered."""

    method: str
    path: str
    headers: dict[str, str]


Answer = Callable[[Heard, str], tuple[int, dict[str, str], bytes]]
"""``(request, this server's base URL) -> (status, headers, body)``."""


@asynccontextmanager
async def https_server(context: ssl.SSLContext, answer: Answer, heard: list[Heard]) -> AsyncIterator[str]:
    """An https server on a free loopback port (keep-alive, so pooled connections show); yields its base URL."""
    base = ""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := (await reader.readuntil(b"\r\n\r\n")).decode("latin-1"):
                first, *lines = head.split("\r\n")
                method, path, _ = first.split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
                heard.append(Heard(method, path, headers))
                status, extra, body = answer(heard[-1], base)
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n".encode()
                    + "".join(f"{k}: {v}\r\n" for k, v in extra.items()).encode()
                    + b"\r\n"
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    base = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield base
    finally:
        server.close()


class _KeepingSink:
    """Keeps what a fetch wrote, to compare with what the server sent."""

    def __init__(self, kept: list[bytes]) -> None:
        self.kept = kept

    def write(self, chunk: bytes) -> None:
        self.kept.append(chunk)

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        self.kept.clear()


def ok(_heard: Heard, _base: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b"hello"


def redirect_to(target: str) -> Answer:
    def answer(heard: Heard, _base: str) -> tuple[int, dict[str, str], bytes]:
        return 302, {"Location": target + heard.path}, b""

    return answer


@pytest.fixture(scope="module")
def ca() -> PrivateCA:
    return PrivateCA()


@pytest.fixture(scope="module")
def stranger() -> PrivateCA:
    """Another CA: what a man in the middle would present."""
    return PrivateCA("Someone Else's CA")


# --- the transport ---------------------------------------------------------------------------


async def test_a_certificate_from_an_unknown_ca_is_rejected_saying_why(ca: PrivateCA) -> None:
    async with https_server(ca.server_context(), ok, []) as url, new_client(timeout=5) as client:
        with pytest.raises(CertificateRejected) as rejected:
            await client.get(url)
    assert "failed verification" in str(rejected.value)
    assert "issuer" in rejected.value.reason, "OpenSSL's reason: unable to get local issuer certificate"
    assert isinstance(rejected.value, httpx.ConnectError), "nothing was sent"


async def test_a_request_carrying_its_own_context_connects_with_it(ca: PrivateCA) -> None:
    async with https_server(ca.server_context(), ok, []) as url, new_client(timeout=5) as client:
        response = await client.send(client.build_request("GET", url, extensions={"ssl": ca.trusted()}))
    assert response.status_code == 200 and response.content == b"hello"


async def test_a_context_configured_for_the_host_and_port_serves_requests_that_carry_none(ca: PrivateCA) -> None:
    async with https_server(ca.server_context(), ok, []) as url:
        authority = url.removeprefix("https://")
        async with new_client(timeout=5, tls_by_host={authority: ca.trusted()}) as client:
            assert (await client.get(url)).status_code == 200
        async with new_client(timeout=5, tls_by_host={"127.0.0.1": ca.trusted()}) as client:
            with pytest.raises(CertificateRejected):
                await client.get(url)  # a host alone is port 443


def test_a_host_alone_means_port_443_and_anything_but_host_and_port_is_refused() -> None:
    assert tls_authority("Harbor.Internal") == ("harbor.internal", 443)
    assert tls_authority("harbor.internal:8443") == ("harbor.internal", 8443)
    assert tls_authority("[fd00::1]:8443") == ("fd00::1", 8443)
    for bad in ("https://harbor.internal", "harbor.internal/v2", "robot@harbor.internal", "h:0", "h:99999", ""):
        with pytest.raises(ValueError):
            tls_authority(bad)


async def test_a_requests_own_context_wins_over_its_hosts(ca: PrivateCA, stranger: PrivateCA) -> None:
    async with https_server(ca.server_context(), ok, []) as url:
        authority = url.removeprefix("https://")
        async with new_client(timeout=5, tls_by_host={authority: stranger.trusted()}) as client:
            own = client.build_request("GET", url, extensions={"ssl": ca.trusted()})
            assert (await client.send(own)).status_code == 200
        async with new_client(timeout=5, tls_by_host={authority: ca.trusted()}) as client:
            with pytest.raises(CertificateRejected):
                await client.send(client.build_request("GET", url, extensions={"ssl": stranger.trusted()}))


async def test_a_connection_opened_under_one_context_never_serves_a_request_under_another(ca: PrivateCA) -> None:
    heard: list[Heard] = []
    async with https_server(ca.server_context(), ok, heard) as url, new_client(timeout=5) as client:
        trusted = client.build_request("GET", url, extensions={"ssl": ca.trusted()})
        assert (await client.send(trusted)).status_code == 200  # kept alive in the pool
        with pytest.raises(CertificateRejected):
            await client.get(url)
    assert len(heard) == 1


async def test_a_context_is_not_used_through_an_https_proxy_whose_own_tls_it_would_replace(ca: PrivateCA) -> None:
    async with new_client(timeout=5, proxy=httpx.Proxy("https://127.0.0.1:9")) as client:
        with pytest.raises(httpx.ProxyError, match="through the https proxy"):
            await client.send(
                client.build_request("GET", "https://harbor.internal/v2/", extensions={"ssl": ca.trusted()})
            )


# --- redirects, the registry client, files ---------------------------------------------------


async def test_a_redirect_to_another_origin_is_verified_as_the_client_verifies_it_not_with_the_jobs_ca(
    ca: PrivateCA,
) -> None:
    storage_heard: list[Heard] = []
    async with (
        https_server(ca.server_context(), ok, storage_heard) as storage,
        https_server(ca.server_context(), redirect_to(storage), []) as registry,
    ):
        async with new_client(timeout=5) as client:
            with pytest.raises(CertificateRejected) as rejected:
                await get_following_redirects(client, LOOPBACK, f"{registry}/blob", {}, {}, ssl_context=ca.trusted())
        assert str(rejected.value.request.url).startswith(storage), "the registry itself was reached with the job's CA"
        assert storage_heard == []
        storage_authority = storage.removeprefix("https://")
        async with new_client(timeout=5, tls_by_host={storage_authority: ca.trusted()}) as client:
            response = await get_following_redirects(
                client, LOOPBACK, f"{registry}/blob", {}, {}, ssl_context=ca.trusted()
            )
            assert response.status_code == 200 and str(response.request.url) == f"{storage}/blob"
            assert "ssl" not in response.request.extensions, "a redirect target is sent no context of the job's"
            await response.aclose()


async def test_a_redirect_within_the_registrys_origin_keeps_the_jobs_ca(ca: PrivateCA) -> None:
    def answer(heard: Heard, base: str) -> tuple[int, dict[str, str], bytes]:
        return (302, {"Location": f"{base}/moved"}, b"") if heard.path == "/first" else (200, {}, b"moved")

    async with https_server(ca.server_context(), answer, []) as registry, new_client(timeout=5) as client:
        response = await get_following_redirects(
            client, LOOPBACK, f"{registry}/first", {}, {}, ssl_context=ca.trusted()
        )
        assert (await response.aread()) == b"moved"


MANIFEST = msgspec.json.encode(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64, "size": 2},
        "layers": [],
    }
)


def registry_with_tokens(realm: str | None = None) -> Answer:
    """A registry answering 401 with a Bearer challenge (realm: its own ``/token`` unless given), then the manifest."""

    def answer(heard: Heard, base: str) -> tuple[int, dict[str, str], bytes]:
        if heard.path.startswith("/token"):
            return 200, {"Content-Type": "application/json"}, b'{"token": "pull-token", "expires_in": 300}'
        if heard.headers.get("authorization") != "Bearer pull-token":
            challenge = f'Bearer realm="{realm or base + "/token"}",service="registry"'
            return 401, {"WWW-Authenticate": challenge}, b'{"errors": []}'
        return 200, {"Content-Type": OCI_MANIFEST}, MANIFEST

    return answer


async def test_the_token_service_on_the_registrys_own_origin_is_reached_with_the_jobs_ca(ca: PrivateCA) -> None:
    heard: list[Heard] = []
    async with (
        https_server(ca.server_context(), registry_with_tokens(), heard) as registry,
        new_client(timeout=5) as http,
    ):
        oci = OciClient(http, LOOPBACK)
        ref = parse_manifest_url(f"{registry}/v2/library/app/manifests/1.0")
        manifest = await oci.get_manifest(ref, RegistryAuth(ssl=ca.trusted()))
    assert manifest.digest == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert [h.path.partition("?")[0] for h in heard] == [
        "/v2/library/app/manifests/1.0",
        "/token",
        "/v2/library/app/manifests/1.0",
    ]


async def test_a_token_service_on_another_host_is_not_reached_with_the_jobs_ca(ca: PrivateCA) -> None:
    tokens: list[Heard] = []
    async with (
        https_server(ca.server_context(), registry_with_tokens(), tokens) as token_service,
        https_server(ca.server_context(), registry_with_tokens(f"{token_service}/token"), []) as registry,
        new_client(timeout=5) as http,
    ):
        oci = OciClient(http, LOOPBACK)
        ref = parse_manifest_url(f"{registry}/v2/library/app/manifests/1.0")
        with pytest.raises(RegistryError, match="token service") as failed:
            await oci.get_manifest(ref, RegistryAuth(ssl=ca.trusted()))
    assert "failed verification" in str(failed.value) and "registries.tls" in str(failed.value)
    assert "certificate_chain" not in str(failed.value), "the job's chain is not for that host"
    assert tokens == []


async def test_a_certificate_that_fails_verification_fails_at_once_saying_what_to_send(ca: PrivateCA) -> None:
    async with https_server(ca.server_context(), ok, []) as registry, new_client(timeout=5) as http:
        oci = OciClient(http, LOOPBACK)
        ref = parse_manifest_url(f"{registry}/v2/library/app/manifests/1.0")
        with pytest.raises(RegistryError) as failed:
            await oci.get_manifest(ref, RegistryAuth())
    message = str(failed.value)
    assert "TLS certificate of 127.0.0.1:" in message and "failed verification" in message
    assert "certificate_chain" in message and "registries.tls" in message and "insecure_skip_verify" in message
    assert not failed.value.transient and oci.retries == 0, "the same certificate fails the same way"


async def test_a_challenge_or_token_heard_over_a_jobs_own_tls_serves_no_job_over_another(ca: PrivateCA) -> None:
    heard: list[Heard] = []
    async with https_server(ca.server_context(), registry_with_tokens(), heard) as registry:
        authority = registry.removeprefix("https://")
        async with new_client(timeout=5, tls_by_host={authority: ca.trusted()}) as http:
            oci = OciClient(http, LOOPBACK)
            ref = parse_manifest_url(f"{registry}/v2/library/app/manifests/1.0")
            insecure = ssl_context(OriginTLS(insecure_skip_verify=True))
            await oci.get_manifest(ref, RegistryAuth(ssl=insecure))
            first_job = len(heard)
            await oci.get_manifest(ref, RegistryAuth())  # verified with registries.tls
    paths = [h.path.partition("?")[0] for h in heard[first_job:]]
    assert paths == ["/v2/library/app/manifests/1.0", "/token", "/v2/library/app/manifests/1.0"], (
        "the verified job asks the registry itself, and gets its own token"
    )


async def test_a_file_is_fetched_with_the_jobs_ca_and_without_it_fails_saying_so(ca: PrivateCA) -> None:
    async with https_server(ca.server_context(), ok, []) as server, new_client(timeout=5) as http:
        ref = file_ref(f"{server}/models/a.bin")
        kept: list[bytes] = []
        size = await stream_url(http, LOOPBACK, ref, lambda: _KeepingSink(kept), ssl_context=ca.trusted())
        assert (size, b"".join(kept)) == (5, b"hello")
        with pytest.raises(FetchError) as failed:
            await stream_url(http, LOOPBACK, ref, DiscardSink)
    assert "failed verification" in str(failed.value) and "certificate_chain" in str(failed.value)
    assert not failed.value.transient


# --- what the adapters make of a request's origin_tls ------------------------------------------


def test_a_job_without_tls_of_its_own_carries_no_context() -> None:
    assert job_context(None) is None
    assert job_context(OriginTLS()) is None
    assert job_context(OriginTLS(insecure_skip_verify=True)).verify_mode == ssl.CERT_NONE  # type: ignore[union-attr]


def test_a_dragonfly_job_carries_each_certificate_as_base64_of_its_pem_and_skip_verify_when_set(
    ca: PrivateCA, stranger: PrivateCA
) -> None:
    http = httpx.AsyncClient()
    context = AdapterContext(
        http=http,
        oci=OciClient(http, URLPolicy()),
        policy=URLPolicy(),
        dedupe=Deduper(),
        credentials_for=lambda _host: None,
        hostname="gateway",
        ip="127.0.0.1",
    )
    adapter = DragonflyAdapter(ClusterInfo(id=3, name="df"), DragonflyOptions(manager="http://df:8080"), context)

    def body(tls: OriginTLS | None) -> dict[str, Any]:
        request = PreheatRequest(
            job_id=1, type="image", urls=("https://harbor.internal/v2/a/manifests/1",), origin_tls=tls
        )
        args: dict[str, Any] = adapter._create_body(request)["args"]
        return args

    chain = body(OriginTLS(certificate_chain=(ca.pem, stranger.pem)))["certificate_chain"]
    assert [base64.b64decode(item).decode() for item in chain] == [ca.pem, stranger.pem]
    assert "insecure_skip_verify" not in body(OriginTLS(certificate_chain=(ca.pem,)))
    assert body(OriginTLS(insecure_skip_verify=True))["insecure_skip_verify"] is True
    assert not {"certificate_chain", "insecure_skip_verify"} & set(body(None))


def test_credentials_are_redacted_and_the_context_is_left_out_of_an_auths_repr(ca: PrivateCA) -> None:
    auth = RegistryAuth(header="Bearer x", credentials=Credentials("robot", "secret"), ssl=ca.trusted())
    assert "secret" not in repr(auth) and "SSLContext" not in repr(auth)
