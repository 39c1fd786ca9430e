"""This server, as ``python -m server`` serves it, seeded with the bench's users and groups.

``create_app(settings, storage=MemoryStore())`` with the users and groups of the harness's spec,
served by ``aiohttp.web.run_app`` like ``server.cli.serve`` does (uvloop when installed, the
start-up heap frozen, the collector's thresholds raised). Logging at WARNING: the peers log
nothing per message either.
``--redis-url`` sets ``REDIS_URL``, ``--redis-cluster`` ``REDIS_CLUSTER=true`` and
``--redis-channels`` ``REDIS_CHANNELS``.

The per-user rate limits are raised out of reach (not turned off, so the limiter's check still runs
on every event): a benchmark sends far faster per user than a person, and no peer limits at all.
So are the caps on connections per user and on not-yet-signed-in connections per address: the
load generator is one address opening thousands of connections at once. The frame budget keeps
its default, so its cost is measured.
"""

from __future__ import annotations

import dataclasses
import logging

from aiohttp import web

from bench.servers.common import arg_parser, gid, load_spec, uid


def build(spec: dict, port: int, redis_url: str | None, *, redis_cluster: bool = False,
          redis_channels: str = "group") -> web.Application:
    # Imported here so `--help` works, and the harness can tell "not written yet" apart.
    from server.app import create_app
    from server.config import Settings
    from storage.memory import MemoryStore

    store = MemoryStore()
    for i in range(spec["users"]):
        store.add_user(uid(i), "Bench", f"User {i}")
    for g in spec["groups"]:
        store.add_group(gid(g["k"]), g["name"], [uid(i) for i in range(g["first"], g["first"] + g["count"])])
    options = dict(
        jwt_secret=spec["secret"],
        host="127.0.0.1",
        port=port,
        mongodb_uri="memory://",
        mongodb_db="bench",
        redis_url=redis_url,
        log_level="WARNING",
    )
    fields = {f.name for f in dataclasses.fields(Settings)}
    if "redis_cluster" in fields:
        options.update(redis_cluster=redis_cluster, redis_channels=redis_channels)
    if "rate_limits" in fields:
        from cluster.rate_limits import Bucket, RateLimits

        unreachable = Bucket(1e9, 10**9)
        options["rate_limits"] = RateLimits(send=unreachable, other=unreachable)
    if "max_pending_per_ip" in fields:
        options["max_pending_per_ip"] = 0  # off
        options["max_connections_per_user"] = 1_000_000
    return create_app(Settings(**options), storage=store)


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--redis-cluster", action="store_true")
    parser.add_argument("--redis-channels", default="group", choices=("group", "single"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from server import cli

    cli.use_fast_event_loop()  # as `python -m server` does
    app = build(load_spec(args.spec), args.port, args.redis_url, redis_cluster=args.redis_cluster,
                redis_channels=args.redis_channels)
    cli.tune_collector(app)  # as `python -m server` does
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()
