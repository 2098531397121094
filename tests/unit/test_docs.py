"""The documentation stays true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from osel.config import load_settings
from osel.config_doc import render

ROOT = Path(__file__).parents[2]


def test_configuration_reference_matches_the_model():
    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: python -m osel.config_doc > docs/configuration.md"
    )


SECRET_FILES = ("qualys.pw", "hec.token", "aodh.token", "transport_url")


def secret_files(directory: Path) -> None:
    """The secret files examples refer to under /etc/osel/, placed in a temp dir."""
    for name in SECRET_FILES:
        (directory / name).write_text(
            "rabbit://u:example@mq:5672/\n" if name == "transport_url" else "example-secret\n"
        )


def yaml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in re.finditer(r"```yaml osel\n(.*?)```", doc.read_text(), re.S):
            blocks.append((doc.name, match.group(1)))
    return blocks


@pytest.mark.parametrize(("doc", "text"), yaml_blocks())
def test_every_configuration_example_in_the_docs_is_valid(doc, text, tmp_path):
    assert isinstance(yaml.safe_load(text), dict)
    secret_files(tmp_path)
    path = tmp_path / "osel.yaml"
    path.write_text(text.replace("/etc/osel/", f"{tmp_path}/"))
    load_settings(path)


def test_examples_directory_configs_are_valid(tmp_path):
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    for example in examples:
        text = example.read_text().replace("/etc/osel/", f"{tmp_path}/")
        secret_files(tmp_path)
        path = tmp_path / example.name
        path.write_text(text)
        load_settings(path)
