"""A local llama-server for the command line and the tests: the process (``server``) and
the tiny models it serves, written on the spot with no download (``tinymodel``)."""
