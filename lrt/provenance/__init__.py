"""W3C PROV documents for finished tokens (docs/provenance.md; ``pip install 'lrt[prov]'``).

One finished token is one activity (its last attempt): task, version,
attempt, start and end, exit code.  It *used* its inputs (URL and checksum),
its sandbox (by sha256), its task definition (by sha256) and one value entity
per parameter; it *generated* its published outputs (URL, checksum, size).
Its agents are the pilot that ran it (with host and batch job) and the owner
on whose behalf the pilot acted.  Attribute names follow the IVOA Provenance
Data Model (``voprov:name``, ``voprov:location``, ``voprov:value``,
``voprov:version``, ``voprov:description``) where it has one; the rest are in
the ``lrt`` namespace.  Files are identified by a hash of their URL, so in a
token-set document an output that another token used is one entity, linked to
both activities.

The ``prov`` package is used directly (``voprov`` 0.0.4 breaks with
``prov`` >= 3.2).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional

from prov.identifier import Namespace
from prov.model import PROV, ProvDocument

if TYPE_CHECKING:
    from ..couch import Database

LRT_NS = "https://lrt.readthedocs.io/ns/prov#"
VOPROV_NS = "http://www.ivoa.net/documents/ProvenanceDM/ns/voprov/"

LRT = Namespace("lrt", LRT_NS)
VOPROV = Namespace("voprov", VOPROV_NS)

#: output formats: name -> media type
FORMATS = {"json": "application/json", "provn": "text/provenance-notation",
           "xml": "application/xml"}

FINISHED_STATES = ("done", "error", "failed", "cancelled")


def _t(x: Any) -> Optional[_dt.datetime]:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return None
    return _dt.datetime.fromtimestamp(float(x), tz=_dt.timezone.utc)


def _safe(text: str) -> str:
    """A QName local part for ``text`` (token ids may hold any character)."""
    out = "".join(c if c.isalnum() or c in "_-." else "_" for c in text)
    if out != text:
        out += "_" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return out


def file_id(url: str) -> str:
    return "lrt:file_" + hashlib.sha256(url.encode()).hexdigest()[:24]


def new_document() -> ProvDocument:
    d = ProvDocument()
    d.add_namespace(LRT)
    d.add_namespace(VOPROV)
    return d


def last_attempt(doc: Mapping[str, Any]) -> Dict[str, Any]:
    """The last history entry (the pilot clears pilot/host/batch job from the token itself)."""
    hist = [h for h in doc.get("history") or [] if isinstance(h, dict)]
    return hist[-1] if hist else {}


def add_token(d: ProvDocument, doc: Mapping[str, Any], db: Optional["Database"] = None) -> str:
    """Add one finished token to ``d``; return its activity's identifier."""
    tid = doc["_id"]
    task = doc.get("task") or {}
    h = last_attempt(doc)
    timings = doc.get("timings") or {}
    start = _t(timings.get("started")) or _t(h.get("claimed"))
    end = _t(timings.get("finished")) or _t(h.get("finished"))
    attempt = h.get("attempt") or doc.get("attempts") or 0
    act_id = f"lrt:job_{_safe(tid)}_attempt_{attempt}"
    attrs: Dict[str, Any] = {
        "prov:type": VOPROV["Activity"],
        "voprov:name": task.get("name") or doc.get("type"),
        "lrt:token": tid,
        "lrt:tokenset": doc.get("tokenset"),
        "lrt:attempt": int(attempt),
        "lrt:state": doc.get("state"),
    }
    if task.get("version") is not None:
        attrs["voprov:version"] = str(task["version"])
    exit_code = doc.get("exit_code") if doc.get("exit_code") is not None else h.get("exit_code")
    if exit_code is not None:
        attrs["lrt:exit_code"] = int(exit_code)
    err = doc.get("error")
    if isinstance(err, dict) and err.get("message"):
        attrs["voprov:comment"] = f"{err.get('name')} ({err.get('code')}): {err.get('message')}"
    if doc.get("command"):
        attrs["lrt:command"] = json.dumps(doc["command"])
    act = d.activity(act_id, start, end, {k: v for k, v in attrs.items() if v is not None})

    # the task definition, by the sha256 of its file
    if task.get("sha256"):
        desc = d.entity(f"lrt:task_{_safe(str(task.get('name')))}_{task['sha256'][:16]}", {
            "prov:type": VOPROV["ActivityDescription"], "voprov:name": task.get("name"),
            "voprov:version": str(task.get("version")), "lrt:sha256": task["sha256"]})
        d.used(act, desc, start, other_attributes={"prov:role": "task_description"})
    # the sandbox, by sha256
    sb = doc.get("sandbox") or {}
    if sb.get("sha256"):
        s = d.entity(f"lrt:sandbox_{sb['sha256'][:24]}", {
            "prov:type": LRT["Sandbox"], "lrt:sha256": sb["sha256"],
            **({"voprov:location": sb["url"]} if sb.get("url") else {})})
        d.used(act, s, start, other_attributes={"prov:role": "sandbox"})
    # parameter values
    params = doc.get("task_params")
    if params is None:
        params = doc.get("payload") or {}
    for name, value in sorted(params.items()):
        v = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, sort_keys=True)
        p = d.entity(f"lrt:param_{_safe(tid)}_{_safe(str(name))}", {
            "prov:type": VOPROV["ValueEntity"], "voprov:name": str(name), "voprov:value": v})
        d.used(act, p, start, other_attributes={"prov:role": "parameter"})
    # inputs (URL, checksum)
    for item in doc.get("inputs") or []:
        url = item.get("url") if isinstance(item, dict) else None
        if not url:
            continue
        a = {"prov:type": VOPROV["Entity"], "voprov:location": url,
             "voprov:name": url.rstrip("/").rsplit("/", 1)[-1]}
        if item.get("checksum"):
            a["lrt:checksum"] = item["checksum"]
        e = d.entity(file_id(url), a)
        d.used(act, e, start, other_attributes={"prov:role": "input"})
    # outputs (URL, checksum, size)
    for out in doc.get("output") or []:
        url = out.get("url") if isinstance(out, dict) else None
        if not url:
            continue
        a = {"prov:type": VOPROV["Entity"], "voprov:location": url,
             "voprov:name": url.rstrip("/").rsplit("/", 1)[-1]}
        if out.get("checksum"):
            a["lrt:checksum"] = out["checksum"]
        if isinstance(out.get("size"), int):
            a["lrt:size"] = out["size"]
        e = d.entity(file_id(url), a)
        d.wasGeneratedBy(e, act, end, other_attributes={"prov:role": "output"})
    # agents: the pilot (host, batch job) acting for the owner
    pilot = h.get("pilot") or doc.get("pilot")
    owner = doc.get("owner")
    owner_ag = None
    if owner:
        owner_ag = d.agent(f"lrt:user_{_safe(owner)}", {"prov:type": PROV["Person"], "voprov:name": owner})
        d.wasAssociatedWith(act, owner_ag, other_attributes={"prov:role": "owner"})
    if pilot:
        a = {"prov:type": PROV["SoftwareAgent"], "voprov:name": pilot}
        host = h.get("host") or doc.get("host")
        if host:
            a["lrt:host"] = host
        job = h.get("batch_job") or doc.get("batch_job")
        if job:
            a["lrt:batch_job"] = json.dumps(job, sort_keys=True) if isinstance(job, (dict, list)) else str(job)
        ag = d.agent(f"lrt:pilot_{_safe(pilot)}", a)
        d.wasAssociatedWith(act, ag, other_attributes={"prov:role": "pilot"})
        if owner_ag is not None:
            d.actedOnBehalfOf(ag, owner_ag, act)
    return act_id


def token_document(doc: Mapping[str, Any], db: Optional["Database"] = None) -> ProvDocument:
    """The PROV document of one finished token."""
    from ..errors import LrtError

    if doc.get("state") not in FINISHED_STATES:
        raise LrtError(f"token {doc.get('_id')} is {doc.get('state')}: provenance is made for "
                       "finished tokens")
    d = new_document()
    add_token(d, doc, db)
    return d


def set_document(docs: Iterable[Mapping[str, Any]], db: Optional["Database"] = None,
                 name: Optional[str] = None) -> ProvDocument:
    """One document for several finished tokens: shared files are one entity (an output
    one token generated and another used links the two), and a bundle-like collection
    entity names the set.  Unfinished tokens are left out."""
    d = new_document()
    acts: List[str] = []
    for doc in docs:
        if doc.get("state") in FINISHED_STATES:
            acts.append(add_token(d, doc, db))
    if name:
        coll = d.collection(f"lrt:tokenset_{_safe(name)}", {"voprov:name": name})
        for a in acts:
            d.wasInfluencedBy(coll, a)
    return d.unified()  # a file one token made and another used: one entity, both attributes


def serialize(d: ProvDocument, fmt: str = "json") -> str:
    if fmt == "provn":
        return d.get_provn()
    if fmt in ("json", "xml"):
        return d.serialize(format=fmt, indent=2) if fmt == "json" else d.serialize(format="xml")
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
