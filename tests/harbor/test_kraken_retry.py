"""A Kraken notification Harbor delivers again (the same event ``Id``) makes no second job.

Harbor marks a Kraken task SUCCESS on the 2xx and never polls, so when the first answer was
lost it sends the same notification again. The gateway answers the repeat as it answered the
first (200, the same job ids), creates nothing, and does not charge the repeat against the
creation rate limit. Each test runs a real gateway (``serve``'s own server, on a thread of the test
process: nothing here needs a process boundary) and sends what Harbor's Kraken driver sends
(``tests.harbor.driver.KrakenDriver``).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROBOT_PASSWORD, MakeGateway, OriginImages
from tests.gateway_process import GatewayUnderTest, gateway_config
from tests.harbor.conftest import ROBOT_ENV, robot_credentials
from tests.harbor.driver import KrakenDriver
from tests.registry import Registry


def manifest_url(origin: Registry, repository: str = "library/app", reference: str = "1.0") -> str:
    return f"{origin.url}/v2/{repository}/manifests/{reference}"


def start(make_gateway_thread: MakeGateway, origin: Registry, tmp_path: Path, **server: Any) -> GatewayUnderTest:
    config = gateway_config(tmp_path, registries=robot_credentials(origin), server=server)
    return make_gateway_thread(config, env={ROBOT_ENV: ROBOT_PASSWORD})


def job_ids(gateway: GatewayUnderTest) -> list[int]:
    with gateway.client() as client:
        return sorted(job["id"] for job in client.get("/oapi/v1/jobs", params={"per_page": 100}).json())


def post(gateway: GatewayUnderTest, notification: dict[str, Any]) -> httpx.Response:
    with gateway.client() as client:
        return client.post("/registry/notifications", json=notification)


def two_events(harbor: KrakenDriver, origin: Registry) -> dict[str, Any]:
    first = harbor.notification(manifest_url(origin), image="library/app", tag="1.0")
    second = harbor.notification(manifest_url(origin, "library/multi", "2.0"), image="library/multi", tag="2.0")
    return {"Events": first["Events"] + second["Events"]}


def test_a_notification_delivered_again_is_accepted_and_makes_no_second_job(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path
) -> None:
    gateway = start(make_gateway_thread, origin, tmp_path)
    harbor = KrakenDriver(gateway.url, "OAUTH", {"token": gateway.token})
    notification = two_events(harbor, origin)

    first = json.loads(harbor.notify(notification))
    again = json.loads(harbor.notify(notification))  # Harbor's retry: the same bytes, the same event Ids

    assert first["created"] == 2 and again["created"] == 0
    assert again["jobs"] == first["jobs"], "the repeat names the jobs the first delivery made"
    assert job_ids(gateway) == sorted(first["jobs"])
    for job_id in first["jobs"]:
        assert gateway.wait_job(job_id)["state"] == "SUCCESS"
    assert "already have their job (same Id)" in gateway.logs()


def test_the_same_id_for_another_image_or_no_id_at_all_is_a_new_event(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path
) -> None:
    gateway = start(make_gateway_thread, origin, tmp_path)
    harbor = KrakenDriver(gateway.url, "OAUTH", {"token": gateway.token})
    app = harbor.notification(manifest_url(origin), image="library/app", tag="1.0", event_id="same-id")
    multi = harbor.notification(
        manifest_url(origin, "library/multi", "2.0"), image="library/multi", tag="2.0", event_id="same-id"
    )
    anonymous = harbor.notification(manifest_url(origin), image="library/app", tag="1.0")
    anonymous["Events"][0]["Id"] = ""

    answers = [json.loads(harbor.notify(n)) for n in (app, multi, anonymous, anonymous)]

    assert [a["created"] for a in answers] == [1, 1, 1, 1], (
        "an event is its Id *and* its Url; without an Id it cannot be told apart"
    )
    assert len(job_ids(gateway)) == 4


def test_a_repeat_costs_nothing_against_the_creation_rate_but_a_new_event_with_it_still_does(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path
) -> None:
    gateway = start(make_gateway_thread, origin, tmp_path, create_rate_per_second=0.01, create_burst=2)
    harbor = KrakenDriver(gateway.url, "OAUTH", {"token": gateway.token})
    notification = two_events(harbor, origin)
    assert post(gateway, notification).status_code == 200  # the whole burst: the bucket is empty now

    repeat = post(gateway, notification)
    grown = {
        "Events": notification["Events"]
        + harbor.notification(manifest_url(origin), image="library/app", tag="1.0")["Events"]
    }
    refused = post(gateway, grown)

    assert repeat.status_code == 200 and repeat.json()["created"] == 0, repeat.text
    assert refused.status_code == 429 and "create_rate_per_second" in refused.json()["errors"], refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert len(job_ids(gateway)) == 2, "the refused notification made nothing, its known events included"


def test_deliveries_at_the_same_moment_end_with_one_job(
    make_gateway_thread: MakeGateway, origin: Registry, images: OriginImages, tmp_path: Path
) -> None:
    gateway = start(make_gateway_thread, origin, tmp_path)
    harbor = KrakenDriver(gateway.url, "OAUTH", {"token": gateway.token})
    notification = harbor.notification(manifest_url(origin), image="library/app", tag="1.0")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(gateway, notification), range(8)))

    assert {a.status_code for a in answers} == {200}
    assert len({tuple(a.json()["jobs"]) for a in answers}) == 1, [a.json() for a in answers]
    (job_id,) = answers[0].json()["jobs"]
    assert job_ids(gateway) == [job_id]
    assert gateway.wait_job(job_id)["state"] == "SUCCESS"
