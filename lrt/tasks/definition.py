"""Task definitions: ``tasks/NAME.yaml`` declares one task and its typed parameters.

A task is what a user submits by name with parameter values (``lrt submit``,
:func:`lrt.tasks.submit`, a UWS ``POST /uws/NAME``), instead of writing a
command and free-form payload.  The definition is validated when it is loaded,
with errors naming the file and line (as token configs are, :mod:`lrt.config`),
and every value is checked against its parameter before a token is written.
Format: docs/tasks.md.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import ConfigError, LrtError
from ..states import DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS
from ..validation import Lines, Validator, load_yaml, suggest

#: parameter types (``type:`` of a parameter)
TYPES = ("int", "float", "bool", "str", "enum", "file")
TOP_KEYS = ("task", "version", "description", "command", "sandbox", "parameters", "outputs",
            "resources", "retry", "test", "priority")
PARAM_KEYS = ("type", "default", "min", "max", "choices", "pattern", "required", "multiple",
              "unit", "help", "staging")
OUTPUT_KEYS = ("glob", "required", "help")
RESOURCE_KEYS = ("cores", "memory", "walltime", "expected_duration")
RETRY_KEYS = ("max_attempts", "backoff", "payload_errors")
TEST_KEYS = ("parameters", "inputs", "expect")
EXPECT_KEYS = ("exit_code", "outputs", "max_wall")
STAGING = ("tape", "disk")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class ParameterError(LrtError):
    """A parameter value that its task does not accept; nothing has been written.

    ``param`` names the parameter (None for an unknown one, listed in the message).
    """

    exit_code = 2

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


class TaskNotFound(LrtError):
    exit_code = 2


def parse_duration(value: Any) -> Optional[float]:
    """``90``, ``"30s"``, ``"15m"``, ``"4h"``, ``"1d"`` as seconds (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (want seconds or e.g. 30s, 15m, 4h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class Parameter:
    """One typed parameter of a task."""

    name: str
    type: str
    default: Any = None
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[List[Any]] = None
    pattern: Optional[str] = None
    required: bool = True
    multiple: bool = False
    unit: Optional[str] = None
    help: Optional[str] = None
    staging: Optional[str] = None

    @property
    def has_default(self) -> bool:
        return self.default is not None

    def describe(self) -> str:
        """The type in one phrase: ``int 1..120 s``, ``enum diagonal|scalar``, ``file (multiple)``."""
        t = self.type
        if self.type == "enum" and self.choices:
            t += " " + "|".join(str(c) for c in self.choices)
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else _num(self.min)
            hi = "" if self.max is None else _num(self.max)
            t += f" {lo}..{hi}"
        if self.pattern:
            t += f" /{self.pattern}/"
        if self.unit:
            t += f" [{self.unit}]"
        if self.multiple:
            t += " (multiple)"
        if self.staging:
            t += f" (staged from {self.staging})"
        return t

    # -- values --------------------------------------------------------------------------------
    def check(self, value: Any, text: bool = False) -> Any:
        """``value`` converted and checked; ``text=True`` parses strings (command line, forms).

        A multiple parameter takes a list (or, as text, a comma-separated string);
        raises :class:`ParameterError` naming this parameter.
        """
        if self.multiple:
            if text and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not value:
                raise ParameterError(f"parameter {self.name!r} takes a non-empty list of "
                                     f"{self.type} values, not {value!r}", self.name)
            return [self._one(v, text) for v in value]
        if isinstance(value, (list, tuple)):
            raise ParameterError(f"parameter {self.name!r} takes one {self.type} value, "
                                 f"not a list", self.name)
        return self._one(value, text)

    def _bad(self, value: Any, why: str) -> ParameterError:
        return ParameterError(f"parameter {self.name!r}: {value!r} {why}", self.name)

    def _one(self, v: Any, text: bool) -> Any:
        t = self.type
        if t == "int":
            if text and isinstance(v, str):
                try:
                    v = int(v.strip())
                except ValueError:
                    raise self._bad(v, "is not an integer") from None
            if isinstance(v, bool) or not isinstance(v, int):
                raise self._bad(v, "is not an integer")
            self._range(v)
        elif t == "float":
            if text and isinstance(v, str):
                try:
                    v = float(v.strip())
                except ValueError:
                    raise self._bad(v, "is not a number") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self._bad(v, "is not a (finite) number")
            v = float(v)
            self._range(v)
        elif t == "bool":
            if text and isinstance(v, str):
                low = v.strip().lower()
                if low in _TRUE:
                    v = True
                elif low in _FALSE:
                    v = False
            if not isinstance(v, bool):
                raise self._bad(v, "is not true or false")
        elif t == "enum":
            choices = self.choices or []
            if text and isinstance(v, str):
                for c in choices:
                    if str(c) == v:
                        v = c
                        break
            if v not in choices or isinstance(v, bool) != any(isinstance(c, bool) and c == v for c in choices):
                raise self._bad(v, f"is not one of {', '.join(str(c) for c in choices)}"
                                   f"{suggest(str(v), [str(c) for c in choices])}")
        elif t == "str":
            if not isinstance(v, str):
                raise self._bad(v, "is not a string")
            if self.pattern and not re.search(self.pattern, v):
                raise self._bad(v, f"does not match the pattern {self.pattern}")
        elif t == "file":
            if not isinstance(v, str) or not _URL_RE.match(v) or any(c.isspace() for c in v):
                raise self._bad(v, "is not a URL (e.g. file:///data/x.tar, srm://..., root://...)")
            name = urllib.parse.urlsplit(v).path.rstrip("/").rsplit("/", 1)[-1]
            if not name:
                raise self._bad(v, "names no file")
            if self.pattern and not re.search(self.pattern, v):
                raise self._bad(v, f"does not match the pattern {self.pattern}")
        return v

    def _range(self, v: float) -> None:
        if self.min is not None and v < self.min:
            raise self._bad(v, f"is below the minimum {_num(self.min)}{_unit(self.unit)}")
        if self.max is not None and v > self.max:
            raise self._bad(v, f"is above the maximum {_num(self.max)}{_unit(self.unit)}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _unit(u: Optional[str]) -> str:
    return f" {u}" if u else ""


@dataclass
class OutputSpec:
    name: str
    glob: str
    required: bool = False
    help: Optional[str] = None


@dataclass
class Task:
    """A validated task definition.  Build it with :func:`load_task`."""

    name: str
    version: str
    path: Path
    sha256: str
    command: List[str]
    parameters: Dict[str, Parameter]
    description: Optional[str] = None
    sandbox: Optional[Path] = None
    outputs: Dict[str, OutputSpec] = field(default_factory=dict)
    dest: Optional[str] = None
    resources: Dict[str, Any] = field(default_factory=dict)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: float = float(DEFAULT_BACKOFF)
    payload_errors: bool = False
    priority: int = 0
    test: Optional[Dict[str, Any]] = None

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def ref(self) -> Dict[str, Any]:
        """What a token records about its task (name, version, sha256 of the definition file)."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @property
    def timeout(self) -> Optional[float]:
        return self.resources.get("walltime")

    @property
    def expected_duration(self) -> Optional[float]:
        return self.resources.get("expected_duration")

    def check(self, params: Mapping[str, Any], text: bool = False,
              partial: bool = False) -> Dict[str, Any]:
        """Every parameter's value: given ones checked, the rest from defaults.

        Raises :class:`ParameterError` for an unknown parameter, a bad value, or
        a required parameter without value (``partial=True`` skips that last check:
        for tokens whose files come from a file list).
        """
        unknown = [k for k in params if k not in self.parameters]
        if unknown:
            k = unknown[0]
            raise ParameterError(f"task {self.name} has no parameter {k!r}"
                                 f"{suggest(k, list(self.parameters))}; parameters: "
                                 f"{', '.join(self.parameters) or 'none'}")
        out: Dict[str, Any] = {}
        for name, p in self.parameters.items():
            if name in params and params[name] is not None:
                out[name] = p.check(params[name], text=text)
            elif p.has_default:
                out[name] = p.default
            elif p.required and not partial:
                raise ParameterError(f"task {self.name}: parameter {name!r} ({p.describe()}) "
                                     "is required", name)
        return out


def task_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_task(path: Union[str, Path]) -> Task:
    """Read and validate one task definition; :class:`ConfigError` names the file and line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("task definition not found", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read task definition: {exc}", path=str(p)) from None
    data, lines = load_yaml(text, str(p), "a task definition")
    return _TaskValidator(p, lines).build(data, hashlib.sha256(raw).hexdigest())


class _TaskValidator(Validator):
    """A task definition's sections; the checks shared with token configs come from the base."""

    def __init__(self, path: Path, lines: Lines):
        super().__init__(str(path), lines)
        self.file = path

    def count(self, v: Any, *key: str, integer: bool = False, minimum: Optional[float] = None) -> Any:
        """A number as written (not converted), no null."""
        return self.number(v, key, minimum=minimum, allow_none=False, integer=integer, as_float=False,
                           finite=False)

    def duration(self, v: Any, *key: str) -> Optional[float]:
        try:
            d = parse_duration(v)
        except ValueError as exc:
            raise self.fail(f"{'.'.join(key)}: {exc}", *key) from None
        if d is not None and d < 0:
            raise self.fail(f"{'.'.join(key)} must not be negative", *key)
        return d

    def build(self, d: Dict[str, Any], sha256: str) -> Task:
        self.unknown(d, TOP_KEYS)
        name = d.get("task")
        if name is None:
            raise self.fail("missing required key 'task' (the task's name: its token type and "
                            "its UWS job list /uws/NAME)")
        if not isinstance(name, str) or not _TASK_RE.match(name):
            raise self.fail(f"task must be a word of letters, digits, '_', '.', '-', not {name!r}", "task")
        if name != self.file.stem:
            raise self.fail(f"task {name!r} is defined in {self.file.name}: the file must be "
                            f"named {name}.yaml", "task")
        version = d.get("version")
        if version is None or isinstance(version, bool) or not isinstance(version, (int, float, str)):
            raise self.fail("missing or bad 'version' (a number or string; tokens record it)", "version")
        command = self.command(d.get("command"))
        desc = d.get("description")
        if desc is not None and not isinstance(desc, str):
            raise self.fail("description must be a string", "description")

        sandbox = None
        sb = d.get("sandbox")
        if sb is not None:
            sb = self.mapping(sb, "sandbox")
            self.unknown(sb, ("path",), "sandbox")
            if not isinstance(sb.get("path"), str):
                raise self.fail("sandbox.path must name a folder (relative to the task file)",
                                "sandbox", "path")
            sandbox = self.folder(sb["path"], self.file.parent, "sandbox", "path")

        params: Dict[str, Parameter] = {}
        for pname, spec in self.mapping(d.get("parameters"), "parameters").items():
            params[str(pname)] = self.parameter(pname, spec)

        outputs: Dict[str, OutputSpec] = {}
        dest = None
        for oname, spec in self.mapping(d.get("outputs"), "outputs").items():
            if oname == "dest":
                if not isinstance(spec, str) or not _URL_RE.match(spec):
                    raise self.fail("outputs.dest must be a URL prefix (e.g. "
                                    "'file:///data/results/{task}/{job}')", "outputs", "dest")
                bad = set(re.findall(r"\{([^}]*)\}", spec)) - {"task", "job", "version"}
                if bad:
                    raise self.fail(f"outputs.dest: unknown placeholder {{{sorted(bad)[0]}}} "
                                    "(known: {task}, {job}, {version})", "outputs", "dest")
                dest = spec
                continue
            if not isinstance(oname, str) or not _NAME_RE.match(oname):
                raise self.fail(f"output name {oname!r} must be an identifier", "outputs", str(oname))
            spec = self.mapping(spec, "outputs", oname)
            self.unknown(spec, OUTPUT_KEYS, "outputs", oname)
            glob = spec.get("glob")
            if not isinstance(glob, str) or not glob:
                raise self.fail(f"outputs.{oname}.glob must be a file pattern like '*.h5'",
                                "outputs", oname)
            req = spec.get("required", False)
            if not isinstance(req, bool):
                raise self.fail(f"outputs.{oname}.required must be true or false", "outputs", oname)
            outputs[oname] = OutputSpec(oname, glob, req, spec.get("help"))

        res_in = self.mapping(d.get("resources"), "resources")
        self.unknown(res_in, RESOURCE_KEYS, "resources")
        resources: Dict[str, Any] = {}
        if "cores" in res_in:
            resources["cores"] = self.count(res_in["cores"], "resources", "cores", integer=True, minimum=1)
        if "memory" in res_in:
            mem = res_in["memory"]
            if not isinstance(mem, (str, int)) or isinstance(mem, bool):
                raise self.fail("resources.memory must be e.g. 16G or a number of MB", "resources", "memory")
            resources["memory"] = mem
        for k in ("walltime", "expected_duration"):
            if k in res_in:
                resources[k] = self.duration(res_in[k], "resources", k)

        retry = self.mapping(d.get("retry"), "retry")
        self.unknown(retry, RETRY_KEYS, "retry")
        max_attempts = self.count(retry.get("max_attempts", DEFAULT_MAX_ATTEMPTS), "retry", "max_attempts",
                                   integer=True, minimum=1)
        backoff = self.duration(retry.get("backoff", DEFAULT_BACKOFF), "retry", "backoff")
        pe = self.boolean(retry.get("payload_errors", False), "retry", "payload_errors", show=False)
        priority = self.count(d.get("priority", 0), "priority", integer=True)

        task = Task(name=name, version=str(version), path=self.file.resolve(), sha256=sha256,
                    command=list(command), parameters=params, description=desc, sandbox=sandbox,
                    outputs=outputs, dest=dest, resources=resources, max_attempts=max_attempts,
                    backoff=float(backoff or 0), payload_errors=pe, priority=priority)
        task.test = self.test(d.get("test"), task)
        return task

    def parameter(self, pname: Any, spec: Any) -> Parameter:
        if not isinstance(pname, str) or not _NAME_RE.match(pname):
            raise self.fail(f"parameter name {pname!r} must be an identifier (letters, digits, '_'; "
                            "the payload sees it as LRT_P_<NAME>)", "parameters", str(pname))
        key = ("parameters", pname)
        spec = self.mapping(spec, *key)
        self.unknown(spec, PARAM_KEYS, *key)
        t = spec.get("type")
        if t not in TYPES:
            raise self.fail(f"parameters.{pname}.type must be one of {', '.join(TYPES)}, not {t!r}"
                            f"{suggest(str(t), TYPES)}", *key, "type")
        p = Parameter(name=pname, type=t)
        for k in ("min", "max"):
            if k in spec:
                if t not in ("int", "float"):
                    raise self.fail(f"parameters.{pname}.{k} applies to int and float only", *key, k)
                setattr(p, k, self.count(spec[k], *key, k))
        if p.min is not None and p.max is not None and p.min > p.max:
            raise self.fail(f"parameters.{pname}: min {p.min} is above max {p.max}", *key, "min")
        if t == "enum":
            ch = spec.get("choices")
            if not isinstance(ch, list) or not ch or not all(isinstance(c, (str, int, float)) for c in ch):
                raise self.fail(f"parameters.{pname}.choices must be a non-empty list of values",
                                *key, "choices")
            p.choices = list(ch)
        elif "choices" in spec:
            raise self.fail(f"parameters.{pname}.choices needs type: enum", *key, "choices")
        if "pattern" in spec:
            if t not in ("str", "file"):
                raise self.fail(f"parameters.{pname}.pattern applies to str and file only", *key, "pattern")
            try:
                re.compile(spec["pattern"])
            except (re.error, TypeError) as exc:
                raise self.fail(f"parameters.{pname}.pattern is not a regular expression: {exc}",
                                *key, "pattern") from None
            p.pattern = spec["pattern"]
        for k in ("required", "multiple"):
            if k in spec:
                if not isinstance(spec[k], bool):
                    raise self.fail(f"parameters.{pname}.{k} must be true or false", *key, k)
                setattr(p, k, spec[k])
        for k in ("unit", "help"):
            if k in spec:
                if not isinstance(spec[k], str):
                    raise self.fail(f"parameters.{pname}.{k} must be a string", *key, k)
                setattr(p, k, spec[k])
        if "staging" in spec:
            if t != "file" or spec["staging"] not in STAGING:
                raise self.fail(f"parameters.{pname}.staging is for file parameters: "
                                f"{' or '.join(STAGING)}", *key, "staging")
            p.staging = spec["staging"]
        if "default" in spec and spec["default"] is not None:
            try:
                p.default = p.check(spec["default"])
            except ParameterError as exc:
                raise self.fail(f"default: {exc}", *key, "default") from None
        return p

    def test(self, t: Any, task: Task) -> Optional[Dict[str, Any]]:
        if t is None:
            return None
        t = self.mapping(t, "test")
        self.unknown(t, TEST_KEYS, "test")
        params = self.mapping(t.get("parameters"), "test", "parameters")
        inputs = t.get("inputs") or []
        if not isinstance(inputs, list) or not all(isinstance(u, str) for u in inputs):
            raise self.fail("test.inputs must be a list of URLs", "test", "inputs")
        inputs = [u.replace("{task_dir}", str(task.dir)) for u in inputs]
        expect = self.mapping(t.get("expect"), "test", "expect")
        self.unknown(expect, EXPECT_KEYS, "test", "expect")
        ec = expect.get("exit_code", 0)
        self.count(ec, "test", "expect", "exit_code", integer=True)
        outs = self.mapping(expect.get("outputs"), "test", "expect", "outputs")
        for oname, spec in outs.items():
            if oname not in task.outputs:
                raise self.fail(f"test.expect.outputs: the task has no output {oname!r}"
                                f"{suggest(str(oname), list(task.outputs))}",
                                "test", "expect", "outputs", str(oname))
            spec = self.mapping(spec, "test", "expect", "outputs", oname)
            self.unknown(spec, ("min_count", "max_count"), "test", "expect", "outputs", oname)
        max_wall = self.duration(expect.get("max_wall", 600), "test", "expect", "max_wall")
        return {"parameters": dict(params), "inputs": inputs,
                "expect": {"exit_code": ec, "outputs": outs, "max_wall": max_wall}}


# -- the task folder ------------------------------------------------------------------------------
def tasks_dir(folder: Union[str, "os.PathLike[str]", None] = None) -> Path:
    """The task folder: ``folder``, else ``$LRT_TASKS``, else ``./tasks``."""
    if folder:
        return Path(folder).expanduser()
    env = os.environ.get("LRT_TASKS")
    return Path(env).expanduser() if env else Path("tasks")


class TaskRegistry:
    """The tasks of one folder (``NAME.yaml`` each), loaded and validated on demand."""

    def __init__(self, folder: Union[str, "os.PathLike[str]", None] = None):
        self.folder = tasks_dir(folder)
        self._cache: Dict[str, Tuple[float, Task]] = {}

    def names(self) -> List[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.yaml") if p.is_file())

    def get(self, name: str) -> Task:
        if not _TASK_RE.match(name or ""):
            raise TaskNotFound(f"bad task name {name!r}")
        path = self.folder / f"{name}.yaml"
        if not path.is_file():
            names = self.names()
            raise TaskNotFound(f"no task {name!r} in {self.folder}{suggest(name, names)} "
                               f"(tasks: {', '.join(names) or 'none'})")
        mtime = path.stat().st_mtime
        hit = self._cache.get(name)
        if hit and hit[0] == mtime:
            return hit[1]
        task = load_task(path)
        self._cache[name] = (mtime, task)
        return task

    def all(self) -> List[Task]:
        return [self.get(n) for n in self.names()]
