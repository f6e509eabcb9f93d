"""The whole loop in a real Chromium against a real ``retinanet serve`` and its worker: sign in,
upload a dataset by drag and drop, start a job through the form, watch it succeed live, read
its curves, COCO numbers and per-class table, and try its model on an image."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .browser import Guarded
from .conftest import Served, Zips
from .pages import api, drop_file, sign_in

TRAIN_TIMEOUT_MS = 300_000
EPOCHS = 2
JOB_URL = re.compile(r".*/jobs/[0-9a-f]{32}$")


def _upload(web: Guarded, zips: Zips) -> str:
    """The good zip dropped on the datasets page; the new dataset's id."""
    web.page.fill("#upload-name", "shapes-web")
    drop_file(web, "#dropzone", zips.good, "application/zip")
    web.page.wait_for_selector('#upload-status[data-state="done"]')
    assert web.page.eval_on_selector("#upload-bar", "el => el.style.width") == "100%"
    assert "12 images" in web.page.inner_text("#upload-report")
    assert web.page.locator('#upload-report [data-severity="error"]').count() == 0
    row = web.page.wait_for_selector('#datasets-table tr:has-text("shapes-web")')
    assert row is not None
    dataset_id = row.get_attribute("data-id")
    assert dataset_id
    return dataset_id


def _check_dataset_page(web: Guarded, served: Served, dataset_id: str) -> None:
    dataset = api(served.url, "GET", f"/v1/datasets/{dataset_id}")
    web.goto(f"/datasets/{dataset_id}")
    web.page.wait_for_selector("#samples canvas[data-boxes]")
    bars = web.page.eval_on_selector_all(
        ".hrow",
        "rows => rows.map(r => [r.dataset.class, Number(r.querySelector('.hcount').textContent)])",
    )
    assert dict(bars) == dataset["class_counts"]
    samples = api(served.url, "GET", f"/v1/datasets/{dataset_id}/samples?limit=6")["data"]
    web.page.wait_for_function(
        "n => document.querySelectorAll('#samples canvas[data-boxes]').length === n",
        arg=len(samples),
    )
    drawn = web.page.eval_on_selector_all(
        "#samples canvas", "cs => cs.map(c => Number(c.dataset.boxes))"
    )
    assert drawn == [len(s["boxes"]) for s in samples]


def _start_job(web: Guarded, dataset_id: str) -> str:
    web.goto("/jobs/new")
    web.page.wait_for_selector('#job-form[data-ready="true"]')
    web.page.select_option('select[name="train_dataset_id"]', dataset_id)
    web.page.select_option('select[name="recipe"]', "shapes_tiny")
    for name, value in {"epochs": EPOCHS, "batch_size": 4, "min_size": 96, "max_size": 96}.items():
        web.page.fill(f'input[name="{name}"]', str(value))
    web.page.fill('textarea[name="overrides"]', "solver.steps=[]\nsolver.warmup_iters=2")
    web.page.click('#job-form button[type="submit"]')
    web.page.wait_for_url(JOB_URL)
    return web.page.url.rsplit("/", 1)[-1]


_ROWS = """rows => rows.map((r) => [r.dataset.class, Object.fromEntries(
  [...r.querySelectorAll("[data-key]")].map((td) => [
    td.dataset.key, td.dataset.value === "null" ? null : Number(td.dataset.value)]))])"""


def _chart(web: Guarded, chart_id: str) -> dict[str, Any]:
    data: dict[str, Any] = web.page.evaluate(f"window.RNCharts[{json.dumps(chart_id)}]")
    assert web.page.get_attribute(f"#{chart_id}", "data-points") == str(len(data["x"]))
    return data


def _check_job_page(web: Guarded, served: Served, job_id: str) -> None:
    metrics = api(served.url, "GET", f"/v1/jobs/{job_id}/metrics")
    epochs = list(range(1, EPOCHS + 1))
    train = _chart(web, "chart-train")
    assert train["x"] == epochs
    assert {s["label"] for s in train["series"]} == set(metrics["history"][0]["train_losses"])
    for chart_id in ("chart-val", "chart-ap"):
        assert _chart(web, chart_id)["x"] == epochs, chart_id
    ap = _chart(web, "chart-ap")["series"][0]["values"]
    assert ap == [pytest.approx(100 * h["metrics"]["summary"]["AP"]) for h in metrics["history"]]
    assert len(_chart(web, "chart-lr")["x"]) >= 1

    per_class = metrics["latest"]["per_class"]
    rows = web.page.eval_on_selector_all("#per-class tbody tr", _ROWS)
    keys = ("AP", "AP50", "AP75", "AR100", "best_f1", "best_f1_threshold")
    assert rows == [[c["name"], {k: c[k] for k in keys}] for c in per_class]
    pr = _chart(web, "chart-pr")
    assert [s["values"] for s in pr["series"]] == [c["pr_curve"] for c in per_class]
    assert len(pr["x"]) == 101
    headline = web.page.inner_text('#headline .tile[data-key="AP50"] .v')
    assert headline == f"{100 * metrics['latest']['summary']['AP50']:.1f}"
    assert "claimed by worker" in web.page.inner_text("#history")
    assert f"epoch {EPOCHS} done" in web.page.inner_text("#log")


def _count_drawn(web: Guarded) -> int:
    return int(web.page.get_attribute("#try-canvas", "data-boxes") or "-1")


def _try_model(web: Guarded, served: Served, zips: Zips, model_id: str) -> None:
    web.goto(f"/models/{model_id}")
    web.page.wait_for_selector('#page[data-ready="true"]')
    drop_file(web, "#try-drop", zips.image, "image/png")
    web.page.wait_for_selector('#try-canvas[data-threshold="best_f1"]')

    def served_count(threshold: str) -> int:
        with zips.image.open("rb") as f:
            files = {"files": (zips.image.name, f, "image/png")}
            body = api(
                served.url, "POST", f"/v1/models/{model_id}/predict",
                files=files, data={"score_threshold": threshold},
            )  # fmt: skip
        return len(body["images"][0]["detections"])

    assert _count_drawn(web) == served_count("best_f1")
    assert web.page.locator("#try-table tbody tr").count() == _count_drawn(web)
    for threshold in ("0.05", "0.2", "0.5"):
        web.page.fill("#threshold", threshold)
        web.page.wait_for_selector(f'#try-canvas[data-threshold="{threshold}"]')
        assert _count_drawn(web) == served_count(threshold), threshold


@pytest.mark.slow
def test_the_whole_loop_in_the_browser(web: Guarded, served: Served, zips: Zips) -> None:
    sign_in(web, "/datasets")
    dataset_id = _upload(web, zips)
    _check_dataset_page(web, served, dataset_id)

    job_id = _start_job(web, dataset_id)
    web.page.evaluate("window.notReloaded = true")
    web.page.wait_for_selector('#page[data-live="done"]', timeout=TRAIN_TIMEOUT_MS)
    assert web.page.get_attribute("#page", "data-status") == "succeeded", web.page.inner_text(
        "#log"
    )
    assert web.page.evaluate("window.notReloaded") is True  # followed live, not reloaded
    assert web.page.inner_text("#status") == "succeeded"
    _check_job_page(web, served, job_id)

    web.goto("/jobs")
    web.page.wait_for_selector(f'#jobs-table tr[data-id="{job_id}"][data-status="succeeded"]')
    model_href = web.page.get_attribute(f"a[href^='/jobs/{job_id}']", "href")
    assert model_href == f"/jobs/{job_id}"
    web.goto(f"/jobs/{job_id}")
    web.page.wait_for_selector("#model-link:not([hidden])")
    model_id = (web.page.get_attribute("#model-link", "href") or "").rsplit("/", 1)[-1]
    _try_model(web, served, zips, model_id)
