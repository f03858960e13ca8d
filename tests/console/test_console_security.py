"""The console's guarantees that need no browser: sessions, CSRF, redirects, secrets, bad input.

These talk to a real gateway process over HTTP the way a browser would (cookies, form posts),
so they also run where Chromium is not installed.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import MakeGateway
from tests.gateway_process import GatewayProcess, gateway_config

SECRET = "s3cr3t"
"""Every secret in these tests contains this; no console page may."""


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match[1]


def field_error(html: str, field: str) -> str:
    match = re.search(rf'<p class="field-error" id="{field}-error">([^<]*)</p>', html)
    assert match, f"no error next to {field}"
    return match[1].replace("&#39;", "'").replace("&amp;", "&").replace("&#34;", '"')


@contextmanager
def signed_in(gateway: GatewayProcess, token: str | None = None) -> Iterator[httpx.Client]:
    """A client that signed in through the console's form, holding the session cookie."""
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        form = client.get("/console/signin")
        response = client.post(
            "/console/signin", data={"csrf": csrf_of(form.text), "token": token or gateway.token, "next": ""}
        )
        assert response.status_code == 303, response.text
        yield client


def session_payload(cookie: str) -> dict[str, object]:
    payload = cookie.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_the_session_cookie_is_httponly_strict_expiring_and_holds_no_secret(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    with httpx.Client(base_url=gateway.url) as browser:
        form = browser.get("/console/signin")
        response = browser.post("/console/signin", data={"csrf": csrf_of(form.text), "token": gateway.token})
        assert browser.get("/console/signin").status_code == 303  # signed in: the sign-in page sends you on
    header = next(h for h in response.headers.get_list("set-cookie") if h.startswith("phg_console="))
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes and "secure" not in attributes
    assert "samesite=strict" in header.lower() and "path=/console" in header.lower()
    cookie = header.split(";")[0].split("=", 1)[1]
    assert gateway.token not in cookie
    payload = session_payload(cookie)
    assert set(payload) == {"name", "method", "sid", "exp"}
    assert payload["name"] == "tests" and 0 < float(str(payload["exp"])) - time.time() <= 8 * 3600


def test_the_session_cookie_is_secure_when_the_console_is_reached_over_https(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    https = {"X-Forwarded-Proto": "https"}  # a TLS-terminating proxy on loopback, which uvicorn trusts
    with httpx.Client(base_url=gateway.url, headers=https) as browser:
        form = browser.get("/console/signin")
        assert "; secure" in form.headers["set-cookie"].lower()
        signin_cookie = form.headers["set-cookie"].split(";")[0]  # httpx, rightly, keeps Secure cookies off http
        response = browser.post(
            "/console/signin",
            data={"csrf": csrf_of(form.text), "token": gateway.token},
            headers={"Cookie": signin_cookie},
        )
    assert response.status_code == 303
    assert all("; secure" in h.lower() for h in response.headers.get_list("set-cookie"))


def test_a_tampered_session_cookie_is_refused(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    with signed_in(gateway) as client:
        cookie = client.cookies["phg_console"]
    payload, signature = cookie.split(".")
    claims = session_payload(cookie) | {"name": "admin"}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + "." + signature

    for value in (forged, payload + ".", "garbage", cookie + "x"):
        with httpx.Client(base_url=gateway.url, cookies={"phg_console": value}) as intruder:
            response = intruder.get("/console/preheats")
        assert response.status_code == 303 and "/console/signin" in response.headers["location"]


def test_sign_in_only_ever_sends_you_on_to_a_console_page(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    for target, expected in (
        ("https://evil.example/", "/console/preheats"),
        ("//evil.example/console/", "/console/preheats"),
        ("/console/../oapi/v1/jobs", "/console/preheats"),
        ("/console/clusters", "/console/clusters"),
    ):
        with httpx.Client(base_url=gateway.url) as browser:
            form = browser.get("/console/signin", params={"next": target})
            response = browser.post(
                "/console/signin", data={"csrf": csrf_of(form.text), "token": gateway.token, "next": target}
            )
        assert response.status_code == 303
        assert response.headers["location"] == expected


def test_a_revoked_token_ends_the_console_sessions_it_opened(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path, auth={"token_cache_seconds": 0.2}))
    ops = gateway.create_token("ops")
    with signed_in(gateway, ops) as client:
        assert client.get("/console/preheats").status_code == 200

        gateway.cli("token", "revoke", "ops", "--config", str(gateway.config_path))
        time.sleep(0.5)

        response = client.get("/console/preheats")
        assert response.status_code == 303 and "notice=expired" in response.headers["location"]
        assert client.get("/console/preheats/rows").status_code == 401
    with httpx.Client(base_url=gateway.url) as browser:
        form = browser.get("/console/signin")
        refused = browser.post("/console/signin", data={"csrf": csrf_of(form.text), "token": ops})
    assert refused.status_code == 200 and "Sign-in failed: token &#39;ops&#39; was revoked." in refused.text


def test_no_page_ever_shows_a_secret(make_gateway: MakeGateway, tmp_path: Path) -> None:
    env = {"CONSOLE_MIRROR_SECRET": f"mirror-password-{SECRET}", "CONSOLE_ROBOT_SECRET": f"robot-password-{SECRET}"}
    config = gateway_config(
        tmp_path,
        clusters=[
            {"id": 1, "name": "local", "adapter": "local", "path": str(tmp_path / "cache")},
            {
                "id": 2,
                "name": "mirror-eu",
                "adapter": "mirror",
                "endpoints": [
                    {"url": "http://127.0.0.1:9", "username": "cache-user", "password_env": "CONSOLE_MIRROR_SECRET"}
                ],
            },
        ],
        registries={
            "allow": ["127.0.0.1"],
            "credentials": [
                {"host": "127.0.0.1:9", "username": "robot$preheat", "password_env": "CONSOLE_ROBOT_SECRET"},
            ],
        },
    )
    gateway = make_gateway(config, env=env)
    with gateway.client() as api:
        image = api.post(
            "/oapi/v1/jobs",
            json={
                "type": "preheat",
                "args": {
                    "type": "image",
                    "url": "http://127.0.0.1:9/v2/library/app/manifests/1.0",
                    "headers": {"Authorization": f"Bearer harbor-registry-token-{SECRET}"},
                    "username": "robot",
                    "password": f"registry-password-{SECRET}",
                },
            },
        )
        files = api.post(
            "/oapi/v1/jobs",
            json={
                "type": "preheat",
                "args": {
                    "type": "file",
                    "url": f"http://127.0.0.1:9/models/m.bin?X-Amz-Signature=sig-{SECRET}&X-Amz-Credential=AKIA{SECRET}&version=3",
                },
            },
        )
    assert image.status_code == 200 and files.status_code == 200, (image.text, files.text)
    ids = [image.json()["id"], files.json()["id"]]

    with signed_in(gateway) as client:
        responses = {
            path: client.get(path)
            for path in [
                "/console/preheats",
                "/console/clusters",
                "/console/preheats/new",
                *(f"/console/preheats/{i}" for i in ids),
                *(f"/console/preheats/{i}/status" for i in ids),
                f"/console/preheats/rows?id={ids[0]}&id={ids[1]}",
            ]
        }
    assert {path: r.status_code for path, r in responses.items()} == dict.fromkeys(responses, 200)
    pages = {path: r.text for path, r in responses.items()}
    for path, text in pages.items():
        assert SECRET not in text, f"{path} shows a secret"
    assert "CONSOLE_MIRROR_SECRET" in pages["/console/clusters"]  # where the secret lives, for the operator
    assert "version=3" in pages[f"/console/preheats/{ids[1]}"]  # the rest of a signed URL stays readable


def test_bad_input_is_answered_with_a_page_never_a_server_error(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    with signed_in(gateway) as client:
        csrf = csrf_of(client.get("/console/preheats/new").text)
        url = "http://127.0.0.1:9/v2/library/app/manifests/1.0"

        def create(**fields: object) -> httpx.Response:
            return client.post("/console/preheats/new", data={"csrf": csrf, "type": "image", "urls": url, **fields})

        assert field_error(create(clusters="7").text, "clusters").startswith(
            "unknown cluster id 7: this gateway has clusters 1 (local)"
        )
        assert field_error(create(clusters="x").text, "clusters") == "unknown cluster id 'x'"
        assert (
            field_error(create(type="video").text, "type")
            == "args.type 'video' is not supported: use 'image' or 'file'"
        )
        assert field_error(create(urls="").text, "urls").startswith("args.url is empty")
        assert field_error(create(urls=f"{url}\n{url}").text, "urls").startswith(
            "an image preheat takes exactly one url"
        )
        assert field_error(create(scope="everyone").text, "scope").startswith("scope 'everyone' is not one of")
        assert field_error(create(bio="x" * 1001).text, "bio") == "bio is longer than 1000 characters"

        odd = [
            client.post(
                "/console/preheats/new",
                content=b"csrf=" + csrf.encode() + b"&urls=\xff\xfe",
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            client.post("/console/preheats/new", files={"urls": ("u", b"x")}),
            client.post(
                "/console/preheats/new",
                content=b"x" * (2 << 20),
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            client.post("/console/signin", content=b"{}", headers={"content-type": "application/json"}),
            client.get(
                "/console/preheats", params={"page": "abc", "state": "RUNNING", "cluster": "x", "q": "%_\\" * 500}
            ),
            client.get("/console/preheats", params={"page": "9" * 5000, "cluster": "\u00b2", "created": "9" * 5000}),
            client.get("/console/preheats/rows", params={"id": ["abc", "-1", "999999", "9" * 5000]}),
            client.post(
                "/console/preheats/new", data={"csrf": csrf, "type": "image", "urls": url, "clusters": "9" * 5000}
            ),
            client.get("/console/preheats/999999"),
            client.get(f"/console/preheats/{'9' * 30}"),
            client.get(f"/console/preheats/{'9' * 30}/status"),
            client.get("/console/preheats/999999/status"),
            client.post("/console/preheats/999999/cancel", data={"csrf": csrf}),
            client.get("/console/no/such/page"),
        ]
    for response in odd:
        assert response.status_code < 500, (response.request.url, response.status_code, response.text[:300])
        assert response.headers["content-type"].startswith(("text/html", "application/json"))


def test_pages_load_nothing_from_elsewhere_and_forbid_framing(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    with signed_in(gateway) as client:
        page = client.get("/console/preheats")
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        for asset in [a for a in assets if "/static/" in a]:
            assert client.get(asset).status_code == 200
    assert all(a.startswith("/console") or a.startswith("#") for a in assets), assets
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert page.headers["cache-control"] == "no-store"


def test_the_console_honours_the_servers_root_path(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gateway = make_gateway(gateway_config(tmp_path, server={"root_path": "/p2p"}))
    with httpx.Client(base_url=gateway.url) as browser:
        first = browser.get("/console/preheats")
        assert first.headers["location"].startswith("/p2p/console/signin")
        form = browser.get("/console/signin")
        response = browser.post("/console/signin", data={"csrf": csrf_of(form.text), "token": gateway.token})
        assert response.headers["location"] == "/p2p/console/preheats"
        assert "path=/p2p/console" in response.headers["set-cookie"].lower()
        page = browser.get("/console/preheats")
        assert page.status_code == 200 and 'href="/p2p/console/clusters"' in page.text


def test_with_authentication_off_no_sign_in_is_needed_but_forms_still_need_their_token(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = make_gateway(gateway_config(tmp_path, auth={"mode": "none"}))
    with httpx.Client(base_url=gateway.url) as browser:
        page = browser.get("/console/preheats/new")
        assert page.status_code == 200 and "Signed in as <strong>anonymous</strong>" in page.text
        assert "Sign out" not in page.text
        url = "http://127.0.0.1:9/v2/library/app/manifests/1.0"
        assert browser.post("/console/preheats/new", data={"type": "image", "urls": url}).status_code == 403
        created = browser.post("/console/preheats/new", data={"csrf": csrf_of(page.text), "type": "image", "urls": url})
        assert created.status_code == 303 and created.headers["location"].endswith("/console/preheats/1?notice=created")
