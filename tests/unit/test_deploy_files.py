"""The Containerfile, compose file and Kubernetes example, checked without a container engine."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Containerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_multi_stage_on_official_slim_python() -> None:
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(froms) == 2
    for base in froms:
        assert re.match(r"docker\.io/library/python:3\.1[1-9]-slim", base), base
    assert froms[0].endswith(" AS build")


def test_runs_as_non_root_with_session_volume_port_and_production_env() -> None:
    steps = instructions()
    final = steps[[k for k, _ in steps].index("FROM", 1) :]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert any(k == "VOLUME" and "/app/session" in r for k, r in final)
    assert ("EXPOSE", "8080") in final
    env = " ".join(r for k, r in final if k == "ENV")
    assert "ENV=production" in env and "WHATSAPP_SESSION_PATH=/app/session" in env
    run = " ".join(r for k, r in final if k == "RUN")
    assert "libmagic1" in run
    assert "chown -R wa-trio:wa-trio /app" in run
    assert ("COPY", "--from=build /opt/wa-trio /opt/wa-trio") in final
    assert "PATH=/opt/wa-trio/bin:$PATH" in env


def test_healthcheck_uses_python_and_entrypoint_is_wa_trio_run() -> None:
    steps = dict(instructions())
    health = steps["HEALTHCHECK"]
    assert "CMD" in health and '"python"' in health and "/healthz" in health
    assert "curl" not in health and "wget" not in health
    cmd = json.loads(health.split("CMD", 1)[1].strip())
    assert cmd[0] == "python"
    compile(cmd[2], "<healthcheck>", "exec")  # the inline script is valid Python
    assert json.loads(steps["ENTRYPOINT"]) == ["wa-trio"]
    assert json.loads(steps["CMD"]) == ["run"]


def test_every_copied_path_exists() -> None:
    for keyword, rest in instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _target = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), source


def test_compose_runs_broker_and_worker_with_a_named_volume() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert "management" in services["rabbitmq"]["image"]
    worker = services["wa-trio"]
    assert worker["build"]["dockerfile"] == "Containerfile"
    assert "wa-session:/app/session" in worker["volumes"]
    assert "wa-session" in compose["volumes"]
    assert worker["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert worker["environment"]["RABBITMQ_HOST"] == "rabbitmq"


def test_kubernetes_example_one_replica_recreate_probes_and_pvc() -> None:
    docs = list(yaml.safe_load_all((ROOT / "docs/deploy/kubernetes.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    deployment = next(d for d in docs if d["metadata"]["name"] == "wa-trio")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # liveness is the process only (a broker outage must not restart the pod); issue 18
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert kinds["PersistentVolumeClaim"]["metadata"]["name"] == claim
    assert {"mountPath": "/app/session", "name": "session"} in container["volumeMounts"]
    assert pod["terminationGracePeriodSeconds"] > 10


def test_compose_publishes_ports_on_loopback_only_and_checks_health() -> None:
    """The login QR links an account: nothing is published on every interface (issue 18)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    # podman's default OCI image format drops HEALTHCHECK: compose carries the check itself
    assert "/healthz" in " ".join(compose["services"]["wa-trio"]["healthcheck"]["test"])


def test_the_final_image_takes_only_the_built_environment() -> None:
    """Only the virtual environment crosses from the build stage (no source, no wheels, no
    bind mount that a cached build stage can leave empty: issue 30)."""
    steps = instructions()
    final = steps[[k for k, _ in steps].index("FROM", 1) :]
    crossing = [r for k, r in final if k == "COPY" and "--from=build" in r]
    assert crossing == ["--from=build /opt/wa-trio /opt/wa-trio"]
    assert not any("--mount=type=bind,from=build" in r for k, r in final if k == "RUN")


def test_compose_offers_a_standby_on_the_same_volume() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    standby = compose["services"]["wa-trio-standby"]
    assert standby["profiles"] == ["standby"]  # not started unless asked for
    assert standby["environment"]["WHATSAPP_STANDBY"] == "on"
    assert standby["volumes"] == compose["services"]["wa-trio"]["volumes"]


def test_compose_offers_two_replicas_on_postgresql_each_with_its_own_volume() -> None:
    from wa_trio.config.settings import Settings

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert services["postgres"]["profiles"] == ["replicas"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    a, b = services["wa-trio-replica-a"], services["wa-trio-replica-b"]
    assert a["profiles"] == b["profiles"] == ["replicas"]
    assert a["environment"] == b["environment"]  # the same configuration: accounts spread
    assert a["volumes"] != b["volumes"]  # as on two hosts
    for replica in (a, b):
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = {
            k: str(v).replace("${WA_POSTGRES_PASSWORD:-wa-change-me}", "pw")
            for k, v in replica["environment"].items()
            if "${WHATSAPP_ADMIN_TOKEN" not in str(v)
        }
        settings = Settings.from_env(env)
        assert settings.store is not None and settings.store.startswith("postgresql://")
        assert settings.multi_account


def test_kubernetes_shows_replicas_on_postgresql_with_a_volume_per_pod() -> None:
    docs = list(yaml.safe_load_all((ROOT / "docs/deploy/kubernetes.yaml").read_text()))
    replicas = next(d for d in docs if d["metadata"]["name"] == "wa-trio-replicas")
    assert replicas["kind"] == "StatefulSet"
    assert replicas["spec"]["replicas"] >= 2
    pod = replicas["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"secretRef": {"name": "wa-trio-replicas"}} in container["envFrom"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "," in env["WHATSAPP_ACCOUNTS"]
    claim = replicas["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"mountPath": "/app/session", "name": claim} in container["volumeMounts"]
    text = (ROOT / "docs/deploy/kubernetes.yaml").read_text()
    assert "WHATSAPP_STORE='postgresql://" in text
