"""keygate as a user installs it, not as the checkout runs it.

The defaults (model, policies, demo config) travel inside the package as links to the
top-level files, so there is one source; the runtime dependencies are exactly what
gateway/ imports; and a wheel built the way a release is built (``python -m build``: an
sdist, then the wheel from that sdist) works in a new venv, from a directory that is
not the checkout, for ``policy check``, ``demo`` and ``serve``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import tomllib
import uuid
import zipfile
from pathlib import Path

import orjson
import pytest
from ports import free_port
from served import TIMEOUT, clean_environ, process_alive, request, wait_for

from gateway.demo import DEMO_CONFIG
from gateway.settings import DEFAULTS_DIR, load_settings, reference_markdown

ROOT = Path(__file__).resolve().parent.parent
SECRET = "packaging-test-secret-" + "p" * 40
# what gateway/defaults/ ships, and the top-level file people edit that it links to
SHIPPED = {
    "model.conf": ROOT / "model.conf",
    "policies": ROOT / "policies",
    "demo.toml": ROOT / "deploy" / "demo.toml",
}


def shipped_files() -> dict[str, Path]:
    """Every file a wheel must carry under gateway/defaults/, and its source."""
    files = {}
    for name, source in SHIPPED.items():
        if source.is_dir():
            files.update({f"{name}/{p.name}": p for p in sorted(source.glob("*.csv"))})
        else:
            files[name] = source
    return files


def run(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env or clean_environ(),
        capture_output=True, text=True, timeout=TIMEOUT * 3, check=False,
    )
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


# -- one source ------------------------------------------------------------------------
def test_the_package_defaults_are_links_to_the_top_level_files():
    """No copy that could drift: gateway/defaults/ holds symlinks to the edited files."""
    assert sorted(p.name for p in DEFAULTS_DIR.iterdir()) == sorted(SHIPPED)
    for name, source in SHIPPED.items():
        link = DEFAULTS_DIR / name
        assert link.is_symlink(), f"gateway/defaults/{name} must link to {source}, not copy it"
        assert link.resolve() == source.resolve()


def test_settings_and_the_demo_default_to_the_shipped_files():
    settings = load_settings(env={})
    # resolved, so that messages name the file people edit
    assert settings.model_path == SHIPPED["model.conf"]
    assert settings.policies_dir == SHIPPED["policies"]
    assert DEMO_CONFIG.resolve() == SHIPPED["demo.toml"]
    table = reference_markdown()
    assert "`'<package>/defaults/model.conf'`" in table
    assert "`'<package>/defaults/policies'`" in table
    assert str(ROOT) not in table  # nothing of this machine in the README


# -- dependencies ----------------------------------------------------------------------
def gateway_imports() -> set[str]:
    """Top-level names of every module gateway/ imports that is not the stdlib's."""
    names = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "gateway"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_name(requirement: str) -> str:
    return canonical(re.match(r"[A-Za-z0-9_.-]+", requirement).group())


def test_every_package_of_gateway_is_in_the_wheel():
    """setuptools is given the package list explicitly: a new subpackage left out of it
    would be missing from every wheel (and only the slow end-to-end test would notice)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "gateway").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)


def test_runtime_dependencies_are_exactly_what_gateway_imports():
    """A new import needs its dependency declared; a dependency nothing imports goes."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {dist_name(d) for d in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    imported = {}
    for module in gateway_imports():
        dists = {canonical(d) for d in providers.get(module, [])}
        assert dists & declared, f"gateway imports {module!r}, which no dependency provides"
        imported.update(dict.fromkeys(dists & declared, module))
    assert declared == set(imported), f"declared but never imported: {declared - set(imported)}"
    # the test tools stay out of what users install
    assert not {dist_name(t) for t in project["optional-dependencies"]["test"]} & declared


# -- the wheel, installed --------------------------------------------------------------
def read_demo_until_first_curl(proc: subprocess.Popen[str]) -> str:
    """What `keygate demo` printed up to its first curl line (killed if it never comes)."""
    assert proc.stdout is not None
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    printed = []
    try:
        for line in proc.stdout:
            printed.append(line)
            if line.strip().startswith("curl "):
                return "".join(printed)
    finally:
        watchdog.cancel()
    raise AssertionError("demo stopped before printing a curl line:\n" + "".join(printed))


def curl_as_printed(line: str) -> tuple[str, dict[str, str]]:
    """The URL and headers of a printed `curl -i URL -H 'Name: value' …` line."""
    words = shlex.split(line)
    assert words[:2] == ["curl", "-i"], line
    headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
    return words[2], headers


@pytest.mark.slow
def test_the_built_wheel_runs_demo_policy_check_and_serve_from_a_new_venv(tmp_path, redis_url):
    if not redis_url.startswith("redis://"):
        pytest.skip("`keygate serve` from the wheel needs the private redis-server")
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)  # the sdist, then its wheel
    (wheel,) = dist.glob("keygate-*.whl")
    (sdist,) = dist.glob("keygate-*.tar.gz")
    shipped = shipped_files()
    with zipfile.ZipFile(wheel) as archive:
        for name, source in shipped.items():
            assert archive.read(f"gateway/defaults/{name}") == source.read_bytes(), name
    with tarfile.open(sdist) as archive:  # content, not links that would dangle
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if "/" in m.name}
        for name in shipped:
            assert members[f"gateway/defaults/{name}"].isfile(), name

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python, keygate = venv / "bin" / "python", venv / "bin" / "keygate"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # the installed package answers, not the checkout
    where = run(python, "-c", "import gateway.settings as s; print(s.DEFAULTS_DIR)",
                cwd=elsewhere).strip()
    assert Path(where).is_relative_to(venv)

    checked = run(keygate, "policy", "check", cwd=elsewhere)
    assert checked.startswith("policy OK") and "owner" in checked

    proxy_port, management_port = free_port(), free_port()
    demo_env = clean_environ(
        KEYGATE_PROXY_LISTEN=f"127.0.0.1:{proxy_port}",
        KEYGATE_MANAGEMENT_LISTEN=f"127.0.0.1:{management_port}",
        KEYGATE_METRICS_LISTEN="",
    )
    demo = subprocess.Popen(
        [keygate, "demo", "--upstream-port", str(free_port())], cwd=elsewhere, env=demo_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        printed = read_demo_until_first_curl(demo)
        url, headers = curl_as_printed(printed.splitlines()[-1])
        answer = request(url, headers)
        assert answer.status == 200, (answer, printed)
        received = orjson.loads(answer.body)["headers"]
        app_key = re.search(r"API key\s+(\S+)", printed).group(1)
        token = re.search(r"API token\s+(\S+)", printed).group(1)
        assert received["X-Keygate-Key"] == app_key
        assert token not in answer.body.decode()  # the upstream never sees the token
    finally:
        demo.kill()
        demo.communicate()

    config = tmp_path / "keygate.toml"
    management_url = f"http://127.0.0.1:{free_port()}"
    config.write_text(
        f'proxy_listen = "127.0.0.1:{free_port()}"\n'
        f'management_listen = "{management_url.removeprefix("http://")}"\n'
        f'metrics_listen = "127.0.0.1:{free_port()}"\n'
        f'store_url = "{redis_url}"\n'
        f'store_prefix = "packaging-{uuid.uuid4().hex[:12]}:"\n'
    )
    serve = subprocess.Popen(
        [keygate, "--config", config, "serve"], cwd=elsewhere,
        env=clean_environ(KEYGATE_SECRET=SECRET),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(management_url + "/healthz", alive=process_alive(serve))
        assert request(management_url + "/readyz").status == 200  # it reached the Redis
        serve.terminate()
        _, stderr = serve.communicate(timeout=TIMEOUT)
        assert serve.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.communicate()


# -- aiohttp's public API only ----------------------------------------------------------
# aiohttp reads every untrusted request; keygate takes its minor releases (security fixes
# in the parser included) as they come, which holds only while keygate uses nothing but
# its documented API: these modules, and no underscore names.
AIOHTTP_PUBLIC_MODULES = {"aiohttp", "aiohttp.web", "aiohttp.abc", "aiohttp.hdrs",
                          "aiohttp.test_utils"}


def project_sources() -> list[Path]:
    return [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "bench").rglob("*.py"),
            *(ROOT / "tests").rglob("*.py")]


def test_only_aiohttps_public_modules_are_imported():
    for path in project_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
                if node.module.startswith("aiohttp"):
                    names = [alias.name for alias in node.names]
                    assert not [n for n in names if n.startswith("_")], (path, node.lineno)
            else:
                continue
            for module in modules:
                if module.split(".")[0] == "aiohttp":
                    assert module in AIOHTTP_PUBLIC_MODULES, (
                        f"{path.relative_to(ROOT)}:{node.lineno} imports {module}")


def test_no_underscore_attribute_of_another_object_is_used_by_the_package():
    """keygate's own code reads underscore attributes of itself only (``self._x``), so it
    can read none of aiohttp's (or any library's) private state; nor does it override a
    library class's private methods."""
    for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                owner = node.value
                assert isinstance(owner, ast.Name) and owner.id in ("self", "cls"), (
                    f"{path.relative_to(ROOT)}:{node.lineno} reads {ast.unparse(node)}")
            if isinstance(node, ast.ClassDef) and any(
                "web." in ast.unparse(base) or "aiohttp" in ast.unparse(base)
                for base in node.bases
            ):
                private = [item.name for item in node.body
                           if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                           and item.name.startswith("_") and not item.name.startswith("__")]
                assert not private, (
                    f"{path.relative_to(ROOT)}: {node.name} overrides {private} of "
                    "an aiohttp class")


def test_only_the_store_imports_redis_and_only_the_policy_package_imports_casbin():
    """The dependency boundaries of the layout: one place talks to Redis, one to Casbin."""
    owners = {"redis": ("gateway/store",), "casbin": ("gateway/policy/",)}
    for path in (ROOT / "gateway").rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in owners:
                    assert relative.startswith(owners[top]), f"{relative} imports {module}"
