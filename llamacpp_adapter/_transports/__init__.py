"""Where a stream's bytes come from, and the one place where a transport's failures
become this library's errors.

* ``base``: the body interface every transport gives, and the words for its failures.
* ``direct``, ``direct_trio``, ``direct_asyncio``: the direct path, a connection of its
  own read with nothing between the socket and the parser, on each event loop.
* ``httpx``: a body and the other requests through httpx; ``keepalive``: which of those
  may be sent again after a stale kept connection.
"""
