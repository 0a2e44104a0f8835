"""The pure layer: wire formats as codecs, fed bytes or values and returning values, with
no I/O, no event loop and no clock (a layout test holds every module here to that).

* ``sse``: the WHATWG Server-Sent Events decoder, and its bound.
* ``json_events``: llama-server's ``data: {json}`` events, decoded a run at a time.
* ``engine_json``: what both of llama-server's streams carry alike (timings, progress,
  an error in the stream).
* ``completion``: llama.cpp's ``/completion`` request body, and its stream as events.
* ``chat``: the ``/v1/chat/completions`` request body, and its stream as events.
* ``continuation``: the ledger that resumes a paused completion exactly.
* ``http11``: a streamed request's HTTP/1.1 bytes and response parser.
* ``errors``: an engine's error response as this library's error.
* ``slots``: ``GET /slots``, counted (how many slots, how many busy).
"""
