"""Hostile clients against a real server process (issue 17): every bad request answered, nothing held.

Each test starts ``python -m server`` on the embedded store, keeps a probe member sending
messages with acks from its own thread, runs one bounded attack from 127.0.0.1 (or 127.0.0.2 as
a second client address), and then checks that every probe got its documented answer (counted),
that the member's send→ack p99 stayed under 100 ms during the attack, that resident memory came
back within 10 MB of the baseline and open descriptors back to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import jwt
import pytest
import socketio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.chat import ANA, BEN, CAROL, MATHS, SECRET, make_token
from tests.support.probes import (
    Bounds,
    Gauge,
    HostileNode,
    ProbeMember,
    Readings,
    connect_error_data,
    engine_url,
    fd_count,
    hostile_node,
    next_text,
    open_engine_ws,
    raw_http,
    rss_bytes,
    settled,
    wait_closed,
)
from tests.support.raw import RawSocket
from tests.support.seeded_server import READ_DELAY_ENV

# Measures latency, memory or time: runs alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial

__all__ = ["hostile_node"]  # the fixture, used by name below

BASE_ENV = {
    "MONGODB_URI": "memory://",
    "JWT_SECRET": SECRET,
    "LOG_LEVEL": "WARNING",
    # The probe member sends 50 a second for the whole test: its own limit stays out of the way.
    "RATE_LIMIT_SEND_PER_S": "0",
}
BOUNDS = Bounds()
MIN_ATTACK_S = 2.0  # an attack lasts at least this long (the member sends ~50 a second meanwhile)
ROUND_PAUSE_S = 0.1
CONCURRENT_ATTEMPTS = 20  # handshakes in flight at once: a steady flood, not one burst
ANSWER_WAIT_S = 2.0  # how long a probe waits for its answer before counting it unanswered
PACKET_LIMIT = 64 * 1024  # Engine.IO's packet limit (server.app.MAX_PACKET_BYTES)
NodeFactory = Callable[[dict[str, str]], HostileNode]
Attack = Callable[[contextlib.AsyncExitStack], Awaitable[Counter[str]]]


async def under_attack(node: HostileNode, attack: Attack, *, member_token: str | None = None,
                       bounds: Bounds = BOUNDS) -> tuple[Counter[str], Readings, ProbeMember]:
    """Run ``attack`` while a member of Maths (Ben) sends; measure the process before, during, after.

    Memory is read after the attack while the attacker still holds what it opened (what the
    server keeps for it is what counts); descriptors once the attacker let go of everything.
    """
    pid = node.pid
    member = ProbeMember(node.url, member_token or make_token(BEN), MATHS, pace_s=0.02).start()
    readings = Readings()
    try:
        await asyncio.sleep(1.0)  # the member's sends warm the paths it uses
        readings.rss_before, readings.fds_before = rss_bytes(pid), fd_count(pid)
        started = time.monotonic()
        with Gauge(pid) as gauge:
            async with contextlib.AsyncExitStack() as held:
                outcome = await attack(held)
                ended = time.monotonic()
                readings.rss_after = await settled(lambda: rss_bytes(pid),
                                                   readings.rss_before + bounds.rss_slack, bounds.settle_s)
            readings.fds_after = await settled(lambda: fd_count(pid),
                                               readings.fds_before + bounds.fd_slack, bounds.settle_s)
        readings.rss_peak, readings.fds_peak = gauge.peak_rss, gauge.peak_fds
    finally:
        member.stop()
    window, readings.set_aside = member.judged(started, ended)
    readings.latencies = [s.latency for s in window]
    readings.failed_sends = sum(not s.ok for s in window)
    return outcome, readings, member


def verdict(outcome: Counter[str], expected: dict[str, int], readings: Readings, bounds: Bounds = BOUNDS) -> None:
    """One assertion naming every way the server fell short."""
    problems = readings.problems(bounds)
    if dict(outcome) != expected:
        problems.insert(0, f"answers {dict(outcome)}, expected {expected}")
    assert not problems, "; ".join(problems) + f" [{readings.summary()}]"


def documented(outcome: Counter[str], answers: dict[str, str]) -> dict[str, int]:
    """The outcome expected when every attempt of each kind (``"kind: answer"`` keys) got its
    documented answer: as many of them as the attack made of that kind."""
    made: Counter[str] = Counter()
    for key, n in outcome.items():
        made[key.split(": ", 1)[0]] += n
    return {f"{kind}: {answer}": made[kind] for kind, answer in answers.items()}


async def for_at_least(seconds: float, one_round: Callable[[], Awaitable[Counter[str]]]) -> Counter[str]:
    """Repeat a round of attempts until ``seconds`` have passed (at least once), so the
    member's latencies during the attack are enough to give a p99."""
    total: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    while True:
        total.update(await one_round())
        if time.monotonic() >= deadline:
            return total
        # A pause between rounds: the attacker shares the machine's cores with the server
        # and the member, and must not be what slows them down.
        await asyncio.sleep(ROUND_PAUSE_S)


async def gather_bounded(coros: Sequence[Awaitable[str]], limit: int) -> list[str]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[str]) -> str:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


# -- 1. tokens that make PyJWT raise something other than InvalidTokenError --


@pytest.fixture(scope="module")
def rsa_key() -> tuple[rsa.RSAPrivateKey, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public_pem


def forged(alg: str, sub: str = CAROL) -> str:
    """A token whose header claims ``alg`` with a signature nobody made."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = {"alg": alg, "typ": "JWT"}
    claims = {"sub": sub, "iat": int(time.time()), "exp": int(time.time()) + 600}
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(b"\x01" * 64)])


def handshake_outcome(frame: str | None) -> str:
    data = connect_error_data(frame)
    if isinstance(data, dict) and data.get("code") == "unauthorized" and isinstance(data.get("message"), str):
        return "unauthorized"
    if frame is None:
        return "no answer"
    return "accepted" if frame.startswith("40") else f"other {frame[:60]!r}"


async def socketio_attempt(session: aiohttp.ClientSession, base: str, kind: str, connect_text: str) -> str:
    ws = await open_engine_ws(session, base)
    if ws is None:
        return f"{kind}: no Engine.IO session"
    try:
        await ws.send_str(connect_text)
        return f"{kind}: {handshake_outcome(await next_text(ws, ANSWER_WAIT_S))}"
    finally:
        await ws.close()


async def http_attempt(port: int, kind: str, authorization: bytes) -> str:
    request = (b"GET /study-groups HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: " % port
               + authorization + b"\r\nConnection: close\r\n\r\n")
    status, body = await raw_http(port, request, timeout=ANSWER_WAIT_S + 1)
    if status == 401 and isinstance(body, dict) and body.get("ok") is False \
            and isinstance(body.get("error"), dict) and body["error"].get("code") == "unauthorized":
        return f"{kind}: 401 unauthorized"
    return f"{kind}: {status} {str(body)[:60]}"


async def test_tokens_that_break_the_jwt_library_are_answered_unauthorized(
        hostile_node: NodeFactory, rsa_key: tuple[rsa.RSAPrivateKey, str]) -> None:
    """A lone surrogate and a forged ``alg`` (RS256/ES256 key): ``connect_error`` ``unauthorized``
    every time over Socket.IO, 401 with the envelope over HTTP; nothing left behind."""
    private, public_pem = rsa_key
    env = {k: v for k, v in BASE_ENV.items() if k != "JWT_SECRET"}
    node = hostile_node({**env, "JWT_PUBLIC_KEY": public_pem, "JWT_ALGORITHMS": "RS256,ES256"})
    member_token = jwt.encode({"sub": BEN, "exp": int(time.time()) + 600}, private, algorithm="RS256")
    per_round = 10
    variants = {
        # Raw JSON text: the escape decodes to a lone surrogate, which no client library would send.
        "surrogate": '40{"token":"\\ud800"}',
        "alg ES256": "40" + json.dumps({"token": forged("ES256")}),
        "alg HS256": "40" + json.dumps({"token": forged("HS256")}),
    }
    headers = {"bearer 0xff": b"Bearer \xff", "bearer alg ES256": b"Bearer " + forged("ES256").encode()}

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        session = await held.enter_async_context(aiohttp.ClientSession())

        async def one_round() -> Counter[str]:
            attempts = [socketio_attempt(session, node.url, kind, text)
                        for _ in range(per_round) for kind, text in variants.items()]
            attempts += [http_attempt(node.port, kind, value)
                         for _ in range(per_round // 2) for kind, value in headers.items()]
            return Counter(await gather_bounded(attempts, CONCURRENT_ATTEMPTS))

        return await for_at_least(MIN_ATTACK_S, one_round)

    outcome, readings, _ = await under_attack(node, attack, member_token=member_token)
    answers = {kind: "unauthorized" for kind in variants} | {kind: "401 unauthorized" for kind in headers}
    verdict(outcome, documented(outcome, answers), readings)


# -- 2. polling POSTs over the packet limit --


async def oversized_post(session: aiohttp.ClientSession, base: str, chunked: bool) -> str:
    return f"{'chunked' if chunked else 'content-length'}: {await _oversized_post(session, base, chunked)}"


async def _oversized_post(session: aiohttp.ClientSession, base: str, chunked: bool) -> str:
    async with session.get(engine_url(base, "polling")) as resp:
        opened = await resp.text()
    sid = json.loads(opened[1:])["sid"]
    body = b"4" + b"x" * (PACKET_LIMIT + 16 * 1024)  # one MESSAGE packet, 80 KB

    async def in_chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    try:
        async with session.post(engine_url(base, "polling", sid), data=in_chunks() if chunked else body,
                                timeout=aiohttp.ClientTimeout(total=ANSWER_WAIT_S + 1)) as resp:
            status = resp.status
            await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        return "no answer"
    if status != 413:
        return f"status {status}"
    # The session is closed: polling it is refused, or yields the CLOSE packet.
    try:
        async with session.get(engine_url(base, "polling", sid),
                               timeout=aiohttp.ClientTimeout(total=ANSWER_WAIT_S)) as resp:
            polled = await resp.text()
            closed = resp.status == 400 or "1" in polled.split("\x1e")
    except TimeoutError:
        closed = False
    return "413, session closed" if closed else "413, session still open"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_oversized_polling_post_is_answered_413_and_ends_the_session(hostile_node: NodeFactory, chunked: bool) -> None:
    node = hostile_node(BASE_ENV)
    count = 20

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        session = await held.enter_async_context(aiohttp.ClientSession())

        async def one_round() -> Counter[str]:
            return Counter(await asyncio.gather(*(oversized_post(session, node.url, chunked) for _ in range(count))))

        return await for_at_least(MIN_ATTACK_S, one_round)

    outcome, readings, _ = await under_attack(node, attack)
    verdict(outcome, documented(outcome, {"chunked" if chunked else "content-length": "413, session closed"}),
            readings)


# -- 3. a binary event announcing a huge attachment count --


async def binary_flood(session: aiohttp.ClientSession, base: str, with_ack: bool, frames: int) -> str:
    raw = await RawSocket.open(session, base, make_token(CAROL))
    ack_id = "7" if with_ack else ""
    await raw.ws.send_str(f'459999999999-{ack_id}["send_message",{{"_placeholder":true,"num":0}}]')
    answer = await raw.ack(7, timeout=ANSWER_WAIT_S) if with_ack else None
    chunk = b"\x00" * 60_000  # each frame under the packet limit
    for _ in range(frames):
        try:
            await raw.ws.send_bytes(chunk)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            break
    if with_ack:
        code = answer.get("error", {}).get("code") if isinstance(answer, dict) and not answer.get("ok") else None
        return "with ack id: " + ("invalid_payload ack" if code == "invalid_payload" else f"ack {str(answer)[:60]}")
    return "without ack id: " + ("closed" if await wait_closed(raw.ws, ANSWER_WAIT_S) else "left open")


@pytest.mark.parametrize("with_ack", [True, False], ids=["with-ack-id", "without-ack-id"])
async def test_a_binary_event_is_refused_before_its_attachments_are_buffered(hostile_node: NodeFactory, with_ack: bool) -> None:
    """``45<9999999999>-...`` then 6 MB of binary frames on each of 4 connections:
    ``invalid_payload`` (with an ack id) or the connection closed (without); memory flat."""
    node = hostile_node(BASE_ENV)
    connections, frames = 4, 100

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        session = await held.enter_async_context(aiohttp.ClientSession())

        async def one_round() -> Counter[str]:
            return Counter(await asyncio.gather(*(binary_flood(session, node.url, with_ack, frames)
                                                  for _ in range(connections))))

        return await for_at_least(MIN_ATTACK_S, one_round)

    outcome, readings, _ = await under_attack(node, attack)
    answers = {"with ack id": "invalid_payload ack"} if with_ack else {"without ack id": "closed"}
    verdict(outcome, documented(outcome, answers), readings)


# -- 4. Engine.IO sessions that never send Socket.IO CONNECT --


async def test_sockets_that_never_connect_are_capped_per_address_and_closed(hostile_node: NodeFactory) -> None:
    """30 websockets from 127.0.0.2 that answer pings and never CONNECT, with
    ``MAX_PENDING_PER_IP=20`` and ``CONNECT_TIMEOUT_S=2``: 10 refused, 20 closed by the server
    after the timeout; meanwhile ``/healthz`` and a new member from 127.0.0.1 are served."""
    timeout_s, cap, count = 2, 20, 30
    node = hostile_node({**BASE_ENV, "CONNECT_TIMEOUT_S": str(timeout_s), "MAX_PENDING_PER_IP": str(cap)})
    served: list[str] = []

    async def linger(session: aiohttp.ClientSession) -> str:
        ws = await open_engine_ws(session, node.url)
        if ws is None:
            return "pending: refused"
        opened = time.monotonic()
        closed = await wait_closed(ws, timeout_s + 4)
        lifetime = time.monotonic() - opened
        await ws.close()
        if not closed:
            return "pending: left open"
        return "pending: refused" if lifetime < 0.5 else "pending: closed after the timeout"

    async def real_users() -> None:
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session, session.get(f"{node.url}/healthz") as resp:
            served.append(f"healthz {resp.status}")
        sio = socketio.AsyncClient(reconnection=False)
        try:
            await sio.connect(node.url, auth={"token": make_token(CAROL)}, transports=["websocket"], wait_timeout=5)
            ack = await sio.call("list_groups", timeout=5)
            served.append(f"member {'ok' if ack.get('ok') else ack}")
        except (socketio.exceptions.ConnectionError, socketio.exceptions.TimeoutError) as exc:
            served.append(f"member refused: {exc!r}")
        finally:
            await sio.disconnect()

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        elsewhere = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)
        session = await held.enter_async_context(aiohttp.ClientSession(connector=elsewhere))
        users = asyncio.ensure_future(real_users())
        results = await asyncio.gather(*(linger(session) for _ in range(count)))
        await users
        return Counter(results)

    outcome, readings, _ = await under_attack(node, attack)
    assert served == ["healthz 200", "member ok"], served
    verdict(outcome, {"pending: refused": count - cap, "pending: closed after the timeout": cap}, readings)


# -- 5. sockets dropped while join_group is in flight --


async def test_sockets_dropped_during_join_leave_no_one_online(hostile_node: NodeFactory) -> None:
    """20 connections (Ana, Carol) each send ``join_group`` and drop while the join reads the
    database (held 0.4 s): afterwards the room's ``online`` holds only the member who stayed."""
    read_delay = 0.4
    node = hostile_node({**BASE_ENV, READ_DELAY_ENV: str(read_delay)})
    rng = random.Random(17)
    count = 20

    async def join_and_drop(session: aiohttp.ClientSession, user_id: str, after: float) -> str:
        raw = await RawSocket.open(session, node.url, make_token(user_id))
        await raw.ws.send_str(f'421["join_group",{{"group_id":"{MATHS}"}}]')
        await asyncio.sleep(after)
        await raw.ws.close()
        return "join: dropped in flight"

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        session = await held.enter_async_context(aiohttp.ClientSession())

        async def one_round() -> Counter[str]:
            drops = [join_and_drop(session, (ANA, CAROL)[i % 2], rng.uniform(0.05, read_delay - 0.1))
                     for i in range(count)]
            return Counter(await asyncio.gather(*drops))

        return await for_at_least(MIN_ATTACK_S, one_round)

    outcome, readings, _ = await under_attack(node, attack)
    # The member rejoins (already in the room: nothing changes) to read who is online now.
    await asyncio.sleep(0.5)
    fresh = ProbeMember(node.url, make_token(BEN), MATHS).start()
    try:
        online = fresh.joined.get("online")
    finally:
        fresh.stop()
    assert online == [BEN], f"online after the drops: {online} (Ana {ANA}, Carol {CAROL} dropped)"
    verdict(outcome, documented(outcome, {"join": "dropped in flight"}), readings)


# -- 6. X-Forwarded-Host --


@pytest.mark.parametrize("trust_proxy", [None, "true"], ids=["no-proxy", "TRUST_PROXY=true"])
async def test_forwarded_host_is_trusted_only_behind_a_proxy(hostile_node: NodeFactory, trust_proxy: str | None) -> None:
    """``Origin: http://evil.example`` with ``X-Forwarded-Host: evil.example``: every
    handshake refused, unless ``TRUST_PROXY=true`` says a proxy sets that header."""
    # The per-address cap is off: this probe opens hundreds of sessions it never signs in.
    env = {**BASE_ENV, "CONNECT_TIMEOUT_S": "2", "MAX_PENDING_PER_IP": "0"}
    node = hostile_node({**env, "TRUST_PROXY": trust_proxy} if trust_proxy else env)
    spoofed = {"Origin": "http://evil.example", "X-Forwarded-Host": "evil.example"}
    count = 20

    async def by_polling(session: aiohttp.ClientSession) -> str:
        async with session.get(engine_url(node.url, "polling"), headers=spoofed) as resp:
            text = await resp.text()
        return "polling: accepted" if resp.status == 200 and text.startswith("0{") else "polling: refused"

    async def by_websocket(session: aiohttp.ClientSession) -> str:
        ws = await open_engine_ws(session, node.url, headers=spoofed)
        if ws is None:
            return "websocket: refused"
        await ws.close()
        return "websocket: accepted"

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        session = await held.enter_async_context(aiohttp.ClientSession())

        async def one_round() -> Counter[str]:
            results = [await by_polling(session) for _ in range(count)]
            results += [await by_websocket(session) for _ in range(count)]
            return Counter(results)

        return await for_at_least(MIN_ATTACK_S, one_round)

    outcome, readings, _ = await under_attack(node, attack)
    answer = "accepted" if trust_proxy else "refused"
    verdict(outcome, documented(outcome, {"polling": answer, "websocket": answer}), readings)


# -- 7. one user, many connections --


async def test_a_user_over_the_connection_cap_is_refused_too_many_connections(hostile_node: NodeFactory) -> None:
    """Carol opens 12 connections at once with ``MAX_CONNECTIONS_PER_USER=5``: 5 are accepted,
    7 get ``connect_error`` ``too_many_connections``; a slot freed can be taken again."""
    cap, count = 5, 12
    node = hostile_node({**BASE_ENV, "MAX_CONNECTIONS_PER_USER": str(cap)})
    rounds = 0

    async def open_one(opened: list[socketio.AsyncClient]) -> str:
        sio = socketio.AsyncClient(reconnection=False)
        opened.append(sio)
        errors: list[Any] = []
        sio.on("connect_error", errors.append)
        try:
            await sio.connect(node.url, auth={"token": make_token(CAROL)}, transports=["websocket"],
                              wait_timeout=ANSWER_WAIT_S + 3)
        except socketio.exceptions.ConnectionError:
            # python-socketio hands connect_error the whole packet; its "data" is err.data.
            data = errors[0].get("data") if errors and isinstance(errors[0], dict) else None
            code = data.get("code") if isinstance(data, dict) else None
            return code if code == "too_many_connections" else f"refused {errors!r}"[:60]
        return "connected"

    async def one_round() -> Counter[str]:
        nonlocal rounds
        rounds += 1
        opened: list[socketio.AsyncClient] = []
        try:
            outcome = Counter(f"at once: {r}" for r in await asyncio.gather(*(open_one(opened) for _ in range(count))))
            connected = [sio for sio in opened if sio.connected]
            if connected:
                await connected[0].disconnect()
                await asyncio.sleep(0.3)
                outcome[f"once a slot was freed: {await open_one(opened)}"] += 1
            return outcome
        finally:
            await asyncio.gather(*(_disconnect(sio) for sio in opened))
            await asyncio.sleep(0.2)  # the server sees the disconnects before the next round

    async def attack(held: contextlib.AsyncExitStack) -> Counter[str]:
        return await for_at_least(MIN_ATTACK_S, one_round)

    outcome, readings, _ = await under_attack(node, attack)
    verdict(outcome, {"at once: connected": cap * rounds, "at once: too_many_connections": (count - cap) * rounds,
                      "once a slot was freed: connected": rounds}, readings)


async def _disconnect(sio: socketio.AsyncClient) -> None:
    if sio.connected or sio.eio.state == "connected":
        await sio.disconnect()
