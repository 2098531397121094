"""Every error and warning osel logs is explained in docs/troubleshooting.md.

The messages are found in the source (calls of `.error`, `.warning`,
`.exception` and `.critical` on a logger, with a literal format string). Each
is matched on its stable prefix: the literal text of the format string, from
its start up to about 40 characters of it, with any text standing for each
placeholder (`%s`, `%d`, `%.0f`, f-string fields). docs/troubleshooting.md
quotes the messages with `<...>` for the placeholders, which matches.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SOURCE = ROOT / "src" / "osel"
DOC = ROOT / "docs" / "troubleshooting.md"
LEVELS = {"error", "warning", "exception", "critical"}
PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdrifgxe%]")
PREFIX_CHARS = 40  # literal characters of a message that its entry must quote
MIN_CHARS = 8  # messages with less literal text than this cannot be matched
GAP = r".{1,80}?"  # what a placeholder may stand for in the document


def _is_logger(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name.lower().lstrip("_") in {"log", "logger"}


def _format_text(node: ast.expr) -> str | None:
    """The format string with each placeholder as \\0, or None when it is not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return PLACEHOLDER.sub("\0", node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(
            PLACEHOLDER.sub("\0", v.value)
            if isinstance(v, ast.Constant) and isinstance(v.value, str)
            else "\0"
            for v in node.values
        )
    return None


def stable_prefix(fmt: str) -> list[str]:
    """The literal runs of a format string (placeholders as \\0) that make its prefix."""
    runs = [" ".join(run.split()) for run in fmt.split("\0")]
    while runs and not runs[0]:
        runs.pop(0)
    prefix: list[str] = []
    size = 0
    for run in filter(None, runs):
        if size + len(run) > PREFIX_CHARS and prefix:
            words = run[: max(PREFIX_CHARS - size, 0)].rsplit(" ", 1)[0] if " " in run else ""
            if words.strip():
                prefix.append(words)
            break
        prefix.append(run)
        size += len(run)
    return prefix


def pattern(prefix: list[str]) -> re.Pattern[str]:
    return re.compile(GAP.join(re.escape(run.strip()) for run in prefix))


def logged_messages() -> list[tuple[str, tuple[str, ...]]]:
    """(where, stable prefix) of every error and warning message in src/osel."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and _is_logger(node.func.value)
                and node.args
            ):
                continue
            fmt = _format_text(node.args[0])
            prefix = stable_prefix(fmt) if fmt is not None else []
            if len("".join(prefix).strip(" ;:,.()")) >= MIN_CHARS:  # "%s: %s" says nothing
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", tuple(prefix)))
    return found


def test_the_source_has_messages_to_document():
    """The scan finds the messages (a guard against the test passing vacuously)."""
    assert len(logged_messages()) > 30


def _id(value: object) -> str:
    return "<>".join(value) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize(("where", "prefix"), logged_messages(), ids=_id)
def test_every_logged_error_and_warning_is_in_troubleshooting(where, prefix):
    doc = " ".join(DOC.read_text().split())

    assert pattern(list(prefix)).search(doc), (
        f"{where}: docs/troubleshooting.md does not quote the message starting "
        f"{'<...>'.join(prefix)!r} (<...>: any text)"
    )


@pytest.mark.parametrize(
    ("fmt", "prefix"),
    [
        pytest.param("scan batch %s could not be launched: %s",
                     ["scan batch", "could not be launched:"], id="placeholder-inside"),
        pytest.param("%s down: %s; retrying with backoff (cap %gs)%s",
                     ["down:", "; retrying with backoff (cap", "s)"], id="placeholder-first"),
        pytest.param("re-sync skipped: %s", ["re-sync skipped:"], id="short"),
        pytest.param(
            "first start and Neutron does not answer (%s): the inventory fills as changes arrive",
            ["first start and Neutron does not answer ("], id="long-enough",
        ),
    ],
)  # fmt: skip
def test_stable_prefix(fmt, prefix):
    assert stable_prefix(PLACEHOLDER.sub("\0", fmt)) == prefix


def test_pattern_lets_a_placeholder_stand_for_any_text():
    prefix = stable_prefix(PLACEHOLDER.sub("\0", "scan %s (batch %s) ended: %s"))

    assert pattern(prefix).search("`scan <reference> (batch <id>) ended: <error>`")
