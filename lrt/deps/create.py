"""Dependencies at creation: refuse unknown parents and cycles before anything is
written, store each token's ``after``, release children whose parents ended already.

Cycles are refused at the level of token sets: a config whose set would become
reachable from its own parents' sets (``lrt-deps/setgraph``, the whole graph in
one reduce read) is refused with the path named.  Within one set, per-token
dependencies (``calib_SB001`` after ``calib_SB000``) are allowed as long as the
tokens of the config do not form a cycle among themselves.

Admin side (``lrt create``); never imported by the pilot.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ..config import Item, TokenConfig
from ..couch import Database, NotFound
from ..errors import ConfigError, LrtError
from .release import DEPS_DDOC, release_ids, set_counts
from .spec import AfterSpec

#: how many missing parents an error names
SHOWN = 5


def render(cfg: TokenConfig, template: str, values: Mapping[str, Any]) -> str:
    """A parent id from ``after.id`` and the child's own template fields."""
    try:
        out = template.format_map(values)
    except KeyError as exc:
        raise ConfigError(f"after.id template {template!r}: unknown placeholder {{{exc.args[0]}}}; "
                          f"available: {', '.join(sorted(values))}", path=cfg.path) from None
    except (ValueError, IndexError, TypeError, AttributeError) as exc:
        raise ConfigError(f"after.id template {template!r} cannot be filled: {exc}",
                          path=cfg.path) from None
    if not out or out.startswith("_"):
        raise ConfigError(f"after.id template {template!r} gives an invalid id {out!r}", path=cfg.path)
    return out


def _spec(cfg: TokenConfig) -> AfterSpec:
    return cfg.after


def dependency_fields(cfg: TokenConfig, item: Item) -> Dict[str, Any]:
    """The fields a token with dependencies gets (state ``waiting``, ``after``, ...)."""
    deps = _spec(cfg).deps_for(item.values, lambda t, v: render(cfg, t, v))
    sets: Dict[str, str] = getattr(cfg, "_parent_sets", {}) or {}
    for d in deps:
        if "id" in d:
            d["set"] = sets.get(d["id"])
    out: Dict[str, Any] = {"state": "waiting", "after": deps, "blocked_by": None}
    if cfg.inputs is not None:
        out["from_parent"] = cfg.inputs.from_parent
    return out


def _parents(cfg: TokenConfig) -> Iterable[Tuple[str, str]]:
    """(child id, parent id) for every per-token dependency of the config."""
    spec = _spec(cfg)
    for item in cfg.items():
        for d in spec.deps_for(item.values, lambda t, v: render(cfg, t, v)):
            if "id" in d:
                yield item.id, d["id"]


def _set_graph(db: Database) -> Dict[str, Set[str]]:
    try:
        rows = db.view(DEPS_DDOC, "setgraph", group=True).get("rows", [])
    except NotFound:
        return {}
    graph: Dict[str, Set[str]] = {}
    for r in rows:
        k = r.get("key") or []
        if len(k) == 2 and k[0] != k[1]:
            graph.setdefault(str(k[0]), set()).add(str(k[1]))
    return graph


def _path(graph: Dict[str, Set[str]], start: str, goal: str) -> Optional[List[str]]:
    """A path start -> ... -> goal through ``graph``, or None."""
    stack = [(start, [start])]
    seen = {start}
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        for nxt in sorted(graph.get(node, ())):
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def _id_cycle(edges: Dict[str, List[str]]) -> Optional[List[str]]:
    """A cycle among the config's own tokens (iterative DFS), or None."""
    colour: Dict[str, int] = {}
    for root in edges:
        if colour.get(root):
            continue
        stack = [(root, iter(edges.get(root, ())))]
        path = [root]
        colour[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            c = colour.get(nxt, 0)
            if c == 1:
                return path[path.index(nxt):] + [nxt]
            if c == 0:
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(edges.get(nxt, ()))))
    return None


def check_dependencies(db: Optional[Database], cfg: TokenConfig) -> None:
    """Refuse unknown parents and cycles (:class:`ConfigError`); nothing is written.

    Without ``db`` (a dry run before the database exists) only the config's own
    consistency is checked.  Records each parent's set for :func:`dependency_fields`.
    """
    spec: Optional[AfterSpec] = cfg.after
    if spec is None:
        return
    parent_sets: Set[str] = set()
    if spec.tokenset is not None:
        if spec.tokenset == cfg.tokenset:
            raise ConfigError(f"after: token set {cfg.tokenset!r} cannot wait for itself (a cycle)",
                              path=cfg.path)
        if db is not None and not sum(set_counts(db, spec.tokenset).values()):
            raise ConfigError(f"after: no token set {spec.tokenset!r} in database {db.name} "
                              "(create the parents first)", path=cfg.path)
        parent_sets.add(spec.tokenset)
    else:
        own = set(cfg.iter_ids())
        edges: Dict[str, List[str]] = {}
        outside: Set[str] = set()
        for child, parent in _parents(cfg):
            if parent in own:
                edges.setdefault(child, []).append(parent)
            else:
                outside.add(parent)
        cyc = _id_cycle(edges)
        if cyc:
            raise ConfigError("after: the tokens of this config wait for each other in a cycle: "
                              + " -> ".join(cyc), path=cfg.path)
        inside = {p for ps in edges.values() for p in ps}
        sets: Dict[str, str] = {i: cfg.tokenset for i in inside}
        if outside and db is not None:
            missing: List[str] = []
            want = sorted(outside)
            for i in range(0, len(want), 500):
                rows = db.all_docs(keys=want[i:i + 500], include_docs=True).get("rows", [])
                for r in rows:
                    doc = r.get("doc")
                    if isinstance(doc, dict) and doc.get("kind") == "token":
                        sets[r["key"]] = str(doc.get("tokenset"))
                    else:
                        missing.append(r["key"])
            if missing:
                more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
                raise ConfigError(f"after: {len(missing)} parent token(s) do not exist in database "
                                  f"{db.name}: {', '.join(missing[:SHOWN])}{more} "
                                  "(create the parents first, or fix the after.id template)",
                                  path=cfg.path)
        elif outside and db is None:
            raise ConfigError(f"after: {len(outside)} parent token(s) outside this config, and "
                              "the database does not exist yet", path=cfg.path)
        setattr(cfg, "_parent_sets", sets)
        parent_sets = set(sets.values()) - {cfg.tokenset}
    if db is None:
        return
    graph = _set_graph(db)
    for ps in sorted(parent_sets):
        path = _path(graph, ps, cfg.tokenset)
        if path:
            raise ConfigError("after: a dependency cycle between token sets: "
                              + " -> ".join([cfg.tokenset] + path), path=cfg.path)


def release_created(db: Database, cfg: TokenConfig) -> Dict[str, int]:
    """Decide every waiting token of ``cfg`` (its parents may have ended already)."""
    if cfg.after is None:
        return {}
    counts: Dict[str, int] = {}
    ids = list(cfg.iter_ids())
    for _, outcome in release_ids(db, ids):
        counts[outcome.value] = counts.get(outcome.value, 0) + 1
    return counts


def require_views(db: Database) -> None:
    """A clear error if the dependency views are missing (``lrt views install``)."""
    try:
        db.view(DEPS_DDOC, "children", limit=0)
    except NotFound:
        raise LrtError(f"the dependency views (_design/{DEPS_DDOC}) are not installed in "
                       f"database {db.name}: run `lrt views install`") from None
