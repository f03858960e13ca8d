"""The web console, used by a person in a real browser (issue 5).

Each test signs in with a personal access token, works the pages as an operator would,
photographs every page it visits (under the test's tmp_path) and ends with no console
error and no uncaught script exception.
"""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import OriginImages
from tests.console.conftest import ConsoleGateway, Person, api_error, last_job_id


def expect(target: Any) -> Any:
    """Playwright's waiting assertions (imported late: without Playwright these tests skip, not crash)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def test_a_person_signs_in_with_a_token_and_a_wrong_token_is_refused(
    person: Person, console_gateway: ConsoleGateway
) -> None:
    page = person.page
    page.goto(f"{person.console}/preheats")
    expect(page).to_have_url(re.compile(r"/console/signin\?next=%2Fconsole%2Fpreheats$"))
    person.shoot("signin")

    page.get_by_label("Access token").fill("phg_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("alert")).to_have_text("Sign-in failed: unknown token.")
    expect(page.get_by_label("Access token")).to_have_value("")
    person.shoot("signin-refused")

    page.get_by_label("Access token").fill(console_gateway.process.token)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/preheats$"))
    expect(page.get_by_text("Signed in as")).to_contain_text("tests")
    expect(page.get_by_role("heading", name="Preheats")).to_be_visible()
    assert person.errors == []


def test_a_console_preheat_goes_from_pending_to_success_without_a_reload(
    person: Person, console_gateway: ConsoleGateway, images: OriginImages
) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)
    person.create_preheat(
        console_gateway.manifest_url("library/app", "1.0", gated=True), description="warm app 1.0 for the rollout"
    )

    job_id = last_job_id(console_gateway)
    expect(page).to_have_url(re.compile(rf"/console/preheats/{job_id}\?notice=created$"))
    page.get_by_role("link", name="Preheats").first.click()
    row = person.row(job_id)
    expect(row.locator(".badge")).to_have_text("running")
    expect(row).to_contain_text("console")
    expect(row).to_contain_text("library/app:1.0")
    expect(row).to_contain_text("warm app 1.0 for the rollout")
    expect(row).to_contain_text("local")
    person.shoot("preheats-pending")

    page.evaluate("window.stillTheSamePage = true")
    console_gateway.gate.resume()
    expect(row.locator(".badge")).to_have_text("success", timeout=30_000)
    assert page.evaluate("window.stillTheSamePage === true"), "the list reloaded instead of refreshing the row"
    person.shoot("preheats-success")

    page.get_by_role("link", name=f"Preheat {job_id}").click()
    expect(page.locator("#job-state")).to_have_text("success")
    blobs = len(images.single.blob_digests)  # the config and every layer
    expect(page.locator("#progress-text")).to_have_text(f"{blobs} of {blobs} blobs done")
    table = page.get_by_role("table", name="Blobs warmed in cluster local")
    expect(table.locator("thead th")).to_have_text(["Blob URL", "Host", "IP", "State", "Error"])
    expect(table.locator("tbody tr")).to_have_count(blobs)
    for digest in images.single.blob_digests:
        expect(table).to_contain_text(f"{console_gateway.gate.url}/v2/library/app/blobs/{digest}")
    expect(table.locator(".badge.success")).to_have_count(blobs)
    person.shoot("detail-success")
    assert person.errors == []


def test_the_detail_page_follows_a_running_preheat_to_its_end(
    person: Person, console_gateway: ConsoleGateway, images: OriginImages
) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)
    person.create_preheat(console_gateway.manifest_url("library/app", "1.0", gated=True))
    expect(page).to_have_url(re.compile(rf"/console/preheats/{last_job_id(console_gateway)}\?notice=created$"))

    expect(page.locator("#job-state")).to_have_text("running")
    expect(page.get_by_role("article", name=re.compile("^local")).locator("h3 .badge")).to_have_text("running")
    expect(page.get_by_role("button", name="Cancel preheat")).to_be_visible()
    person.shoot("detail-pending")
    page.evaluate("window.stillTheSamePage = true")
    console_gateway.gate.resume()

    expect(page.locator("#job-state")).to_have_text("success", timeout=30_000)
    blobs = len(images.single.blob_digests)
    expect(page.locator("#progress-text")).to_have_text(f"{blobs} of {blobs} blobs done")
    expect(page.get_by_role("button", name="Cancel preheat")).to_have_count(0)
    assert page.evaluate("window.stillTheSamePage === true"), "the detail page reloaded instead of refreshing"
    assert person.errors == []


def test_an_unfinished_preheat_can_be_canceled_from_its_page(person: Person, console_gateway: ConsoleGateway) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)
    person.create_preheat(console_gateway.manifest_url("library/app", "1.0", gated=True))
    expect(page).to_have_url(re.compile(rf"/console/preheats/{last_job_id(console_gateway)}\?notice=created$"))

    page.get_by_role("button", name="Cancel preheat").click()

    expect(page.get_by_role("status")).to_contain_text("The preheat was canceled")
    expect(page.locator("#job-state")).to_have_text("failure")
    expect(page.locator("#error-log")).to_have_text("canceled by tests")
    person.shoot("detail-canceled")
    assert person.errors == []


def test_a_failed_preheat_shows_its_error_log(person: Person, console_gateway: ConsoleGateway) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)
    person.create_preheat(console_gateway.manifest_url("library/app", "no-such-tag"), description="a tag nobody pushed")
    job_id = last_job_id(console_gateway)
    expect(page).to_have_url(re.compile(rf"/console/preheats/{job_id}\?notice=created$"))
    expect(page.locator("#job-state")).to_have_text("failure", timeout=30_000)

    log = page.locator("#error-log")
    expect(log).to_contain_text("library/app:no-such-tag")
    expect(log).to_contain_text("not found")
    expect(page.get_by_role("heading", name="Error log")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel preheat")).to_have_count(0)
    expect(page.locator("#progress-text")).to_have_text("Failed: no blob warmed")
    expect(page.locator("progress")).to_have_count(0)  # a failure is not drawn as a bar
    person.shoot("detail-failure")
    assert person.errors == []


def test_invalid_input_is_shown_next_to_its_field_in_the_apis_words(
    person: Person, console_gateway: ConsoleGateway
) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)
    jobs_before = console_gateway.job_count()

    person.create_preheat("registry.example.com/library/app:1.0")

    expect(page).to_have_url(re.compile(r"/console/preheats/new$"))
    url_error = page.locator("#urls-error")
    expect(url_error).to_have_text(
        api_error(console_gateway, {"type": "image", "url": "registry.example.com/library/app:1.0"})
    )
    expect(page.get_by_label("URL")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("URL")).to_have_value("registry.example.com/library/app:1.0")
    expect(page.get_by_label("URL")).to_have_attribute("aria-describedby", "urls-hint urls-error")
    person.shoot("create-invalid-url")

    good_url = console_gateway.manifest_url("library/app", "1.0")
    page.get_by_label("URL").fill(good_url)
    page.get_by_label("Platform").fill("linux")
    page.get_by_role("button", name="Create preheat").click()

    expect(page.locator("#platform-error")).to_have_text(
        api_error(console_gateway, {"type": "image", "url": good_url, "platform": "linux"})
    )
    expect(page.locator("#urls-error")).to_have_count(0)
    assert console_gateway.job_count() == jobs_before
    person.shoot("create-invalid-platform")
    assert person.errors == []


def test_a_form_posted_without_its_csrf_token_is_refused(person: Person, console_gateway: ConsoleGateway) -> None:
    person.sign_in(console_gateway.process.token)
    jobs_before = console_gateway.job_count()
    form = {"type": "image", "urls": console_gateway.manifest_url("library/app", "1.0")}

    for forged in ({}, {"csrf": "forged"}):
        response = person.page.request.post(f"{person.console}/preheats/new", form={**form, **forged}, max_redirects=0)
        assert response.status == 403
        assert "could not be verified" in response.text()

    signout = person.page.request.post(f"{person.console}/signout", form={}, max_redirects=0)
    assert signout.status == 403
    assert console_gateway.job_count() == jobs_before
    person.page.goto(f"{person.console}/preheats")
    expect(person.page.get_by_text("Signed in as")).to_contain_text("tests")
    assert person.errors == []


def test_after_signing_out_the_console_refuses_the_old_session(person: Person, console_gateway: ConsoleGateway) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)
    [cookie] = person.session_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]

    page.get_by_role("button", name="Sign out").click()

    expect(page).to_have_url(re.compile(r"/console/signin\?notice=signed_out$"))
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    assert person.session_cookies() == []
    page.goto(f"{person.console}/preheats")
    expect(page).to_have_url(re.compile(r"/console/signin\?next="))

    page.context.add_cookies([cookie])  # a copy of the old cookie is worth nothing
    assert page.request.get(f"{person.console}/preheats/rows?id=1").status == 401
    page.goto(f"{person.console}/clusters")
    expect(page.get_by_label("Access token")).to_be_visible()
    assert person.errors == []


def test_the_clusters_page_shows_each_cluster_its_adapter_and_health(
    person: Person, console_gateway: ConsoleGateway
) -> None:
    page = person.page
    person.sign_in(console_gateway.process.token)

    page.get_by_role("link", name="Clusters").click()

    card = page.get_by_role("article", name="local (id 1)")
    expect(card).to_contain_text("Adapter")
    expect(card.locator("dd").first).to_have_text("local")
    expect(card.locator(".badge")).to_have_text("healthy")
    expect(card.get_by_role("table", name="Options")).to_contain_text("path")
    person.shoot("clusters")
    assert person.errors == []


def test_a_keyboard_alone_reaches_the_content_and_the_forms(person: Person, console_gateway: ConsoleGateway) -> None:
    page = person.page
    page.goto(f"{person.console}/")
    page.keyboard.type(console_gateway.process.token)  # the token field has focus on arrival
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/preheats$"))

    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.locator("main").get_by_role("link", name="Create preheat")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/preheats/new$"))
    assert person.errors == []
