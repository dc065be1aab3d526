"""The README is the user's contract: keep the parts generated from code in step."""

import re
from pathlib import Path

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
