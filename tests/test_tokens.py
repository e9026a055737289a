"""Bulk creation and bulk changes against the real local server."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lrt import design, states
from lrt.errors import ConfigError, LrtError, TransitionError
from lrt.states import State
from lrt.tokens import Token, TokenList, TokenSet, status_counts

from pilot_helpers import poll

ROOT = Path(__file__).resolve().parent.parent

#: every field of token schema v1 (COMMON brief / docs/tokens.md)
SCHEMA_FIELDS = {
    "_id", "kind", "schema", "type", "state", "priority", "created", "updated", "tokenset",
    "attempts", "max_attempts", "retry", "not_before", "expected_duration", "timeout", "command",
    "sandbox", "payload", "inputs", "outputs", "needs_staging", "lease", "pilot", "host",
    "batch_job", "exit_code", "error", "timings", "output", "log_tail", "history",
    "cancel_requested",
}


def token_docs(db):
    """All non-design documents of ``db``."""
    return [r for r in db.all_docs()["rows"] if not r["id"].startswith("_design/")]


def sweep_config(tmp_path, n: int, name: str = "s") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"type: sw\ncommand: [python3, x.py]\nid: 'sw_{{i:06d}}'\n"
                 f"sweep: {{i: {{range: [0, {n}]}}}}\n")
    return p


def test_lofar_tokens_have_schema_and_attachment(db):
    ts = TokenSet.from_config(ROOT / "configs/lofar_example.yaml")
    res = ts.create(db, batch_size=3)
    assert (res.created, res.present, res.failed) == (4, 0, 0)
    docs = {r["id"]: db.get(r["id"]) for r in token_docs(db)}
    assert len(docs) == 4
    for doc in docs.values():
        assert SCHEMA_FIELDS <= set(doc), SCHEMA_FIELDS - set(doc)
        assert doc["kind"] == "token" and doc["schema"] == 1 and doc["attempts"] == 0
        assert doc["state"] == "staging" and doc["needs_staging"] is True
        assert doc["lease"] is None and doc["history"] == []
        assert doc["retry"] == {"backoff": 60.0, "payload_errors": False}
        # the srm.txt attachment is exactly the token's slice of links, in subband order
        att = db.get_attachment(doc["_id"], "srm.txt").decode()
        assert att.splitlines() == [i["url"] for i in doc["inputs"]]
        assert all(i["checksum"] is None for i in doc["inputs"])
    gap = docs["lofar_calib_L654321_SB010"]
    assert gap["payload"]["missing"] == [12, 13]
    assert [u["url"].split("/")[-1][:13] for u in gap["inputs"]] == [
        f"L654321_SB{s:03d}" for s in (10, 11, 14, 15, 16, 17, 18, 19)]
    src = (ROOT / "configs/lofar_example_srm.txt").read_text()
    assert all(u["url"] in src for u in gap["inputs"])


def test_creation_is_idempotent(db):
    ts = TokenSet.from_config(ROOT / "configs/sweep_example.yaml")
    assert ts.create(db).created == 12
    # _all_docs on a cluster is read from one copy of each shard: wait until it shows all 12
    revs = poll(lambda: (lambda d: d if len(d) == 12 else None)(
        {r["id"]: r["value"]["rev"] for r in token_docs(db)}), what="the 12 tokens in _all_docs")
    again = TokenSet.from_config(ROOT / "configs/sweep_example.yaml").create(db, batch_size=5)
    assert (again.created, again.present, again.failed) == (0, 12, 0)
    assert {r["id"]: r["value"]["rev"] for r in token_docs(db)} == revs


def test_concurrent_creators_make_each_token_once(db, tmp_path):
    cfg = sweep_config(tmp_path, 600)
    results = []

    def run():
        results.append(TokenSet.from_config(cfg).create(db, batch_size=50))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # on a cluster a creator's write can be accepted by a minority of copies (202) while
    # another creator's is accepted by the others: each token is still counted once
    assert sum(r.created for r in results) == 600, [r.to_json() for r in results]
    assert all(r.created + r.present == 600 and r.failed == 0 for r in results)
    rows = token_docs(db)
    assert len(rows) == 600 and all(r["value"]["rev"].startswith("1-") for r in rows)
    # no token is left with two first revisions (a loser removed its own; the removal
    # may reach the copy this read is served from a moment later)
    poll(lambda: not [r for r in db.all_docs(include_docs=True, conflicts=True)["rows"]
                      if (r.get("doc") or {}).get("_conflicts")],
         timeout=30, what="no conflicted token")


@pytest.mark.parametrize("case", ["yaml", "unknown_key", "missing_list", "bad_links", "collision",
                                  "placeholder"])
def test_bad_config_writes_nothing(db, tmp_path, case):
    (tmp_path / "ok.txt").write_text("".join(
        f"srm://h.example.org/L5_SB{s:03d}_uv.MS.tar\n" for s in range(10)))
    (tmp_path / "bad.txt").write_text("".join(
        f"srm://h.example.org/L5_SB{s:03d}_uv.MS.tar\n" for s in range(10)) + "oops\n")
    texts = {
        "yaml": "type: t\ncommand: [a]\nsweep: {a: [1, 2}\n",
        "unknown_key": "type: t\ncommand: [a]\nfiles: {list: ok.txt}\nswep: {a: [1]}\n",
        "missing_list": "type: t\ncommand: [a]\nfiles: {list: nowhere.txt}\n",
        "bad_links": "type: t\ncommand: [a]\nfiles: {list: bad.txt, per_token: 2}\n",
        # the collision is only found after 2000 ids: nothing may have been written by then
        "collision": "type: t\ncommand: [a]\nid: 'c_{i}'\nsweep: {i: {range: [2000]}, j: [1, 2]}\n",
        "placeholder": "type: t\ncommand: [a]\nfiles: {list: ok.txt}\nid: '{obsid}_{sb}'\n",
    }
    p = tmp_path / "c.yaml"
    p.write_text(texts[case])
    with pytest.raises(ConfigError):
        TokenSet.from_config(p).create(db, batch_size=10)
    assert token_docs(db) == []


def test_streaming_creation_of_10k_tokens(db, tmp_path):
    ts = TokenSet.from_config(sweep_config(tmp_path, 10_000))
    seen = []
    res = ts.create(db, batch_size=1000, progress=lambda done, total: seen.append((done, total)))
    assert (res.created, res.present, res.failed) == (10_000, 0, 0)
    assert seen[-1] == (10_000, 10_000) and len(seen) == 10
    # + the design documents; a cluster counts from one copy of each shard, which may lag
    poll(lambda: db.info()["doc_count"] == 10_000 + len(design.names()), timeout=60,
         what="10,000 tokens in the database info")
    # (no view query here: the local server takes ~20 s to index 10^4 tokens)


def test_resumed_and_overlapping_creation(db, tmp_path):
    """Existing ids are skipped whether the existence check sees them or a 409 reports them."""
    head = tmp_path / "head.yaml"
    head.write_text("type: sw\ncommand: [a]\nid: 'sw_{i:06d}'\nsweep: {i: {range: [0, 250]}}\n")
    tail = tmp_path / "tail.yaml"
    tail.write_text("type: sw\ncommand: [a]\nid: 'sw_{i:06d}'\nsweep: {i: {range: [500, 600]}}\n")
    assert TokenSet.from_config(head).create(db).created == 250
    assert TokenSet.from_config(tail).create(db).created == 100
    revs = {r["id"]: r["value"]["rev"] for r in token_docs(db)}
    res = TokenSet.from_config(sweep_config(tmp_path, 600)).create(db, batch_size=100)
    assert (res.created, res.present, res.failed) == (250, 350, 0)
    rows = token_docs(db)
    assert len(rows) == 600
    assert all(revs.get(r["id"], r["value"]["rev"]) == r["value"]["rev"] for r in rows)


def test_views_count_mixed_states_and_bulk_changes(db, tmp_path):
    TokenSet.from_config(sweep_config(tmp_path, 30)).create(db)
    TokenSet.from_config(ROOT / "configs/lofar_example.yaml").create(db)
    for i in range(10):
        doc = db.get(f"sw_{i:06d}")
        states.apply(doc, "locked", fields={"lease": {"pilot": "p1"}})
        dst = "done" if i < 6 else "error"
        states.apply(doc, dst, fields={"exit_code": 0 if dst == "done" else 1,
                                       "attempts": 1} if dst == "error" else {"attempts": 1})
        db.put(doc)
    # views on a cluster are read from one copy of each shard: wait for the writes to show
    poll(lambda: status_counts(db) == {"sw": {"todo": 20, "done": 6, "error": 4},
                                       "lofar_calib": {"staging": 4}}, what="the counts after the writes")
    assert TokenList(db, "error", "sw").count() == 4
    assert list(TokenList(db, "done").ids()) == [f"sw_{i:06d}" for i in range(6)]

    # reset: error -> todo, clears exit code and lease, fresh attempt budget
    res = TokenList(db, "error", "sw", page_size=3).reset()
    assert (res.matched, res.changed, res.conflicts) == (4, 4, 0)
    doc = db.get("sw_000009")
    assert doc["state"] == "todo" and doc["exit_code"] is None and doc["lease"] is None
    assert doc["attempts"] == 0 and doc["last_transition"]["from"] == "error"
    # a reset of todo tokens is an illegal transition: refused before any write
    with pytest.raises(TransitionError):
        TokenList(db, "todo", "sw").reset()
    poll(lambda: status_counts(db)["sw"] == {"todo": 24, "done": 6}, what="the counts after the reset")

    # update keeps attachments (stubs are written back) and never touches state
    assert TokenList(db, "staging", "lofar_calib").update({"priority": 99}).changed == 4
    doc = db.get("lofar_calib_L654321_SB000")
    assert doc["priority"] == 99 and doc["state"] == "staging"
    assert db.get_attachment(doc["_id"], "srm.txt").decode().count("\n") == 10
    with pytest.raises(LrtError, match="cannot set state"):
        TokenList(db, "staging").update({"state": "todo"})

    # delete
    res = TokenList(db, "done", "sw").delete()
    assert res.changed == 6
    poll(lambda: status_counts(db)["sw"] == {"todo": 24}, what="the counts after the delete")


def test_bulk_change_skips_tokens_changed_meanwhile(db, tmp_path):
    TokenSet.from_config(sweep_config(tmp_path, 5)).create(db)
    for i in range(5):
        doc = db.get(f"sw_{i:06d}")
        states.apply(doc, "cancelled")
        db.put(doc)
    tl = TokenList(db, "cancelled", "sw")
    # a view on a cluster is read from one copy of each shard: wait until it shows the writes
    poll(lambda: len(list(tl.rows())) == 5, what="the five cancelled tokens in the view")

    def change(tok: Token):
        if tok.id == "sw_000002":  # a pilot (here: another writer) changes it under us
            other = db.get(tok.id)
            other["payload"]["touched"] = True
            db.put(other)
        tok.transition("todo", reason="reset")
        return tok

    res = tl._bulk(change, dry_run=False)
    assert (res.matched, res.changed, res.conflicts) == (5, 4, 1)
    kept = db.get("sw_000002")
    assert kept["state"] == "cancelled" and kept["payload"]["touched"] is True


def test_a_202_bulk_change_beside_a_pilots_claim_is_withdrawn(db, couch, tmp_path):
    """A reset a cluster accepted on too few copies (202) while the other copies took a
    pilot's claim of the same revision: the change is checked on every copy, withdrawn
    (counted as changed meanwhile) and no conflict stays; the other tokens are reset."""
    from cluster_helpers import QuorumProxy

    TokenSet.from_config(sweep_config(tmp_path, 3)).create(db)
    for i in range(3):
        doc = db.get(f"sw_{i:06d}")
        states.apply(doc, "cancelled")
        db.put(doc)
    poll(lambda: len(list(TokenList(db, "cancelled", "sw").rows())) == 3, what="the three cancelled tokens")

    def a_pilot_claimed_one_on_the_other_copies(docs):
        cur = db.get("sw_000001")
        h = "f" * 32  # the highest revision id: CouchDB's winner, as if answered 201
        pos, parent = cur["_rev"].split("-", 1)
        claim = dict(cur, state="locked", _rev=f"{int(pos) + 1}-{h}",
                     _revisions={"start": int(pos) + 1, "ids": [h, parent]})
        assert not db.bulk_docs([claim], new_edits=False).errors

    proxy = QuorumProxy(couch.url, a_pilot_claimed_one_on_the_other_copies,
                        match=lambda docs: any(d.get("state") == "todo" for d in docs))
    try:
        tl = TokenList(couch.server(proxy.url).database(db.name), "cancelled", "sw")
        res = tl._bulk(lambda tok: tok.transition("todo", reason="reset"), dry_run=False)
    finally:
        proxy.close()
    assert proxy.rewritten == 1
    assert (res.matched, res.changed, res.conflicts) == (3, 2, 1)
    assert [d["state"] for d in db.leaves("sw_000001", all_copies=True) if not d.get("_deleted")] == ["locked"]
    assert {db.get(f"sw_00000{i}")["state"] for i in (0, 2)} == {"todo"}


def test_delete_refuses_locked_tokens_without_force(db, tmp_path):
    TokenSet.from_config(sweep_config(tmp_path, 3)).create(db)
    doc = db.get("sw_000001")
    states.apply(doc, "locked")
    db.put(doc)
    # (the checks read views: on a cluster wait until they show the lock)
    poll(lambda: TokenList(db, "locked", "sw").count() == 1 and TokenList(db, "todo", "sw").count() == 2,
         timeout=30, what="1 locked and 2 todo tokens in the views")
    with pytest.raises(LrtError, match="1 locked token"):
        TokenList(db, None, "sw").delete()
    with pytest.raises(LrtError, match="locked"):
        TokenList(db, "locked", "sw").reset()
    assert all(db.get_or_none(f"sw_00000{i}") is not None for i in range(3))
    assert TokenList(db, "todo", "sw").delete().changed == 2  # other states: no question asked
    poll(lambda: TokenList(db, None, "sw").count() == 1, timeout=30, what="the deletions in the views")
    assert TokenList(db, None, "sw").delete(force=True).changed == 1
    assert all(db.get_or_none(f"sw_00000{i}") is None for i in range(3))


def test_illegal_transitions_are_refused():
    doc = Token({"_id": "x", "state": "todo"})
    with pytest.raises(TransitionError, match="a todo token cannot become done"):
        doc.transition("done")
    assert doc["state"] == "todo"
    with pytest.raises(TransitionError, match="unknown state"):
        states.check("todo", "finished")
    doc.transition(State.LOCKED).transition(State.DONE)
    assert doc.state is State.DONE
    with pytest.raises(TransitionError):
        doc.transition(State.LOCKED)


def test_token_load(db):
    db.put({"_id": "notatoken", "kind": "sandbox"})
    with pytest.raises(LrtError, match="not an lrt token"):
        Token.load(db, "notatoken")
    with pytest.raises(LrtError, match="no token 'nope'"):
        Token.load(db, "nope")


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrent_batches_write_each_token_once(db, tmp_path, concurrency):
    """Several batches in flight (one session each): the exact set, nothing twice, progress in order."""
    seen = []
    ts = TokenSet.from_config(sweep_config(tmp_path, 2500))
    res = ts.create(db, batch_size=100, concurrency=concurrency, progress=lambda d, t: seen.append(d))
    assert (res.created, res.present, res.failed) == (2500, 0, 0)
    rows = token_docs(db)
    assert sorted(r["id"] for r in rows) == [f"sw_{i:06d}" for i in range(2500)]
    assert all(r["value"]["rev"].startswith("1-") for r in rows)
    assert seen == sorted(seen) and seen[-1] == 2500
    again = TokenSet.from_config(sweep_config(tmp_path, 2600)).create(db, batch_size=100,
                                                                     concurrency=concurrency)
    assert (again.created, again.present, again.differ) == (100, 2500, 0)


def test_a_writer_error_reaches_the_caller(db, tmp_path):
    """A refused batch (here: a document CouchDB rejects) is counted, not lost in a thread."""
    from lrt.couch import CouchError

    ts = TokenSet.from_config(sweep_config(tmp_path, 300))
    other = db.server.database(db.name + "_missing")  # no such database: every write fails
    with pytest.raises(CouchError):
        ts.create(other, batch_size=50, concurrency=2)


def _changed(tmp_path, command: str, name: str = "s", tokenset: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    extra = f"tokenset: {tokenset}\n" if tokenset else ""
    p.write_text(f"type: sw\n{extra}command: [python3, {command}]\nid: 'sw_{{i:06d}}'\n"
                 f"payload: {{k: 1}}\nsweep: {{i: {{range: [0, 30]}}}}\n")
    return p


def test_changed_config_is_reported_and_update_rewrites_only_tokens_not_started(db, tmp_path):
    assert TokenSet.from_config(_changed(tmp_path, "old.py")).create(db).created == 30
    # one token runs, one is done: their definition must stay what they ran with
    for doc_id, dst in (("sw_000003", ["locked"]), ("sw_000004", ["locked", "done"])):
        doc = db.get(doc_id)
        for d in dst:
            states.apply(doc, d)
        db.put(doc)
    before = {r["id"]: r["value"]["rev"] for r in token_docs(db)}

    res = TokenSet.from_config(_changed(tmp_path, "new.py")).create(db, batch_size=7)
    assert (res.created, res.present, res.differ, res.updated) == (0, 30, 30, 0)
    assert res.differ_fields == ["command"] and len(res.differ_ids) == 10
    assert {r["id"]: r["value"]["rev"] for r in token_docs(db)} == before  # nothing written

    dry = TokenSet.from_config(_changed(tmp_path, "new.py")).dry_run(db)
    assert (dry.created, dry.would_create, dry.differ, dry.updated) == (0, 0, 30, 28)
    assert dry.kept == {"locked": 1, "done": 1}

    res = TokenSet.from_config(_changed(tmp_path, "new.py")).create(db, batch_size=7, update=True)
    assert (res.differ, res.updated, res.kept) == (30, 28, {"locked": 1, "done": 1})
    for doc_id in ("sw_000000", "sw_000029"):
        doc = db.get(doc_id)
        assert doc["command"] == ["python3", "new.py"] and doc["state"] == "todo"
        assert doc["_rev"].startswith("2-")
        assert doc["history"][-1]["end"] == "update" and doc["history"][-1]["fields"] == ["command"]
    assert db.get("sw_000003")["command"] == ["python3", "old.py"]
    assert db.get("sw_000004")["command"] == ["python3", "old.py"]

    # idempotent: a second update finds only the two it must not touch
    again = TokenSet.from_config(_changed(tmp_path, "new.py")).create(db, update=True)
    assert (again.differ, again.updated, again.kept) == (2, 0, {"locked": 1, "done": 1})
    # a copy under another tokenset name is a difference too
    other = TokenSet.from_config(_changed(tmp_path, "new.py", "copy", tokenset="copy")).create(db)
    assert other.differ == 30 and "tokenset" in other.differ_fields


def test_update_replaces_the_file_slice_and_keeps_logs(db, tmp_path):
    links = "".join(f"srm://h.example.org/pnfs/L5_SB{s:03d}_uv.MS.tar\n" for s in range(4))
    (tmp_path / "a.txt").write_text(links)
    (tmp_path / "b.txt").write_text(links.replace("h.example.org", "g.example.org"))
    cfg = tmp_path / "f.yaml"
    cfg.write_text("type: f\ncommand: [a]\nid: 'f_{chunk}'\nfiles: {list: a.txt, per_token: 2}\n")
    assert TokenSet.from_config(cfg).create(db).created == 2
    doc = db.get("f_0")
    db.put_attachment("f_0", doc["_rev"], "stdout.log", b"earlier attempt\n", "text/plain")
    res = TokenSet.from_config(cfg, files=tmp_path / "b.txt").create(db, update=True)
    assert (res.differ, res.updated, res.differ_fields) == (2, 2, ["inputs"])
    doc = db.get("f_0")
    assert all("g.example.org" in i["url"] for i in doc["inputs"])
    assert set(doc["_attachments"]) == {"srm.txt", "stdout.log"}
    assert b"g.example.org" in db.get_attachment("f_0", "srm.txt")


def test_default_concurrency_is_one_on_the_local_server(db):
    """pouchdb-server (one Node.js process) is slowed down by concurrent streams."""
    from lrt.tokens import default_concurrency

    vendor = db.server.info().get("vendor", {}).get("name", "")
    if "pouchdb" not in vendor.lower():
        pytest.skip("the suite runs against another server")
    assert default_concurrency(db) == 1


@pytest.mark.parametrize("config", ["configs/lofar_example.yaml", "configs/sweep_example.yaml",
                                    "configs/demo.yaml", "configs/pawsey/compute.yaml", "unicode"])
def test_encoded_documents_are_the_documents(tmp_path, config):
    """DocEncoder's template gives exactly the JSON of new_token (files, attachments,
    dependencies, non-ASCII text), so creation writes the documents the schema says."""
    import json

    from lrt.tokens import DocEncoder, new_token

    if config == "unicode":
        p = tmp_path / "u.yaml"
        p.write_text("type: u\ncommand: [python3, 'ß.py']\nid: 'ü_{i}_\\u00e9'\npayload: {note: 'é \"q\" \\\\'}\n"
                     "sweep: {i: {range: [0, 3]}}\n", encoding="utf-8")
        ts = TokenSet.from_config(p)
    else:
        ts = TokenSet.from_config(ROOT / config)
    enc = DocEncoder(ts.config)
    assert (enc._segments is None) == (ts.config.after is not None)  # the template where it applies
    n = 0
    for item in ts.config.items():
        want = json.dumps(new_token(ts.config, item, 1700000000.25, share=True), separators=(",", ":"))
        assert enc.encode(item, 1700000000.25).decode() == want
        n += 1
    assert n > 0
