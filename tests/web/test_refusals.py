"""What the dashboard shows when the API refuses: a bad dataset's validation errors, item by
item, and a job form's 422 next to the field it names."""

from __future__ import annotations

from .browser import Guarded
from .conftest import Served, Zips
from .pages import sign_in


def test_a_bad_upload_shows_its_validation_errors(web: Guarded, zips: Zips) -> None:
    sign_in(web, "/datasets")
    web.expect_console(r"status of 422")
    web.page.set_input_files("#file-input", str(zips.bad))
    web.page.wait_for_selector('#upload-status[data-state="failed"]')
    # The duplicate id drops that image entry, so its annotations name no image: 5 errors.
    assert "Refused: the dataset has 5 error(s)" in web.page.inner_text("#upload-text")
    errors = web.page.locator('#upload-report [data-severity="error"] tr.issue')
    rows = [row.split("\t") for row in errors.all_inner_texts()]
    assert [(item, code) for item, _, code in rows] == [
        ("train_000002.png · image 1", "duplicate_image_id"),
        ("train_000003.png · image 3", "missing_image"),
        *[(f"image 2 · annotation {a}", "unknown_image") for a in (3, 4, 5)],
    ]
    assert rows[0][1] == "image id 1 is used again by train_000002.png; that entry is ignored"
    assert web.page.locator('#datasets-table tr:has-text("broken")').count() == 0


def test_a_refused_job_shows_the_error_at_its_field(
    web: Guarded, served: Served, zips: Zips
) -> None:
    sign_in(web, "/datasets")
    web.page.fill("#upload-name", "for-the-form")
    web.page.set_input_files("#file-input", str(zips.good))
    web.page.wait_for_selector('#upload-status[data-state="done"]')
    web.goto("/jobs/new")
    web.page.wait_for_selector('#job-form[data-ready="true"]')
    web.expect_console(r"status of 422")

    def submit() -> None:
        web.page.click('#job-form button[type="submit"]')
        web.page.wait_for_selector("#job-form .field-error:not(:empty)")

    web.page.fill('textarea[name="overrides"]', "loss.gammma=1")
    submit()
    at_overrides = web.page.inner_text('[data-error-for="overrides"]')
    assert at_overrides.startswith("loss.gammma: unknown key (allowed: "), at_overrides
    assert "invalid" in (web.page.get_attribute('textarea[name="overrides"]', "class") or "")

    web.page.fill('textarea[name="overrides"]', "")
    web.page.fill('input[name="gamma"]', "-1")
    submit()
    at_gamma = web.page.inner_text('[data-error-for="gamma"]')
    assert at_gamma.startswith("loss.gamma: Input should be greater than or equal to 0"), at_gamma
    assert web.page.inner_text('[data-error-for="overrides"]') == ""

    web.page.fill('input[name="gamma"]', "")
    web.page.fill('input[name="priority"]', "99999999999")
    submit()
    assert "less than or equal to 2147483647" in web.page.inner_text('[data-error-for="priority"]')
    assert "/jobs/new" in web.page.url  # nothing was queued
