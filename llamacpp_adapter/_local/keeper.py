"""The keeper of a local llama-server: a small process between the program and the
server, so that the server never outlives the program that started it.

The program starts the keeper with a pipe on its standard input and sends it one line of
JSON (the server's command, working folder, log, and the seconds it has to stop
after SIGTERM). The keeper starts the server as
its own child, prints the server's process id, and then reads its standard input for
one word:

- ``stop``: the program stops the server (SIGTERM, and SIGKILL after a grace period);
- ``kill``: the program kills it at once (SIGKILL);
- the end of the input, with no word: the program is gone (it exited, or was killed
  with SIGKILL, which no handler sees). The keeper kills the server and removes the
  working folder, which the program can no longer remove.

The end of a pipe is seen whatever thread of the program started the server, and on
every system; Linux's parent-death signal is not, as it follows the thread that made
the child. The keeper exits when the server does, with its exit status (128 + the
signal's number when a signal ended it), so the program watches the keeper as it would
the server.

It runs as a script, with the standard library alone, so that it starts fast and its
command line does not name the server.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading


def main() -> int:
    # The program held its stop signals while it made this process, and a child
    # inherits the mask: let them through again, for this process and the server.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # Ctrl-C in a terminal reaches the whole group: the server and the program each
    # take it, and the program then tells the keeper what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = sys.stdin.buffer.readline()
    if not line:
        return 0  # the program stopped before it said what to run
    spec = json.loads(line)
    with open(spec["log"], "ab") as log:
        server = subprocess.Popen(
            spec["command"], cwd=spec["cwd"], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    print(server.pid, flush=True)
    orphaned = threading.Event()

    def stop(*_: object) -> None:
        server.terminate()
        server.send_signal(signal.SIGCONT)  # a stopped server must see its SIGTERM
        timer = threading.Timer(spec["grace"], server.kill)
        timer.daemon = True
        timer.start()

    def watch_program() -> None:
        word = sys.stdin.buffer.readline().strip()
        if word == b"kill":
            server.kill()
        elif word == b"stop":
            stop()
        else:
            orphaned.set()
            server.kill()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    threading.Thread(target=watch_program, daemon=True).start()
    code = server.wait()
    if orphaned.is_set():
        shutil.rmtree(spec["cwd"], ignore_errors=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
