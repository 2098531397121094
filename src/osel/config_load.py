"""Loading osel's configuration: the YAML file, environment overrides, validation.

``load_settings()`` reads one YAML file (``-c``, then ``$OSEL_CONFIG``, then
``./osel.yaml``, then ``/etc/osel/osel.yaml``; none found: defaults), applies
``OSEL_<SECTION>__<KEY>`` environment overrides and validates everything at
once. Every problem is reported with its dotted key, its source (file:line or
environment variable) and what to do; ``ConfigError`` carries them all. The
model itself is in `osel.config`.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from osel.config import (
    MASK,
    ConfigError,
    FileProblem,
    Loc,
    PolicySettings,
    Problem,
    QualysSettings,
    ScanSettings,
    Settings,
    Sink,
    fatal_problem,
    mask_if_url,
    models_in,
    variant_tag,
)

ENV_PREFIX = "OSEL_"
CONFIG_ENV = "OSEL_CONFIG"
DEFAULT_PATHS: tuple[str, ...] = ("osel.yaml", "/etc/osel/osel.yaml")


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model holding the keys at ``loc`` (pydantic loc, union tags included)."""
    model: type[BaseModel] = Settings
    options: dict[str, type[BaseModel]] = {}
    for part in loc:
        if isinstance(part, int):
            continue
        if options:
            found = options.get(part)
            if found is None:
                return None
            model, options = found, {}
            continue
        info = model.model_fields.get(part)
        subs = models_in(info.annotation) if info is not None else []
        if not subs:
            return None
        if len(subs) == 1:
            model = subs[0]
        else:
            options = {variant_tag(s): s for s in subs}
    return None if options else model


def _all_fields() -> list[tuple[str, FieldInfo]]:
    out: list[tuple[str, FieldInfo]] = []
    todo: list[type[BaseModel]] = [Settings]
    while todo:
        model = todo.pop()
        for name, info in model.model_fields.items():
            out.append((name, info))
            todo.extend(models_in(info.annotation))
    return out


def _is_secret_type(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return True
    return any(_is_secret_type(a) for a in typing.get_args(annotation))


def _is_stringish(annotation: Any) -> bool:
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, SecretStr)):
        return True
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (
            _is_stringish(args[0])
            if typing.get_origin(annotation) is Annotated
            else all(_is_stringish(a) for a in args)
        )
    return False


_FIELDS = _all_fields()
_SECRET_NAMES = frozenset(n for n, f in _FIELDS if _is_secret_type(f.annotation))
_STRING_NAMES = frozenset(n for n, _ in _FIELDS) - {
    n for n, f in _FIELDS if not _is_stringish(f.annotation)
}


# --------------------------------------------------------------------------- rendering problems


_MISSING = object()


def _secret_loc(loc: Loc) -> bool:
    name = loc[-1] if loc else ""
    if not isinstance(name, str):
        return False
    model = _model_at(loc[:-1])
    info = model.model_fields.get(name) if model is not None else None
    if info is not None:
        return _is_secret_type(info.annotation)
    lowered = name.lower()
    return any(w in lowered for w in ("pass", "secret", "token", "cred", "url", "key")) or bool(
        difflib.get_close_matches(lowered, list(_SECRET_NAMES), n=1, cutoff=0.6)
    )


def _redact_raw(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if _secret_loc((str(k),)) else _redact_raw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_raw(v) for v in value]
    if isinstance(value, str):
        return mask_if_url(value)
    return value


def _show(loc: Loc, value: Any) -> str:
    if isinstance(value, FileProblem):
        value = value.path
    if value is _MISSING:
        return ""
    if _secret_loc(loc):
        return repr(MASK)
    text = "null" if value is None else repr(_redact_raw(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _key(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _clean(loc: Loc) -> Loc:
    """Drop discriminator tags pydantic puts after a list index."""
    tags = {variant_tag(m) for m in models_in(Sink)}
    return tuple(
        p for i, p in enumerate(loc) if not (i and isinstance(loc[i - 1], int) and p in tags)
    )


def _did_you_mean(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    valid = list(model.model_fields) if model is not None else list(Settings.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key; valid keys: " + ", ".join(valid)


def _message(err: Any, loc: Loc) -> str:
    kind, msg = err["type"], str(err["msg"])
    tags = ", ".join(variant_tag(m) for m in models_in(Sink))
    fixed = {
        "extra_forbidden": _did_you_mean(loc) if loc else "unknown key",
        "missing": "required key is missing",
        "model_type": "expected a mapping (key: value)",
        "model_attributes_type": "expected a mapping (key: value)",
        "dict_type": "expected a mapping (key: value)",
        "list_type": "expected a list, e.g. [a, b]",
        "union_tag_invalid": f"unknown sink type; expected one of {tags}",
        "union_tag_not_found": f"missing 'type'; expected one of {tags}",
    }
    if kind in fixed:
        return fixed[kind]
    return msg.removeprefix("Value error, ").replace("Input should be ", "must be ", 1)


@dataclass(frozen=True)
class _Issue:
    loc: Loc
    value: str
    message: str


def _walk(data: Any, parts: Loc) -> Any:
    for part in parts:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _issues(exc: ValidationError, prefix: Loc) -> list[_Issue]:
    out: list[_Issue] = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        if err["type"] == "osel_config":
            for parts, message in err["ctx"]["problems"]:
                full = loc + tuple(parts)
                out.append(_Issue(_clean(full), _show(full, _walk(err["input"], parts)), message))
            continue
        value = _MISSING if err["type"] == "missing" else err["input"]
        out.append(_Issue(_clean(loc), _show(loc, value), _message(err, loc)))
    return out


# --------------------------------------------------------------------------- loading


@dataclass
class _Sources:
    file: str | None
    lines: dict[Loc, int] = field(default_factory=dict)
    env: dict[Loc, str] = field(default_factory=dict)

    def of(self, loc: Loc) -> str:
        for n in range(len(loc), 0, -1):
            prefix = loc[:n]
            if prefix in self.env:
                return self.env[prefix]
            if prefix in self.lines:
                return f"{self.file}:{self.lines[prefix]}"
            below = [name for path, name in self.env.items() if path[:n] == prefix]
            if below:
                return below[0]
        return self.file or "defaults"

    def problem(self, issue: _Issue) -> Problem:
        return Problem(_key(issue.loc), issue.value, issue.message, self.of(issue.loc))


def find_config_file(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The file load_settings would read: path, $OSEL_CONFIG, ./osel.yaml,
    /etc/osel/osel.yaml; None when none of the defaults exists. An explicitly named
    file (path or $OSEL_CONFIG) is returned even when it does not exist."""
    env = os.environ if env is None else env
    if path is not None:
        return os.fspath(path)
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV]
    return next((p for p in DEFAULT_PATHS if Path(p).is_file()), None)


def line_map(node: yaml.Node, path: Loc, lines: dict[Loc, int], issues: list[_Issue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            sub = (*path, key.value)
            if key.value in seen:
                issues.append(_Issue(sub, "", "duplicate key; the later value would silently win"))
            seen.add(key.value)
            lines[sub] = key.start_mark.line + 1
            line_map(value, sub, lines, issues)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            line_map(item, (*path, index), lines, issues)


def _read_yaml(path: str, sources: _Sources) -> tuple[dict[str, Any], list[_Issue]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise fatal_problem(
            f"cannot read configuration file: {reason}; "
            "pass an existing, readable file with -c or $OSEL_CONFIG",
            path,
        ) from None
    node, data = yaml_document(text, path, ConfigError)
    if data is None or node is None:
        return {}, []
    if not isinstance(data, dict):
        raise fatal_problem(
            "the top level must be a mapping of sections (amqp:, openstack:, scope:, ...)",
            f"{path}:1",
        )
    issues: list[_Issue] = []
    line_map(node, (), sources.lines, issues)
    return data, issues


def yaml_document(
    text: str, path: str, error: type[ConfigError] = ConfigError
) -> tuple[yaml.Node | None, Any]:
    """One YAML document as data, with its node tree (where each key is, for the line
    numbers of problems); a syntax error raises `error` with one problem that says where."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise error([yaml_problem(path, exc)]) from None
    finally:
        loader.dispose()
    return node, data


def yaml_problem(path: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    what = " ".join(
        str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p
    )
    return Problem("", "", f"YAML syntax error: {what or 'cannot parse'}", where)


def _env_value(key: str, text: str) -> Any:
    """Secrets and string keys verbatim (null/~/empty -> None); others as YAML flow values."""
    if key in _SECRET_NAMES:
        return text or None
    if key in _STRING_NAMES:
        return None if text.strip() in ("", "null", "~") else text
    return yaml.safe_load(text) if text.strip() else None


def _set_path(root: dict[str, Any], path: Loc, value: Any, env_set: dict[Loc, str]) -> None:
    node: Any = root
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise LookupError(f"{_key(path[:depth])} has no entry {part}")
            if last:
                node[part] = value
            elif not isinstance(node[part], dict | list):
                node[part] = {}
            node = node[part]
            continue
        key = str(part)
        if last:
            node[key] = value
            _drop_file_sibling(node, path[:-1], key, env_set)
        elif not isinstance(node.get(key), dict | list):
            node[key] = {}
        node = node[key]


def _drop_file_sibling(
    node: dict[str, Any], parent: Loc, key: str, env_set: dict[Loc, str]
) -> None:
    """An override of X replaces the file's X_file (and the other way round)."""
    sibling = key.removesuffix("_file") if key.endswith("_file") else f"{key}_file"
    if sibling in node and (*parent, sibling) not in env_set:
        del node[sibling]


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], sources: _Sources) -> list[Problem]:
    problems: list[Problem] = []
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        path: Loc = tuple(int(p) if p.isdigit() else p for p in parts)
        if not all(parts):
            problems.append(
                Problem(
                    _key(path),
                    "",
                    "malformed override; use OSEL_<SECTION>__<KEY>[__<KEY>...]",
                    name,
                )
            )
            continue
        try:
            value = _env_value(parts[-1], env[name])
            _set_path(raw, path, value, sources.env)
        except (yaml.YAMLError, LookupError) as exc:
            reason = "not a YAML value" if isinstance(exc, yaml.YAMLError) else str(exc)
            problems.append(
                Problem(
                    _key(path), _show(path, env[name]), f"cannot apply override: {reason}", name
                )
            )
            continue
        sources.env[path] = name
        sources.lines = {k: v for k, v in sources.lines.items() if k[: len(path)] != path}
    return problems


def _validate_sections(raw: dict[str, Any]) -> tuple[dict[str, BaseModel], list[_Issue]]:
    issues: list[_Issue] = []
    sections: dict[str, BaseModel] = {}
    for name, value in raw.items():
        if name not in Settings.model_fields:
            close = difflib.get_close_matches(str(name), list(Settings.model_fields), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "valid: " + ", ".join(Settings.model_fields)
            )
            issues.append(
                _Issue((str(name),), _show((str(name),), value), f"unknown section; {hint}")
            )
    for name, info in Settings.model_fields.items():
        model = models_in(info.annotation)[0]
        try:
            sections[name] = model.model_validate({} if raw.get(name) is None else raw[name])
        except ValidationError as exc:
            issues.extend(_issues(exc, (name,)))
    return sections, issues


def _policy_problems(sections: dict[str, BaseModel], sources: _Sources) -> list[Problem]:
    """Every problem of the policy file policy.file names, with the policy's own keys."""
    section = sections.get("policy")
    if not isinstance(section, PolicySettings) or section.file is None:
        return []
    from osel.policy import PolicyError, load_policy

    try:
        load_policy(section.file)
    except PolicyError as exc:
        if not Path(section.file).is_file():
            return [
                Problem(
                    "policy.file",
                    repr(section.file),
                    "the policy file does not exist; give the path of a policy (docs/policy.md) "
                    "or null for none",
                    sources.of(("policy", "file")),
                )
            ]
        return [
            Problem(
                f"policy.file: {p.key}" if p.key else "policy.file",
                p.value,
                p.message,
                p.source,
            )
            for p in exc.problems
        ]
    return []


def _cross_issues(sections: dict[str, BaseModel]) -> list[_Issue]:
    scan, qualys = sections.get("scan"), sections.get("qualys")
    if not isinstance(scan, ScanSettings) or not isinstance(qualys, QualysSettings):
        return []
    if scan.backend != "qualys":
        return []
    issues: list[_Issue] = []
    if qualys.username is None:
        issues.append(
            _Issue(
                ("qualys", "username"),
                "",
                "required when scan.backend is qualys; "
                "set qualys.username (or use scan.backend: dry-run)",
            )
        )
    if qualys.password is None:
        issues.append(
            _Issue(
                ("qualys", "password"),
                "",
                "required when scan.backend is qualys; "
                "set qualys.password_file (or qualys.password)",
            )
        )
    return issues


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load, override from the environment and validate; raise ConfigError with every
    problem. ``env`` defaults to os.environ."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    if file is not None and not Path(file).exists():
        raise fatal_problem(
            "configuration file not found; pass an existing file "
            "with -c, or unset OSEL_CONFIG to use the defaults",
            file,
        )
    sources = _Sources(file)
    raw, issues = _read_yaml(file, sources) if file is not None else ({}, [])
    problems = _apply_env(raw, env, sources)
    sections, more = _validate_sections(raw)
    issues += more + _cross_issues(sections)
    problems += [sources.problem(i) for i in issues] + _policy_problems(sections, sources)
    if problems:
        raise ConfigError(problems)
    return Settings.model_validate(sections)
