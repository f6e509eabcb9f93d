"""The ``retinanet`` command with the service's subcommands: serve, worker, migrate, study,
hash-key."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence

from detector import cli_main
from service.logs import configure_logging
from service.settings import Settings, hash_key
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


def cmd_hash_key(args: argparse.Namespace) -> int:
    print(hash_key(args.key))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(argv, extra=add_commands)


if __name__ == "__main__":
    raise SystemExit(main())
