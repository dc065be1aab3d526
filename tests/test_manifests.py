"""The deployment files describe the keygate that exists.

Every port, probe, mount, environment variable and command in deploy/ (Dockerfile,
compose, Kubernetes, systemd) is checked against the settings table
(:data:`gateway.settings.SETTINGS`), the command line (:func:`gateway.cli.build_parser`)
and the management API, so that a renamed setting, port, path or command breaks this
test instead of a deployment. Compose and Kubernetes are parsed and checked here, not
run; tests/test_image.py builds and runs the image.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml
from ports import free_port
from served import clean_environ, request, wait_for

from gateway.cli import build_parser
from gateway.process import CUT_GRACE, runner_shutdown_timeout
from gateway.settings import MIN_SECRET_LENGTH, SETTINGS, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ENV_SETTINGS = {f"KEYGATE_{s.name.upper()}": s.name for s in SETTINGS if s.env}
DEFAULTS = {s.name: s.default for s in SETTINGS}


# -- what keygate accepts ----------------------------------------------------------------
def assert_known_environment(env: dict[str, str], where: str) -> None:
    """Every KEYGATE_* variable is a setting, or the CLI's KEYGATE_CONFIG."""
    assert "KEYGATE_CONFIG" in build_parser().format_help(), "the CLI no longer reads it"
    for name in env:
        if name.startswith("KEYGATE_"):
            assert name in ENV_SETTINGS or name == "KEYGATE_CONFIG", f"{where}: unknown {name}"


def assert_command(argv: list[str], where: str) -> None:
    """keygate's own parser accepts the arguments (a renamed command fails here)."""
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `keygate {shlex.join(argv)}` is not a keygate command")


def effective(env: dict[str, str], config_text: str | None, tmp_path: Path) -> Settings:
    """The settings keygate would run with: the config file, then the environment."""
    config = None
    if config_text is not None:
        config = tmp_path / f"{uuid.uuid4().hex}.toml"
        config.write_text(config_text)
    return load_settings(config, env={k: v for k, v in env.items() if k != "KEYGATE_CONFIG"})


def listen_ports(settings: Settings) -> dict[str, int]:
    """Every port keygate serves on with these settings, by the name deploy/ gives it."""
    ports = {"proxy": settings.proxy_listen[1], "management": settings.management_listen[1]}
    if settings.metrics_listen is not None:
        ports["metrics"] = settings.metrics_listen[1]
    if settings.decision_listen is not None:
        ports["decision"] = settings.decision_listen[1]
    return ports


# -- the Dockerfile ----------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in joined.splitlines() if line.strip()]


class Image:
    """What the final stage of deploy/Dockerfile declares."""

    def __init__(self) -> None:
        instructions = dockerfile_instructions()
        self.all = instructions
        last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
        final = instructions[last_from:]
        self.env: dict[str, str] = {}
        for op, rest in final:
            if op == "ENV":
                self.env.update(word.split("=", 1) for word in shlex.split(rest))
        self.expose = {int(p) for op, rest in final if op == "EXPOSE" for p in rest.split()}
        (self.user,) = [rest for op, rest in final if op == "USER"]
        (entrypoint,) = [json.loads(rest) for op, rest in final if op == "ENTRYPOINT"]
        (cmd,) = [json.loads(rest) for op, rest in final if op == "CMD"]
        self.entrypoint, self.cmd = entrypoint, cmd
        (healthcheck,) = [rest for op, rest in final if op == "HEALTHCHECK"]
        self.healthcheck = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
        self.copies = [rest.split() for op, rest in instructions if op == "COPY"]

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[0])


@pytest.fixture(scope="module")
def image() -> Image:
    return Image()


def test_dockerfile_base_user_ports_and_command(image, tmp_path):
    ops = image.all
    assert ops[0] == ("ARG", "BASE=python:3.11-slim"), "the documented default base"
    assert [rest.split()[0] for op, rest in ops if op == "FROM"] == ["${BASE}", "${BASE}"]
    assert image.uid > 0 and image.user == f"{image.uid}:{image.uid}"  # numeric, non-root

    assert_known_environment(image.env, "Dockerfile")
    settings = effective(image.env, None, tmp_path)
    assert settings.proxy_listen[0] == "0.0.0.0"  # noqa: S104 - reachable from outside
    assert image.expose == set(listen_ports(settings).values())

    assert image.entrypoint == ["keygate"]
    assert_command(image.cmd, "Dockerfile CMD")
    assert image.cmd == ["serve"]
    assert image.healthcheck[0] == "python"  # the image has python, not curl


def test_dockerfile_copies_only_what_dockerignore_lets_through(image):
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = [args[:-1] for args in image.copies if not args[0].startswith("--from")]
    assert sources
    for paths in sources:
        for path in paths:
            path = path.rstrip("/")
            assert path in allowed, f"COPY {path}: excluded from the build context"
            assert (ROOT / path).exists(), path


async def test_dockerfile_healthcheck_asks_the_configured_management_port(image, management):
    """The HEALTHCHECK command follows management_listen and fails when nothing answers."""
    env = clean_environ()

    async def healthcheck(listen: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *image.healthcheck[1:],
            env={**env, "KEYGATE_MANAGEMENT_LISTEN": listen},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), 30)

    assert await healthcheck(f"0.0.0.0:{management.server.port}") == 0
    assert await healthcheck(f"127.0.0.1:{free_port()}") != 0


# -- compose -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_the_image_with_its_config_secret_and_ports(compose, image, tmp_path):
    services = compose["services"]
    keygate = services["keygate"]
    build = keygate["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert "BASE" in build["args"]
    assert_command(keygate["command"], "compose")

    env = {**image.env, **keygate["environment"]}
    assert_known_environment(env, "compose")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in keygate["volumes"]}  # target: source
    config_source = DEPLOY / mounts[env["KEYGATE_CONFIG"]]
    settings = effective(env, config_source.read_text(), tmp_path)

    (secret,) = keygate["secrets"]
    assert secret in compose["secrets"]
    assert env["KEYGATE_SECRET_FILE"] == f"/run/secrets/{secret}"
    assert "KEYGATE_SECRET" not in env  # a file, not an environment variable

    published = {}
    for mapping in keygate["ports"]:
        *host, container = mapping.split(":")
        published[int(container)] = host
    ports = listen_ports(settings)
    assert set(published) == set(ports.values())
    assert published[ports["management"]][0] == "127.0.0.1"  # never the public network
    assert published[ports["metrics"]][0] == "127.0.0.1"
    assert keygate["read_only"] is True and "/tmp" in keygate["tmpfs"]
    for service in (keygate, compose["services"]["echo"]):  # no capability, no setuid gain
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
    assert int(keygate["stop_grace_period"].rstrip("s")) > DEFAULTS["shutdown_timeout"]

    # the store and the upstreams are the other services
    assert re.fullmatch(r"redis://redis:6379/\d+", settings.store_url)
    echo_port = int(re.search(r"port=(\d+)", services["echo"]["entrypoint"][2]).group(1))
    for route in settings.routes:
        assert route["upstream"] == f"http://echo:{echo_port}", route
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_compose_echo_upstream_is_the_demo_echo_of_the_same_image(compose):
    """It needs no image of its own; its command really serves the echo."""
    echo = compose["services"]["echo"]
    assert echo["image"] == compose["services"]["keygate"]["image"]
    python, flag, code = echo["entrypoint"]
    assert (python, flag) == ("python", "-c")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", re.sub(r"port=\d+", f"port={port}, host='127.0.0.1'", code)],
        env=clean_environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def alive() -> str | None:
            return None if proc.poll() is None else proc.communicate()[1]

        wait_for(f"http://127.0.0.1:{port}/orders/1", alive=alive)
        assert orjson.loads(request(f"http://127.0.0.1:{port}/x").body)["upstream"] \
            == "keygate demo echo"
        # its own health check (not the image's, which asks keygate's management port)
        # passes against it, and keygate waits for it
        kind, *check = echo["healthcheck"]["test"]
        assert kind == "CMD" and check[:2] == ["python", "-c"]
        checked = subprocess.run(
            [sys.executable, "-c", check[2].replace(":9000/", f":{port}/")],
            env=clean_environ(), capture_output=True, text=True, timeout=30, check=False)
        assert checked.returncode == 0, checked.stderr
        assert compose["services"]["keygate"]["depends_on"]["echo"]["condition"] \
            == "service_healthy"
    finally:
        proc.kill()
        proc.communicate()


# -- Kubernetes --------------------------------------------------------------------------
def kubernetes_objects(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    return kubernetes_objects(sorted(KUBERNETES.glob("*.yaml")))


def test_kubernetes_has_every_object_and_the_kustomization_applies_them(k8s):
    kinds = {kind for kind, _ in k8s}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    # everything but the Secret's example, which must never overwrite the real secret
    assert set(kustomization["resources"]) == files - {"secret.yaml"}


def container_and_pod(k8s: dict[tuple[str, str], dict[str, Any]]) -> tuple[dict, dict]:
    pod = k8s[("Deployment", "keygate")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container, pod


def deployment_environment(k8s: dict[tuple[str, str], dict[str, Any]],
                           image: Image) -> dict[str, str]:
    container, _ = container_and_pod(k8s)
    return {**image.env, **{e["name"]: e["value"] for e in container["env"]}}


def deployment_settings(k8s: dict[tuple[str, str], dict[str, Any]], image: Image,
                        tmp_path: Path) -> Settings:
    """What the Deployment's keygate runs with: the image's and the pod's environment and
    the ConfigMap mounted where KEYGATE_CONFIG points."""
    container, pod = container_and_pod(k8s)
    env = deployment_environment(k8s, image)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["KEYGATE_CONFIG"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = k8s[("ConfigMap", volume["configMap"]["name"])]
    return effective(env, configmap["data"][mount["subPath"]], tmp_path)


async def test_kubernetes_deployment_matches_settings_cli_and_endpoints(
    k8s, image, tmp_path, management
):
    container, pod = container_and_pod(k8s)
    env = deployment_environment(k8s, image)
    assert_known_environment(env, "deployment.yaml")
    assert "command" not in container  # the image's entrypoint: keygate
    assert_command(container["args"], "deployment.yaml")

    # mounts: the config, the policies and the secret are where the environment says
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def volume_at(path: str) -> tuple[dict, dict]:
        mount = mounts[path]
        return mount, volumes[mount["name"]]

    _, volume = volume_at(env["KEYGATE_POLICIES_DIR"])
    policies = volume["configMap"]["name"]  # made from policies/ by the documented command
    assert f"kubectl create configmap {policies} --from-file=policies/" in \
        (KUBERNETES / "kustomization.yaml").read_text()
    secret_dir, secret_key = env["KEYGATE_SECRET_FILE"].rsplit("/", 1)
    _, volume = volume_at(secret_dir)
    secret = k8s[("Secret", volume["secret"]["secretName"])]
    placeholder = secret["stringData"][secret_key]
    assert len(placeholder) < MIN_SECRET_LENGTH  # keygate refuses it: cannot go live
    assert volume["secret"]["defaultMode"] & 0o040  # the fsGroup may read it

    settings = deployment_settings(k8s, image, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == listen_ports(settings)

    # probes: the real endpoints, on the management port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports[get["port"]] == settings.management_listen[1]
        assert (await management.get(path)).status == 200

    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == image.uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volume_at("/tmp")[1]  # what keygate writes, with a read-only root
    # SIGTERM comes after the preStop wait, so that the endpoints a terminating pod leaves
    # stop sending new connections before keygate refuses them; the grace period holds
    # the wait, the drain, the cut and the final writes
    program, *wait = container["lifecycle"]["preStop"]["exec"]["command"]
    assert program == "sleep" and 0 < int(wait[0]) <= 10
    assert pod["terminationGracePeriodSeconds"] >= (
        int(wait[0]) + runner_shutdown_timeout(DEFAULTS["shutdown_timeout"]) + CUT_GRACE + 5)


def test_kubernetes_services_budget_and_autoscaler_point_at_the_deployment(k8s):
    container, _ = container_and_pod(k8s)
    deployment = k8s[("Deployment", "keygate")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    services = [obj for (kind, _), obj in k8s.items() if kind == "Service"]
    assert services
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    proxy_service = k8s[("Service", "keygate")]
    assert [p["targetPort"] for p in proxy_service["spec"]["ports"]] == ["proxy"]
    (pdb,) = [obj for (kind, _), obj in k8s.items() if kind == "PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (hpa,) = [obj for (kind, _), obj in k8s.items() if kind == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "keygate")
    assert hpa["spec"]["minReplicas"] >= 2  # the budget can always keep one
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it


DNS_PORTS = {(53, "UDP"), (53, "TCP")}


def policy_ports(rule: dict[str, Any], named: dict[str, int]) -> set[tuple[int, str]]:
    """(number, protocol) a NetworkPolicy rule admits; a name is a container port's."""
    admitted = set()
    for port in rule["ports"]:
        number = port["port"]
        if isinstance(number, str):
            assert number in named, f"NetworkPolicy: {number!r} names no container port"
            number = named[number]
        admitted.add((number, port.get("protocol", "TCP")))
    return admitted


def assert_narrow_peers(peers: list[dict[str, Any]], where: str) -> None:
    """No peer is everyone: an empty selector matches every pod or namespace."""
    assert peers, f"{where}: a rule without peers admits everyone"
    for peer in peers:
        assert peer, where
        for kind in ("podSelector", "namespaceSelector"):
            if kind in peer:
                assert peer[kind].get("matchLabels") or peer[kind].get("matchExpressions"), \
                    f"{where}: an empty {kind} matches everything"


def test_kubernetes_network_policy_admits_keygates_ports_and_reaches_store_upstreams_dns(
    k8s, image, tmp_path
):
    container, _ = container_and_pod(k8s)
    deployment = k8s[("Deployment", "keygate")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (policy,) = [obj for (kind, _), obj in k8s.items() if kind == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}  # all else refused both ways
    settings = deployment_settings(k8s, image, tmp_path)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}

    # ingress: exactly the ports keygate serves on (the settings table, the container
    # ports), each from chosen peers only
    admitted = set()
    for rule in spec["ingress"]:
        assert_narrow_peers(rule.get("from", []), "ingress")
        assert rule.get("ports"), "an ingress rule without ports admits every port"
        admitted |= policy_ports(rule, named)
    assert {number for number, _ in admitted} == set(listen_ports(settings).values()) \
        == set(named.values())
    assert {protocol for _, protocol in admitted} == {"TCP"}
    for (kind, _), service in k8s.items():
        if kind == "Service":
            for port in service["spec"]["ports"]:
                assert (named[port["targetPort"]], "TCP") in admitted, port

    # egress: the store and the upstreams the config names, and DNS; nothing else
    store = urlsplit(settings.store_url)
    assert store.scheme in ("redis", "rediss")
    needed = {(store.hostname, store.port or 6379)}
    for route in settings.routes:
        upstream = urlsplit(route["upstream"])
        needed.add((upstream.hostname,
                    upstream.port or {"http": 80, "https": 443}[upstream.scheme]))
    reached, dns = set(), set()
    for rule in spec["egress"]:
        assert_narrow_peers(rule.get("to", []), "egress")
        assert rule.get("ports"), "an egress rule without ports lets out every port"
        ports = policy_ports(rule, {})
        if ports <= DNS_PORTS:
            assert {"kube-dns"} == {peer.get("podSelector", {}).get("matchLabels", {})
                                    .get("k8s-app") for peer in rule["to"]}
            dns |= ports
            continue
        assert {protocol for _, protocol in ports} == {"TCP"}, rule
        # the pods behind the Service the config names (the shipped example's convention)
        names = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                 for peer in rule["to"]}
        reached |= {(name, number) for name in names for number, _ in ports}
    assert dns == DNS_PORTS
    assert reached == needed


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubernetes_kustomization_and_policies_command_render_with_kubectl(tmp_path):
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered.stdout)}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds and "Secret" not in kinds
    made = subprocess.run(
        ["kubectl", "create", "configmap", "keygate-policies", "--from-file=policies/",
         "--dry-run=client", "-o", "yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert made.returncode == 0, made.stderr
    data = yaml.safe_load(made.stdout)["data"]
    assert set(data) == {p.name for p in (ROOT / "policies").glob("*.csv")}


# -- systemd -----------------------------------------------------------------------------
def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; repeated keys (Environment=) stay separate."""
    entries, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def test_systemd_unit_runs_keygate_hardened_with_its_secret_as_a_credential(tmp_path):
    unit = DEPLOY / "systemd" / "keygate.service"
    entries = unit_entries(unit)
    service = {key: value for section, key, value in entries if section == "Service"}
    env = dict(value.split("=", 1) for section, key, value in entries
               if (section, key) == ("Service", "Environment"))
    assert_known_environment(env, "keygate.service")

    program, *argv = shlex.split(service["ExecStart"])
    assert Path(program).name == "keygate"
    assert_command(argv, "keygate.service")
    assert service["ExecReload"].endswith("kill -HUP $MAINPID")  # reloads the policies

    credential, _, source = service["LoadCredential"].partition(":")
    assert env["KEYGATE_SECRET_FILE"] == f"%d/{credential}" and source.startswith("/etc/")
    assert service["User"] not in ("", "root")

    # keygate derives its connection cap from the descriptor limit
    assert int(service["LimitNOFILE"]) >= 65536
    assert int(service["TimeoutStopSec"]) > DEFAULTS["shutdown_timeout"]
    hardening = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
        "RestrictNamespaces": "yes", "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
    }
    assert {k: service.get(k) for k in hardening} == hardening
    # unix:// is a store_url keygate accepts, so the unit must not forbid it
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} == set(service["RestrictAddressFamilies"].split())

    if shutil.which("systemd-analyze"):  # catches misspelt options
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                                text=True, timeout=60, check=False)
        complaints = [line for line in (verify.stdout + verify.stderr).splitlines()
                      if line.strip() and f"Command {program} is not executable" not in line]
        assert not complaints, complaints


# -- the README's deployment journeys name files that exist ----------------------------
def test_readme_deploying_section_names_existing_files():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Deploying")
    section = readme[start:readme.find("\n## ", start + 1)]
    named = set(re.findall(r"\bdeploy/[\w./-]*\w", section))
    assert {"deploy/Dockerfile", "deploy/compose.yaml", "deploy/kubernetes",
            "deploy/systemd/keygate.service", "deploy/kubernetes/networkpolicy.yaml"} <= named
    for path in named:
        assert (ROOT / path).exists(), path



def test_readme_docker_run_hands_the_secret_over_as_a_file():
    """``docker inspect`` shows a container's environment to whoever may inspect it."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Deploying")
    section = readme[start:readme.find("\n## ", start + 1)].replace("\\\n", " ")
    runs = [line for line in section.splitlines() if line.startswith("docker run ")]
    assert runs
    for run in runs:
        argv = shlex.split(run)
        env = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-e"]
        assert not [e for e in env if e.split("=")[0] == "KEYGATE_SECRET"], run
        if "KEYGATE_SECRET_FILE=/run/secrets/keygate" in env:
            assert any(a.endswith(":/run/secrets/keygate:ro") for a in argv), run
