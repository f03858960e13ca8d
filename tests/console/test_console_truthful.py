"""What a person sees in the console is what happened (issue 20).

A running job says running; the bar follows bytes; "Updated" moves with the progress; a
failure reads as a failure; a file job reads as files and goes only to clusters that warm
files; creating a preheat lands on its page; a phone-width screen loses nothing on the right.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tests.conftest import OriginImages
from tests.console.conftest import ConsoleGateway, Person, last_job_id

PHONE = {"width": 390, "height": 844}


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


SAMPLE_STATUS = """() => {
    const bar = document.querySelector("#status progress"), fetched = document.querySelector("#progress-bytes");
    const updated = document.querySelector("#job-updated");
    return bar && fetched ? [bar.getAttribute("value"), fetched.getAttribute("title"), updated ? updated.innerText : ""] : null;
}"""


def _bytes_of(title: str) -> tuple[int, int]:
    moved, total = re.fullmatch(r"(\d+) of (\d+) bytes fetched", title).groups()  # type: ignore[union-attr]
    return int(moved), int(total)


def test_a_slow_preheat_is_running_its_bar_follows_bytes_and_updated_moves(
    person: Person, console_gateway: ConsoleGateway, images: OriginImages
) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)
    person.create_preheat(console_gateway.manifest_url("library/app", "1.0", slow=True))
    job_id = last_job_id(console_gateway)
    expect(page).to_have_url(re.compile(rf"/console/preheats/{job_id}\?notice=created$"))
    expect(page.get_by_role("status")).to_have_text("The preheat was created; this page follows it until it ends.")
    expect(page.locator("#job-state")).to_have_text("running")
    expect(page.get_by_role("article", name=re.compile("^local")).locator("h3 .badge")).to_have_text("running")

    samples: list[tuple[int, int, int, str]] = []  # (bar value, bytes moved, bytes total, "Updated")
    deadline = time.monotonic() + 60
    while page.locator("#job-state").inner_text() == "running" and time.monotonic() < deadline:
        # One read of the page: the status part is re-rendered as the job moves, so separate reads could mix two renders.
        seen = page.evaluate(SAMPLE_STATUS)
        if seen is not None:
            value, title, updated = seen
            moved, total = _bytes_of(title or "")
            samples.append((int(value or 0), moved, total, updated))
            if 0 < moved < total and len(samples) % 4 == 0:
                person.shoot("detail-running")
        page.wait_for_timeout(400)

    expect(page.locator("#job-state")).to_have_text("success", timeout=30_000)
    midway = [s for s in samples if 0 < s[1] < s[2]]
    assert midway, f"never saw the transfer midway: {samples}"
    for value, moved, total, _ in samples:
        assert value == round(1000 * moved / total), (value, moved, total)  # bytes, not blobs
    assert len({updated for *_, updated in midway}) >= 2, f"'Updated' stood still while bytes moved: {samples}"
    blobs = len(images.single.blob_digests)
    expect(page.locator("#progress-text")).to_have_text(f"{blobs} of {blobs} blobs done")
    expect(page.locator("#status progress")).to_have_attribute("value", "1000")
    assert person.errors == []


def test_a_warm_repeat_says_already_warm(person: Person, console_gateway: ConsoleGateway, images: OriginImages) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)
    for _ in range(2):
        person.create_preheat(console_gateway.manifest_url("library/app", "1.0"))
        expect(page.locator("#job-state")).to_have_text("success", timeout=30_000)

    expect(page.locator("#progress-bytes")).to_have_text(re.compile(r"^already warm \(1\.2 MiB\)$"))
    person.shoot("detail-already-warm")
    assert person.errors == []


def test_a_file_preheat_reads_as_files_and_goes_only_to_clusters_that_warm_files(
    make_person: Any, mixed_gateway: ConsoleGateway, file_server: str, tmp_path: Path
) -> None:
    (tmp_path / "files" / "model.bin").write_bytes(b"\x42" * 500_000)
    person: Person = make_person(mixed_gateway.console)
    page = person.page
    person.sign_in(mixed_gateway.process.token)

    person.create_preheat(f"{file_server}/model.bin", kind="file")

    expect(page.locator("#job-state")).to_have_text("success", timeout=30_000)
    expect(page.locator("#progress-text")).to_have_text("1 of 1 files done")
    expect(page.locator("#progress-bytes")).to_have_text("488.3 KiB fetched")
    what = page.get_by_role("region", name="What")
    expect(what.locator("dt")).to_contain_text(["File URL", "Platform"])
    expect(what).not_to_contain_text("Files")
    expect(what).to_contain_text("all that preheat files")
    expect(page.locator("article.cluster-result")).to_have_count(1)  # the mirror cluster warms images only
    table = page.get_by_role("table", name="Files warmed in cluster local")
    expect(table.locator("thead th").first).to_have_text("File URL")
    expect(table).to_contain_text(f"{file_server}/model.bin")
    person.shoot("detail-file")

    person.create_preheat(f"{file_server}/model.bin", kind="file", clusters=("eu-mirror",))  # named: its refusal shows
    expect(page.locator("#job-state")).to_have_text("failure", timeout=30_000)
    expect(page.locator(".task-error")).to_contain_text("the mirror adapter does not preheat files")
    assert person.errors == []


def test_a_job_that_failed_in_one_cluster_reads_as_a_failure(
    make_person: Any, mixed_gateway: ConsoleGateway, images: OriginImages
) -> None:
    person: Person = make_person(mixed_gateway.console)
    page = person.page
    person.sign_in(mixed_gateway.process.token)

    person.create_preheat(mixed_gateway.manifest_url("library/app", "1.0"))

    expect(page.locator("#job-state")).to_have_text("failure", timeout=60_000)
    blobs = len(images.single.blob_digests)
    expect(page.locator("#progress-text")).to_have_text(f"Failed: 1 of 2 clusters failed; {blobs} blobs warmed")
    expect(page.locator("#progress-text")).to_have_class("fail-text")
    expect(page.locator("#status progress")).to_have_count(0)
    local, mirror = (
        page.get_by_role("article", name=re.compile("^local")),
        page.get_by_role("article", name=re.compile("^eu-mirror")),
    )
    expect(local.locator(".badge").first).to_have_text("success")
    expect(mirror.locator("h3 .badge")).to_have_text("failure")
    expect(mirror.locator(".task-progress")).to_contain_text("Failed:")
    person.shoot("detail-failed-in-one-cluster")
    assert person.errors == []


def test_on_a_phone_nothing_is_cut_off_on_the_right(
    make_person: Any, console_gateway: ConsoleGateway, images: OriginImages
) -> None:
    person: Person = make_person(console_gateway.console, **PHONE)
    page = person.page
    person.sign_in(console_gateway.process.token)
    person.create_preheat(console_gateway.manifest_url("library/app", "1.0"), description="a phone-width check")
    expect(page.locator("#job-state")).to_have_text("success", timeout=30_000)

    for path, table in (("/preheats", "table.jobs"), (f"/preheats/{last_job_id(console_gateway)}", "table.results")):
        page.goto(f"{person.console}{path}")
        expect(page.locator(table)).to_be_visible()
        page_width = page.evaluate("document.documentElement.scrollWidth")
        assert page_width <= PHONE["width"], f"{path}: the page is {page_width}px wide on a {PHONE['width']}px screen"
        box = page.locator(table).locator("xpath=ancestor::div[contains(@class,'table-wrap')][1]")
        overflow = page.locator(table).evaluate("t => t.scrollWidth") - box.evaluate("b => b.clientWidth")
        assert overflow <= 0, f"{path}: {table} is {overflow}px wider than its box: its last columns are cut off"
        for label in ("State", "Updated") if table == "table.jobs" else ("Blob URL", "State"):
            cell = page.locator(f"{table} tbody td[data-label='{label}']").first
            expect(cell).to_be_visible()
            right = cell.evaluate("c => c.getBoundingClientRect().right")
            assert right <= PHONE["width"], f"{path}: the {label} cell ends at {right}px"
        person.shoot(f"phone-{path.strip('/').replace('/', '-')}")
    assert person.errors == []
