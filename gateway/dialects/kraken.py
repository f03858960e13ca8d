"""Dialect C: Kraken's registry notifications, which any Harbor sends with vendor "Kraken" (Harbor's ``src/pkg/p2p/preheat/provider/kraken.go``).

Only translation lives here. Harbor POSTs a distribution-style notification with
capitalised keys (``Events``, ``Id``, ``Target.Url``) and marks its task SUCCESS on any
2xx, never asking again. One job comes from each ``push`` event whose target is a manifest;
every other event (pulls, deletes, blob pushes) is ignored, as Kraken ignores it.

Keys are matched case-insensitively and ``null`` means "absent", as in Go, so both
Harbor's ``Events``/``Url`` and a registry's own ``events``/``url`` decode.

The notification carries no registry credentials: the runner uses ``registries.credentials``
for the event's registry host (and otherwise tries anonymously; a refusal names that key).
"""

from __future__ import annotations

from typing import Any

import msgspec

from adapters.reference import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest_url,
)
from gateway.dialects.gojson import convert, decode_json, fold_keys
from gateway.jobs import InvalidRequest, JobSpec, check_digest

MANIFEST_MEDIA_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX})
MAX_EVENTS = 1000


class Target(msgspec.Struct):
    mediatype: str = ""
    digest: str = ""
    repository: str = ""
    url: str = ""
    tag: str = ""


class Event(msgspec.Struct):
    id: str = ""
    action: str = ""
    target: Target | None = None


class Preheat(msgspec.Struct, frozen=True):
    """One event that becomes a job: ``index`` is its place in ``Events`` (for error messages)."""

    index: int
    event_id: str
    spec: JobSpec


def _is_manifest(target: Target) -> bool:
    if target.mediatype:
        return target.mediatype.split(";")[0].strip() in MANIFEST_MEDIA_TYPES
    try:  # no media type: a manifest URL still says what it is
        parse_manifest_url(target.url)
    except ValueError:
        return False
    return True


def _event(raw: Any, index: int) -> Event:
    where = f"Events[{index}]"
    folded = fold_keys(raw, where)
    if "target" in folded:
        folded["target"] = fold_keys(folded["target"], f"{where}.Target")
    return convert(folded, Event, where)


def parse_notification(body: bytes) -> tuple[list[Preheat], int]:
    """The preheats a notification asks for, and how many events were ignored."""
    document = fold_keys(decode_json(body), "the notification")
    events = document.get("events", [])
    if not isinstance(events, list):
        raise InvalidRequest("Events must be a list of events")
    if len(events) > MAX_EVENTS:
        raise InvalidRequest(f"too many events ({len(events)}): at most {MAX_EVENTS} per notification")
    preheats: list[Preheat] = []
    ignored = 0
    for index, raw in enumerate(events):
        event = _event(raw, index)
        target = event.target
        if event.action.lower() != "push" or target is None or not _is_manifest(target):
            ignored += 1
            continue
        if not target.url:
            raise InvalidRequest(f"Events[{index}].Target.Url is empty: a push event needs the manifest URL to preheat")
        if target.digest:
            check_digest(target.digest, f"Events[{index}].Target.Digest")
        preheats.append(
            Preheat(
                index=index,
                event_id=event.id,
                spec=JobSpec(type="image", urls=[target.url], tag=target.tag, source="kraken"),
            )
        )
    return preheats, ignored


def accepted_body(job_ids: list[int], ignored: int) -> dict[str, Any]:
    """Harbor ignores the body; scripts and the tests read the job ids from it."""
    return {"jobs": job_ids, "ignored": ignored}
