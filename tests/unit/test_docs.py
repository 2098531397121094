"""The documentation stays true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from osel.cli import main
from osel.config import Settings
from osel.config_doc import README_BEGIN, README_END, render, render_readme_table

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECTIONS = set(Settings.model_fields)


def test_configuration_reference_matches_the_model():
    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: python -m osel.config_doc --write"
    )


def test_readme_configuration_table_matches_the_model():
    """README.md holds the table generated from the model, between its markers."""
    readme = (ROOT / "README.md").read_text()
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    assert 0 <= begin < end, f"README.md lacks the markers {README_BEGIN} ... {README_END}"

    assert readme[begin : end + len(README_END)] == render_readme_table(), (
        "README.md's configuration table is stale: python -m osel.config_doc --write"
    )


def test_readme_table_names_every_section_and_no_secret_file_twin():
    table = render_readme_table()

    assert {s for s in SECTIONS if f"| `{s}." not in table} == set()
    assert "`qualys.password_file`" not in table
    assert "`qualys.password`" in table


SECRET_FILES = ("qualys.pw", "hec.token", "aodh.token", "transport_url", "keystone.pw")


def secret_files(directory: Path) -> None:
    """The secret files examples refer to under /etc/osel/, placed in a temp dir."""
    for name in SECRET_FILES:
        (directory / name).write_text(
            "rabbit://u:example@mq:5672/\n" if name == "transport_url" else "example-secret\n"
        )


def check_config(text: str, directory: Path, name: str = "osel.yaml") -> None:
    """`osel check-config` accepts the text (its /etc/osel/ secret files made up)."""
    secret_files(directory)
    path = directory / name
    path.write_text(text.replace("/etc/osel/", f"{directory}/"))
    result = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "configuration OK" in result.output


def fenced_blocks() -> list[tuple[str, str, str]]:
    """(document, info string, text) of every fenced code block of README.md and docs/."""
    blocks = []
    for doc in DOCS:
        for match in re.finditer(r"^```([^\n]*)\n(.*?)^```", doc.read_text(), re.S | re.M):
            blocks.append((doc.name, match.group(1).strip(), match.group(2)))
    return blocks


def is_osel_config(text: str) -> bool:
    """YAML whose top-level keys are all sections of osel's configuration."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and bool(data) and set(map(str, data)) <= SECTIONS


def yaml_blocks() -> list[tuple[str, str]]:
    return [(doc, text) for doc, info, text in fenced_blocks() if info == "yaml osel"]


@pytest.mark.parametrize(("doc", "text"), yaml_blocks())
def test_every_configuration_example_in_the_docs_is_valid(doc, text, tmp_path):
    assert is_osel_config(text), f"a `yaml osel` block of {doc} is not an osel configuration"
    check_config(text, tmp_path)


def test_every_configuration_example_in_the_docs_is_marked_for_validation():
    """A block that looks like osel's configuration is tagged `yaml osel`, so it is tested."""
    untagged = [
        (doc, text.splitlines()[0])
        for doc, info, text in fenced_blocks()
        if info != "yaml osel" and is_osel_config(text)
    ]

    assert untagged == [], "tag these blocks ```yaml osel so that a test validates them"


def osel_examples() -> list[Path]:
    return [p for p in sorted((ROOT / "examples").glob("*.yaml")) if is_osel_config(p.read_text())]


def test_examples_directory_holds_configurations():
    assert {"osel-dry-run.yaml", "osel-production.yaml", "osel-full.yaml"} <= {
        p.name for p in osel_examples()
    }


@pytest.mark.parametrize("example", osel_examples(), ids=lambda p: p.name)
def test_examples_directory_configs_pass_check_config(example, tmp_path):
    check_config(example.read_text(), tmp_path, example.name)
