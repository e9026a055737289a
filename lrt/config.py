"""Token configs: the YAML that says which tokens to create (format: docs/configs.md).

A token config describes a *set* of tokens: common fields (type, command,
priority, ...), optionally a file list cut into chunks of N subbands (LOFAR)
and/or a parameter sweep (cartesian product of value lists).  Every token's
``_id`` comes from a template filled with its own values, so the same config
always yields the same ids: creating twice creates nothing new.

Everything is validated before anything is written (:meth:`TokenConfig.load`
and :meth:`TokenConfig.check_ids`): malformed YAML, unknown keys (with a
"did you mean"), wrong types, a missing file list, bad links (all line numbers
in one message), unknown template placeholders and id collisions are all
:class:`~lrt.errors.ConfigError` naming the file and, where known, the line.

Token generation is a generator: the file list is re-read for each pass and
tokens are produced one at a time, so memory does not grow with the number
of tokens (the id-collision check keeps 8 bytes per token).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .errors import ConfigError
from .states import DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS
from .validation import Lines, Validator, load_yaml, suggest
from .filelist import (Chunk, Link, SrmListError, SubbandIndex, build_index,
                              group_by_lines, group_by_subband, line_ranges, parse_link,
                              read_entries)

#: top-level keys of a token config, with what they are (used in error messages)
TOP_KEYS = {
    "tokenset": "name of this set of tokens (default: the config file's name)",
    "type": "token type; pilots claim per type (required)",
    "id": "token id template, e.g. '{type}_{obsid}_SB{sb_start:03d}'",
    "priority": "integer, higher is claimed first (default 0)",
    "max_attempts": "claims before a token is quarantined as failed (default 3)",
    "retry": "{backoff: seconds, payload_errors: bool}",
    "timeout": "payload timeout in seconds (default none)",
    "expected_duration": "expected payload run time in seconds (default none)",
    "command": "payload argument vector, e.g. ['python3', 'run.py']",
    "sandbox": "{sha256: hex, url: optional}",
    "outputs": "{dest: url-prefix, globs: [patterns]}",
    "needs_staging": "bool: tokens start in state staging instead of todo",
    "payload": "static parameters for every token",
    "files": "{list: path, per_token: N, group_by: subband|lines, subbands: [first, last], "
             "one_observation: bool}",
    "sweep": "{name: [values...] or {range: [start, stop, step]}}",
    "after": "what the tokens wait for: {tokenset: NAME} | {id: TEMPLATE} | {ids: [...]}, "
             "with on: ok|any|notok (docs/tokens.md)",
    "inputs": "{from_parent: output|NAME}: a parent's outputs become the inputs",
    "task": "a registered task (docs/tasks.md): every token's parameters are checked against it",
}
FILES_KEYS = ("list", "per_token", "group_by", "subbands", "one_observation")
RETRY_KEYS = ("backoff", "payload_errors")
SANDBOX_KEYS = ("sha256", "url", "path")
OUTPUTS_KEYS = ("dest", "globs")

#: template variables every token has
COMMON_VARS = ("type", "tokenset", "index")
#: template and payload variables of tokens made from a file list
SUBBAND_VARS = ("obsid", "sb_start", "sb_end", "missing", "chunk")
LINES_VARS = ("chunk", "first_line")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_BAD = re.compile(r"[\x00-\x1f\x7f]")


#: bad file-list lines whose reason one error message shows (the count is always complete)
MAX_BAD_LINES = 20


def bad_lines_message(bad: Mapping[int, str], cap: int = MAX_BAD_LINES) -> str:
    """Every bad line with its reason in one message (up to ``cap``, then a count),
    so a file list is fixed in one go, not one error at a time."""
    nums = sorted(bad)
    out = [f"{len(nums)} bad link(s) on line(s) {line_ranges(nums)}:"]
    out += [f"  line {n}: {bad[n]}" for n in nums[:cap]]
    if len(nums) > cap:
        out.append(f"  ... and {len(nums) - cap} more")
    return "\n".join(out)


@dataclass
class Item:
    """One token to be, before it becomes a document: id, template variables, payload, chunk."""

    id: str
    index: int
    values: Dict[str, Any]
    payload: Dict[str, Any]
    chunk: Optional[Chunk] = None


@dataclass
class FilesSpec:
    list: Path
    per_token: int
    group_by: str
    first: Optional[int]
    last: Optional[int]
    one_observation: bool
    #: filled by the validation pass
    entries: int = 0
    index: Optional[SubbandIndex] = None
    chunks: int = 0


@dataclass
class TokenConfig:
    """A validated token config.  Build it with :meth:`load` or :meth:`from_text`."""

    path: str
    tokenset: str
    type: str
    id_template: str
    priority: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry: Dict[str, Any] = field(default_factory=lambda: {"backoff": float(DEFAULT_BACKOFF),
                                                           "payload_errors": False})
    timeout: Optional[float] = None
    expected_duration: Optional[float] = None
    command: List[str] = field(default_factory=list)
    sandbox: Optional[Dict[str, Any]] = None
    outputs: Optional[Dict[str, Any]] = None
    needs_staging: bool = False
    payload: Dict[str, Any] = field(default_factory=dict)
    files: Optional[FilesSpec] = None
    sweep: Dict[str, Sequence[Any]] = field(default_factory=dict)
    #: dependencies (lrt.deps.spec.AfterSpec) and parent-to-child inputs (InputsSpec)
    after: Any = None
    inputs: Any = None
    #: the :class:`lrt.tasks.Task` named by ``task:`` (tokens are checked against it)
    task: Any = None

    # -- loading ------------------------------------------------------------------
    @classmethod
    def load(cls, path: Union[str, Path], files: Optional[Union[str, Path]] = None) -> "TokenConfig":
        """Read and validate ``path``; ``files`` overrides ``files.list`` (relative to the CWD)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("token config not found", path=str(p)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read token config: {exc}", path=str(p)) from None
        return cls.from_text(text, path=str(p), base_dir=p.resolve().parent, files=files,
                             default_name=p.stem)

    @classmethod
    def from_text(cls, text: str, path: str = "<config>", base_dir: Union[str, Path, None] = None,
                  files: Optional[Union[str, Path]] = None,
                  default_name: Optional[str] = None) -> "TokenConfig":
        """Validate config ``text``; relative file lists resolve against ``base_dir``."""
        data, lines = load_yaml(text, path, "a token config")
        v = _Validator(path, lines)
        cfg = v.build(data, Path(base_dir) if base_dir else Path.cwd(), files, default_name)
        cfg._scan_files(lines)
        return cfg

    # -- the file list pass ----------------------------------------------------------
    def _scan_files(self, lines: Lines) -> None:
        """First streaming pass over the file list: validate every link, index subbands."""
        f = self.files
        if f is None:
            return
        if not f.list.is_file():
            what = "is not a regular file" if f.list.exists() else "not found"
            raise ConfigError(f"file list {f.list} {what}", path=self.path,
                              line=lines("files", "list"))
        bad: Dict[int, str] = {}
        links_n = 0

        def links() -> Iterator[Link]:
            nonlocal links_n
            for n, text in self._entries(f.list):
                try:
                    link = parse_link(text, n)
                except ValueError as exc:
                    bad[n] = str(exc)
                    continue
                links_n += 1
                yield link

        try:
            if f.group_by == "subband":
                index = build_index(links(), f.per_token, f.first, f.last)
            else:
                for _ in links():
                    pass
                index = None
        except SrmListError as exc:
            for n, why in exc.lines.items():
                bad.setdefault(n, why)
            index = None
        if bad:
            raise ConfigError(bad_lines_message(bad), path=str(f.list))
        if links_n == 0:
            raise ConfigError("file list holds no links", path=str(f.list))
        f.entries = links_n
        if index is not None:
            if f.one_observation and len(index.ranges) != 1:
                raise ConfigError(f"one_observation is set but the list holds {len(index.ranges)} "
                                  f"observations: {', '.join(sorted(index.ranges))}", path=str(f.list))
            f.index = index
            f.chunks = len(index.counts)
        else:
            f.chunks = math.ceil(links_n / f.per_token)

    def _entries(self, path: Path) -> Iterator[Tuple[int, str]]:
        try:
            yield from read_entries(path)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"file list is not UTF-8 text ({exc.reason} at byte {exc.start})",
                              path=str(path)) from None
        except OSError as exc:
            raise ConfigError(f"cannot read file list: {exc.strerror}", path=str(path)) from None

    def chunks(self) -> Iterator[Optional[Chunk]]:
        """The file list's chunks, streamed (one ``None`` when there is no file list)."""
        f = self.files
        if f is None:
            yield None
            return
        links = (parse_link(text, n) for n, text in self._entries(f.list))
        try:
            if f.group_by == "subband":
                assert f.index is not None
                yield from group_by_subband(links, f.index)
            else:
                yield from group_by_lines(links, f.per_token)
        except (ValueError, KeyError) as exc:  # validated before: the file changed since
            raise ConfigError(f"file list changed while it was being read ({exc}); "
                              "tokens created so far are kept, run again to add the rest",
                              path=str(f.list)) from None

    # -- tokens ---------------------------------------------------------------------------
    def __len__(self) -> int:
        n = self.files.chunks if self.files else 1
        for values in self.sweep.values():
            n *= len(values)
        return n

    def _walk(self) -> Iterator[Tuple[Optional[Chunk], Dict[str, Any], Dict[str, Any], Tuple[Any, ...]]]:
        """(chunk, payload base, template base, sweep combination) in token order."""
        names = list(self.sweep)
        lists = [self.sweep[k] for k in names]
        fixed = {"type": self.type, "tokenset": self.tokenset}
        for chunk in self.chunks():
            base = dict(self.payload)
            if chunk is not None:
                if self.files and self.files.group_by == "subband":
                    base.update(obsid=chunk.obsid, sb_start=chunk.sb_start, sb_end=chunk.sb_end,
                                missing=chunk.missing, chunk=chunk.index)
                else:
                    base.update(chunk=chunk.index, first_line=chunk.links[0].line)
            tbase = dict(base)
            tbase.update(fixed)
            for combo in _product(lists):
                yield chunk, base, tbase, combo

    def items(self) -> Iterator[Item]:
        """Every token of this config in a fixed order: per chunk, the sweep's product."""
        names = list(self.sweep)
        for index, (chunk, base, tbase, combo) in enumerate(self._walk()):
            payload = dict(base)
            payload.update(zip(names, combo))
            values = dict(tbase)
            values.update(zip(names, combo))
            values["index"] = index
            yield Item(id=self.render_id(values), index=index, values=values,
                       payload=payload, chunk=chunk)

    def iter_ids(self) -> Iterator[str]:
        """Just the ids, in token order (cheaper than :meth:`items`)."""
        names = list(self.sweep)
        for index, (_, _, tbase, combo) in enumerate(self._walk()):
            values = dict(tbase)
            values.update(zip(names, combo))
            values["index"] = index
            yield self.render_id(values)

    def render_id(self, values: Mapping[str, Any]) -> str:
        try:
            tid = self.id_template.format_map(values)
        except KeyError as exc:
            raise ConfigError(f"id template {self.id_template!r}: unknown placeholder "
                              f"{{{exc.args[0]}}}{suggest(str(exc.args[0]), list(values))}; "
                              f"available: {', '.join(sorted(values))}", path=self.path) from None
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            raise ConfigError(f"id template {self.id_template!r} cannot be filled with "
                              f"{_brief(values)}: {exc}", path=self.path) from None
        if not tid or tid.startswith("_") or _ID_BAD.search(tid) or len(tid) > 512:
            raise ConfigError(f"id template {self.id_template!r} gives an invalid token id {tid!r} "
                              "(must be 1-512 characters, no control characters, not starting "
                              "with '_')", path=self.path)
        return tid

    def check_ids(self) -> int:
        """Generate every id once (streaming) and refuse collisions; return the token count.

        Keeps an 8-byte hash per token in 256 buckets; hashes seen twice are
        confirmed against the real ids in a second pass, so a hash collision
        can never reject a valid config.
        """
        buckets = [array("Q") for _ in range(256)]
        n = 0
        b2b = hashlib.blake2b
        for tid in self.iter_ids():
            h = int.from_bytes(b2b(tid.encode(), digest_size=8).digest(), "big")
            buckets[h >> 56].append(h)
            n += 1
        twice = set()
        for b in buckets:
            if len(set(b)) != len(b):
                seen = set()
                for h in b:
                    if h in seen:
                        twice.add(h)
                    seen.add(h)
        if twice:
            first: Dict[str, Item] = {}
            for item in self.items():
                h = int.from_bytes(hashlib.blake2b(item.id.encode(), digest_size=8).digest(), "big")
                if h not in twice:
                    continue
                other = first.get(item.id)
                if other is not None:
                    raise ConfigError(
                        f"id collision: template {self.id_template!r} gives {item.id!r} for token "
                        f"#{other.index} ({_brief(_varying(other, self))}) and token #{item.index} "
                        f"({_brief(_varying(item, self))}); put every value that varies into the "
                        "id template", path=self.path)
                first[item.id] = item
        return n


def _varying(item: Item, cfg: TokenConfig) -> Dict[str, Any]:
    keys = list(cfg.sweep) + ([*SUBBAND_VARS[:3]] if cfg.files and cfg.files.group_by == "subband"
                              else ["chunk"] if cfg.files else [])
    return {k: item.values[k] for k in keys if k in item.values}


def _brief(values: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in values.items() if k not in ("missing",))
    return text if len(text) < 200 else text[:197] + "..."


def _product(lists: List[Sequence[Any]]) -> Iterator[Tuple[Any, ...]]:
    """itertools.product without materialising its inputs (a ``range`` of 10^6 stays lazy)."""
    if not lists:
        yield ()
        return
    if len(lists) == 1:
        for value in lists[0]:
            yield (value,)
        return
    head, rest = lists[0], lists[1:]
    for value in head:
        for tail in _product(rest):
            yield (value,) + tail


class _Validator(Validator):
    """Turns the parsed YAML into a :class:`TokenConfig`, or raises a ConfigError with a line.

    One method per section, in the order their errors are reported; the checks
    shared with task definitions come from :class:`lrt.validation.Validator`.
    """

    def json_value(self, value: Any, *key: str) -> Any:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise self.fail(f"{'.'.join(key)}: {value!r} is not a JSON value (quote dates "
                            "and other special YAML values)", *key) from None
        return value

    def build(self, d: Dict[str, Any], base: Path, files_override: Optional[Union[str, Path]],
              default_name: Optional[str]) -> TokenConfig:
        self.unknown(d, list(TOP_KEYS))
        task = self.task(d.get("task"), base) if "task" in d else None
        if task is not None:  # the task gives type, command and sandbox unless the config does
            d = dict(d)
            d.setdefault("type", task.name)
            d.setdefault("command", list(task.command))
            if task.sandbox is not None:
                d.setdefault("sandbox", {"path": str(task.sandbox)})
        ttype = self.token_type(d)
        tokenset = d.get("tokenset", default_name or ttype)
        if not isinstance(tokenset, str) or not tokenset:
            raise self.fail(f"tokenset must be a non-empty string, not {tokenset!r}", "tokenset")
        command = self.config_command(d.get("command"))
        priority = self.number(d.get("priority", 0), ("priority",), minimum=-10**9,
                               allow_none=False, integer=True)
        max_attempts = self.number(d.get("max_attempts", DEFAULT_MAX_ATTEMPTS), ("max_attempts",), minimum=1,
                                   allow_none=False, integer=True)
        retry = self.retry(d.get("retry"))
        timeout = self.number(d.get("timeout"), ("timeout",), minimum=0)
        expected = self.number(d.get("expected_duration"), ("expected_duration",), minimum=0)
        needs_staging = self.boolean(d.get("needs_staging", False), "needs_staging")
        sandbox = self.sandbox(d.get("sandbox"), base)
        outputs = self.outputs(d.get("outputs"))
        files = self.files(d.get("files"), base, files_override)
        reserved = set(COMMON_VARS)
        if files is not None:
            reserved |= set(SUBBAND_VARS if files.group_by == "subband" else LINES_VARS)
        payload = self.payload(d.get("payload"), reserved)
        sweep = self.sweep(d.get("sweep"), reserved, payload)

        from .deps.spec import parse_after, parse_inputs

        after = parse_after(d.get("after"), self.fail)
        inputs = parse_inputs(d.get("inputs"), self.fail)
        if inputs is not None and after is None:
            raise self.fail("inputs.from_parent needs an 'after' (the parents)", "inputs")
        tpl = self.id_template(d.get("id"), files, sweep)
        return TokenConfig(
            path=self.path, tokenset=tokenset, type=ttype, id_template=tpl, priority=priority,
            max_attempts=max_attempts, retry=retry, timeout=timeout, expected_duration=expected,
            command=command, sandbox=sandbox, outputs=outputs, needs_staging=needs_staging,
            payload=payload, files=files, sweep=sweep, after=after, inputs=inputs, task=task)

    # -- sections, in the order build() checks them ---------------------------------------------
    def token_type(self, d: Mapping[str, Any]) -> str:
        if "type" not in d:
            raise self.fail("missing required key 'type' (the token type pilots claim)")
        ttype = d["type"]
        if not isinstance(ttype, str) or not _TYPE_RE.match(ttype):
            raise self.fail(f"type must be a word of letters, digits, '_', '.', '-', not {ttype!r}",
                            "type")
        return ttype

    def config_command(self, command: Any) -> List[str]:
        if command is None:
            raise self.fail("missing required key 'command' (the payload's argument list, "
                            "e.g. ['python3', 'run.py'])")
        words = self.command(command, numbers=True)
        if not words[0]:
            raise self.fail("command[0] (the program) is empty", "command")
        return words

    def retry(self, retry_in: Any) -> Dict[str, Any]:
        retry_in = retry_in or {}
        if not isinstance(retry_in, dict):
            raise self.fail("retry must be a mapping {backoff: seconds, payload_errors: bool}", "retry")
        self.unknown(retry_in, RETRY_KEYS, "retry")
        backoff = self.number(retry_in.get("backoff", DEFAULT_BACKOFF), ("retry", "backoff"), allow_none=False)
        pe = self.boolean(retry_in.get("payload_errors", False), "retry", "payload_errors")
        return {"backoff": backoff, "payload_errors": pe}

    def sandbox(self, sandbox: Any, base: Path) -> Optional[Dict[str, Any]]:
        if sandbox is None:
            return None
        if not isinstance(sandbox, dict):
            raise self.fail("sandbox must be a mapping {sha256: ..., url: ...} or null", "sandbox")
        self.unknown(sandbox, SANDBOX_KEYS, "sandbox")
        if "path" in sandbox:
            # a folder: `lrt create` builds it reproducibly and uploads it once,
            # then every token names it by its sha256 (docs/sandbox.md)
            folder = sandbox.get("path")
            if set(sandbox) != {"path"} or not isinstance(folder, str):
                raise self.fail("sandbox.path names a folder and stands alone "
                                "(no sha256 or url beside it)", "sandbox", "path")
            return {"path": str(self.folder(folder, base, "sandbox", "path"))}
        sha = sandbox.get("sha256")
        if not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise self.fail("sandbox.sha256 must be 64 lowercase hex digits", "sandbox", "sha256")
        url = sandbox.get("url")
        if url is not None and not isinstance(url, str):
            raise self.fail("sandbox.url must be a string", "sandbox", "url")
        return {"sha256": sha, **({"url": url} if url else {})}

    def outputs(self, outputs: Any) -> Optional[Dict[str, Any]]:
        if outputs is None:
            return None
        if not isinstance(outputs, dict):
            raise self.fail("outputs must be a mapping {dest: url-prefix, globs: [...]} or null",
                            "outputs")
        self.unknown(outputs, OUTPUTS_KEYS, "outputs")
        dest = outputs.get("dest")
        if not isinstance(dest, str) or not dest:
            raise self.fail("outputs.dest must be a URL prefix string", "outputs", "dest")
        globs = outputs.get("globs", ["*"])
        if not isinstance(globs, list) or not globs or not all(isinstance(g, str) and g for g in globs):
            raise self.fail("outputs.globs must be a non-empty list of patterns",
                            "outputs", "globs")
        return {"dest": dest, "globs": list(globs)}

    def payload(self, payload: Any, reserved: Set[str]) -> Dict[str, Any]:
        payload = payload or {}
        if not isinstance(payload, dict):
            raise self.fail("payload must be a mapping of parameter names to values", "payload")
        for k, val in payload.items():
            self.name(k, reserved, "payload")
            self.json_value(val, "payload", str(k))
        return dict(payload)

    def sweep(self, sweep_in: Any, reserved: Set[str], payload: Mapping[str, Any]) -> Dict[str, Sequence[Any]]:
        sweep_in = sweep_in or {}
        if not isinstance(sweep_in, dict):
            raise self.fail("sweep must be a mapping {name: [values...]}", "sweep")
        sweep: Dict[str, Sequence[Any]] = {}
        for k, val in sweep_in.items():
            self.name(k, reserved, "sweep")
            if k in payload:
                raise self.fail(f"sweep parameter {k!r} is also a payload key", "sweep", str(k))
            sweep[k] = self.values(k, val)
        return sweep

    def id_template(self, tpl: Any, files: Optional[FilesSpec], sweep: Mapping[str, Any]) -> str:
        if tpl is None:
            parts = ["{type}"]
            if files is not None:
                parts.append("{obsid}_SB{sb_start:03d}" if files.group_by == "subband"
                             else "{chunk:06d}")
            parts += ["{%s}" % k for k in sweep]
            tpl = "_".join(parts)
        if not isinstance(tpl, str) or not tpl:
            raise self.fail(f"id must be a template string, not {tpl!r}", "id")
        return tpl

    def task(self, name: Any, base: Path) -> Any:
        """The task a config names: from ``$LRT_TASKS``, else ``tasks/`` beside the config."""
        import os

        from .tasks import TaskRegistry
        from .tasks.definition import TaskNotFound

        if not isinstance(name, str):
            raise self.fail(f"task must name a task, not {name!r}", "task")
        folder = os.environ.get("LRT_TASKS") or str(base / "tasks")
        try:
            return TaskRegistry(folder).get(name)
        except TaskNotFound as exc:
            raise self.fail(str(exc), "task") from None

    def name(self, k: Any, reserved: Set[str], section: str) -> None:
        if not isinstance(k, str) or not _NAME_RE.match(k):
            raise self.fail(f"{section} name {k!r} must be an identifier (letters, digits, '_'; "
                            "it becomes the environment variable LRT_P_<NAME>)", section, str(k))
        if k in reserved:
            raise self.fail(f"{section} name {k!r} is reserved (lrt sets it: "
                            f"{', '.join(sorted(reserved))})", section, k)

    def values(self, k: str, val: Any) -> Sequence[Any]:
        if isinstance(val, dict):
            self.unknown(val, ("range",), "sweep", k)
            r = val.get("range")
            if (not isinstance(r, list) or not 1 <= len(r) <= 3
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
                raise self.fail(f"sweep.{k}.range must be [stop], [start, stop] or "
                                "[start, stop, step] integers", "sweep", k)
            if len(r) == 3 and r[2] == 0:
                raise self.fail(f"sweep.{k}.range step must not be 0", "sweep", k)
            rng = range(*r)
            if len(rng) == 0:
                raise self.fail(f"sweep.{k}.range {r} is empty", "sweep", k)
            return rng
        if not isinstance(val, list) or not val:
            raise self.fail(f"sweep.{k} must be a non-empty list of values or {{range: [...]}}",
                            "sweep", k)
        for x in val:
            if isinstance(x, (dict, list)):
                raise self.fail(f"sweep.{k}: values must be scalars, not {x!r}", "sweep", k)
            self.json_value(x, "sweep", k)
        return list(val)

    def files(self, f: Any, base: Path, override: Optional[Union[str, Path]]) -> Optional[FilesSpec]:
        if f is None:
            if override is not None:
                raise self.fail("--files was given but this config has no 'files' section")
            return None
        if not isinstance(f, dict):
            raise self.fail("files must be a mapping {list: path, per_token: N, ...}", "files")
        self.unknown(f, FILES_KEYS, "files")
        if override is not None:
            lst = Path(override).expanduser()
        else:
            raw = f.get("list")
            if not isinstance(raw, str) or not raw:
                raise self.fail("files.list must name the file list (one URL per line)",
                                "files", "list")
            lst = Path(raw).expanduser()
            if not lst.is_absolute():
                lst = base / lst
        per = self.number(f.get("per_token", 1), ("files", "per_token"), minimum=1,
                          allow_none=False, integer=True)
        group = f.get("group_by", "subband")
        if group not in ("subband", "lines"):
            raise self.fail(f"files.group_by must be 'subband' or 'lines', not {group!r}",
                            "files", "group_by")
        first = last = None
        sbs = f.get("subbands")
        if sbs is not None:
            if (not isinstance(sbs, list) or len(sbs) != 2 or
                    not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in sbs)
                    or sbs[0] > sbs[1]):
                raise self.fail("files.subbands must be [first, last] subband numbers",
                                "files", "subbands")
            if group != "subband":
                raise self.fail("files.subbands needs group_by: subband", "files", "subbands")
            first, last = sbs
        one = self.boolean(f.get("one_observation", False), "files", "one_observation", show=False)
        return FilesSpec(list=lst, per_token=per, group_by=group, first=first, last=last,
                         one_observation=one)
