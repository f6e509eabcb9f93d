"""A run as an MLflow run, through a background thread that never fails or stalls training.

Each MLflow call (open the run, log an epoch, log an artifact, end the run) is queued and made
in order by one daemon thread; a failing call is logged and retried with a bounded backoff,
then dropped. The queue is bounded (a full one drops the call, never blocks) and the end of a
run waits at most ``tracking.mlflow_wait_s`` for it to drain. MLflow's own HTTP retries and
timeouts (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``) apply inside
each call.

The run's id is kept in ``<run>/mlflow_run.json``, so a resumed run (another attempt of a
job) continues the same MLflow run, and :func:`finish_mlflow_run` (the end of ``finalize``)
adds the model file and the plots to it. ``mlflow`` is imported only when a run has a URI: it
is heavy, and most runs do not use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.config import TrainConfig
from detector.engine.callbacks import Callback, EpochEvent, Trainer
from detector.engine.tracking_history import EpochRecord, MetricsHistory, epoch_scalars

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
QUEUE_SIZE = 10_000
ATTEMPTS = 4
"""Tries of one call before it is dropped (MLflow's own HTTP retries are inside each)."""
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
_BATCH = 100
"""Params per ``log_batch`` (MLflow's limit; metrics allow 1000)."""
_KEY_CHARS = re.compile(r"[^\w.\- :/]")
"""What MLflow refuses in a key (it allows word characters, ``. - space : /``)."""

Call = Callable[["MlflowClient", str], None]


def run_file(workdir: Path) -> Path:
    return workdir / RUN_FILE


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as dotted keys with text values (lists and numbers as JSON)."""
    flat: dict[str, str] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            flat |= flatten(item, prefix=f"{dotted}.")
        else:
            flat[dotted] = item if isinstance(item, str) else json.dumps(item)
    return flat


def mlflow_key(name: str) -> str:
    """``name`` with what MLflow refuses in a metric key replaced by ``_``."""
    return _KEY_CHARS.sub("_", name)


class MlflowSender:
    """Makes the calls for one MLflow run, in order, in a background thread.

    The first call opens the run: the one named in ``run_file`` when it exists there, else a
    new one (with ``tags`` and ``params``) whose id is then written to ``run_file``.
    """

    def __init__(
        self,
        *,
        cfg: TrainConfig,
        workdir: Path,
        params: Mapping[str, str],
        on_created: Callable[[], None] | None = None,
    ) -> None:
        uri = cfg.tracking.mlflow_uri
        assert uri is not None
        self.uri = uri
        self.tracking = cfg.tracking
        self.run_name = cfg.tracking.run_name or workdir.resolve().name
        self.run_file = run_file(workdir)
        self.params = dict(params)
        self.on_created = on_created
        self.run_id: str | None = None
        self._calls: queue.Queue[tuple[str, Call] | None] = queue.Queue(QUEUE_SIZE)
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow", daemon=True)
        self._thread.start()

    def send(self, what: str, call: Call) -> None:
        """Queue ``call(client, run_id)``; never blocks (a full queue drops it, logged)."""
        try:
            self._calls.put_nowait((what, call))
        except queue.Full:
            log.warning("MLflow: queue full, dropped: %s", what)

    def close(self, *, wait_s: float) -> bool:
        """Let the queued calls finish, waiting at most ``wait_s``; True if all were made."""
        with contextlib.suppress(queue.Full):  # a full queue: the wait below runs out
            self._calls.put_nowait(None)
        self._thread.join(timeout=wait_s)
        if self._thread.is_alive():
            self._abandon.set()
            log.warning(
                "MLflow at %s: %d calls still queued after %.0f s; they are dropped",
                self.uri,
                self._calls.qsize(),
                wait_s,
            )
            return False
        return True

    def _loop(self) -> None:
        client: MlflowClient | None = None
        while not self._abandon.is_set():
            item = self._calls.get()
            if item is None:
                return
            what, call = item
            if client is None:
                client = self._retry("connect", _client, self.uri)
            if client is not None and self.run_id is None:
                self.run_id = self._retry("open the run", self._open, client)
            if client is None or self.run_id is None:
                log.warning("MLflow at %s: no run, dropped: %s", self.uri, what)
                continue
            self._retry(what, call, client, self.run_id)

    def _retry(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, tried :data:`ATTEMPTS` times with a doubling backoff; None if all
        failed (or the sender was abandoned)."""
        delay = BACKOFF_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn(*args)
            except Exception as exc:
                last = attempt == ATTEMPTS
                log.warning(
                    "MLflow at %s: %s failed (attempt %d of %d%s): %s",
                    self.uri,
                    what,
                    attempt,
                    ATTEMPTS,
                    "" if last else f", retrying in {delay:.0f} s",
                    _short(exc),
                )
                if last or self._abandon.wait(delay):
                    return None
                delay = min(2 * delay, MAX_BACKOFF_S)
        return None

    def _open(self, client: MlflowClient) -> str:
        """The run's id: the recorded one, resumed, or a new run's."""
        known = self._recorded_run()
        if known is not None:
            client.update_run(known, status="RUNNING")
            return known
        experiment = client.get_experiment_by_name(self.tracking.experiment)
        experiment_id = (
            client.create_experiment(self.tracking.experiment)
            if experiment is None
            else experiment.experiment_id
        )
        run = client.create_run(experiment_id, run_name=self.run_name, tags=self.tracking.tags)
        run_id: str = run.info.run_id
        log_params(client, run_id, self.params)
        tmp = self.run_file.with_name(f".{self.run_file.name}.tmp")
        tmp.write_text(json.dumps({"uri": self.uri, "run_id": run_id}))
        tmp.replace(self.run_file)
        if self.on_created is not None:
            self.on_created()
        return run_id

    def _recorded_run(self) -> str | None:
        if not self.run_file.exists():
            return None
        recorded = json.loads(self.run_file.read_text())
        run_id = recorded.get("run_id")
        return run_id if recorded.get("uri") == self.uri and isinstance(run_id, str) else None


def _client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient  # heavy; only runs that track import it

    return MlflowClient(tracking_uri=uri)  # builds the store: a bad URI fails here


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(mlflow_key(k), v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def log_scalars(client: MlflowClient, run_id: str, values: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    items = [Metric(mlflow_key(k), v, stamp, step) for k, v in values.items()]
    for start in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[start : start + 1000])


def epoch_call(record: EpochRecord) -> Call:
    """Logs the epoch's :func:`epoch_scalars` at step = the epoch (1-based)."""
    values = epoch_scalars(record)
    return lambda client, run_id: log_scalars(client, run_id, values, record.epoch)


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


class MlflowTracker(Callback):
    """The run's MLflow run while it trains: params at creation, the epoch's numbers at each
    epoch end (``history``, which runs before this callback, made the record)."""

    def __init__(self, *, cfg: TrainConfig, workdir: Path, history: MetricsHistory) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.history = history
        self.sender: MlflowSender | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.sender = MlflowSender(
            cfg=self.cfg, workdir=self.workdir, params=flatten(self.cfg.model_dump(mode="json"))
        )
        self.sender.send("resume", lambda client, run_id: None)  # opens the run now

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        if self.sender is not None and self.history.last is not None:
            self.sender.send(f"epoch {event.epoch}", epoch_call(self.history.last))

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        if self.sender is not None:
            self.sender.send("end (failed)", _terminate("FAILED"))
        self._close()

    def _close(self) -> None:
        if self.sender is not None:
            self.sender.close(wait_s=self.cfg.tracking.mlflow_wait_s)
            self.sender = None


def _terminate(status: str) -> Call:
    return lambda client, run_id: client.set_terminated(run_id, status=status)


def finish_mlflow_run(
    cfg: TrainConfig,
    workdir: Path,
    *,
    artifacts: Sequence[tuple[Path, str]],
    history: Iterable[EpochRecord],
) -> None:
    """End the run's MLflow run (when it has a URI): log ``artifacts`` (file, folder in the
    run's artifacts) and mark it finished. A run that could not be created while training
    (the server was down) is created now, with ``history`` as its metrics."""
    if cfg.tracking.mlflow_uri is None:
        return
    records = list(history)
    created: list[bool] = []
    sender = MlflowSender(
        cfg=cfg,
        workdir=workdir,
        params=flatten(cfg.model_dump(mode="json")),
        on_created=lambda: created.append(True),
    )
    sender.send("open", lambda client, run_id: None)

    def backfill(client: MlflowClient, run_id: str) -> None:
        if created:
            for record in records:
                epoch_call(record)(client, run_id)

    sender.send("metrics of a run created late", backfill)
    for path, folder in artifacts:
        sender.send(f"artifact {path.name}", _artifact(path, folder))
    sender.send("end", _terminate("FINISHED"))
    sender.close(wait_s=cfg.tracking.mlflow_wait_s)


def _artifact(path: Path, folder: str) -> Call:
    return lambda client, run_id: client.log_artifact(run_id, str(path), folder or None)
