"""``gateway.redact``: the one rule for URLs the gateway keeps or shows, and for quotes it stores."""

from __future__ import annotations

from adapters.base import TaskRow
from gateway.redact import (
    CUT,
    QUOTE_CHARS,
    clip,
    public_url,
    scrub,
    stored_row,
    strip_userinfo,
    userinfo_of,
)


def test_public_url_drops_user_info_signing_parameters_and_the_fragment() -> None:
    url = "https://robot:pw@Harbor.example.com:8443/v2/a/manifests/1?X-Amz-Signature=s&sig=z&token=t&region=eu#access_token=x"
    assert public_url(url) == "https://Harbor.example.com:8443/v2/a/manifests/1?region=eu"
    assert public_url("https://s3/o?X-Amz-Credential=c&b=2&session=1", ["session"]) == "https://s3/o?b=2"
    assert public_url("http://h/v2/a/manifests/1") == "http://h/v2/a/manifests/1"  # nothing to hide: unchanged


def test_public_url_is_idempotent_and_never_raises() -> None:
    for url in ("http://u:p@h/x?a=1&sig=2", "http://[::1/x", "not a url", "http://h/x#f"):
        once = public_url(url)
        assert public_url(once) == once
    assert strip_userinfo("http://u:p@[::1/x") == "http://[::1/x"


def test_clip_replaces_controls_and_marks_the_cut() -> None:
    assert clip("a\r\nInjected: 1\x1b[31m\u202eb") == "a Injected: 1 [31m b"
    long = clip("x" * (1 << 20))
    assert len(long) == QUOTE_CHARS and long.endswith(CUT)
    assert clip(long) == long
    assert clip("\n" * 5000).endswith(CUT)  # cut, even when what is left is short


def test_scrub_hides_the_user_info_of_a_jobs_own_urls_in_old_texts() -> None:
    secrets = userinfo_of(["http://robot:s3cret-pw@h:5/v2/a/manifests/1"])
    assert (
        scrub("manifest robot:s3cret-pw@h:5/a:1 not found; http://x:y@z/ too", secrets)
        == "manifest h:5/a:1 not found; http://z/ too"
    )


def test_a_stored_row_is_bounded_in_every_field() -> None:
    row = stored_row(TaskRow(url="http://u:p@h/b?sig=1", hostname="n" * 1000, ip="1" * 100, description="d\n" * 1000))
    assert row.url == "http://h/b" and len(row.hostname) == 255 and len(row.ip) == 64
    assert len(row.description) <= QUOTE_CHARS and row.description.endswith(CUT) and "\n" not in row.description
