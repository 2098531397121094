"""The configuration reference, rendered from the config model (docs/configuration.md)."""

from __future__ import annotations

from osel.config import settings_table

HEADER = """# Configuration reference

Generated from osel's configuration model by `python -m osel.config_doc > docs/configuration.md`;
a test fails when this file and the model drift apart.

Every key can be overridden by an environment variable `OSEL_<SECTION>__<KEY>`
(for example `OSEL_AMQP__PREFETCH=100`, `OSEL_SCOPE__INCLUDE_CIDRS="[203.0.113.0/24]"`).
Every secret `X` can be given as `X_file`, a path whose content is the secret.
`osel check-config` validates a file and prints every problem by key.

| key | type | default | meaning |
|---|---|---|---|
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    rows = [
        f"| `{key}` | {_cell(kind)} | `{_cell(default)}` | {_cell(description)} |"
        for key, kind, default, description in settings_table()
    ]
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
