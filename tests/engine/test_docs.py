"""Every example of the README and of the documentation site runs as written, against a
real llama-server, and prints what the page says it does.

An example is a ``python`` block (a whole program) or a ``console`` block (``$ `` lines,
run as one shell script), named by the HTML comment above it
(``<!-- example: fan-in -->``). A page's examples run in order, in one folder of the
page's own, so that a later one may read what an earlier one wrote (a benchmark's
``--json``, a prompts file). ``CHECKS`` holds what each must print: a block with no name,
or one whose name has no check, fails; so does a check of an example no page has.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import llamacpp_adapter
import llamacpp_adapter.bench
from llamacpp_adapter._local.server import LocalLlamaServer

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: What the examples write as the server's address, and the relay's.
ENGINE_URL = "http://127.0.0.1:8080"
SECOND_URL = "http://127.0.0.1:8081"  # a second replica: the same test server again
RELAY_URL = "ws://10.0.0.2:8765"
RELAY_TOKEN = "docs-relay-token-5c0d1e"

#: The longest any one example may take (a benchmark's runs included).
EXAMPLE_TIMEOUT_S = 120

BLOCK = re.compile(
    r"(?:<!-- example: (?P<name>[\w-]+) -->\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.S | re.M
)


@dataclass(frozen=True)
class Example:
    page: str
    name: str | None
    lang: str
    code: str


def examples(page: Path) -> list[Example]:
    """The runnable blocks of *page*, in order."""
    found = []
    for match in BLOCK.finditer(page.read_text()):
        if match["lang"] in ("python", "console"):
            found.append(Example(page.name, match["name"], match["lang"], match["code"]))
    return found


Expect = Callable[[str], None]


def matches(*patterns: str) -> Expect:
    """Every pattern is found in the output (``re.M``)."""

    def check(output: str) -> None:
        for pattern in patterns:
            assert re.search(pattern, output, re.M), f"{pattern!r} not in:\n{output}"

    return check


def exactly(text: str) -> Expect:
    def check(output: str) -> None:
        assert output == text

    return check


def fan_in_ends_each_job_once(output: str) -> None:
    ends = re.findall(r"^(\w+): 24 tokens$", output, re.M)
    assert len(ends) == len(set(ends)) == 6, output


def stories_each_once(output: str) -> None:
    stories = re.findall(r"^story (\d): \d+ tokens$", output, re.M)
    assert sorted(stories) == [str(n) for n in range(6)], output


def conversation_stays_on_one_replica(output: str) -> None:
    line = r"^turn (\d) on (r[01]): (\d+|None) prompt tokens from its cache$"
    turns = re.findall(line, output, re.M)
    assert [turn for turn, _, _ in turns] == ["0", "1", "2"], output
    assert len({replica for _, replica, _ in turns}) == 1, output
    assert all(int(cached) > 0 for _, _, cached in turns[1:]), output  # its cache, reused


SUMMARY = r"^Successful requests:\s+{}$"


@dataclass(frozen=True)
class Check:
    expect: Expect
    #: "engine" (the random tiny model), "scripted" (thinks and calls its tool).
    server: str = "engine"
    #: Run it on asyncio too, as the page says to (``asyncio.run(main())``).
    also_asyncio: bool = False
    #: Started and left running for the page's later examples (a server).
    background: bool = False


CHECKS: dict[str, Check] = {
    # README.md
    "first-stream": Check(
        matches(r"\n\d+ tokens, stop: (eos|limit)\n\Z", r"\A(?![\s\S]*failed:)"),
        also_asyncio=True,
    ),
    # stream.md
    "every-event": Check(
        matches(
            r"\Ajob \S+ started\ntoken 0: ",
            r"^\d+ prompt tokens evaluated; \d+ tokens/s$",
            r"^\d+ tokens, stop: (eos|limit)\n\Z",
        )
    ),
    "request-body": Check(matches(r"\AOnce upon a time 64 0(\.0)? True\n\Z")),
    "other-endpoints": Check(matches(r"\Aready: True; \d+ slots, \d+ busy\n\d+ tokens: '.+'\n\Z")),
    # chat.md
    "tool-loop": Check(
        exactly("called get_weather: sunny, 24 C in Paris\nIt is sunny in Paris.\n"),
        server="scripted",
        also_asyncio=True,
    ),
    "call-deltas": Check(
        matches(
            r"\Aprompt: \d+ of \d+ tokens$",
            r"^call 0 so far: \+",
            r'^call get_weather\(\{"city": ?"Paris"\}\)\n\Z',
        ),
        server="scripted",
    ),
    # many-streams.md
    "many-pulled": Check(stories_each_once),
    "fan-in": Check(fan_in_ends_each_job_once, also_asyncio=True),
    # pools.md
    "host": Check(matches(r"\nserved by r[01]\n\Z"), also_asyncio=True),
    "conversation": Check(conversation_stays_on_one_replica),
    # relay.md
    "relay-command": Check(matches(r"relay listening on ws://"), background=True),
    "relay-client": Check(matches(r"\A.+\Z")),
    "relay-in-process": Check(
        matches(r"\A\d+ tokens through the relay at ws://127\.0\.0\.1:\d+\n\Z")
    ),
    # bench.md
    "bench-first": Check(
        matches(
            SUMMARY.format(40), r"^Client tokens = server's:\s+True$", r"^Failed requests:\s+0$"
        )
    ),
    "bench-load": Check(matches(SUMMARY.format(40), r"^Request throughput .*\n[\s\S]*Request thr")),
    "bench-files": Check(exactly("written: prompts.jsonl, sharegpt.json\n")),
    "bench-prompts": Check(matches(SUMMARY.format(8), r"^Total generated tokens:\s+192$")),
    "bench-chat": Check(matches(SUMMARY.format(20), r"^Client tokens = server's:\s+True$")),
    "bench-prefixes": Check(matches(SUMMARY.format(20), r"(?i)cache")),
    "bench-conversations": Check(
        matches(r"Conversations, by turn[\s\S]*Conversations, by turn", r"^3\s+8\s")
    ),
    "bench-slo": Check(matches(r"(?i)goodput", r"(?i)slo")),
    "bench-workers": Check(matches(SUMMARY.format(40), r"[\s\S]*Serving Benchmark Result")),
    "bench-sweep": Check(matches(r"Serving Benchmark Sweep", r"^Knee \(concurrency\):\s+\d+$")),
    "bench-compare": Check(
        matches(r"^figure\s+result\s+chat\s+change$", r"^Successful requests\s+8\s+20\s")
    ),
    "bench-python": Check(
        matches(r"\A20 requests, p99 TTFT [\d.]+ ms\nclient CPU per 1k tokens: [\d.]+ s\n\Z")
    ),
    # cli.md
    "cli-stream": Check(matches(r"^-- \d+ tokens, .*stop: (eos|limit)\n.*\n-- \d+ tokens, ")),
    "cli-chat": Check(matches(r'"name": ?"get_weather"', r"Paris"), server="scripted"),
    "cli-query": Check(matches(r'"ready": ?true', r'"slots_total": ?2')),
    # errors.md
    "prompt-too-large": Check(matches(r"\APOOL_UNAVAILABLE: \d+ tokens, context \d+\n\Z")),
    "redact": Check(
        matches(r"\Aconnecting with \*\*\*\*[0-9a-f]{6}$", r"^Authorization: Bearer \*\*\*\*")
    ),
    # design.md
    "decoder": Check(matches(r"\n\d+ tokens\n\Z")),
    "sse": Check(matches(r"\A\[\]\n\[SSEEvent\(.*data='hello'.*data='a\\nb'")),
}


def named(page: Path) -> list[Example]:
    return [example for example in examples(page) if example.name is not None]


def test_every_example_has_a_name_and_a_check() -> None:
    unnamed = [(e.page, e.code[:60]) for page in PAGES for e in examples(page) if e.name is None]
    assert not unnamed, f"examples with no <!-- example: NAME --> above them: {unnamed}"
    names = [e.name for page in PAGES for e in named(page)]
    assert len(names) == len(set(names)), "two examples of one name"
    assert set(names) == set(CHECKS), (set(names) ^ set(CHECKS), "an example or a check alone")


def test_the_harness_finds_and_fails(tmp_path: Path) -> None:
    # What the harness reads of a page, and that a failing example fails it: a check
    # that could never fail would let every example rot.
    page = tmp_path / "page.md"
    page.write_text("<!-- example: x -->\n```python\nprint('a')\n```\n\n```text\nnot run\n```\n")
    (found,) = examples(page)
    assert (found.name, found.lang, found.code) == ("x", "python", "print('a')\n")
    assert run(found, found.code, tmp_path).stdout == "a\n"
    with pytest.raises(AssertionError):
        failing = Example("page.md", "y", "python", "raise SystemExit(3)\n")
        run(failing, failing.code, tmp_path)
    with pytest.raises(AssertionError):
        matches(r"^b$")("a\n")


def prepared(example: Example, base_url: str, relay_url: str) -> str:
    code = example.code.replace(ENGINE_URL, base_url).replace(SECOND_URL, base_url)
    return code.replace(RELAY_URL, relay_url).replace("--port 8765", "--port 0")


def environment() -> dict[str, str]:
    """The command on the PATH as an install puts it, and the relay's token."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "LLAMACPP_ADAPTER_RELAY_TOKEN": RELAY_TOKEN}


def command(example: Example, code: str, cwd: Path) -> list[str]:
    if example.lang == "python":
        script = cwd / f"{example.name}.py"
        script.write_text(code)
        return [sys.executable, str(script)]
    # A console block holds commands only (their output is shown apart): each begins
    # with "$ ", and a line without it goes on the command before.
    lines = code.splitlines()
    assert lines[0].startswith("$ "), f"{example.name}: a console block must begin with $"
    return ["bash", "-euo", "pipefail", "-c", "\n".join(x.removeprefix("$ ") for x in lines)]


def run(example: Example, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run *code*, the text of *example* made to point at the test's servers."""
    result = subprocess.run(
        command(example, code, cwd),
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"{example.page}: {example.name} failed:\n{result.stderr}"
    return result


def on_asyncio(code: str) -> str:
    """What the pages say to change for asyncio."""
    assert "trio.run(main)" in code
    code = code.replace("import trio\n", "import asyncio\n")
    return code.replace("trio.run(main)", "asyncio.run(main())")


@pytest.fixture
def servers(request: pytest.FixtureRequest) -> Callable[[str], LocalLlamaServer]:
    """The session's servers, started only when a page needs them."""
    names = {"engine": "llama_server", "scripted": "scripted_server"}
    return lambda kind: request.getfixturevalue(names[kind])


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes an example left running, stopped (as Ctrl-C would) at the page's end."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
        assert process.returncode == 128 + signal.SIGINT, errors


def start(example: Example, code: str, cwd: Path, processes: list[subprocess.Popen[str]]) -> str:
    """Start a server an example runs; its first line on stderr says where it listens."""
    process = subprocess.Popen(
        command(example, code, cwd), cwd=cwd, env=environment(), stderr=subprocess.PIPE, text=True
    )
    processes.append(process)
    assert process.stderr is not None
    first = process.stderr.readline()
    CHECKS[example.name or ""].expect(first)
    return first.split()[-1]


@pytest.mark.timeout(20 * EXAMPLE_TIMEOUT_S)
@pytest.mark.parametrize("page", [page for page in PAGES if named(page)], ids=lambda p: p.stem)
def test_the_examples_of_a_page_run(
    page: Path,
    tmp_path: Path,
    servers: Callable[[str], LocalLlamaServer],
    background: list[subprocess.Popen[str]],
) -> None:
    relay_url = RELAY_URL
    for example in named(page):
        assert example.name is not None
        check = CHECKS[example.name]
        code = prepared(example, servers(check.server).base_url, relay_url)
        if check.background:
            relay_url = start(example, code, tmp_path, background)
            continue
        check.expect(run(example, code, tmp_path).stdout)
        if check.also_asyncio:
            check.expect(run(example, on_asyncio(code), tmp_path).stdout)


# --- The API reference's examples: the docstrings' literal blocks -----------------------


def literal_blocks(doc: str) -> list[str]:
    """The indented blocks after a line ending in ``::``, as the reference shows them."""
    blocks, lines, at = [], doc.splitlines(), 0

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    while at < len(lines):
        if not lines[at].rstrip().endswith("::"):
            at += 1
            continue
        base, end = indent(lines[at]), at + 1
        while end < len(lines) and (not lines[end].strip() or indent(lines[end]) > base):
            end += 1
        blocks.append(textwrap.dedent("\n".join(lines[at + 1 : end])).strip("\n"))
        at = end
    return blocks


@functools.cache
def reference_fragments() -> dict[str, str]:
    """Each public name's (and its members') docstring examples, by dotted name (read
    once: every fragment's test asks)."""
    found = {}
    for module in (llamacpp_adapter, llamacpp_adapter.bench):
        for name in module.__all__:
            value = getattr(module, name)
            members = vars(value).items() if inspect.isclass(value) else ()
            for path, member in [(name, value), *((f"{name}.{a}", m) for a, m in members)]:
                doc = getattr(member, "__doc__", None)
                last = path.split(".")[-1]  # __init__'s is shown with its class's
                if path == name or last == "__init__" or not last.startswith("_"):
                    for n, block in enumerate(literal_blocks(inspect.cleandoc(doc or ""))):
                        found[f"{path}#{n}" if n else path] = block
    return found


@dataclass(frozen=True)
class Setting:
    """What a fragment needs around it to run: *around* holds it (``{fragment}``, at the
    indent of ``{fragment}``'s line), *body* replaces its ``...``, and the program's
    output must match *expect*."""

    around: str
    expect: str
    body: str = "..."


IN_ADAPTER = """
async def main() -> None:
    async with LlamaCppHttpAdapter(URL) as adapter:
        request = TaskRequest("Once upon a time", max_tokens=8)
        {fragment}
        print(type(event).__name__)
"""

SETTINGS = {
    "LlamaCppHttpAdapter.submit": Setting(IN_ADAPTER, r"\AEnd\n\Z", "pass"),
    "LlamaCppHttpAdapter.stream_into": Setting(IN_ADAPTER, r"\AEnd\n\Z", "pass"),
    "AdapterHost": Setting(
        """
async def main() -> None:
    {fragment}
    print(type(event).__name__)
""",
        r"\AEnd\n\Z",
        "pass",
    ),
    "AdapterHost.stream_into": Setting(
        """
async def main() -> None:
    async with LlamaCppHttpAdapter(URL) as adapter, AdapterHost() as host:
        host.bind("chat", "r0", adapter)
        request = TaskRequest("Once upon a time", max_tokens=8)
        send, receive = create_job_channel(64)
        async with anyio.create_task_group() as group, receive:
            {fragment}
            print([type(event).__name__ async for _, event in receive][-1])
""",
        r"\AEnd\n\Z",
    ),
    "Relay": Setting(
        """
async def main() -> None:
    token = TOKEN
    async with LlamaCppHttpAdapter(URL) as adapter:
        {fragment}
""",
        r"\Aws://127\.0\.0\.1:\d+\n\Z",
        "print(url)\ntasks.cancel_scope.cancel()",
    ),
    "open_relay_stream": Setting(
        """
async def main() -> None:
    token = TOKEN
    async with LlamaCppHttpAdapter(URL) as adapter, anyio.create_task_group() as relay:
        relay_url = await relay.start(Relay(adapter, token=token).serve, "127.0.0.1", 0)
        {fragment}
        print(type(event).__name__)
        relay.cancel_scope.cancel()
""",
        r"\AEnd\n\Z",
        "pass",
    ),
    "SSEDecoder": Setting(
        """
async def main() -> None:
    chunks = [b"data: one\\n\\nda", b"ta: two\\n\\n"]
    {fragment}
    print(event.data)
""",
        r"\Atwo\n\Z",
        "pass",
    ),
    "create_job_channel": Setting(
        """
async def main() -> None:
    {fragment}
    async with send, receive:
        await send.send(("job-1", "an event"))
        print(receive.receive_nowait())
""",
        r"\A\('job-1', 'an event'\)\n\Z",
    ),
}

FRAGMENT_PROGRAM = """
import anyio

from llamacpp_adapter import *  # noqa: F403
from llamacpp_adapter import JobItem

URL = {url!r}
TOKEN = {token!r}
{main}
anyio.run(main, backend={backend!r})
"""


def test_every_fragment_of_the_reference_has_a_setting() -> None:
    assert set(reference_fragments()) == set(SETTINGS)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@pytest.mark.parametrize("path", sorted(SETTINGS))
def test_the_reference_s_fragments_run(
    llama_server: LocalLlamaServer, tmp_path: Path, path: str, backend: str
) -> None:
    setting = SETTINGS[path]
    fragment = reference_fragments()[path]
    fragment = re.sub(r"^(\s*)\.\.\.(?=\s|$).*$", lambda m: textwrap.indent(setting.body, m[1]),
                      fragment, flags=re.M)  # fmt: skip
    for address in ("http://10.0.0.5:8080", "http://10.0.0.6:8080"):
        fragment = fragment.replace(address, llama_server.base_url)
    fragment = fragment.replace('"ws://10.0.0.2:8765"', "relay_url").replace("8765", "0")
    indent = re.search(r"^( *)\{fragment\}", setting.around, re.M)
    assert indent is not None
    main = setting.around.replace(f"{indent[1]}{{fragment}}", textwrap.indent(fragment, indent[1]))
    source = FRAGMENT_PROGRAM.format(
        url=llama_server.base_url, token=RELAY_TOKEN, main=main, backend=backend
    )
    example = Example("reference", path.replace(".", "-"), "python", source)
    matches(setting.expect)(run(example, source, tmp_path).stdout)
