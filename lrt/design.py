"""Design documents built from the ``.js`` files in ``lrt/views/``.

Layout (one folder per design document)::

    lrt/views/<ddoc>/views/<view>/map.js
    lrt/views/<ddoc>/views/<view>/reduce.js   (JavaScript reduce), or
    lrt/views/<ddoc>/views/<view>/reduce.txt  (a built-in: _count, _sum, _stats)
    lrt/views/<ddoc>/updates/<name>.js        (update handlers)
    lrt/views/<ddoc>/validate_doc_update.js   (optional)

Leading ``//`` comment lines of each file are documentation and are dropped
before install (CouchDB and PouchDB evaluate the source as one function
expression).  ``__LRT_TRANSITIONS__`` is replaced by the state machine's table,
``__LRT_EDGES__`` by its edge specs (:func:`lrt.states.edges_json`: fields each
edge clears, defaults, error codes) and ``__LRT_HISTORY_LIMIT__`` by its history
bound from :mod:`lrt.states`
(``__LRT_QUEUE_SHARDS__`` by :data:`QUEUE_SHARDS`), so the
JavaScript handlers and Python share one source; a line ``__LRT_PRELUDE__;``
is replaced by the design document's ``lib/prelude.js`` (code shared by its
update handlers).

Installation is idempotent and versioned: each design document carries
``lrt_version`` (the package version) and ``lrt_hash`` (sha256 of its content);
:func:`install` writes only when the hash differs, so re-running it is free and
an upgrade replaces the old functions in one write.  Changing only update
handlers never invalidates a view index (CouchDB signs indexes by their views).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import __version__
from .couch import Conflict, Database
from .states import HISTORY_LIMIT, edges_json, transitions_json

VIEWS_DIR = Path(__file__).parent / "views"

#: the monitoring design document (status counts, errors, leases, conflicts)
MONITOR_DDOC = "lrt"
#: the hot claim queue and the pilot's update handlers, alone so claims never wait on monitoring
CLAIM_DDOC = "lrt-claim"
#: the claim window: the claim queue with each document as the row's value (read without include_docs)
WINDOW_DDOC = "lrt-window"
#: shards of the claim queue (the todo view key): pilots start reading at a random
#: shard, so they spread over the queue instead of all taking its first rows
QUEUE_SHARDS = 256


def _source(path: Path) -> str:
    lines = path.read_text().splitlines()
    while lines and (lines[0].lstrip().startswith("//") or not lines[0].strip()):
        lines.pop(0)
    out = []
    for line in lines:
        if line.strip() == "__LRT_PRELUDE__;":
            # the design document's shared handler code (lib/prelude.js)
            out.append(_source(path.parent.parent / "lib" / "prelude.js").rstrip("\n"))
        else:
            out.append(line)
    text = "\n".join(out).strip() + "\n"
    return (text.replace("__LRT_TRANSITIONS__", transitions_json())
                .replace("__LRT_EDGES__", edges_json())
                .replace("__LRT_HISTORY_LIMIT__", str(HISTORY_LIMIT))
                .replace("__LRT_QUEUE_SHARDS__", str(QUEUE_SHARDS)))


def build(name: str) -> Dict[str, Any]:
    """The design document ``_design/<name>`` from its folder (without ``_rev``)."""
    root = VIEWS_DIR / name
    if not root.is_dir():
        raise KeyError(f"no design document folder {root}")
    doc: Dict[str, Any] = {"_id": f"_design/{name}", "language": "javascript"}
    views: Dict[str, Any] = {}
    vroot = root / "views"
    if vroot.is_dir():
        for vdir in sorted(p for p in vroot.iterdir() if p.is_dir()):
            view: Dict[str, str] = {"map": _source(vdir / "map.js")}
            if (vdir / "reduce.js").exists():
                view["reduce"] = _source(vdir / "reduce.js")
            elif (vdir / "reduce.txt").exists():
                view["reduce"] = (vdir / "reduce.txt").read_text().strip()
            views[vdir.name] = view
    if views:
        doc["views"] = views
    uroot = root / "updates"
    if uroot.is_dir():
        doc["updates"] = {p.stem: _source(p) for p in sorted(uroot.glob("*.js"))}
    vdu = root / "validate_doc_update.js"
    if vdu.exists():
        doc["validate_doc_update"] = _source(vdu)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    doc["lrt_version"] = __version__
    doc["lrt_hash"] = digest
    return doc


def names() -> List[str]:
    return sorted(p.name for p in VIEWS_DIR.iterdir() if p.is_dir())


def install(db: Database, only: Optional[List[str]] = None) -> Dict[str, str]:
    """Install or upgrade lrt's design documents; returns name -> installed|upgraded|unchanged."""
    result: Dict[str, str] = {}
    for name in only or names():
        want = build(name)
        for _ in range(5):
            have = db.get_or_none(want["_id"])
            if have is not None and have.get("lrt_hash") == want["lrt_hash"]:
                result[name] = "unchanged"
                break
            doc = dict(want)
            if have is not None:
                doc["_rev"] = have["_rev"]
            try:
                db.put(doc)
            except Conflict:
                continue  # another installer raced us: re-read and compare
            result[name] = "upgraded" if have is not None else "installed"
            break
        else:
            raise Conflict(f"could not install _design/{name}: it kept changing", status=409)
    return result


def ensure(db: Database) -> Dict[str, str]:
    """Create the database if it does not exist (server admin on CouchDB 3), then
    install or upgrade the design documents; returns what :func:`install` returns,
    plus ``{"database": "created"}`` when it was made."""
    created = db.create()
    result = install(db)
    if created:
        result = dict(database="created", **result)
    return result


def installed_version(db: Database, name: str = MONITOR_DDOC) -> Optional[str]:
    doc = db.get_or_none(f"_design/{name}")
    return None if doc is None else doc.get("lrt_version")
