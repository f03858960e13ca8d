"""A hostile registry cannot exhaust the gateway's memory or disk, nor steer its requests (issue 17, section 1).

Each test points a real gateway process at a small registry of its own that lies: endless or
compressed error bodies, blobs longer or shorter than their manifest says, absurd sizes, error
messages of megabytes, indexes of many large manifests, manifests nested a hundred thousand
deep and digests that are paths. The gateway must fail the job with a message saying what
the registry did, quickly, with its peak RSS under the limit, nothing left on disk, and no
request sent anywhere the manifests did not properly name.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import MakeGateway
from tests.gateway_process import gateway_config
from tests.security.hostile import (
    Exchange,
    Handler,
    HostileServer,
    disk_bytes,
    image_manifest,
    sha256,
    survival,
)
from tests.security.registry_attacks import (
    OCI_INDEX,
    distribution_error,
    gzip_bomb,
    index_entry,
    oci_index,
    run_job,
    send_manifest,
)

CONFIG = b'{"architecture": "amd64", "os": "linux"}'
LAYER = b"a small honest layer"
MANIFEST_PATH = "/v2/library/app/manifests/1.0"
MIB = 1 << 20


def manifest_url(server: HostileServer) -> str:
    return f"{server.url}{MANIFEST_PATH}"


def blob_path(digest: str) -> str:
    return f"/v2/library/app/blobs/{digest}"


def serving(
    manifest: bytes,
    blobs: dict[str, bytes] | None = None,
    media_type: str = "application/vnd.oci.image.manifest.v1+json",
) -> Handler:
    """A registry that serves ``manifest`` for the tag and ``blobs`` (plus the config) by digest; 404 otherwise."""
    known = {sha256(CONFIG): CONFIG, **(blobs or {})}

    def answer(exchange: Exchange) -> None:
        if exchange.path == MANIFEST_PATH:
            send_manifest(exchange, manifest, media_type)
        elif (
            exchange.path.startswith("/v2/library/app/blobs/")
            and (body := known.get(exchange.path.rsplit("/", 1)[1])) is not None
        ):
            exchange.send(200, body, {"Content-Type": "application/octet-stream"})
        else:
            exchange.json(404, {"errors": [{"code": "NOT_FOUND", "message": "no such thing"}]})

    return answer


# --- 1. nothing read from outside is unbounded -------------------------------------------------


def test_a_404_with_a_512_mib_body_is_read_no_further_than_a_small_cap(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    sent: list[int] = []

    def endless_404(exchange: Exchange) -> None:
        exchange.head(404, {"Content-Type": "application/json", "Content-Length": str(512 * MIB)})
        sent.append(exchange.stream(b'{"errors": [' * 4096, 512 * MIB))

    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(endless_404) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    assert f"manifest 127.0.0.1:{registry.port}/library/app:1.0 not found (404 Not Found)" in outcome.text, outcome.text
    assert outcome.seconds < 10
    assert sum(sent) < 64 * MIB, f"the registry got to send {sum(sent) / MIB:.0f} MiB"
    watch.assert_survived()


def test_a_404_body_that_inflates_to_1_gib_is_never_inflated(make_gateway: MakeGateway, tmp_path: Path) -> None:
    bomb = gzip_bomb(1024)
    assert len(bomb) < 2 * MIB

    def bomb_404(exchange: Exchange) -> None:
        exchange.send(404, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"})

    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(bomb_404) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    assert "not found (404 Not Found): check that the repository and tag exist" in outcome.text, outcome.text
    assert outcome.seconds < 10
    watch.assert_survived()
    assert watch.peak_rss_mib() < 200


def test_a_manifest_that_inflates_beyond_its_cap_is_refused_with_the_key_that_raises_it(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    bomb = gzip_bomb(256)

    def bomb_manifest(exchange: Exchange) -> None:
        exchange.send(
            200, bomb, {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Content-Encoding": "gzip"}
        )

    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(bomb_manifest) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    assert "is larger than 4194304 bytes (registries.max_manifest_bytes); refusing it" in outcome.text, outcome.text
    assert outcome.seconds < 10
    watch.assert_survived()


def test_a_blob_longer_than_its_manifest_says_is_cut_at_the_declared_size(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    four = b"abcd"
    manifest = image_manifest(CONFIG, [(sha256(four), 4)])
    sent: list[int] = []

    def answer(exchange: Exchange) -> None:
        if exchange.path == blob_path(sha256(four)):
            exchange.head(200, {"Content-Type": "application/octet-stream", "Content-Length": str(2048 * MIB)})
            sent.append(exchange.stream(bytes(MIB), 2048 * MIB))
        else:
            serving(manifest)(exchange)

    gateway = make_gateway(gateway_config(tmp_path))
    cache = tmp_path / "cache"
    with HostileServer(answer) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))
        on_disk = disk_bytes(cache)

    assert outcome.state == "FAILURE"
    assert (
        f"blob {sha256(four)} of library/app from 127.0.0.1:{registry.port} served more than the manifest's 4 bytes"
        in outcome.text
    ), outcome.text
    assert outcome.seconds < 10
    assert sum(sent) < 64 * MIB, f"the registry got to send {sum(sent) / MIB:.0f} MiB"
    assert on_disk < MIB and disk_bytes(cache) < MIB
    assert not list((cache / "blobs" / "sha256").glob(sha256(four).removeprefix("sha256:")))
    watch.assert_survived()


def test_a_layer_declaring_an_absurd_size_is_refused_at_resolve_time_and_never_fetched(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    layer = b"x" * 90
    manifest = image_manifest(CONFIG, [(sha256(layer), 2**63 - 1)])
    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(serving(manifest, {sha256(layer): layer})) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE", "a 90-byte layer declared as 2^63-1 bytes must not end SUCCESS"
    assert (
        f"declares blob {sha256(layer)} as 9223372036854775807 bytes, more than registries.max_blob_bytes (68719476736)"
        in outcome.text
    )
    assert not [r for r in registry.received if "/blobs/" in r.path], (
        "nothing is fetched for an image that cannot be right"
    )
    assert outcome.seconds < 10
    watch.assert_survived()


def test_registries_max_blob_bytes_sets_the_largest_size_a_manifest_may_declare(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    manifest = image_manifest(CONFIG, [(sha256(LAYER), 2 * MIB)])
    gateway = make_gateway(gateway_config(tmp_path, registries={"allow": ["127.0.0.1"], "max_blob_bytes": MIB}))
    with HostileServer(serving(manifest)) as registry:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    assert f"more than registries.max_blob_bytes ({MIB}); refusing it: raise registries.max_blob_bytes" in outcome.text


def test_a_blob_shorter_than_declared_fails_even_when_its_digest_matches(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    layer = b"y" * 90
    manifest = image_manifest(CONFIG, [(sha256(layer), 1000)])
    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(serving(manifest, {sha256(layer): layer})) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    assert (
        f"blob {sha256(layer)} of library/app from 127.0.0.1:{registry.port} was 90 bytes where the manifest says 1000"
        in outcome.text
    )
    watch.assert_survived()


def test_error_messages_a_registry_writes_are_quoted_cut_short_and_without_control_characters(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    layers = [(sha256(b"%d" % i), 10) for i in range(100)]
    manifest = image_manifest(CONFIG, layers)
    message = "\x1b[2J\x1b]0;owned\x07\u202e" + "spam " * 12_000  # 60 KB: within the error body cap, so it is parsed

    def answer(exchange: Exchange) -> None:
        if "/blobs/" in exchange.path and sha256(CONFIG) not in exchange.path:
            exchange.send(404, distribution_error("BLOB_UNKNOWN", message), {"Content-Type": "application/json"})
        else:
            serving(manifest)(exchange)

    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(answer) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    descriptions = outcome.text.splitlines()
    assert len(descriptions) >= 100
    for line in descriptions:
        assert len(line) < 800, line[:200]
        assert not any(ord(c) < 32 or c == "\u202e" for c in line), repr(line[:200])
    assert "not found (404 BLOB_UNKNOWN: [2J]0;ownedspam spam" in outcome.text and "…[cut]" in outcome.text
    assert outcome.size() < 200_000, f"job status is {outcome.size()} bytes"
    watch.assert_survived()


def test_the_manifest_cache_is_bounded_by_bytes_across_jobs_of_an_index_of_many_large_manifests(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    pad = 4 * MIB - 8192  # just under registries.max_manifest_bytes
    children: dict[str, bytes] = {}
    for i in range(100):
        doc = json.loads(image_manifest(CONFIG, [(sha256(LAYER), len(LAYER))]))
        doc["annotations"] = {"pad": chr(ord("a") + i % 26) * pad, "n": str(i)}
        raw = json.dumps(doc).encode()
        children[sha256(raw)] = raw
    index = oci_index([index_entry(digest, len(raw)) for digest, raw in children.items()])
    fetched: list[str] = []

    def answer(exchange: Exchange) -> None:
        reference = exchange.path.rsplit("/", 1)[1]
        if exchange.path == MANIFEST_PATH:
            send_manifest(exchange, index, OCI_INDEX)
        elif reference in children and "/manifests/" in exchange.path:
            fetched.append(reference)
            send_manifest(exchange, children[reference])
        else:
            serving(b"", {sha256(LAYER): LAYER})(exchange)

    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(answer) as registry, survival(gateway) as watch:
        first = run_job(gateway, manifest_url(registry), platform="all", timeout=120)
        second = run_job(gateway, manifest_url(registry), platform="all", timeout=120)
        resting = watch.current_rss_mib()

    assert first.state == second.state == "SUCCESS", (first.text, second.text)
    assert len(fetched) >= 100 + 90, "the second job found at most the last 32 MiB of manifests cached"
    assert resting < 200, f"{resting:.0f} MiB held after the jobs"
    watch.assert_survived()


# --- malformed documents and digests -----------------------------------------------------------


def test_a_deeply_nested_manifest_fails_the_job_cleanly(make_gateway: MakeGateway, tmp_path: Path) -> None:
    deep = b'{"schemaVersion": 2, "layers": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(serving(deep)) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    assert "is not a valid OCI/Docker manifest (it is nested too deeply)" in outcome.text, outcome.text
    assert "internal error" not in outcome.text
    watch.assert_survived()


def test_a_layer_digest_with_a_trailing_newline_is_refused_before_it_becomes_a_url(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    manifest = image_manifest(CONFIG, [(sha256(LAYER) + "\n", len(LAYER))])
    gateway = make_gateway(gateway_config(tmp_path))
    with HostileServer(serving(manifest, {sha256(LAYER): LAYER})) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    assert "names a blob with an unsupported digest" in outcome.text and "internal error" not in outcome.text, (
        outcome.text
    )
    assert not [r for r in registry.received if "/blobs/" in r.path]
    watch.assert_survived()


def test_an_index_entry_that_is_not_a_digest_never_becomes_a_request(make_gateway: MakeGateway, tmp_path: Path) -> None:
    for hostile in ("../../../../api/v2.0/users?x=", "latest", sha256(b"child") + "\n"):
        index = oci_index([index_entry(hostile)])
        gateway = make_gateway(gateway_config(tmp_path / str(len(hostile))))
        with HostileServer(serving(index, media_type=OCI_INDEX)) as registry, survival(gateway) as watch:
            outcome = run_job(gateway, manifest_url(registry), platform="linux/amd64")

        assert outcome.state == "FAILURE"
        assert (
            f"index library/app:1.0 names a manifest with an unsupported digest {hostile[:20]!r}"[:-1] in outcome.text
        ), outcome.text
        assert [r.path for r in registry.received] == [MANIFEST_PATH], "only the index itself was requested"
        watch.assert_survived()


# --- a registry that drips ---------------------------------------------------------------------


def test_a_manifest_dripped_a_byte_at_a_time_fails_within_registries_body_timeout_seconds(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    manifest = image_manifest(CONFIG, [])

    def drip(exchange: Exchange) -> None:
        exchange.head(
            200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Content-Length": str(len(manifest))}
        )
        for byte in manifest:
            if not exchange.write(bytes([byte])):
                return
            time.sleep(0.2)

    gateway = make_gateway(gateway_config(tmp_path, registries={"allow": ["127.0.0.1"], "body_timeout_seconds": 2}))
    with HostileServer(drip) as registry, survival(gateway) as watch:
        outcome = run_job(gateway, manifest_url(registry))

    assert outcome.state == "FAILURE"
    assert "could not be read: a body not sent whole within 2s" in outcome.text, outcome.text
    assert outcome.seconds < 8
    assert len(registry.received) == 1, "a dripping registry is not asked again"
    watch.assert_survived()


def test_a_response_head_dripped_a_byte_at_a_time_is_given_up_on_however_steady_the_drip(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    """Each byte arrives well within the read timeout, so only a deadline on the whole head ends it."""
    started: list[float] = []
    hung_up: list[float] = []

    def drip_head(exchange: Exchange) -> None:
        started.append(time.monotonic())
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Drip: " + b"a" * 10_000:
            if not exchange.write(bytes([byte])):
                hung_up.append(time.monotonic())
                return
            time.sleep(0.25)

    gateway = make_gateway(gateway_config(tmp_path, registries={"allow": ["127.0.0.1"], "read_timeout_seconds": 1}))
    with HostileServer(drip_head) as registry, survival(gateway) as watch:
        with gateway.client() as client:
            response = client.post(
                "/oapi/v1/jobs", json={"type": "preheat", "args": {"type": "image", "url": manifest_url(registry)}}
            )
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 25
        while not hung_up and time.monotonic() < deadline:
            time.sleep(0.1)

    assert hung_up, "the gateway kept reading a dripped head for 25 s"
    # read 1 s + connect 10 s + pool 1 s, and the drip's own 0.25 s steps
    assert hung_up[0] - started[0] < 14, f"the head was read for {hung_up[0] - started[0]:.1f}s"
    watch.assert_survived()
