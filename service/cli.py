"""The ``retinanet`` command with the service's subcommands: serve, worker, migrate, study,
hash-key, tensorboard."""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from detector import cli_main
from service.logs import configure_logging
from service.settings import Settings, hash_key
from service.storage import Storage
from service.studies.local import add_study_command

KEEP_ALIVE_S = 30


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", help="the HTTP API with one embedded worker (settings: RETINANET_* env)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers", type=int, default=1, help="training workers started beside the API (0: none)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("worker", help="claim and run training jobs (settings: RETINANET_* env)")
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser("migrate", help="create or upgrade the database schema, then exit")
    p.set_defaults(handler=cmd_migrate)

    add_study_command(sub)
    p = sub.add_parser(
        "tensorboard", help="TensorBoard over every job of a data dir (runs named by job id)"
    )
    p.add_argument(
        "data_dir", type=Path, nargs="?", default=None, help="default: RETINANET_DATA_DIR"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6006)
    p.add_argument(
        "--print-only", action="store_true", help="print the tensorboard command, do not run it"
    )
    p.set_defaults(handler=cmd_tensorboard)

    p = sub.add_parser("hash-key", help="print the digest to put in RETINANET_API_KEY_HASHES")
    p.add_argument("key")
    p.set_defaults(handler=cmd_hash_key)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.worker.supervisor import Supervisor

    settings = Settings()
    configure_logging()
    supervisor = Supervisor(settings, args.workers)  # restarts a worker that dies
    supervisor.start()
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with Python's default
    # handler that would kill this process before it can stop the workers below.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            # Longer than uvicorn's 5 s: a client that reuses its connection just as the
            # server drops it gets a reset it cannot tell from a crash (seen under load).
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    finally:
        supervisor.stop()  # SIGTERM: a running job checkpoints and is released
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from service.worker.supervisor import run_worker

    configure_logging()
    run_worker(Settings())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.store.db import migrate

    settings = Settings()
    migrate(settings.db_url)
    print(f"database at head: {settings.db_url.split('@')[-1]}")
    return 0


def tensorboard_command(data_dir: Path, *, host: str, port: int) -> list[str]:
    """TensorBoard (the ``tensorboard`` package's own server) over ``data_dir/jobs``: each
    job's events are in ``jobs/<id>/tensorboard``, so its run is named ``<id>/tensorboard``."""
    logdir = Storage(data_dir).root / "jobs"
    return [
        sys.executable, "-m", "tensorboard.main",
        "--logdir", str(logdir), "--host", host, "--port", str(port),
    ]  # fmt: skip


def cmd_tensorboard(args: argparse.Namespace) -> int:
    data_dir = args.data_dir if args.data_dir is not None else Settings().data_dir
    if not (Storage(data_dir).root / "jobs").is_dir():
        print(f"retinanet tensorboard: error: no jobs under {data_dir}", file=sys.stderr)
        return 1
    command = tensorboard_command(data_dir, host=args.host, port=args.port)
    print(shlex.join(command), flush=True)
    if args.print_only:
        return 0
    print(f"TensorBoard at http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


def cmd_hash_key(args: argparse.Namespace) -> int:
    print(hash_key(args.key))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(argv, extra=add_commands)


if __name__ == "__main__":
    raise SystemExit(main())
