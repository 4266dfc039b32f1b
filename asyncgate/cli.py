"""The ``asyncgate`` command: serve, migrate, keys mint, prune."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from datetime import timedelta

from asyncgate import __version__, logs, plugins
from asyncgate.settings import PRINCIPAL_RE, TENANT_RE, ConfigError, Settings, hash_key
from asyncgate.storage import StorageUnavailable

EPILOG = "Configuration comes from ASYNCGATE_* environment variables; see README.md."


def _settings(require_keys: bool) -> Settings:
    settings = Settings.from_env(require_keys=require_keys)
    logs.configure(settings.log_level)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from asyncgate.app import create_app
    from asyncgate.http_protocol import JOINED_WRITES_PROTOCOL

    settings = _settings(require_keys=True)
    create_app(settings)  # every plugin choice is checked here, before anything listens
    print(
        f"asyncgate {__version__}: serving http://{args.host}:{args.port}/v1 "
        f"on {settings.database_url} (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        "asyncgate.main:app",
        http=JOINED_WRITES_PROTOCOL,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=args.proxy_headers,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(require_keys=False)
    dialect = plugins.dialect_for(settings)

    async def run() -> list[str]:
        try:
            return await dialect.migrate()
        finally:
            await dialect.close()

    applied = asyncio.run(run())
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("schema is up to date")
    return 0


def cmd_keys_mint(args: argparse.Namespace) -> int:
    if not TENANT_RE.match(args.tenant):
        raise ConfigError(f"--tenant must match {TENANT_RE.pattern}")
    if not PRINCIPAL_RE.match(args.principal):
        raise ConfigError("--principal must be kind:id, e.g. service:billing")
    key = "ag_" + secrets.token_urlsafe(32)
    print(key)
    print(f"{hash_key(key)} {args.tenant} {args.principal}")
    print(
        "# keep the first line secret; append the second to ASYNCGATE_API_KEYS_FILE",
        file=sys.stderr,
    )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from asyncgate.ids import utcnow
    from asyncgate.ledger import Ledger
    from asyncgate.metrics import Metrics

    settings = _settings(require_keys=False)
    days = args.days if args.days is not None else settings.receipt_retention_days
    cutoff = utcnow() - timedelta(days=days)
    dialect = plugins.dialect_for(settings)

    async def ignore(anomalies: list, tenant: str) -> None:
        return None

    def progress(count: int) -> None:
        print(f"pruned {count} tasks so far", file=sys.stderr, flush=True)

    async def run() -> int:
        try:
            ledger = Ledger(dialect, settings, Metrics(), ignore)
            return await ledger.prune(cutoff, progress=progress)
        finally:
            await dialect.close()

    print(
        f"pruning closed tasks idle since before {cutoff.isoformat()} ({days} days)",
        file=sys.stderr,
    )
    pruned = asyncio.run(run())
    print(f"pruned {pruned} tasks with their receipts and leases")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncgate",
        description="AsyncGate: tracks task obligations through immutable receipts.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"asyncgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the HTTP service (uvicorn asyncgate.main:app)", epilog=EPILOG
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    serve.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (default 1)"
    )
    serve.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-For from a load balancer (client addresses for rate limits)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (AsyncGate's own JSON logs follow ASYNCGATE_LOG_LEVEL)",
    )
    serve.add_argument("--no-access-log", action="store_true", help="omit per-request log lines")
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser(
        "migrate",
        help="apply pending schema migrations (idempotent; safe when run concurrently)",
        epilog=EPILOG,
    )
    migrate.set_defaults(func=cmd_migrate)

    keys = commands.add_parser("keys", help="manage API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    mint = keys_commands.add_parser(
        "mint",
        help="print a new random key, then the line to add to ASYNCGATE_API_KEYS_FILE",
        description="Prints the key on line 1 (give it to the client; it is not stored) and "
        "'<sha256> <tenant> <principal>' on line 2 (append it to ASYNCGATE_API_KEYS_FILE).",
    )
    mint.add_argument("--tenant", required=True, help="tenant the key belongs to, e.g. acme")
    mint.add_argument("--principal", required=True, help="principal kind:id, e.g. service:billing")
    mint.set_defaults(func=cmd_keys_mint)

    prune = commands.add_parser(
        "prune",
        help="delete closed tasks (with receipts and leases) idle past the retention period",
        description="Never touches a task whose obligation is open. Tasks are deleted whole "
        "once their obligation is closed and their last receipt is older than the retention.",
        epilog=EPILOG,
    )
    prune.add_argument(
        "--days",
        type=int,
        default=None,
        help="retention in days (default ASYNCGATE_RECEIPT_RETENTION_DAYS, 30)",
    )
    prune.set_defaults(func=cmd_prune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"asyncgate: {exc}", file=sys.stderr)
        return 2
    except StorageUnavailable as exc:
        print(
            f"asyncgate: the database cannot be reached ({exc}); check ASYNCGATE_DATABASE_URL "
            "and that the server is up, then run the command again",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
