"""The README is the user's contract: keep the parts generated from code in step."""

import argparse
import re
from pathlib import Path

from gateway.cli import build_parser
from gateway.settings import SETTINGS, reference_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_settings_table_is_generated_from_the_settings_table():
    assert reference_markdown() in README, "run `keygate settings` and paste it into the README"


def test_every_setting_is_in_the_readme_and_the_example_config_uses_known_names():
    for setting in SETTINGS:
        assert f"`{setting.name}`" in README
    known = {s.name for s in SETTINGS}
    for config in (ROOT / "deploy").glob("*.toml"):
        top_level = re.findall(r"^([a-z_]+)\s*=", config.read_text().split("[[routes]]")[0], re.M)
        assert set(top_level) <= known, config


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]'" in README and "pip install -q -e '.[test]'" in ci
    assert "python -m pytest" in README and "python -m pytest" in ci


def _commands(parser: argparse.ArgumentParser, prefix: str = "keygate") -> list[str]:
    """Every command the parser accepts, as typed: ``keygate keys create``, …"""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return [prefix]
    found = [] if subparsers[0].required else [prefix]
    for name, sub in subparsers[0].choices.items():
        found += _commands(sub, f"{prefix} {name}")
    return found


def test_the_command_line_reference_names_every_command():
    reference = README.split("\n## Command line\n", 1)[1].split("```", 2)[1].splitlines()
    for command in _commands(build_parser()):
        parent, name = command.rsplit(" ", 1)
        assert any(
            line.startswith(parent + " ")
            and re.search(rf"(^|[ |]){re.escape(name)}($|[ |])", line[len(parent) + 1:])
            for line in reference
        ), f"`{command}` is missing from the README's command line reference"


def test_every_shell_variable_a_printed_command_uses_is_set_before():
    """Commands work as printed, in order: no ``$SESSION`` that nothing printed sets."""
    known = {"PWD"}  # the shell's own
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        known |= set(re.findall(r"(?:^|[\s;&(])([A-Z_][A-Z0-9_]*)=", block, re.M))
        used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", block))
        assert used <= known, f"{sorted(used - known)} used before a printed command sets it"


def test_the_readme_tries_nginx_where_the_shipped_config_listens():
    config = (ROOT / "deploy" / "nginx" / "keygate.conf").read_text()
    (listen,) = re.findall(r"^\s*listen (\d+);", config, re.M)
    (decision,) = re.findall(r"server (127\.0\.0\.1:\d+);\s+# keygate's decision_listen", config)
    assert f"nginx then listens on port {listen}" in README
    assert f"curl -i http://127.0.0.1:{listen}/orders/42" in README
    assert f"KEYGATE_DECISION_LISTEN={decision}" in README
