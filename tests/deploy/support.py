"""Helpers of the deployment checks: where the files are, the dev tools, and small readers of the
Dockerfile, .dockerignore and Compose files (what `docker build` and `docker compose config` would
see, for the parts this project uses, since this machine has no Docker engine or Compose plugin)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
COMPOSE_SCALE = REPO / "deploy" / "compose.scale.yml"
NGINX_CONF = REPO / "deploy" / "nginx" / "verydeep.conf"
K8S = REPO / "deploy" / "k8s"
DOCKER_DIR = REPO / "deploy" / "docker"

DEV_EXTRA_HINT = "it comes with the project's dev extra: pip install -e '.[dev]'"


def dev_tool(name: str) -> Path:
    """A command-line tool installed by the dev extra: next to this interpreter (a venv's bin/,
    which need not be on PATH), else on PATH. Missing means a broken dev install: fail."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found; {DEV_EXTRA_HINT}")
    return Path(found)


def dev_module(name: str) -> Any:
    """A Python package of the dev extra; missing means a broken dev install: fail."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        pytest.fail(f"Python package {name} not found; {DEV_EXTRA_HINT}")


# --- Dockerfile --------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # continuation lines joined
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of this stage (later ones win)."""
        values: dict[str, str] = {}
        for inst in self.all("ENV"):
            for token in shlex.split(inst.args):
                key, sep, value = token.partition("=")
                assert sep, f"line {inst.line}: use ENV key=value, not the legacy form"
                values[key] = value
        return values


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """``(global ARG defaults, stages)``. Comments and parser directives are dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comment lines inside a continuation
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continuation line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for inst in instructions:
        if inst.keyword == "FROM":
            words = [w for w in inst.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert inst.keyword == "ARG", f"line {inst.line}: only ARG may precede FROM"
            key, _, default = inst.args.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(inst)
    return global_args, stages


def substitute(value: str, variables: dict[str, str]) -> str:
    """``${NAME}`` and ``$NAME`` from ``variables`` (as build arguments are substituted)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], value)


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT, CMD or HEALTHCHECK CMD."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


# --- .dockerignore -----------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: Go's filepath.Match plus ``**`` for any number of folders."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":  # Go's classes ([a-z], [^/]) read the same as Python's
            end = pattern.index("]", i + 1)
            out.append(pattern[i : end + 1])
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


class DockerIgnore:
    """The patterns of a .dockerignore file, matched the way `docker build` matches them: the last
    pattern that matches a path or any of its parent folders decides; ``!`` re-includes."""

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line[1:].strip() if negate else line
            line = line.strip("/")
            self.patterns.append((negate, _glob_regex(line)))

    def excluded(self, relative: str) -> bool:
        parts = relative.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negate, regex in self.patterns:
            if any(regex.fullmatch(p) for p in prefixes):
                result = not negate
        return result

    def context(self, root: Path) -> list[str]:
        """Relative paths of the files `docker build root` would send."""
        return sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not self.excluded(p.relative_to(root).as_posix())
        )


def copy_build_context(root: Path, dest: Path) -> list[str]:
    """Copy what `docker build` would send from ``root`` into ``dest``; the relative paths."""
    files = DockerIgnore((root / ".dockerignore").read_text()).context(root)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return files


# --- Compose -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reset:
    """``!reset``: the attribute is removed from the merged model."""

    value: Any


@dataclass(frozen=True)
class Override:
    """``!override``: the value replaces the previous one instead of merging with it."""

    value: Any


def load_compose(path: Path) -> dict[str, Any]:
    """A Compose file as `docker compose` parses it, with its ``!reset`` and ``!override`` tags
    kept as :class:`Reset` and :class:`Override`."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(cls: type) -> Any:
        def make(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
            if isinstance(node, yaml.MappingNode):
                return cls(loader.construct_mapping(node, deep=True))
            if isinstance(node, yaml.SequenceNode):
                return cls(loader.construct_sequence(node, deep=True))
            return cls(loader.construct_scalar(node))

        return make

    Loader.add_constructor("!reset", construct(Reset))
    Loader.add_constructor("!override", construct(Override))
    data = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def strip_tags(value: Any) -> Any:
    """The file as a plain document (the tags' own values), for validating one file alone."""
    if isinstance(value, Reset | Override):
        return strip_tags(value.value)
    if isinstance(value, dict):
        return {k: strip_tags(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_tags(v) for v in value]
    return value


# Sequences that replace rather than append (compose-spec merge rules), by their key.
_REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


def _volume_target(volume: Any) -> Any:
    if isinstance(volume, dict):
        return volume.get("target")
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _merge(base: Any, override: Any, key: str | None) -> Any:
    if isinstance(override, Override):
        return strip_tags(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            if isinstance(v, Reset):
                merged.pop(k, None)
            elif k in merged:
                merged[k] = _merge(merged[k], v, k)
            else:
                merged[k] = strip_tags(v)
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED_SEQUENCES:
        if key == "volumes":  # service volumes merge by mount target
            by_target = {_volume_target(v): v for v in base}
            by_target.update({_volume_target(v): v for v in strip_tags(override)})
            return list(by_target.values())
        merged_list = list(base)
        merged_list += [v for v in strip_tags(override) if v not in merged_list]
        return merged_list
    return strip_tags(override)


def merge_compose(*paths: Path) -> dict[str, Any]:
    """``docker compose -f A -f B ...``: the files merged by the Compose specification's rules
    for the attributes used here (mappings merge, scalars replace, sequences append except
    command/entrypoint/healthcheck test, volumes merge by target, ``!reset``, ``!override``)."""
    merged: dict[str, Any] = strip_tags(load_compose(paths[0]))
    for path in paths[1:]:
        merged = _merge(merged, load_compose(path), None)
    return merged


_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<plain>[A-Za-z_]\w*)"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?err}``, ``${VAR:+alt}``, ``$$``) with ``env`` as the shell and .env."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return arg if unset else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise ValueError(f"required variable {name} is missing: {arg}")
            return current
        if op in (":+", "+"):
            set_ = current is not None and (op == "+" or current != "")
            return arg if set_ else ""
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema as check-jsonschema vendors it."""
    from importlib.resources import files

    try:
        ref = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    except ModuleNotFoundError:
        pytest.fail(f"check-jsonschema is not installed; {DEV_EXTRA_HINT}")
    return json.loads(ref.read_text())


def compose_errors(document: dict[str, Any]) -> list[str]:
    """Messages of every violation of the Compose Specification's schema (empty: valid)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(
        compose_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(document)
    ]


GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")


def go_seconds(duration: str) -> float:
    """A Go duration string such as ``1m30s`` in seconds."""
    assert GO_DURATION.fullmatch(duration), f"not a Go duration: {duration!r}"
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(
        float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", duration)
    )
