"""Task streams over WebSocket: the relay's server (``server``) and client (``client``),
the messages both speak (``codec``, pure), how it slows wrong tokens (``throttle``,
pure), and the WebSocket connections under them, wsproto over anyio's streams
(``websocket``, shared; ``ws_server``; ``ws_client``)."""
