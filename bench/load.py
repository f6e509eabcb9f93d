"""Load on a real ``retinanet serve`` with a job training: uploads, listings, job posts, event
streams and predicts at once, bounded in count and time, against 127.0.0.1 only.

    .venv/bin/python bench/load.py                       # SQLite (the embedded default)
    .venv/bin/python bench/load.py --backends sqlite,postgres   # side by side

PostgreSQL needs ``RETINANET_TEST_POSTGRES_URL`` (``eval "$(bash scripts/postgres.sh | tail -1)"``);
each run gets a schema of its own, dropped afterwards.

Per backend it prints, per route: requests, errors (5xx, timeouts, refused connections), p50 and
p99 latency; then ``/health/live`` p99 against the goal (200 ms), whether the embedded worker
survived and whether the training job kept progressing. The goal (issue 11): 0 errors and
``/health/live`` p99 < 200 ms at 20 concurrent uploads + 50 concurrent listings on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import secrets
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from load_setup import dataset_zip, make_predict_image, postgres_database, serve

GOAL_LIVE_P99_MS = 200.0
T = TypeVar("T")
SIZES = {"data": {"train_min_sizes": [96], "eval_min_size": 96, "max_size": 96}}


@dataclass
class Stats:
    """Latencies (ms) and errors per route name."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    async def timed(self, name: str, call: Callable[[], Awaitable[httpx.Response]]) -> None:
        start = time.perf_counter()
        try:
            response = await call()
        except httpx.HTTPError as exc:
            self.errors[name].append(type(exc).__name__)
            return
        self.latencies[name].append((time.perf_counter() - start) * 1000)
        if response.status_code >= 500:
            self.errors[name].append(f"{response.status_code} {response.text[:120]}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if await check():
                return
        await asyncio.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


async def prepare(client: httpx.AsyncClient, archive: bytes, want_model: bool) -> dict[str, str]:
    """A dataset, optionally a trained model, and a long job that is training."""

    async def ready() -> bool:
        return (await client.get("/health/ready")).status_code == 200

    await wait_for(ready, 180, "the service to be ready")
    files = {"file": ("shapes.zip", archive, "application/zip")}
    response = await client.post("/v1/datasets", files=files, data={"name": "load"})
    response.raise_for_status()
    dataset_id = response.json()["id"]
    ids = {"dataset": dataset_id}
    if want_model:
        overrides = {**SIZES, "solver": {"epochs": 1, "steps": []}}
        job = await post_job(client, dataset_id, overrides)

        async def finished() -> bool:
            status = (await client.get(f"/v1/jobs/{job}")).json()["status"]
            if status in ("failed", "cancelled"):
                raise SystemExit(f"the model's job ended {status}")
            return bool(status == "succeeded")

        await wait_for(finished, 600, "the model's job")
        models = (await client.get("/v1/models")).json()["data"]
        ids["model"] = models[0]["id"]
    ids["job"] = await post_job(client, dataset_id, {**SIZES, "solver": {"epochs": 1000}})

    async def running() -> bool:
        return bool((await client.get(f"/v1/jobs/{ids['job']}")).json()["status"] == "running")

    await wait_for(running, 300, "the long job to run")
    return ids


async def post_job(
    client: httpx.AsyncClient, dataset_id: str, overrides: Mapping[str, object]
) -> str:
    body = {
        "train_dataset_id": dataset_id,
        "recipe": "shapes_tiny",
        "recipe_overrides": overrides,
        "holdout_fraction": 0.25,
    }
    response = await client.post("/v1/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


async def iteration(client: httpx.AsyncClient, job_id: str) -> int:
    progress = (await client.get(f"/v1/jobs/{job_id}")).json().get("progress") or {}
    return int(progress.get("iteration") or 0)


async def load_phase(
    client: httpx.AsyncClient, args: argparse.Namespace, archive: bytes, ids: dict[str, str]
) -> Stats:
    stats = Stats()
    deadline = time.monotonic() + args.duration
    predict_image = make_predict_image()

    async def repeat(
        name: str, call: Callable[[], Awaitable[httpx.Response]], pause: float
    ) -> None:
        for _ in range(args.max_requests):
            if time.monotonic() > deadline:
                return
            await stats.timed(name, call)
            await asyncio.sleep(pause)

    def upload() -> Awaitable[httpx.Response]:
        files = {"file": ("shapes.zip", archive, "application/zip")}
        return client.post("/v1/datasets", files=files)

    def post() -> Awaitable[httpx.Response]:
        body = {"train_dataset_id": ids["dataset"], "recipe": "shapes_tiny", "priority": -1}
        return client.post("/v1/jobs", json=body)

    def predict() -> Awaitable[httpx.Response]:
        files = {"files": ("image.png", predict_image, "image/png")}
        return client.post(f"/v1/models/{ids['model']}/predict", files=files)

    async def stream() -> None:
        # One long request: the time to its first event is its latency.
        start = time.perf_counter()
        try:
            async with client.stream("GET", f"/v1/jobs/{ids['job']}/events") as response:
                first = True
                async for _ in response.aiter_lines():
                    if first:
                        stats.latencies["GET /v1/jobs/{id}/events"].append(
                            (time.perf_counter() - start) * 1000
                        )
                        first = False
                    if time.monotonic() > deadline:
                        return
        except httpx.HTTPError as exc:
            stats.errors["GET /v1/jobs/{id}/events"].append(type(exc).__name__)

    tasks = [
        *(repeat("POST /v1/datasets", upload, 0) for _ in range(args.uploads)),
        *(repeat("GET /v1/jobs", lambda: client.get("/v1/jobs"), 0) for _ in range(args.listings)),
        *(repeat("POST /v1/jobs", post, 1.0) for _ in range(args.posts)),
        *(stream() for _ in range(args.streams)),
        *(
            repeat("POST /v1/models/{id}/predict", predict, 0)
            for _ in range(args.predicts if "model" in ids else 0)
        ),
    ]
    probe = probe_liveness(str(client.base_url), args.duration)
    await asyncio.gather(*tasks)
    stats.latencies["GET /health/live"], stats.errors["GET /health/live"] = await probe
    return stats


def probe_liveness(url: str, duration_s: float) -> Awaitable[tuple[list[float], list[str]]]:
    """``GET /health/live`` every 100 ms from a process of its own: the load's own event loop
    is busy with its clients, and would add its lag to the server's."""
    pool = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn")
    )
    future = pool.submit(_probe, url, duration_s)
    pool.shutdown(wait=False)
    return asyncio.wrap_future(future)


def _probe(url: str, duration_s: float) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + duration_s
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                response = client.get("/health/live")
                latencies.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    errors.append(str(response.status_code))
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            time.sleep(0.1)
    return latencies, errors


@dataclass(frozen=True)
class Outcome:
    """One backend's run: the load's figures and the state of the service after it."""

    stats: Stats
    job_status: str
    progress: tuple[int, int]
    live_workers: str
    ready: int
    log_tail: list[str]


async def run_backend(backend: str, args: argparse.Namespace, archive: bytes) -> Outcome:
    api_key = secrets.token_urlsafe(16)
    with (
        tempfile.TemporaryDirectory(prefix="retinanet-load-") as tmp,
        (
            postgres_database(os.environ["RETINANET_TEST_POSTGRES_URL"])
            if backend == "postgres"
            else nullcontext(None)
        ) as database_url,
        serve(Path(tmp) / "data", api_key, database_url) as (url, log),
    ):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
        async with httpx.AsyncClient(
            base_url=url,
            headers={"X-API-Key": api_key},
            timeout=args.timeout,
            limits=limits,
        ) as client:
            ids = await prepare(client, archive, want_model=args.predicts > 0)
            before = await iteration(client, ids["job"])
            stats = await load_phase(client, args, archive, ids)
            await asyncio.sleep(3)  # a heartbeat or two after the load
            after = await settled(iteration(client, ids["job"]), -1)
            job = await settled(get_json(client, f"/v1/jobs/{ids['job']}"), {})
            workers = await settled(get_json(client, "/v1/workers"), {})
            ready = await settled(status_of(client, "/health/ready"), -1)
            await settled(client.post(f"/v1/jobs/{ids['job']}/cancel"), None)
        tail = log.read_text(errors="replace").splitlines()[-5:]
    return Outcome(
        stats=stats,
        job_status=str(job.get("status", "unanswered")),
        progress=(before, after),
        live_workers=str(workers.get("count", "unanswered")),
        ready=ready,
        log_tail=tail,
    )


async def settled(call: Awaitable[T], default: T) -> T:
    """``call``'s result, or ``default`` when the server does not answer (a frozen API)."""
    try:
        return await call
    except httpx.HTTPError:
        return default


async def get_json(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    return dict((await client.get(path)).json())


async def status_of(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


def report(results: dict[str, Outcome], args: argparse.Namespace) -> None:
    backends = list(results)
    routes = sorted({r for res in results.values() for r in res.stats.latencies})
    print(
        f"\nload: {args.uploads} uploads + {args.listings} listings + {args.posts} job posts + "
        f"{args.streams} event streams + {args.predicts} predicts, {args.duration:.0f} s, "
        f"one job training; {os.cpu_count()} cores\n"
    )
    header = f"{'route':<32}" + "".join(
        f"{b + ' n':>12}{'err':>6}{'p50 ms':>9}{'p99 ms':>9}" for b in backends
    )
    print(header)
    print("-" * len(header))
    for route in routes:
        line = f"{route:<32}"
        for b in backends:
            lat = results[b].stats.latencies.get(route, [])
            err = len(results[b].stats.errors.get(route, []))
            line += f"{len(lat):>12}{err:>6}{percentile(lat, 50):>9.0f}{percentile(lat, 99):>9.0f}"
        print(line)
    print()
    for b, res in results.items():
        live = percentile(res.stats.latencies.get("GET /health/live", []), 99)
        errors = sum(len(v) for v in res.stats.errors.values())
        before, after = res.progress
        print(
            f"{b}: errors {errors} (goal 0); /health/live p99 {live:.0f} ms vs goal "
            f"{GOAL_LIVE_P99_MS:.0f} ms = {live / GOAL_LIVE_P99_MS:.2f}x of the budget; "
            f"job {res.job_status}, iterations {before} -> {after} during the load; "
            f"live workers {res.live_workers}; /health/ready {res.ready}"
        )
        for route, errs in res.stats.errors.items():
            if errs:
                print(f"  {route}: {len(errs)} errors, e.g. {sorted(set(errs))[:3]}")
        if errors:
            print("  serve log tail:", *res.log_tail, sep="\n    ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite,postgres")
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--listings", type=int, default=50)
    parser.add_argument("--posts", type=int, default=2)
    parser.add_argument("--streams", type=int, default=5)
    parser.add_argument("--predicts", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=10_000, help="per client, at most")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--images", type=int, default=16, help="images per uploaded dataset")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="retinanet-load-data-") as tmp:
        archive = dataset_zip(Path(tmp), args.images)
    results = {
        backend: asyncio.run(run_backend(backend, args, archive))
        for backend in args.backends.split(",")
    }
    report(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
