"""File preheats (``args.type: file``) into local clusters, and a mirror's refusal (issue 4).

The seed's Open API example, ``{"type": "file", "url": ...}``, must work. A URL's identity
drops its signing parameters (``filtered_query_params``, Dragonfly's list by default), so two
signed URLs of one object are one cached file and one fetch; ``tag`` and ``application``
tell otherwise equal URLs apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.files import file_ref
from tests.conftest import MakeGateway
from tests.fakes.file_origin import FileOrigin
from tests.gateway_process import GatewayUnderTest, gateway_config

CONTENT = {"model.bin": hashlib.sha256(b"seed").digest() * 40_000, "small.txt": b"hello, preheat\n"}


@pytest.fixture
def files() -> Iterator[FileOrigin]:
    with FileOrigin(CONTENT) as origin:
        yield origin


def run_job(gateway: GatewayUnderTest, args: dict[str, Any], cluster_ids: list[int] | None = None) -> dict[str, Any]:
    """POST a job the way the seed's Open API example does, and wait for it to leave PENDING."""
    with gateway.client() as client:
        response = client.post(
            "/oapi/v1/jobs", json={"type": "preheat", "args": args, "scheduler_cluster_ids": cluster_ids}
        )
    assert response.status_code == 200, response.text
    return gateway.wait_job(response.json()["id"])


def state_of(job: dict[str, Any], cluster_id: int) -> dict[str, Any]:
    return next(s for s in job["result"]["job_states"] if s["results"][0]["scheduler_cluster_id"] == cluster_id)


def cached_files(cache: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (cache / "files" / "sha256").glob("*")}


def test_a_urls_identity_drops_signing_parameters_and_keeps_the_rest() -> None:
    signed = (
        "HTTPS://Bucket.S3.example.com/m/a.bin?X-Amz-Credential=AK%2F1&b=2&x-amz-signature=ff&a=1&ns=docker.io#frag"
    )

    assert file_ref(signed).display_url == "https://bucket.s3.example.com/m/a.bin?a=1&b=2"
    assert (
        file_ref(signed, ["b"]).display_url
        == "https://bucket.s3.example.com/m/a.bin?X-Amz-Credential=AK%2F1&a=1&ns=docker.io&x-amz-signature=ff"
    )
    assert file_ref(signed).key == file_ref(signed.replace("ff", "00")).key
    assert len({file_ref(signed, tag=t, application=a).key for t in ("", "v1") for a in ("", "llm")}) == 4


def test_the_seed_example_preheats_a_file_into_the_local_cache(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    url = f"{files.url}/files/model.bin"

    job = run_job(gateway, {"type": "file", "url": url})

    assert job["state"] == "SUCCESS", job
    [row] = state_of(job, 1)["results"][0]["success_tasks"]
    assert row["url"] == url
    key = hashlib.sha256(url.encode()).hexdigest()
    assert cached_files(tmp_path / "cache") == {key: CONTENT["model.bin"]}
    assert not list((tmp_path / "cache" / "tmp").iterdir()), "no temporary file is left behind"


def test_two_signed_urls_of_one_object_are_one_cached_file_and_one_fetch(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    signed = [
        f"{files.url}/files/model.bin?X-Amz-Date=20261127T100000Z&X-Amz-Signature=aaa&versionId=7",
        f"{files.url}/files/model.bin?versionId=7&X-Amz-Signature=bbb&X-Amz-Date=20261127T110000Z",
    ]

    jobs = [run_job(gateway, {"type": "file", "url": url}) for url in signed]

    assert [job["state"] for job in jobs] == ["SUCCESS", "SUCCESS"]
    assert files.count("/files/model.bin") == 1, "the second signed URL is the same object: not fetched again"
    assert list(cached_files(tmp_path / "cache").values()) == [CONTENT["model.bin"]]
    rows = [state_of(job, 1)["results"][0]["success_tasks"][0]["url"] for job in jobs]
    assert rows == [f"{files.url}/files/model.bin?versionId=7"] * 2, "rows show the identity, never the signature"


def test_urls_in_one_job_that_differ_only_by_signature_are_fetched_once(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))

    job = run_job(
        gateway, {"type": "file", "urls": [f"{files.url}/files/model.bin?Signature={s}&Expires=1" for s in "abc"]}
    )

    assert job["state"] == "SUCCESS", job
    assert files.count("/files/model.bin") == 1
    assert len(state_of(job, 1)["results"][0]["success_tasks"]) == 3


def test_tag_and_application_distinguish_otherwise_equal_urls(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    url = f"{files.url}/files/small.txt"

    for args in ({}, {"tag": "v1"}, {"tag": "v2"}, {"application": "llm"}, {"tag": "v1"}):
        assert run_job(gateway, {"type": "file", "url": url, **args})["state"] == "SUCCESS"

    assert files.count("/files/small.txt") == 4, "the repeated tag v1 is the same file"
    expected = {file_ref(url, (), **args).key for args in ({}, {"tag": "v1"}, {"tag": "v2"}, {"application": "llm"})}
    assert set(cached_files(tmp_path / "cache")) == expected


@pytest.mark.parametrize("spelling", ["filtered_query_params", "filteredQueryParams"])
def test_filtered_query_params_replace_the_default_list(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path, spelling: str
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    base = f"{files.url}/files/small.txt"

    for query in ("sig=1&X-Amz-Signature=a", "sig=2&X-Amz-Signature=a", "sig=3&X-Amz-Signature=b"):
        job = run_job(gateway, {"type": "file", "url": f"{base}?{query}", spelling: "sig&token"})
        assert job["state"] == "SUCCESS", job

    assert files.count("/files/small.txt") == 2, "only sig is filtered: a different X-Amz-Signature is another URL"


def test_the_callers_headers_reach_the_origin(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    url = f"{files.url}/private/small.txt"

    refused = run_job(gateway, {"type": "file", "url": url})
    allowed = run_job(gateway, {"type": "file", "url": url, "headers": {"X-Origin-Token": files.token}})

    assert refused["state"] == "FAILURE"
    assert "was refused (403)" in state_of(refused, 1)["error"]
    assert allowed["state"] == "SUCCESS", allowed


def test_a_redirect_is_followed_only_where_the_url_policy_allows(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    files.redirects["ok"] = f"{files.url}/files/small.txt?X-Amz-Signature=s"
    files.redirects["metadata"] = "http://169.254.169.254/latest/meta-data/"

    followed = run_job(gateway, {"type": "file", "url": f"{files.url}/redirect/ok", "headers": {"X-Origin-Token": "t"}})
    refused = run_job(gateway, {"type": "file", "url": f"{files.url}/redirect/metadata"})

    assert followed["state"] == "SUCCESS", followed
    assert list(cached_files(tmp_path / "cache").values()) == [CONTENT["small.txt"]]
    assert refused["state"] == "FAILURE"
    error = state_of(refused, 1)["error"]
    assert "redirect" in error and "refused" in error and "169.254.169.254" in error


def test_a_missing_file_fails_with_what_where_and_what_to_do(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))

    job = run_job(gateway, {"type": "file", "url": f"{files.url}/files/nope.bin?X-Amz-Signature=secret-signature"})

    assert job["state"] == "FAILURE"
    error = state_of(job, 1)["error"]
    assert (
        "cluster local (id 1)" in error
        and "nope.bin" in error
        and "not found (404)" in error
        and "check the URL" in error
    )
    assert "secret-signature" not in error


def test_a_mirror_cluster_refuses_files_while_a_local_cluster_takes_them(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    clusters = [
        {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
        {"id": 2, "name": "eu-mirror", "adapter": "mirror", "endpoints": [{"url": "http://127.0.0.1:9"}]},
    ]
    gateway = make_gateway_thread(gateway_config(tmp_path, clusters=clusters))

    # Named, a mirror cluster fails its own task; unnamed, a file job never goes to it.
    job = run_job(gateway, {"type": "file", "url": f"{files.url}/files/small.txt"}, cluster_ids=[1, 2])

    assert state_of(job, 1)["state"] == "SUCCESS"
    mirror = state_of(job, 2)
    assert mirror["state"] == "FAILURE"
    assert mirror["error"].startswith(
        "cluster eu-mirror (id 2): the mirror adapter does not preheat files; files cannot go through a registry mirror"
    )
    assert "use a proxy or local cluster" in mirror["error"]


def test_a_signed_urls_signature_is_sealed_never_echoed_or_stored_in_the_clear(
    make_gateway_thread: MakeGateway, files: FileOrigin, tmp_path: Path
) -> None:
    gateway = make_gateway_thread(gateway_config(tmp_path))
    signed = f"{files.url}/files/small.txt?X-Amz-Credential=AKIA-secret-credential&X-Amz-Signature=secret-signature&versionId=3"

    job = run_job(gateway, {"type": "file", "url": signed})

    assert job["state"] == "SUCCESS"
    with gateway.client() as client:
        listing = client.get("/oapi/v1/jobs").text
    database = (Path(gateway.config["server"]["state_dir"]) / "gateway.db").read_bytes()
    for secret in ("secret-signature", "AKIA-secret-credential"):
        assert secret not in str(job) and secret not in listing and secret.encode() not in database
    assert "versionId=3" in job["args"]["url"]
