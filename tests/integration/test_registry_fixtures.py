"""The registry fixtures are real: token auth, manifests, caches and uploads behave like Harbor's.

If these fail, every gateway integration test built on them is meaningless,
so they state the behaviours those tests rely on.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import httpx

from tests.conftest import CACHE_USER, ROBOT_PASSWORD, ROBOT_USER, HarborToken, MakeCache, OriginImages
from tests.registry import (
    DOCKER_MANIFEST_MEDIA_TYPE,
    MANIFEST_ACCEPT,
    OCI_INDEX_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    Registry,
    TokenService,
    push_blob,
    random_blob_chunks,
    unique_repository,
    wait_until,
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def get(registry: Registry, path: str, authorization: str | None = None, **headers: str) -> httpx.Response:
    if authorization:
        headers["Authorization"] = authorization
    return httpx.get(f"{registry.url}{path}", headers=headers, timeout=30.0, trust_env=False)


def test_origin_refuses_anonymous_blob_reads_with_a_bearer_challenge(
    origin: Registry, images: OriginImages, token_service: TokenService
) -> None:
    layer = images.single.layer_digests[0]

    response = get(origin, f"/v2/library/app/blobs/{layer}")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="{token_service.realm}",service="{token_service.service}",scope="repository:library/app:pull"'
    )


def test_anonymous_tokens_grant_nothing_and_wrong_passwords_get_401(
    origin: Registry, images: OriginImages, token_service: TokenService
) -> None:
    query = {"service": token_service.service, "scope": "repository:library/app:pull"}

    anonymous = httpx.get(token_service.realm, params=query)
    wrong_password = httpx.get(token_service.realm, params=query, auth=(ROBOT_USER, "wrong"))

    assert anonymous.status_code == 200
    assert set(anonymous.json()) >= {"token", "access_token", "expires_in", "issued_at"}
    layer = images.single.layer_digests[0]
    assert get(origin, f"/v2/library/app/blobs/{layer}", f"Bearer {anonymous.json()['token']}").status_code == 401
    assert wrong_password.status_code == 401


def test_the_token_dance_with_robot_credentials_reads_the_manifest(
    origin: Registry, images: OriginImages, token_service: TokenService
) -> None:
    challenge = get(origin, "/v2/library/app/manifests/1.0", Accept=MANIFEST_ACCEPT)
    assert challenge.status_code == 401

    token = httpx.get(
        token_service.realm,
        params={"service": token_service.service, "scope": "repository:library/app:pull,push"},
        auth=(ROBOT_USER, ROBOT_PASSWORD),
    ).json()["token"]
    response = get(origin, "/v2/library/app/manifests/1.0", f"Bearer {token}", Accept=MANIFEST_ACCEPT)

    assert response.status_code == 200
    assert token_service.requests[-1].access == (("repository", "library/app", ("pull",)),)  # push not granted


def test_a_harbor_style_token_reads_the_manifest_and_every_blob(
    origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    image = images.single
    authorization = harbor_token("library/app")

    manifest = get(origin, "/v2/library/app/manifests/1.0", authorization, Accept=MANIFEST_ACCEPT)

    assert manifest.status_code == 200
    assert manifest.headers["Content-Type"] == DOCKER_MANIFEST_MEDIA_TYPE
    assert manifest.headers["Docker-Content-Digest"] == image.manifest_digest == sha256(manifest.content)
    body = json.loads(manifest.content)
    assert body["config"]["digest"] == image.config_digest
    assert [layer["digest"] for layer in body["layers"]] == image.layer_digests
    assert len(image.layer_digests) == 3
    for digest in image.blob_digests:
        blob = get(origin, f"/v2/library/app/blobs/{digest}", authorization)
        assert blob.status_code == 200
        assert sha256(blob.content) == digest
        assert len(blob.content) == image.sizes[digest]
    config = json.loads(get(origin, f"/v2/library/app/blobs/{image.config_digest}", authorization).content)
    assert (config["os"], config["architecture"]) == ("linux", "amd64")


def test_tokens_are_scoped_to_one_repository(origin: Registry, images: OriginImages, harbor_token: HarborToken) -> None:
    response = get(origin, "/v2/library/app/manifests/1.0", harbor_token("library/other"), Accept=MANIFEST_ACCEPT)

    assert response.status_code == 401


def test_an_untrusted_or_expired_token_is_refused(
    origin: Registry, images: OriginImages, token_service: TokenService, harbor_token: HarborToken
) -> None:
    path = f"/v2/library/app/blobs/{images.single.config_digest}"

    untrusted = get(origin, path, f"Bearer {token_service.mint_untrusted('library/app')}")
    expired = get(origin, path, harbor_token("library/app", expires_in=-120))  # beyond distribution's 60 s leeway

    assert untrusted.status_code == 401
    assert expired.status_code == 401


def test_the_multiarch_index_lists_two_platforms_with_distinct_images(
    origin: Registry, images: OriginImages, harbor_token: HarborToken
) -> None:
    index = images.multiarch
    authorization = harbor_token("library/multi")

    response = get(origin, "/v2/library/multi/manifests/2.0", authorization, Accept=MANIFEST_ACCEPT)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX_MEDIA_TYPE
    assert response.headers["Docker-Content-Digest"] == index.index_digest
    entries = json.loads(response.content)["manifests"]
    platforms = {f"{e['platform']['os']}/{e['platform']['architecture']}": e["digest"] for e in entries}
    assert platforms == {p: image.manifest_digest for p, image in index.images.items()}
    assert set(platforms) == {"linux/amd64", "linux/arm64"}
    assert all(e["mediaType"] == OCI_MANIFEST_MEDIA_TYPE for e in entries)
    amd64, arm64 = index.images["linux/amd64"], index.images["linux/arm64"]
    assert not set(amd64.blob_digests) & set(arm64.blob_digests)
    assert [len(amd64.layer_digests), len(arm64.layer_digests)] == [2, 2]
    for image in index.images.values():
        path = f"/v2/library/multi/manifests/{image.manifest_digest}"
        by_digest = get(origin, path, authorization, Accept=MANIFEST_ACCEPT)
        assert by_digest.status_code == 200
        assert json.loads(by_digest.content)["layers"][0]["digest"] == image.layer_digests[0]


def test_a_pull_through_cache_serves_a_blob_then_keeps_it_on_disk(
    origin: Registry, images: OriginImages, make_cache: MakeCache, token_service: TokenService
) -> None:
    cache = make_cache()
    image = images.single
    layer = image.layer_digests[1]
    assert not cache.blob_on_disk(layer)

    manifest = get(cache, "/v2/library/app/manifests/1.0", Accept=MANIFEST_ACCEPT)  # the cache itself is open
    blob = get(cache, f"/v2/library/app/blobs/{layer}")

    assert manifest.status_code == 200
    assert manifest.headers["Docker-Content-Digest"] == image.manifest_digest
    assert blob.status_code == 200
    assert sha256(blob.content) == layer
    assert cache.wait_for_blob(layer), f"cache never stored {layer}; log:\n{cache.log_tail()}"
    assert cache.blob_path(layer).read_bytes() == blob.content
    assert token_service.requests_by(CACHE_USER), "the cache must authenticate to the origin as cache-user"
    wait_until(lambda: cache.upstream_blob_fetches(layer) == 1, message="cache logs the stored blob")


def test_a_cached_blob_is_served_without_going_back_to_the_origin(
    origin: Registry, images: OriginImages, make_cache: MakeCache
) -> None:
    cache = make_cache()
    layer = images.single.layer_digests[2]
    assert get(cache, f"/v2/library/app/blobs/{layer}").status_code == 200
    assert cache.wait_for_blob(layer)
    # distribution 2.8 fetches a missed blob twice: once for the client, once to store it
    wait_until(lambda: origin.blob_requests(layer, user_agent="Go-http-client") >= 2, message="origin saw the miss")
    origin_fetches = origin.blob_requests(layer, user_agent="Go-http-client")

    again = get(cache, f"/v2/library/app/blobs/{layer}")

    assert again.status_code == 200
    assert sha256(again.content) == layer
    assert origin.blob_requests(layer, user_agent="Go-http-client") == origin_fetches


def test_a_cache_with_wrong_origin_credentials_serves_nothing(images: OriginImages, make_cache: MakeCache) -> None:
    cache = make_cache(proxy_password="wrong")

    blob = get(cache, f"/v2/library/app/blobs/{images.single.config_digest}")

    assert blob.status_code >= 400  # 2.8 answers 500 for blobs (and 404 for manifests)
    assert not cache.blob_on_disk(images.single.config_digest)


def test_a_chunked_push_of_a_5_MiB_random_blob_round_trips(origin: Registry, harbor_token: HarborToken) -> None:
    repository = unique_repository("test/chunked")
    size = 5 << 20
    expected = b"".join(random_blob_chunks(size, seed=7))

    digest, pushed = push_blob(origin, repository, random_blob_chunks(size, seed=7, chunk=1 << 20))

    assert (digest, pushed) == (sha256(expected), size)
    assert origin.blob_on_disk(digest)
    fetched = get(origin, f"/v2/{repository}/blobs/{digest}", harbor_token(repository))
    assert fetched.status_code == 200
    assert fetched.content == expected


def test_random_blobs_are_deterministic_and_incompressible() -> None:
    first = b"".join(random_blob_chunks(300_000, seed=3, chunk=65_536))

    assert first == b"".join(random_blob_chunks(300_000, seed=3))
    assert first != b"".join(random_blob_chunks(300_000, seed=4))
    assert len(zlib.compress(first)) > 0.99 * len(first)
