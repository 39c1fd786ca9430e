"""The upstream code this package depends on, pinned and fingerprinted.

``realtime`` and ``cluster.redis_manager`` subclass python-engineio's and
python-socketio's servers, sockets and managers, override some of their
private methods and copy parts of others; ``cluster.channels`` drives
redis-py's pub/sub and cluster slot map below their public methods. Each upstream function or method
they copy, override or call by a private name is listed in ``FINGERPRINTS``
with a hash of its source as read from the pinned version. ``drift()`` names
every one whose source differs in the installed version (a test fails on it);
``python -m realtime.upstream`` prints the table for the installed versions.
The procedure for raising a pin is in ``docs/transport.md``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from importlib import metadata

# Distribution -> the exact version ``setup.cfg`` pins and the table was read from.
PINS: dict[str, str] = {"python-engineio": "4.15.1", "python-socketio": "5.18.1", "redis": "8.2.0",
                        "aiohttp": "3.14.5"}

# "module:Qualified.name" -> first 16 hex digits of the SHA-256 of its source.
FINGERPRINTS: dict[str, str] = {
    # FastEngineServer: handle_request and _handle_connect copied (answers every
    # request itself); attach and _service_task overridden (shutdown still sets
    # service_task_event and awaits service_task_handle); calls start_service_task,
    # _trigger_event, _make_response, _unauthorized, _cors_allowed_origins,
    # _log_error_once, _ok, _bad_request, _gzip/_deflate.
    "engineio.async_server:AsyncServer.attach": "7874d4dc1c319bc6",
    "engineio.base_server:BaseServer._log_error_once": "dccbb5602dc46a09",
    "engineio.base_server:BaseServer._ok": "b8f717402eac2b0d",
    "engineio.base_server:BaseServer._bad_request": "af66afac6f6c67db",
    "engineio.base_server:BaseServer._gzip": "c30d39224c48e677",
    "engineio.base_server:BaseServer._deflate": "a0f1838bf7393936",
    "engineio.async_server:AsyncServer.handle_request": "1a8c878e35166cfe",
    "engineio.async_server:AsyncServer._handle_connect": "5bd7edc1d1ae115a",
    "engineio.async_server:AsyncServer._trigger_event": "4a09b6e47eb66532",
    "engineio.async_server:AsyncServer._make_response": "5f883ef57e34f34c",
    "engineio.async_server:AsyncServer.shutdown": "3f734c62c291d56a",
    "engineio.async_server:AsyncServer.create_queue": "5ff5673a0c017681",
    "engineio.base_server:BaseServer.__init__": "a06b17502fbd9646",
    "engineio.base_server:BaseServer._unauthorized": "ca5fd3aa77a14b77",
    "engineio.base_server:BaseServer._cors_allowed_origins": "d0cad0c66d5333cb",
    "engineio.async_drivers.aiohttp:translate_request": "20aa782740060790",
    # FastSocket: overrides __init__, receive, send, close, poll, schedule_ping,
    # check_ping_timeout; upgrade_to does what _websocket_handler's probe does.
    "engineio.base_socket:BaseSocket.__init__": "8532b631a4dc815f",
    "engineio.packet:Packet.decode": "18e27ff7fd56addd",
    "engineio.packet:Packet.__init__": "26559aaf4a6f4ddd",
    "engineio.async_socket:AsyncSocket._websocket_handler": "27f120df4d717a24",
    "engineio.async_socket:AsyncSocket.send": "0437276ccba7ab09",
    "engineio.async_socket:AsyncSocket.close": "faa2e93902543244",
    "engineio.async_socket:AsyncSocket.poll": "826f58a9f3606db2",
    "engineio.async_socket:AsyncSocket.schedule_ping": "fe316639159cd70d",
    "engineio.async_socket:AsyncSocket._send_ping": "67db82a704ea49d0",
    "engineio.async_socket:AsyncSocket.check_ping_timeout": "77616d5ca7809257",
    "engineio.async_socket:AsyncSocket.receive": "a91ae36ec2fb5340",
    # FastSocketServer: overrides _engineio_server_class, _send_packet, emit,
    # shutdown, _handle_eio_connect/_disconnect/_message, _handle_connect/
    # _disconnect/_event/_ack (admission, namespace errors, binary refusal);
    # start_plain_event does what _handle_eio_message/_handle_event do for a
    # plain text event.
    "socketio.async_server:AsyncServer.emit": "84391bfd624104d1",
    "socketio.async_server:AsyncServer.shutdown": "70ac47acea94d661",
    "socketio.async_server:AsyncServer._handle_eio_disconnect": "9344593148b66fd9",
    "socketio.async_server:AsyncServer._handle_connect": "c97c480cf777de36",
    "socketio.async_server:AsyncServer._handle_disconnect": "c0b32ada5b371230",
    "socketio.async_server:AsyncServer._handle_ack": "b7521c6c30972551",
    "socketio.async_server:AsyncServer._engineio_server_class": "199c42bf149247e0",
    "socketio.async_server:AsyncServer._send_packet": "a00022b42c1c29e9",
    "socketio.async_server:AsyncServer._handle_eio_connect": "76704886d944a7e6",
    "socketio.async_server:AsyncServer._handle_eio_message": "bef50fc0e1635921",
    "socketio.async_server:AsyncServer._handle_event": "65178105ef8b593d",
    "socketio.async_server:AsyncServer._handle_event_internal": "472e8b723a12d507",
    # FastManager: room index beside basic_enter_room/basic_leave_room,
    # basic_disconnect and get_rooms replaced, emit's plain path.
    "socketio.base_manager:BaseManager.__init__": "bfee992d912fe9a4",
    "socketio.base_manager:BaseManager.is_connected": "d37721466718b4f4",
    "socketio.base_manager:BaseManager.sid_from_eio_sid": "15467098a36bcd71",
    "socketio.base_manager:BaseManager.pre_disconnect": "18a8d01ed87a9682",
    "socketio.base_manager:BaseManager.basic_enter_room": "3f509586d2d7f47e",
    "socketio.base_manager:BaseManager.basic_leave_room": "e27f3eea06d1c6a6",
    "socketio.base_manager:BaseManager.basic_disconnect": "2933b50bc4b2ea7b",
    "socketio.base_manager:BaseManager.get_rooms": "56a1017f85af9f91",
    "socketio.base_manager:BaseManager.get_participants": "7d78ad681c95de5b",
    "socketio.async_manager:AsyncManager.emit": "01ccd5b82b4f955e",
    # StrictPacket: data_is_binary and reconstruct_binary overridden.
    "socketio.packet:Packet.data_is_binary": "464dded7ae952a64",
    "socketio.packet:Packet.reconstruct_binary": "b5bf13b2bea3ee6f",
    "socketio.packet:Packet.decode": "61ad7904b539f472",
    # OrderedRedisManager: AsyncPubSubManager's emit called for emits with a
    # callback and _publish replaced under it; _thread and initialize
    # overridden (listening is cluster.channels'); _handle_emit wrapped;
    # _handle_callback/_disconnect/_enter_room/_leave_room/_close_room called
    # as _thread did; enter_room called before basic_enter_room.
    "socketio.async_pubsub_manager:AsyncPubSubManager.emit": "6cc46e0ff9b6d7cf",
    "socketio.async_pubsub_manager:AsyncPubSubManager._handle_emit": "4284671be955f644",
    "socketio.async_pubsub_manager:AsyncPubSubManager._thread": "fa8d075729aac64d",
    "socketio.async_pubsub_manager:AsyncPubSubManager.initialize": "e8a2b026ecea320f",
    "socketio.async_pubsub_manager:AsyncPubSubManager.enter_room": "839498e1ae603f2b",
    "socketio.async_pubsub_manager:AsyncPubSubManager._publish": "23e758d5094bdf74",
    "socketio.async_pubsub_manager:AsyncPubSubManager._handle_callback": "e637e7708127b711",
    "socketio.async_pubsub_manager:AsyncPubSubManager._handle_disconnect": "f33e84380da58dc3",
    "socketio.async_pubsub_manager:AsyncPubSubManager._handle_enter_room": "d24981b063303fd5",
    "socketio.async_pubsub_manager:AsyncPubSubManager._handle_leave_room": "98b32db1e8bf865a",
    "socketio.async_pubsub_manager:AsyncPubSubManager._handle_close_room": "8794e03b8968ae6e",
    # cluster.channels: a shard's pub/sub driven by execute_command and
    # parse_response (no subscription bookkeeping of its own, no retries); a
    # Redis Cluster's slot map re-read with nodes_manager.initialize.
    "redis.asyncio.client:PubSub.execute_command": "9c424ec69b87f47f",
    "redis.asyncio.client:PubSub.parse_response": "9dc6547c1d1ed3e7",
    "redis.asyncio.cluster:NodesManager.initialize": "71b35a2b52ac0766",
    "redis.asyncio.cluster:RedisCluster.get_node_from_key": "ddf4f0e6675e8688",
    # realtime.websocket: upgrade_head has _handshake validate the upgrade and
    # build the 101's headers; take_over writes the 101 itself, reads the bytes the
    # request handler kept after the upgrade request (_message_tail, filled by
    # data_received), detaches the handler with transport = None and
    # connection_lost (which must not close it), and returns a response whose
    # prepare and write_eof finish_response calls. WebSocketConnection feeds aiohttp's reader (reader_c is compiled
    # from reader_py) and subclasses its queue without running its __init__ (the
    # reader reads only the queue's _size, _limit and _stalled_reader, left at 0,
    # 0 and None: it never stalls), overriding feed_data, set_exception and
    # feed_eof, which the reader calls for each message, error and end.
    "aiohttp.web_protocol:RequestHandler.data_received": "1ee57ebe052e6c80",
    "aiohttp.web_protocol:RequestHandler.connection_lost": "df2fe6e95fd04c7c",
    "aiohttp.web_protocol:RequestHandler.force_close": "38d0e1e798e4d3b7",
    "aiohttp.web_protocol:RequestHandler.finish_response": "b7eb53db8f4b30ca",
    "aiohttp.web_ws:WebSocketResponse._handshake": "95b5e704a7821784",
    "aiohttp._websocket.reader_py:WebSocketReader": "a2db8242e7f27072",
    "aiohttp._websocket.reader_py:WebSocketDataQueue": "526af2531df720ee",
}


def fingerprint(name: str) -> str:
    """The hash of the installed source of ``name`` ("module:Qualified.name")."""
    module_name, _, qualname = name.partition(":")
    target: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    source = inspect.getsource(target)  # type: ignore[arg-type]
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _installed(name: str) -> str:
    try:
        return fingerprint(name)
    except (AttributeError, ImportError, OSError, TypeError):
        return "missing"


def drift() -> list[str]:
    """One line per pinned version or fingerprinted source that is not as read."""
    problems = []
    for dist, pinned in PINS.items():
        installed = metadata.version(dist)
        if installed != pinned:
            problems.append(f"{dist} {installed} is installed; the transport was read against {pinned}")
    for name, expected in FINGERPRINTS.items():
        found = _installed(name)
        if found != expected:
            problems.append(f"{name}: source {found}, read as {expected}: re-read it")
    return problems


def main() -> None:
    """Print the fingerprint table for the installed versions (after a re-read)."""
    for dist in PINS:
        print(f"# {dist} {metadata.version(dist)}")
    for name in FINGERPRINTS:
        print(f'    "{name}": "{_installed(name)}",')


if __name__ == "__main__":
    main()
    sys.exit(0)
