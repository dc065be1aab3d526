"""``keygate policy check`` on hostile policy files: a hundred thousand lines, a deep
inheritance chain or lattice, input built to defeat the analysis' pruning, and bytes
no policy holds. Each lints in bounded time and memory, and every problem is a finding
with a bounded message, never a traceback or a raw control character on a terminal.

Time limits here are generous guards against a blowup (quadratic or exponential work
takes minutes to hours at these sizes), not timing checks.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.management.common import MANAGEMENT_PERMISSIONS
from gateway.policy import Policy
from gateway.policy.files import MAX_FILE_BYTES, parse_policy_files
from gateway.policy.lint import RouteUse, lint_policy
from gateway.policy.sync import files_fingerprint

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL = PROJECT_ROOT / "model.conf"
GUARD_SECONDS = 60
MESSAGE_LIMIT = 400  # no finding's message grows with the input


def write(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(parents=True)
    for name, content in files.items():
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
    return directory


def timed_lint(directory: Path, **kwargs) -> tuple[float, object]:
    started = time.monotonic()
    report = lint_policy(MODEL, directory, **kwargs)
    return time.monotonic() - started, report


# -- size -----------------------------------------------------------------------------
def test_a_hundred_thousand_lines_lint_in_bounded_time(tmp_path):
    lines = [f"p, r{i % 100}, *, res{i}/*, read, allow" for i in range(50_000)]
    lines += [f"p, r{i % 100}, acct{i % 7}, res{i}/x, re*, deny" for i in range(50_000)]
    lines += ["p, r1, *, res1/*, read, allow", "p, r2, *, res2/eu, read, allow",
              "p, r2, *, res2/*, *, deny"]
    directory = write(tmp_path, {"big.csv": "\n".join(lines) + "\n"})
    seconds, report = timed_lint(directory, routes=[RouteUse("o", "res1", ("read",))],
                                 management=MANAGEMENT_PERMISSIONS)
    assert seconds < GUARD_SECONDS
    codes = [f.code for f in report.findings]
    assert codes.count("duplicate-line") == 1
    assert codes.count("shadowed-allow") == 2  # res2/* and res2/eu, by the res2/* deny
    assert "analysis-limit" not in codes
    assert report.lines == 100_002 and report.version is not None


def test_a_deep_inheritance_chain_lints_and_loads_without_recursion(tmp_path):
    depth = 20_000
    lines = [f"g, c{i + 1}, c{i}" for i in range(depth)]
    lines += [f"p, c{i}, *, res{i}, read, allow" for i in range(0, depth, 2)]
    lines += ["p, c0, *, last*, *, deny", f"p, c{depth}, *, last-one, read, allow"]
    directory = write(tmp_path, {"chain.csv": "\n".join(lines) + "\n"})
    seconds, report = timed_lint(directory)
    assert seconds < GUARD_SECONDS
    shadowed = [f for f in report.findings if f.code == "shadowed-allow"]
    assert [f.line for f in shadowed] == [len(lines)]  # 20,000 inheritances up
    assert "'c0'" in shadowed[0].message
    parse_policy_files(directory)  # the loader's cycle search keeps its own stack


def test_a_cycle_through_a_long_chain_is_one_finding_with_a_bounded_chain(tmp_path):
    depth = 20_000
    lines = [f"g, c{i + 1}, c{i}" for i in range(depth)] + [f"g, c0, c{depth}"]
    directory = write(tmp_path, {"cycle.csv": "\n".join(lines) + "\n"})
    seconds, report = timed_lint(directory)
    assert seconds < GUARD_SECONDS
    cycles = [f for f in report.findings if f.code == "inheritance-cycle"]
    assert len(cycles) == 1 and len(cycles[0].message) < MESSAGE_LIMIT
    assert "more)" in cycles[0].message
    with pytest.raises(ConfigError, match="cycle"):
        parse_policy_files(directory)


def test_a_lattice_with_exponentially_many_paths_is_linear(tmp_path):
    """40 layers of two roles, each inheriting both of the layer above: 2**40 paths
    from the bottom to the top, which a search along paths would walk."""
    lines = ["p, l0a, *, orders, *, deny", "p, l0b, *, orders, read, allow"]
    for layer in range(1, 41):
        for me in "ab":
            lines += [f"g, l{layer}{me}, l{layer - 1}a", f"g, l{layer}{me}, l{layer - 1}b"]
    lines += ["p, l40a, *, orders, read, allow"]
    directory = write(tmp_path, {"lattice.csv": "\n".join(lines) + "\n"})
    started = time.monotonic()
    parse_policy_files(directory)
    seconds, report = timed_lint(directory)
    assert time.monotonic() - started < GUARD_SECONDS
    assert [(f.line, f.code) for f in report.findings] == [(len(lines), "shadowed-allow")]


def test_input_built_to_defeat_the_pruning_stops_at_the_budget_and_says_so(tmp_path):
    """Denies at every prefix of a long name, none covering the allows' action: every
    allow looks at every entry. Past the budget the rest is left unchecked, counted."""
    name = "a" * 100
    lines = [f"p, r, *, {name[:n]}*, x{n}, deny" for n in range(1, 100)]
    lines += [f"p, r, *, {name}, read{i}, allow" for i in range(2_000)]
    directory = write(tmp_path, {"dense.csv": "\n".join(lines) + "\n"})
    seconds, report = timed_lint(directory, budget=20_000)
    assert seconds < GUARD_SECONDS
    limit = [f for f in report.findings if f.code == "analysis-limit"]
    assert len(limit) == 1 and limit[0].severity == "warning"
    assert "20000 lookups" in limit[0].message and "allow lines were not checked" in \
        limit[0].message
    unchecked = int(limit[0].message.split(": ")[1].split()[0])
    assert 0 < unchecked < 2_000
    _, full = timed_lint(directory)  # the default budget is plenty for this
    assert "analysis-limit" not in [f.code for f in full.findings]


# -- bytes no policy holds ------------------------------------------------------------
class Ran:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[Callable[..., Ran]]:
    import os

    for name in list(os.environ):
        if name.startswith("KEYGATE_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*argv: str) -> Ran:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, err
        return Ran(code, out, err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)


WEIRD: dict[str, str | bytes] = {
    "a-latin1.csv": b"p, r, *, orders, read, allow\n# caf\xe9\np, r, *, x, read, allow\n",
    "b-nul.csv": "p, r\x00oot, *, orders, read, allow\n",
    "c-escape.csv": "p, r, *, orders\x1b[2J\x1b]0;pwned\x07, read, allow\n",
    "d-bom.csv": "\ufeffp, r, *, orders, read, allow\n",
    "e-hidden.csv": "# a note\u2028p, evil, *, *, *, allow\np, r, *, orders, read, allow\n",
    "f-formfeed.csv": "p, r, *, x, read, allow\x0cp, s, *, y, read, allow\np, bad role, *, x\n",
    "g-huge.csv": "p, r, *, " + "o" * 1_000_000 + ", read, allow\n",
    "h-long-value.csv": "p, " + "r" * 3_000 + ", *, orders, read, allow\n",
    "i-cr.csv": "p, r, *, orders, read, allow\rp, r, *, orders, write, allow\rx, y\r",
    "j-bidi.csv": "p, r, *, orders\u202e, read, allow\n",
    "k-quote.csv": 'p, "r, *, orders, read, allow\n',
    "\x1b[31mred.csv": "p, r, *, orders, read, maybe\n",
}


def test_weird_bytes_give_findings_not_tracebacks(cli, tmp_path):
    directory = write(tmp_path, WEIRD)
    ran = cli("policy", "check", str(directory))
    assert ran.code == 1
    errors = [line for line in ran.out.splitlines() if ": error: " in line]
    assert [line.split(": ")[0] + " " + line.split(": ")[2] for line in errors] == [
        "'\\x1b[31mred.csv':1 bad-effect",
        "a-latin1.csv:2 unreadable",
        "b-nul.csv:1 syntax",
        "c-escape.csv:1 syntax",
        "d-bom.csv:1 syntax",
        "f-formfeed.csv:1 syntax",   # a form feed does not end a line
        "f-formfeed.csv:2 syntax",
        "g-huge.csv:1 syntax",
        "h-long-value.csv:1 syntax",
        "i-cr.csv:3 syntax",         # CR alone does end one
        "j-bidi.csv:1 syntax",
        "k-quote.csv:1 syntax",
    ]
    # nothing a file holds reaches the terminal raw, and no message grows with the input
    assert all(c.isprintable() for c in ran.out.replace("\n", ""))
    assert max(len(line) for line in ran.out.splitlines()) < MESSAGE_LIMIT
    # the rule after U+2028 is part of the comment
    assert "evil" not in ran.out


def test_the_loader_reads_weird_bytes_as_the_linter_does(tmp_path):
    hidden = write(tmp_path / "hidden", {"e.csv": WEIRD["e-hidden.csv"]})
    assert "evil" not in Policy.load(MODEL, hidden).roles
    for name in ("g-huge.csv", "k-quote.csv", "a-latin1.csv", "f-formfeed.csv"):
        directory = write(tmp_path / name, {name: WEIRD[name]})
        with pytest.raises(ConfigError) as info:
            parse_policy_files(directory)
        assert name in str(info.value) and len(str(info.value)) < MESSAGE_LIMIT


# -- a policy pull request links a file to a device ------------------------------------
# Git stores symlinks: `policies/x.csv -> /dev/zero` in a pull request is read by CI's
# `keygate policy check/test` before anyone reviews it. Run apart, under a 1 GiB
# address-space limit, so that a regression fails this test rather than the runner.
def _keygate_limited(*argv: str) -> subprocess.CompletedProcess[str]:
    limit = 1024 * 1024 * 1024

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    return subprocess.run([sys.executable, "-m", "gateway", *argv], env=environ,
                          capture_output=True, text=True, timeout=60, check=False,
                          preexec_fn=limited)


@pytest.mark.parametrize("where", ["zz-linked.csv", "tests/zz-linked.toml"])
def test_a_policy_or_table_file_linked_to_a_device_is_refused_unread(tmp_path, where):
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    (policies / where).symlink_to("/dev/zero")
    command = ("policy", "check", str(policies)) if where.endswith(".csv") else (
        "policy", "test", "--policies", str(policies))
    ran = _keygate_limited(*command)
    assert "Traceback" not in ran.stderr and "MemoryError" not in ran.stderr, ran.stderr[-600:]
    assert ran.returncode in (1, 2), ran.stderr
    said = ran.stdout + ran.stderr
    assert "not a regular file" in said or "outside the policy directory" in said, said


# -- a policy pull request links a file out of the directory ---------------------------
SECRET = "kgsecret-0123456789abcdefghijklmnopqrstuvwxyz"


def _linked_out(tmp_path: Path) -> Path:
    """The shipped policies plus ``zz-leak.csv``, a link to a secret outside them."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    (policies / "zz-leak.csv").symlink_to(secret)
    return policies


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_policy_file_linked_out_of_the_directory_is_refused_unread(cli, tmp_path, output):
    """Its first line would be quoted by the syntax error that names it: the server
    secret, a private key, in CI's log or a refused reload's answer."""
    policies = _linked_out(tmp_path)
    ran = cli("policy", "check", "--format", output, str(policies))
    assert ran.code == 1
    assert SECRET[:12] not in ran.out + ran.err
    assert "zz-leak.csv" in ran.out and "outside the policy directory" in ran.out
    with pytest.raises(ConfigError) as info:
        Policy.load(MODEL, policies)
    assert "outside the policy directory" in str(info.value)
    assert SECRET[:12] not in str(info.value)


def test_links_within_the_directory_load_as_a_configmap_volume_mounts_them(tmp_path):
    """Kubernetes mounts a ConfigMap as ``name -> ..data/name``, ``..data`` a link to
    a hidden directory of the same volume: those links stay inside and are read."""
    policies = tmp_path / "policies"
    hidden = policies / "..2026_12_03_12_00_00.123456789"
    shutil.copytree(PROJECT_ROOT / "policies", hidden, ignore=shutil.ignore_patterns("tests"))
    (policies / "..data").symlink_to(hidden.name)
    for path in sorted(hidden.glob("*.csv")):
        (policies / path.name).symlink_to(Path("..data") / path.name)
    assert Policy.load(MODEL, policies).version == \
        Policy.load(MODEL, PROJECT_ROOT / "policies").version


def test_the_file_watch_reads_the_files_as_the_loader_does(tmp_path):
    """The watch's fingerprint neither reads a file linked out of the directory nor
    one too large for the loader (a sparse 17 MiB file here; /dev/zero would never
    end): it is unreadable (None), as the reload it would trigger says."""
    policies = _linked_out(tmp_path)
    assert files_fingerprint(MODEL, policies) is None
    (policies / "zz-leak.csv").unlink()
    assert files_fingerprint(MODEL, policies) is not None
    with (policies / "zz-large.csv").open("wb") as large:
        large.truncate(MAX_FILE_BYTES + 1)
    assert files_fingerprint(MODEL, policies) is None


@pytest.mark.parametrize("linked", ["table", "directory"])
def test_a_default_table_linked_out_of_the_directory_is_refused_unread(cli, tmp_path, linked):
    """``policy test`` without FILE reads DIR/tests/*.toml, which come with the policy
    files (a pull request): one linked out of the directory, or a ``tests`` directory
    linked elsewhere, would have its values printed (a row's name is, in every FAIL
    line). Refused unread, as a policy file linked out is."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "leak.toml").write_text(
        f'[[case]]\nname = "{SECRET}"\nroles = ["owner"]\naccount = "acme"\n'
        'resource = "orders"\naction = "read"\nexpect = "deny"\n')
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    if linked == "table":
        (policies / "tests" / "leak.toml").symlink_to(outside / "leak.toml")
    else:
        shutil.rmtree(policies / "tests")
        (policies / "tests").symlink_to(outside)
    ran = cli("policy", "test", "--policies", str(policies))
    assert ran.code == 2, ran.out + ran.err
    assert SECRET[:12] not in ran.out + ran.err
    assert "tests/leak.toml" in ran.err and "outside the policy directory" in ran.err
    # named on the command line, the same table is the user's choice and is read
    ran = cli("policy", "test", "--policies", str(policies), str(outside / "leak.toml"))
    assert ran.code == 1 and SECRET in ran.out
