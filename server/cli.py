"""The operator interface: serve, ``--demo``, ``token``, ``migrate-legacy-chat``,
``migrate-revisions``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from handlers.auth import TokenConfig, TokenVerifier
from storage import StorageUnavailable

from . import logs
from .app import create_app
from .collector import SurvivorFreezer
from .config import ConfigError, Settings
from .scale_out import StartupError

log = logging.getLogger(__name__)

# Platforms send SIGKILL 30 s after SIGTERM. In-flight events get
# SHUTDOWN_GRACE_S (default 20 s) before the transports close; what aiohttp
# then still waits for is plain HTTP requests, bounded by this.
HTTP_SHUTDOWN_TIMEOUT_S = 3.0

REQUIRES = {
    None: frozenset({"storage", "auth"}),
    "token": frozenset({"auth"}),
    "migrate-legacy-chat": frozenset({"storage"}),
    "migrate-revisions": frozenset({"storage"}),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description="Study-group chat server.")
    parser.add_argument("--demo", action="store_true",
                        help="serve on 127.0.0.1 with the embedded store, demo users and a demo sign-in")
    sub = parser.add_subparsers(dest="command")
    token = sub.add_parser("token", help="print a token for USER_ID signed with JWT_SECRET")
    token.add_argument("user_id")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    migrate = sub.add_parser("migrate-legacy-chat",
                             help="copy study_groups.chat arrays into the messages collection")
    migrate.add_argument("--dry-run", action="store_true", help="report what would be copied; write nothing")
    migrate.add_argument("--group", help="only this group id")
    migrate.add_argument("--append", action="store_true",
                         help="number legacy messages after a group's existing server messages")
    revisions = sub.add_parser("migrate-revisions",
                               help="give a revision to messages stored before revisions existed")
    revisions.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    revisions.add_argument("--group", help="only this group id")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(
            environ, demo=args.demo and args.command is None, require=REQUIRES[args.command]
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "token":
        return _token(settings, args.user_id, args.ttl)
    if args.command == "migrate-legacy-chat":
        from .migrate import run_migration

        return asyncio.run(run_migration(settings, dry_run=args.dry_run, group=args.group, append=args.append))
    if args.command == "migrate-revisions":
        return asyncio.run(_migrate_revisions(settings, dry_run=args.dry_run, group=args.group))
    return serve(settings)


def _token(settings: Settings, user_id: str, ttl: int) -> int:
    from storage.base import ID_RE

    if not settings.jwt_secret:
        print("error: JWT_SECRET is required to sign tokens (a public key cannot sign)", file=sys.stderr)
        return 2
    if not ID_RE.fullmatch(user_id):
        print("error: USER_ID must be a 24-hex user id", file=sys.stderr)
        return 2
    if ttl <= 0:
        print("error: --ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    verifier = TokenVerifier(TokenConfig(settings.jwt_secret, settings.jwt_algorithms,
                                         settings.jwt_issuer, settings.jwt_audience))
    print(verifier.issue(user_id, ttl))
    return 0


async def _migrate_revisions(settings: Settings, *, dry_run: bool, group: str | None) -> int:
    from storage.base import ID_RE
    from storage.mongo import MongoStore
    from storage.mongo_revisions import RevisionBackfill

    if not settings.mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
        print("error: MONGODB_URI must name a MongoDB server (the embedded store keeps nothing)",
              file=sys.stderr)
        return 2
    if group is not None and not ID_RE.fullmatch(group):
        print("error: --group must be a 24-hex group id", file=sys.stderr)
        return 2
    store = MongoStore(settings.mongodb_uri, settings.mongodb_db)
    try:
        await store.open(create_indexes=not dry_run)
        result = await RevisionBackfill(store).run(group=group and group.lower(), dry_run=dry_run,
                                                   report=lambda line: print(line, flush=True))
    except StorageUnavailable as exc:
        print(f"error: {exc} (run again to resume)", file=sys.stderr)
        return 1
    finally:
        await store.close()
    verb = "would get" if dry_run else "got"
    groups = f"{result.groups} group{'' if result.groups == 1 else 's'}"
    print(f"total: {result.assigned} messages in {groups} {verb} a revision")
    return 0


def use_fast_event_loop() -> None:
    """uvloop when it is installed (it is a dependency): the same code, a faster loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# Python's default thresholds (700, 10, 10) collect the youngest objects at every 700 new ones,
# and make a full collection due at every 100th such collection; a full one walks the objects
# of every connection (about 18 each, 26 when this was measured). While 19,000 connections
# signed in and then all dropped, they made 11 full collections (1.65 s in all, the longest
# holding the event loop for 0.48 s) and the disconnects cost 1.3-1.6 CPU-s; with these, one of
# 33 ms and 0.8 CPU-s. Garbage in cycles waits longer (at most this many new objects) before it
# is reclaimed.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_collector(app: web.Application) -> None:
    """Once ``app`` has started, leave every object made so far out of later garbage
    collections, collect less often (``GC_THRESHOLDS``), and from then on leave what each full
    collection leaves out of the later ones (``server.collector``).

    Modules, classes, functions and the settings live as long as the process, yet a full
    collection would walk all of them again (about 85,000 objects, 15-30 ms with the event loop
    held, on every full collection for the life of the process). Collected first, so no garbage
    is kept. A process-wide step: ``serve`` takes it, ``create_app`` does not (tests build many
    applications in one process).
    """

    async def settle(_app: web.Application) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        SurvivorFreezer.install()

    app.on_startup.append(settle)


def serve(settings: Settings) -> int:
    use_fast_event_loop()
    app = create_app(settings)
    tune_collector(app)
    where = "embedded in-memory store" if settings.mongodb_uri.startswith("memory://") else "MongoDB"
    if settings.demo:
        print(f"Demo: open http://127.0.0.1:{settings.port}/ (embedded store, demo sign-in)", flush=True)
    log.info("serving on %s:%s with the %s", settings.host, settings.port, where)
    try:
        web.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT_S,
                    print=None, access_log=None)
    except (StorageUnavailable, StartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
