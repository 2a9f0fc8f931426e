"""Developer tasks: ``nox -s tests`` (the CI gate), ``lint``, ``typecheck``, ``bench``."""

from __future__ import annotations

import nox

nox.options.error_on_external_run = True
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]

PYTHON = "3.11"
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite (unit + integration against the local RabbitMQ), with the coverage gate."""
    session.install("-e", ".[test]")
    # the coverage gate (fail_under) lives in pyproject.toml [tool.coverage.report]
    session.run("pytest", "--cov=wa_trio", "--cov-report=term", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", MYPY)
    session.run("mypy", "src")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput, latency, memory and start-up time against the local broker (not in CI)."""
    session.install("-e", ".[test]", "aio-pika>=9.4")
    session.run("python", "bench/run.py", *session.posargs)
