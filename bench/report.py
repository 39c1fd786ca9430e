"""Turn one run's results into the Markdown table, the plot, and the README's quoted table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ORDER = ("this", "node", "psio", "raw")
REFS = (("node", "Node"), ("psio", "py-sio"))


def _f(v: Any, digits: int = 0) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}×"


def _latency(lat: dict[str, Any], bold_p99: bool = False, res: dict[str, Any] | None = None) -> str:
    """p50 / p99 / p99.9 / max (medians of the row's windows), the p99's spread after it."""
    p99 = _f(lat["p99"], 1)
    spread = _spread(res, "p99", 1) if res is not None else ""
    return (f"{_f(lat['p50'], 1)} / {f'**{p99}**' if bold_p99 else p99}{spread} / {_f(lat.get('p999'), 1)} / "
            f"{_f(lat['max'], 1)}")


def _spread(res: dict[str, Any] | None, field: str, digits: int = 0) -> str:
    """`` (lowest–highest)`` of a figure over the row's windows, when it had several."""
    low_high = ((res or {}).get("spread") or {}).get(field)
    if not low_high or (res or {}).get("windows", 1) < 2:
        return ""
    return f" ({_f(low_high[0], digits)}–{_f(low_high[1], digits)})"


def _error_row(header: str, cells: list[str], error: Any) -> str:
    """A row naming the error after its first ``cells``, padded to the header's column count."""
    columns = header.count("|") - 1
    return "| " + " | ".join([*cells, f"error: {error}"]) + " |" + "|" * (columns - len(cells) - 1)


def _check(res: dict[str, Any]) -> str:
    v = res.get("verify")
    if not v:
        return "–"
    bad = v["missing"] + v["dups"] + v["reorders"] + v["unexpected"] + v["ack_errors"]
    text = f"{v['missing']}/{v['dups']}/{v['reorders']}"
    return text + ("" if bad == 0 and res.get("drain_complete") else " **FAIL**")


def _peers(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    peers = results["peers"]
    return [(k, peers[k]) for k in ORDER if k in peers]


def _other_load(res: dict[str, Any]) -> tuple[float | None, float | None]:
    """Share of the server's core and of the swarm's core used by other processes in the window."""
    busy = res.get("core_busy") or {}
    wall = res.get("window_s")
    if not wall or "1" not in busy or "0" not in busy:
        return None, None
    extra = sum(x or 0 for x in res.get("extra_cpu_s") or []) / wall
    return (max(0.0, busy["1"] - res["server_cpu_util"] - extra), max(0.0, busy["0"] - res["gen_cpu_util"]))


def _noise(res: dict[str, Any]) -> str:
    """Other load on the server core / swarm core (this machine is shared); ⚠ above 15 %."""
    srv, cli = _other_load(res)
    if srv is None or cli is None:
        return "–"
    flag = " ⚠" if max(srv, cli) > 0.15 else ""
    tries = f" ({res['retried']} window{'s' if res['retried'] > 1 else ''} measured again)" \
        if res.get("retried") else ""
    return f"{srv:.0%} / {cli:.0%}{flag}{tries}"


def saturation_table(results: dict[str, Any]) -> list[str]:
    rows = ["| peer | room | deliveries/s (wall) | deliveries per server CPU-s | vs Node | vs py-sio "
            "| server CPU | generator CPU | other load server / swarm core | latency p50 / p99 (spread) / p99.9 / max ms "
            "| missing/dup/reorder "
            "| sign-in + join, server CPU ms per member |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    peers = results["peers"]
    for room in results["plan"]["rooms"]:
        for _key, peer in _peers(results):
            if "skipped" in peer:
                continue
            res = peer.get("saturation", {}).get(str(room), {})
            if not res or res.get("error"):
                rows.append(_error_row(rows[0], [peer["label"], str(room)], res.get("error", peer.get("error", "not run"))))
                continue
            mine = res["deliveries_per_cpu_s"]
            refs = [peers.get(r, {}).get("saturation", {}).get(str(room), {}).get("deliveries_per_cpu_s") for r, _ in REFS]
            lat = res["latency_ms"]
            rows.append(
                f"| {peer['label']} | {room} | {_f(res['deliveries_per_s'])} | **{_f(mine)}**"
                f"{_spread(res, 'deliveries_per_cpu_s')} | "
                f"{_ratio(mine, refs[0])} | {_ratio(mine, refs[1])} | {res['server_cpu_util']:.0%} | "
                f"{res['gen_cpu_util']:.0%} | {_noise(res)} | {_latency(lat, res=res)} | {_check(res)} | "
                f"{_f(res.get('setup_cpu_ms_per_conn'), 2)} |"
            )
    return rows


def rate_table(results: dict[str, Any]) -> list[str]:
    rows = ["| peer | load | target deliveries/s | achieved | latency p50 / p99 (spread) / p99.9 / max ms "
            "| server CPU | other load server / swarm core | deliveries per server CPU-s | missing/dup/reorder |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for _key, peer in _peers(results):
        for load in results["plan"]["loads"]:
            res = peer.get("rates", {}).get(str(load))
            if not res:
                continue
            if res.get("error"):
                rows.append(_error_row(rows[0], [peer["label"], f"{load}%"], res["error"]))
                continue
            lat = res["latency_ms"]
            rows.append(
                f"| {peer['label']} | {load}% | {_f(res['target_deliveries_per_s'])} | {_f(res['deliveries_per_s'])} | "
                f"{_latency(lat, res=res)} | "
                f"{res['server_cpu_util']:.0%} | {_noise(res)} | {_f(res['deliveries_per_cpu_s'])} | {_check(res)} |"
            )
    return rows


def fixed_table(results: dict[str, Any]) -> list[str]:
    """Every peer at the same absolute rates; this server's p99 and p99.9 against Node's row."""
    rows = ["| peer | room | sends/s | deliveries/s target / achieved | latency p50 / p99 (spread) / p99.9 / max ms "
            "| p99 / p99.9 vs Node "
            "| server CPU | other load server / swarm core | missing/dup/reorder |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    node = (results["peers"].get("node") or {}).get("fixed") or {}
    for key, peer in _peers(results):
        for name, res in (peer.get("fixed") or {}).items():
            room, rate = (int(x) for x in name.split("@"))
            if res.get("error"):
                rows.append(_error_row(rows[0], [peer["label"], str(room)], res["error"]))
                continue
            lat = res["latency_ms"]
            ref = (node.get(name) or {}).get("latency_ms") or {}
            versus = "–"
            if key != "node" and ref.get("p99") and lat.get("p99") is not None:
                marks = [lat.get(k) is not None and ref.get(k) and lat[k] <= ref[k] for k in ("p99", "p999")]
                versus = (f"{_ratio(lat['p99'], ref['p99'])} / {_ratio(lat.get('p999'), ref.get('p999'))}"
                          f" {'✓' if all(marks) else '✗'}")
            rows.append(
                f"| {peer['label']} | {room:,} | {_f(rate / room)} | {_f(rate)} / {_f(res['deliveries_per_s'])} | "
                f"{_latency(lat, bold_p99=True, res=res)} | "
                f"{versus} | {res['server_cpu_util']:.0%} | {_noise(res)} | {_check(res)} |"
            )
    return rows


def inbound_table(results: dict[str, Any]) -> list[str]:
    """Acked ``send_message`` events per server CPU-second in the smallest room, where
    receiving, validating, storing and answering each event weighs most."""
    room = str(min(results["plan"]["rooms"]))
    rows = [f"| peer | room | acked sends per server CPU-s | vs Node | vs py-sio | CPU µs per send (with its {room} deliveries) "
            "| of which user / kernel µs | read and write system calls per send |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def saturation(peer: dict[str, Any]) -> dict[str, Any]:
        res: dict[str, Any] = peer.get("saturation", {}).get(room, {})
        return res

    def per_cpu(res: dict[str, Any]) -> float | None:
        if not res or res.get("error") or not res.get("server_cpu_s"):
            return None
        return res.get("sends_per_cpu_s") or res["sends"] / res["server_cpu_s"]
    peers = results["peers"]
    refs = [per_cpu(saturation(peers[r])) if r in peers else None for r, _ in REFS]
    for _key, peer in _peers(results):
        res = saturation(peer)
        mine = per_cpu(res)
        if mine is None:
            continue
        spread = _spread(res, "sends_per_cpu_s")
        split = calls = "–"
        if res.get("server_syscalls") is not None and res.get("sends"):
            # From the row's median window (``combine``), as its other figures.
            split = f"{_f(res['server_user_cpu_s'] / res['sends'] * 1e6)} / {_f(res['server_sys_cpu_s'] / res['sends'] * 1e6)}"
            # None counted: the peer reads and writes its sockets with recv and send (Python's
            # own event loop), which /proc/PID/io does not count.
            if res["server_syscalls"]:
                calls = f"{res['server_syscalls'] / res['sends']:.1f}"
        rows.append(f"| {peer['label']} | {room} | **{_f(mine)}**{spread} | {_ratio(mine, refs[0])} | "
                    f"{_ratio(mine, refs[1])} | {_f(1e6 / mine)} | {split} | {calls} |")
    return rows


def idle_table(results: dict[str, Any]) -> list[str]:
    again = results.get("meta", {}).get("idle_measured")
    rows = [f"Measured again on its own (`bench/run --idle-only`) {again['date']}, commit `{again['commit']}`.", ""] if again else []
    rows += ["| peer | idle connections | server RSS before → after MB | KB per connection | vs Node | vs py-sio "
            "| sign-in + join rate (conn/s) | server CPU ms per sign-in + join | heartbeats only: server CPU, % of a core "
            "| probe p99 ms (room of 10, 20 sends/s) | server CPU-s to process all the disconnects (µs each) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    peers = results["peers"]
    for _key, peer in _peers(results):
        res = peer.get("idle")
        if not res:
            continue
        if res.get("error"):
            rows.append(_error_row(rows[0], [peer["label"]], res["error"]))
            continue
        mine = res["kb_per_conn"]
        refs = [peers.get(r, {}).get("idle", {}).get("kb_per_conn") for r, _ in REFS]
        beat = (res.get("heartbeat") or {}).get("server_cpu_util")
        probe = (res.get("probe") or {}).get("latency_ms", {}).get("p99")
        teardown = res.get("teardown_cpu_s")
        each = f" ({teardown / res['conns'] * 1e6:.0f})" if teardown is not None else ""
        rows.append(
            f"| {peer['label']} | {res['conns']:,} | {res['rss_before_kb'] / 1024:.0f} → {res['rss_after_kb'] / 1024:.0f} | "
            f"**{mine:.1f}** | {_ratio(mine, refs[0])} | {_ratio(mine, refs[1])} | {_f(res['conns_per_s'])} | "
            f"{_f(res.get('setup_cpu_ms_per_conn'), 2)} | {_f(beat * 100 if beat is not None else None, 1)} | "
            f"{_f(probe, 1)} | {_f(teardown, 1)}{each} |"
        )
    return rows


def redis_table(results: dict[str, Any]) -> list[str]:
    rows = ["| peer | without Redis: deliveries per server CPU-s | with `REDIS_URL` | with / without "
            "| with, counting redis-server CPU too | latency p50 / p99 ms without → with | missing/dup/reorder |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for _key, red in results.get("redis", {}).items():
        base = red.get("without_redis", {})
        for name, label in (("with_redis", red["label"]), ("with_redis_cluster", f"{red['label']}, Redis Cluster "
                                                                                 "of 3 masters (sharded pub/sub)")):
            res = red.get(name)
            if res is None and name == "with_redis_cluster":
                continue
            res = res or {}
            if red.get("error") or res.get("error") or base.get("error") or not res or not base:
                rows.append(_error_row(rows[0], [label], red.get("error") or base.get("error") or res.get("error")))
                continue
            extra = [x for x in res.get("extra_cpu_s") or [] if x is not None]
            both = res["deliveries"] / (res["server_cpu_s"] + sum(extra)) if extra else None
            lb, lr = base["latency_ms"], res["latency_ms"]
            rows.append(
                f"| {label} | {_f(base['deliveries_per_cpu_s'])} | **{_f(res['deliveries_per_cpu_s'])}** | "
                f"{_ratio(res['deliveries_per_cpu_s'], base['deliveries_per_cpu_s'])} | {_f(both)} | "
                f"{_f(lb['p50'], 1)} / {_f(lb['p99'], 1)} → {_f(lr['p50'], 1)} / {_f(lr['p99'], 1)} | "
                f"{_check(base)}, {_check(res)} |"
            )
    return rows


def storage_table(results: dict[str, Any]) -> list[str]:
    st = results.get("storage") or {}
    if "results" not in st:
        return [f"Not run: {st.get('skipped') or st.get('error') or 'not requested'}."]
    hs = st["histories"]
    names = {"direct": "direct driver calls (floor)", "this": "this server's store (MongoStore)",
             "legacy": "legacy embedded array"}
    rows = ["| design | history | µs per send: mean / p50 / p99 | × direct (p50 wall) | CPU µs per send (DB + client) "
            f"| × direct (CPU) | growth {hs[-1] // 1000}k / {hs[0] // 1000}k (p50 wall, CPU) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for design in ("direct", "this", "legacy"):
        per = st["results"].get(design, {})
        for h in hs:
            res = per.get(str(h), {})
            if "skipped" in res:
                rows.append(f"| {names[design]} | {h:,} | skipped: {res['skipped']} |||||")
                continue
            if not res:
                continue
            direct = st["results"]["direct"].get(str(h), {})
            first = per.get(str(hs[0]), {})
            growth = "" if h == hs[0] else (f"{_ratio(res['wall_us_p50'], first.get('wall_us_p50'))}, "
                                             f"{_ratio(res.get('cpu_us_per_send'), first.get('cpu_us_per_send'))}")
            rows.append(
                f"| {names[design]} | {h:,} | {_f(res['wall_us_mean'])} / **{_f(res['wall_us_p50'])}** / "
                f"{_f(res['wall_us_p99'])} | {_ratio(res['wall_us_p50'], direct.get('wall_us_p50'))} | "
                f"{_f(res.get('cpu_us_per_send'))} | {_ratio(res.get('cpu_us_per_send'), direct.get('cpu_us_per_send'))} | "
                f"{growth} |"
            )
    cap = st.get("legacy_capacity", {})
    brk = st.get("legacy_break")
    if cap:
        line = (f"\nLegacy cap: one embedded message of this size is {cap['entry_bytes']} bytes of BSON, so the group "
                f"document reaches MongoDB's 16 MiB limit at **{cap['max_messages']:,} messages**")
        if brk and brk.get("refused_at"):
            line += (f"; pushing onto a group seeded with {brk['start']:,} was accepted up to {brk['accepted_up_to']:,} "
                     f"and refused at message {brk['refused_at']:,} (`{brk['error'][:90]}`), each push near the cap "
                     f"taking {_f(brk.get('push_s_near_cap'), 1)} s")
        elif brk:
            line += f"; the push test did not see a refusal ({brk})"
        rows.append(line + ". Every later send to that group fails.")
    return rows


def store_load_tables(results: dict[str, Any]) -> list[str]:
    """Database commands per acked send and sends per second; join latency at two histories."""
    st = results.get("store_load") or {}
    if "sends" not in st:
        return [f"Not run: {st.get('skipped') or st.get('error') or 'not requested'}."]
    meta = st.get("meta") or {}
    rows = [f"Measured {meta['date']}, commit `{meta['commit']}`.", ""] if meta else []
    rows += ["| senders at once | acked sends | sends/s (wall) | database commands per acked send | by command "
            "| ack p50 / p99 ms | CPU µs per send (DB + client) | seq exact |",
            "|---:|---:|---:|---:|---|---:|---:|---|"]
    for res in st["sends"]:
        by = ", ".join(f"{name} {count:.2f}" for name, count in res["commands"].items())
        rows.append(f"| {res['senders']} | {res['sends']:,} | {_f(res['sends_per_s'])} | **{res['commands_per_send']:.2f}** "
                    f"| {by} | {_f(res['ack_ms_p50'], 1)} / {_f(res['ack_ms_p99'], 1)} | {_f(res['cpu_us_per_send'])} "
                    f"| {'yes' if res['exact'] else '**no**'} |")
    rows += ["", "| messages in the group (1 in 100 deleted) | joins | join p50 / p99 ms | DB CPU ms per join "
             "| commands per join | unread count exact |", "|---:|---:|---:|---:|---:|---|"]
    for res in st.get("joins") or []:
        rows.append(f"| {res['history']:,} | {res['joins']} | **{_f(res['join_ms_p50'], 1)}** / {_f(res['join_ms_p99'], 1)} "
                    f"| {_f(res['db_cpu_ms_per_join'], 1)} | {res['commands_per_join']:.0f} "
                    f"| {'yes' if res['unread_exact'] else '**no**'} ({res['unread_count']:,}) |")
    if st.get("join_growth_p50"):
        rows.append(f"\nJoin p50 at the larger history over the smaller: **{st['join_growth_p50']:.2f}×**.")
    return rows


def search_table(results: dict[str, Any]) -> list[str]:
    se = results.get("search") or {}
    if "queries" not in se:
        return [f"Not run: {se.get('skipped') or se.get('error') or 'not requested'}."]
    meta = se.get("meta") or {}
    rows = [f"{se['messages']:,} messages in one group, a page of {se['limit']}, one search at a time"
            + (f" (measured {meta['date']}, commit `{meta['commit']}`)" if meta else "") + ". "
            "`this`: `MongoStore.search_messages` (the words index); `embedded`: the in-memory store; "
            "`scan`: a case-insensitive `$regex` over the group's messages, what a server without a words "
            "index does (it misses accent-free matches).", "",
            "| query | kind | this: p50 / p95 ms | CPU ms per search (DB + client) | results | embedded p50 ms "
            "| scan p50 ms (results) | scan / this (p50) |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind, row in se["queries"].items():
        this, emb, scan = row["this"], row["embedded"], row.get("scan")
        rows.append(
            f"| `{row['query']}` | {kind} | **{_f(this['p50_ms'], 1)}** / {_f(this['p95_ms'], 1)} | "
            f"{_f(this['cpu_ms_per_search'], 1)} | {this['results']} | {_f(emb['p50_ms'], 2)} | "
            + (f"{_f(scan['p50_ms'])} ({scan['results']}) | {_ratio(scan['p50_ms'], this['p50_ms'])} |" if scan else "– | – |")
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    out = [
        f"# Benchmark results ({'quick' if results['plan']['quick'] else 'full'} run)",
        "",
        f"{m['date']} · commit `{m['commit']}` · {m['cpu']} · {m['cores']} cores (server on core 1, swarm on core 0) · "
        f"load average at start {m['loadavg']} · {m['duration_s']:.0f} s",
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.",
    ]
    if m.get("interpreter"):
        i = m["interpreter"]
        out.append(f"Interpreter: `{i['executable']}` ({i['libpython']} libpython) · calibration loop "
                   f"**{i['calibration_ms']} ms** on the server core (pure Python; a lower figure is a faster host "
                   "for this server; see bench/README.md).")
    if m.get("kernel_entry"):
        k = m["kernel_entry"]
        out.append(f"Kernel entry on the server core: a system call that does nothing **{k['syscall_us']} µs**, a 40-byte "
                   f"send over loopback TCP **{k['loopback_send_us']} µs** of CPU (hosts differ several-fold here, and "
                   "it moves the peers that make more system calls per message more; see bench/README.md).")
    out.append("")
    for _key, peer in results["peers"].items():
        if "skipped" in peer:
            out.append(f"**{peer['label']} not measured:** {peer['skipped']}")
            out.append("")
    out += ["## Broadcast throughput at saturation", "",
            "Deliveries = `message` events received by room members (one send to a room of 100 = 100). "
            "The headline is deliveries per CPU-second of the server process; \"vs\" columns divide it by the "
            "same figure for Node Socket.IO v4 and for python-socketio with defaults.", ""]
    out += saturation_table(results)
    out += ["", "## Latency at fixed rates (room of 100; load = share of that peer's own saturation rate)", ""]
    out += rate_table(results)
    out += ["", "## Latency at fixed absolute rates (the same load for every peer; goal: p99 and p99.9 at or under "
            "Node Socket.IO's in the same row)", ""]
    out += fixed_table(results)
    out += ["", "## Inbound: `send_message` events handled per server CPU-second (from the saturation run)", ""]
    out += inbound_table(results)
    out += ["", "## Idle connections (signed in and joined, from the server's RSS)", ""]
    out += idle_table(results)
    out += ["", "## One node with and without `REDIS_URL` (a single redis-server, and a Redis Cluster)", ""]
    out += redis_table(results)
    out += ["", "## What each of four nodes reads from Redis: a channel per group against one channel", ""]
    out += channels_table(results)
    out += ["", "## Per-send storage cost vs history (SecantusDB, MongoDB wire protocol)", ""]
    out += storage_table(results)
    out += ["", "## Database commands per acked send, and joins vs history (SecantusDB, through the chat's rules)", ""]
    out += store_load_tables(results)
    out += ["", "## Search (SecantusDB, MongoDB wire protocol)", ""]
    out += search_table(results)
    out += ["", "Other load: share of the server's core (1) and of the swarm's core (0) that other processes "
            "used during the window (from /proc/stat; this machine is shared). ⚠ marks more than 15 %: wall-clock "
            "rates and latencies of that row are suspect, per-CPU-second figures less so. A window with more than "
            "25 % on the server core is measured again (at most twice per row, while the run is within its time "
            "budget). Every row is the median of three windows; \"(a–b)\" is the lowest and highest window, and "
            "exactness is summed over all three. "
            "`–`: not measured or no reference.", ""]
    return "\n".join(out)


def channels_table(results: dict[str, Any]) -> list[str]:
    ch = results.get("channels") or {}
    if not ch or "skipped" in ch:
        return [f"Not measured: {ch.get('skipped', 'not run')}."]
    runs = ch["runs"]
    rows = [f"{ch['nodes']} nodes, {ch['groups']} groups of two members (both on one node, or on two), each node "
            f"serving {runs.get('group', {}).get('groups_served', ['?'])[0]} of them; {ch['sends_per_group']} sends "
            "per group. Messages each node read from Redis during the sends (its own publishes on channels it "
            "listens to included). Counts, so no noise.", "",
            "| node | one channel (`REDIS_CHANNELS=single`) | a channel per group | per group / one channel "
            "| a channel per group, Redis Cluster |", "|---|---:|---:|---:|---:|"]
    single, group, cluster = runs.get("single", {}), runs.get("group", {}), runs.get("group_cluster", {})
    def cell(run: dict[str, Any], n: int) -> float | None:
        return run["received"][n] if "received" in run else None

    for n in range(ch["nodes"]):
        rows.append(f"| {n} | {_f(cell(single, n))} | **{_f(cell(group, n))}** | "
                    f"{_ratio(cell(group, n), cell(single, n))} | {_f(cell(cluster, n))} |")
    for name, run in runs.items():
        if "error" in run:
            rows.append(f"\n{name}: {run['error']}")
    return rows


def update_readme(readme: Path, table_md: str) -> None:
    """Replace the text between the results markers in bench/README.md."""
    text = readme.read_text(encoding="utf-8")
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        return
    body = table_md.split("\n", 1)[1].strip()  # without the H1
    body = re.sub(r"^## ", "#### ", body, flags=re.M)
    new = text[: text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):]
    readme.write_text(new, encoding="utf-8")


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Three panels: throughput per CPU-s by room, latency vs load, storage cost vs history."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib missing ({exc}); no plot"
    peers = [(k, p) for k, p in _peers(results) if "skipped" not in p]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    ax = axes[0]
    rooms = results["plan"]["rooms"]
    width = 0.8 / max(1, len(peers))
    for i, (_key, peer) in enumerate(peers):
        vals = [(peer.get("saturation", {}).get(str(r), {}).get("deliveries_per_cpu_s") or 0) / 1000 for r in rooms]
        bars = ax.bar([x + i * width for x in range(len(rooms))], vals, width, label=peer["label"])
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([x + width * (len(peers) - 1) / 2 for x in range(len(rooms))], [f"room {r}" for r in rooms])
    ax.set_ylabel("thousand deliveries per server CPU-second")
    ax.set_title("Broadcast throughput at saturation")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    ax.legend(fontsize=8, loc="upper center", ncols=2)
    ax = axes[1]
    for _key, peer in peers:
        pts = [(int(load), r["latency_ms"]["p99"]) for load, r in peer.get("rates", {}).items() if not r.get("error")]
        if pts:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=peer["label"])
    ax.set_xlabel("load, % of the peer's own saturation (room 100)")
    ax.set_ylabel("p99 latency, ms (log)")
    ax.set_yscale("log")
    ax.set_title("Latency at fixed rates")
    ax.legend(fontsize=8)
    ax = axes[2]
    st = results.get("storage") or {}
    if "results" in st:
        hs = st["histories"]
        for design, label in (("direct", "direct driver"), ("this", "this server's store"), ("legacy", "legacy embedded")):
            vals = [st["results"].get(design, {}).get(str(h), {}).get("wall_us_p50") for h in hs]
            if all(v is not None for v in vals):
                ax.plot(hs, [v / 1000 for v in vals], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("messages already in the group")
        ax.set_ylabel("ms per send, median (log)")
        ax.legend(fontsize=8)
    ax.set_title("Per-send storage cost vs history")
    fig.suptitle(f"bench ({'quick' if results['plan']['quick'] else 'full'}) {results['meta']['date']}  commit {results['meta']['commit']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
