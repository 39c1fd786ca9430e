"""The transport: Engine.IO and Socket.IO, lighter per connection and per frame.

It knows nothing of the chat: ``handlers`` registers events on the
``FastSocketServer`` that ``server`` builds. Modules are named after what they hold:
``engine_server`` (``FastEngineServer``), ``engine_socket`` (``FastSocket``),
``socket_server`` (``FastSocketServer``), ``manager`` (``FastManager``), ``codec``
(``SafeJSON``, ``StrictPacket``, ``binary_header``), ``admission``
(``Admission``), ``light_queue``, ``ping_wheel``,
``websocket_frames`` and ``background``.
"""
