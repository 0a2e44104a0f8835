"""The pure layer: wire formats as codecs, fed bytes or values and returning values, with
no I/O, no event loop and no clock (a layout test holds every module here to that).

* ``sse``: the WHATWG Server-Sent Events decoder, and its bound.
* ``completion``: llama.cpp's ``/completion`` request body, and its stream as events.
* ``http11``: a streamed completion's HTTP/1.1 request bytes and response parser.
* ``errors``: an engine's error response as this library's error.
"""
