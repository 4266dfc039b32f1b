"""The ASGI entry point: ``uvicorn asyncgate.main:app``. The only module uvicorn imports."""

from __future__ import annotations

import sys

from asyncgate import logs
from asyncgate.app import create_app
from asyncgate.settings import ConfigError, Settings


def _build():
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level)
        return create_app(settings)
    except ConfigError as exc:
        # One line, then a non-zero exit: an operator reads this in a container log.
        print(f"asyncgate: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _build()
