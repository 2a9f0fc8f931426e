"""Developer tasks.

``nox -s tests`` (the CI gate: every tier, with the coverage gate), ``unit`` (no broker needed),
``integration`` (the local RabbitMQ), ``fault`` (kills and broker faults on a RabbitMQ node the
suite starts itself), ``container`` (the image built and run with Podman), ``lint``,
``typecheck`` (src, tests and this file), ``bench``.
"""

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
    """The whole suite (unit + integration + fault), with the coverage gate."""
    session.install("-e", ".[test]")
    # the coverage gate (fail_under) lives in pyproject.toml [tool.coverage.report]
    session.run(
        "pytest", "-m", "not container", "--cov=wa_trio", "--cov-report=term", *session.posargs
    )


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Pure and component tests: no broker, no network, well under a minute."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit", "-m", "not integration", *session.posargs)


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Against the local RabbitMQ on 5672 (own queues only), without the fault tier."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "integration and not fault", *session.posargs)


@nox.session(python=PYTHON)
def fault(session: nox.Session) -> None:
    """Kills and broker faults (a RabbitMQ node of the suite's own for anything it stops)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "fault", *session.posargs)


@nox.session(python=PYTHON)
def container(session: nox.Session) -> None:
    """Build the image with Podman and run it for real (see tests/container/test_image.py)."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/container", "-m", "container", "-p", "no:cacheprovider",
                *session.posargs)  # fmt: skip


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install(RUFF)
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/, tests/ and noxfile.py (the files list is in pyproject.toml)."""
    session.install("-e", ".[test]", MYPY, "nox==2026.10.20")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput, latency, memory and start-up time against the local broker (not in CI)."""
    session.install("-e", ".[test]", "aio-pika>=9.4")
    session.run("python", "bench/run.py", *session.posargs)
