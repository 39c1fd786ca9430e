"""The transport: Engine.IO and Socket.IO, lighter per connection and per frame.

It knows nothing of the chat: ``handlers`` registers events on the
``FastSocketServer`` that ``server`` builds. Modules are named after what they hold:
``engine_server`` (``FastEngineServer``), ``engine_socket`` (``FastSocket``),
``socket_server`` (``FastSocketServer``), ``manager`` (``FastManager``), ``codec``
(``SafeJSON``, ``StrictPacket``, ``binary_header``), ``admission``
(``Admission``), ``websocket`` (``WebSocketConnection``, ``take_over``),
``light_queue``, ``ping_wheel``, ``websocket_frames`` and ``background``.

It subclasses python-engineio 4.15.1's and python-socketio 5.18.1's servers,
sockets and managers and takes WebSocket connections over from aiohttp 3.14.5
(all pinned exactly in ``setup.cfg``), and overrides, copies or calls some of
their private methods: ``upstream.FINGERPRINTS`` lists each upstream
function it depends on, with who depends on it and a hash of the source it was
read from, and ``tests/test_upstream_pins.py`` fails when any of them changes.
``docs/transport.md`` says how to raise a pin.
"""
