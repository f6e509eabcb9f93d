"""The dashboard's fixtures: one Chromium, a real ``retinanet serve`` (API and one
worker) on a temporary data directory, shapes datasets as zips, and a guarded page per test
that leaves a screenshot in ``test-artifacts/`` when the test fails."""

from __future__ import annotations

import json
import subprocess
import zipfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from detector.data.shapes import ShapesSpec, make_shapes_splits
from tests.service.e2e_support import DEADLINE_S, free_port, start, up, wait_for

from .browser import ARGS, CHROMIUM, Guarded, guarded_page, require_chromium, save_screenshot


@dataclass(frozen=True)
class Served:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]


@dataclass(frozen=True)
class Zips:
    good: Path
    bad: Path
    image: Path
    """An image of the dataset, for try-it."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``retinanet serve`` with its one worker; auth on (the key of ``e2e_support``)."""
    root = tmp_path_factory.mktemp("web_service")
    port = free_port()
    process = start(["serve", "--port", str(port)], root / "data", root / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(process, f"{url}/health/live"), DEADLINE_S, "the API")
        yield Served(url=url, data_dir=root / "data", process=process)
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="session")
def zips(tmp_path_factory: pytest.TempPathFactory) -> Zips:
    """A good shapes zip (12 images of 96 px) and a bad one (a duplicate image id, a file
    missing)."""
    root = tmp_path_factory.mktemp("web_shapes")
    paths = make_shapes_splits(
        root, ShapesSpec(num_images=1, size_px=96, seed=5), splits=[("train", 12)]
    )
    coco = json.loads(paths["train"].read_text())
    good = _zip(root / "shapes.zip", coco, root / "images")
    broken = json.loads(json.dumps(coco))
    broken["images"][1]["id"] = broken["images"][0]["id"]
    missing = broken["images"][2]["file_name"]
    bad = _zip(root / "broken.zip", broken, root / "images", skip={missing})
    return Zips(good=good, bad=bad, image=root / "images" / coco["images"][0]["file_name"])


def _zip(
    out: Path, coco: dict[str, object], images: Path, skip: frozenset[str] | set[str] = frozenset()
) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("annotations.json", json.dumps(coco))
        for image in coco["images"]:  # type: ignore[attr-defined]
            if image["file_name"] not in skip:
                zf.write(images / image["file_name"], f"images/{image['file_name']}")
    return out


@pytest.fixture
def web(browser: Browser, served: Served, request: pytest.FixtureRequest) -> Iterator[Guarded]:
    """A guarded page in a fresh context; checked (no foreign request, no console error) when
    the test passed, screenshotted when it failed."""
    with guarded_page(browser, served.url, request.node.name) as guarded:
        yield guarded
        if request.node.stash.get(_FAILED, False):
            path = save_screenshot(guarded.page, request.node.name)
            print(f"screenshot of the failed test: {path}")
        else:
            guarded.check()
