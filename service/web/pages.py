"""The dashboard's pages. Each is a shell: its script fetches what it shows from ``/v1``, so the
page and a script calling the API see the same data, and no logic lives here twice."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from service.api.deps import SettingsDep
from service.schemas import ID_PATTERN
from service.web.templating import render

router = APIRouter(include_in_schema=False)

_ID = re.compile(ID_PATTERN)


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/jobs", status_code=303)


@router.get("/datasets")
async def datasets_page(request: Request, settings: SettingsDep) -> Response:
    return render(request, settings, "datasets.html", title="Datasets", nav="datasets")


@router.get("/datasets/{dataset_id}")
async def dataset_page(request: Request, settings: SettingsDep, dataset_id: str) -> Response:
    return _resource(request, settings, "dataset.html", "Dataset", "datasets", dataset_id)


@router.get("/jobs")
async def jobs_page(request: Request, settings: SettingsDep) -> Response:
    return render(request, settings, "jobs.html", title="Jobs", nav="jobs")


@router.get("/jobs/new")
async def new_job_page(request: Request, settings: SettingsDep) -> Response:
    return render(request, settings, "job_new.html", title="New job", nav="jobs")


@router.get("/jobs/{job_id}")
async def job_page(request: Request, settings: SettingsDep, job_id: str) -> Response:
    return _resource(request, settings, "job.html", "Job", "jobs", job_id)


@router.get("/models")
async def models_page(request: Request, settings: SettingsDep) -> Response:
    return render(request, settings, "models.html", title="Models", nav="models")


@router.get("/models/{model_id}")
async def model_page(request: Request, settings: SettingsDep, model_id: str) -> Response:
    return _resource(request, settings, "model.html", "Model", "models", model_id)


def _resource(
    request: Request, settings: SettingsDep, template: str, title: str, nav: str, rid: str
) -> Response:
    """A page about one resource; an id no resource can have is a 404 page at once."""
    if not _ID.match(rid):
        return render(
            request, settings, "not_found.html", title="Not found", nav=nav, status_code=404
        )
    return render(request, settings, template, title=f"{title} {rid[:8]}", nav=nav, rid=rid)
