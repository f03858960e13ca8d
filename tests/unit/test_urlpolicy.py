"""Which URLs the gateway will fetch (adapters/urlpolicy.py)."""

from __future__ import annotations

import asyncio

import pytest

from adapters.urlpolicy import RefusedURL, URLPolicy, origin


def check(policy: URLPolicy, url: str, *, redirect: bool = False) -> None:
    asyncio.run(policy.check_redirect(url) if redirect else policy.check(url))


@pytest.mark.parametrize(
    "url",
    [
        "https://harbor.example.com/v2/a/manifests/b",
        "http://harbor.example.com:80/x",
        "https://reg.corp.example.com/x",
        "http://10.1.2.3:5000/x",
    ],
)
def test_allowlisted_hosts_pass(url: str) -> None:
    check(URLPolicy(("harbor.example.com", "*.corp.example.com", "10.0.0.0/8")), url)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://evil.example.com/x", "add it to registries.allow"),
        ("https://corp.example.com/x", "not allowed"),  # *.suffix matches subdomains only
        ("ftp://harbor.example.com/x", r"not an http\(s\) URL"),
        ("https://harbor.example.com:8443/x", "not allowed"),
    ],
)
def test_other_hosts_are_refused_naming_the_config_key(url: str, words: str) -> None:
    with pytest.raises(RefusedURL, match=words):
        check(URLPolicy(("harbor.example.com:443", "*.corp.example.com")), url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:5000/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://10.0.0.1/x",
        "http://100.100.100.200/x",
        "http://0.0.0.0/x",
    ],
)
def test_without_an_allowlist_non_public_addresses_are_refused_after_dns(url: str) -> None:
    with pytest.raises(RefusedURL, match="non-public address"):
        check(URLPolicy(), url)


def test_redirects_may_leave_the_allowlist_for_public_hosts_only() -> None:
    policy = URLPolicy(("harbor.example.com",))
    check(policy, "https://8.8.8.8/bucket/blob?X-Amz-Signature=x", redirect=True)
    with pytest.raises(RefusedURL, match="redirect target"):
        check(policy, "http://127.0.0.1:9000/internal", redirect=True)


def test_star_allows_everything_explicitly() -> None:
    check(URLPolicy(("*",)), "http://127.0.0.1:1/x")


def test_an_origin_is_scheme_host_and_port() -> None:
    assert origin("https://Registry.Example/v2/") == "https://registry.example:443"
    assert origin("http://registry.example:443/v2/") == "http://registry.example:443"
    assert origin("https://registry.example/v2/") != origin("http://registry.example:443/v2/")
    assert origin("http://[::1]:5000/v2/") == "http://[::1]:5000"
