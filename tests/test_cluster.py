"""Claims on a CouchDB cluster: a write answered 202 never runs a token twice, and no
conflicted token is left behind (docs/design.md, "Conflicts on a cluster").

The first tests run on any server: a small proxy in front of it answers a claim's
``_bulk_docs`` with a cluster's 202 (``"accepted": true``) and, like the copies that
refused the claim, adds a sibling revision from the same parent.  The test marked
``cluster`` runs real pilots on every node of a real Apache CouchDB cluster.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from typing import Optional

import pytest

from lrt.protocol.client import TokenClient
from lrt.protocol.conflicts import resolve_conflicts
from lrt.protocol.decisions import lock_doc
from lrt.tokens import TokenSet, conflicted_count

from cluster_helpers import QuorumProxy, cluster_db, is_creation, no_conflict_on_any_node, pilots_on_every_node
from pilot_helpers import RECORD, executions, make_tokens, poll, token


@pytest.fixture
def proxy(couch):
    p = QuorumProxy(couch.url)
    yield p
    p.close()


def client_via(proxy, couch, db, pilot="p1") -> TokenClient:
    return TokenClient(couch.server(proxy.url).database(db.name), pilot=pilot, lease_seconds=60)


def sibling(doc: dict, claim: str, claimed: float, expires: Optional[float] = None) -> dict:
    """Another pilot's claim of ``doc`` (as read, at its first revision): a child of
    the same parent, as a copy that refused our claim holds it."""
    sib = dict(doc)
    assert lock_doc(sib, claim=claim, now=claimed, lease_seconds=60, pilot="other") is None
    if expires is not None:
        sib["lease"] = dict(sib["lease"], expires=expires)
    pos, parent = doc["_rev"].split("-", 1)
    h = uuid.uuid4().hex
    sib["_rev"] = f"{int(pos) + 1}-{h}"
    sib["_revisions"] = {"start": int(pos) + 1, "ids": [h, parent]}
    return sib


def live(db, doc_id):
    return [d for d in db.leaves(doc_id, all_copies=True) if not d.get("_deleted")]


def test_a_201_claim_costs_no_extra_request(db):
    make_tokens(db, [token("t", ["true"])])
    c = TokenClient(db, pilot="p1")
    doc = db.get("t", conflicts=True)
    p = c.prepare_claim(doc)
    sent = db.server.requests_sent
    got = c.commit(pending=p).claimed
    assert got is not None and db.server.requests_sent - sent == 1
    assert c.stats.confirms == 0


def test_a_202_claim_alone_on_every_copy_runs(db, couch, proxy):
    make_tokens(db, [token("t", ["true"])])
    c = client_via(proxy, couch, db)
    got = c.claim("t")
    assert proxy.rewritten == 1 and c.stats.confirms == 1
    assert got is not None and got.doc["lease"]["claim"] == got.claim
    assert [d["_rev"] for d in live(db, "t")] == [got.doc["_rev"]]


def test_a_202_claim_beside_a_sibling_claim_yields_and_removes_its_own_revision(db, couch, proxy):
    """The sibling's pilot may have been answered 201 and run the token without a check:
    the 202 claim loses even when it was made first, and leaves no conflict behind."""
    make_tokens(db, [token("t", ["true"])])
    doc = db.get("t")
    sib = sibling(doc, "theirs", claimed=time.time() + 5)  # later than ours: the resolver would keep ours
    ours_claimed = []

    def other_copies_accepted_theirs(docs):
        ours_claimed.append(docs[0]["lease"]["claimed"])
        assert db.bulk_docs([sib], new_edits=False).status in (201, 202)

    proxy.on_claim = other_copies_accepted_theirs
    c = client_via(proxy, couch, db)
    c.confirm_wait = 1.0  # the sibling stays (its pilot runs it): give up after 1 s
    assert c.claim("t") is None
    assert ours_claimed and ours_claimed[0] < sib["lease"]["claimed"]
    assert c.stats.dropped == 1 and c.stats.lost == 1
    leaves = live(db, "t")
    assert [d["lease"]["claim"] for d in leaves] == ["theirs"]
    assert "_conflicts" not in db.get("t", conflicts=True)


def test_a_202_claim_beside_a_terminal_sibling_yields_at_once(db, couch, proxy):
    make_tokens(db, [token("t", ["true"])])
    doc = db.get("t")
    done = sibling(doc, "theirs", claimed=time.time() - 10)
    done.update(state="done", lease=None, exit_code=0)
    proxy.on_claim = lambda docs: db.bulk_docs([done], new_edits=False)
    c = client_via(proxy, couch, db)
    c.confirm_wait = 30.0
    t0 = time.monotonic()
    assert c.claim("t") is None
    assert time.monotonic() - t0 < 20  # no wait for a sibling that never goes away
    assert [d["state"] for d in live(db, "t")] == ["done"]


def test_when_every_claim_yields_the_one_choose_leaf_keeps_runs(db, couch, proxy):
    """Claims split over the copies, all answered 202: the sibling (claimed later) removes
    itself; ours, kept by the deterministic rule, waits for that and runs."""
    make_tokens(db, [token("t", ["true"])])
    doc = db.get("t")
    sib = sibling(doc, "theirs", claimed=time.time() + 5)

    def sibling_pilot_yields(docs):
        db.bulk_docs([sib], new_edits=False)

        def later():
            time.sleep(0.5)
            db.bulk_docs([{"_id": "t", "_rev": sib["_rev"], "_deleted": True}])
        threading.Thread(target=later, daemon=True).start()

    proxy.on_claim = sibling_pilot_yields
    c = client_via(proxy, couch, db)
    got = c.claim("t")
    assert got is not None and c.stats.dropped == 0
    assert [d["lease"]["claim"] for d in live(db, "t")] == [got.claim]


def test_a_resent_claim_accepted_twice_keeps_the_first_send_and_runs(db, couch, proxy):
    """A claim sent again (its answer was lost) is accepted, answered 202, by a copy the first
    send had not reached: both leaves carry this pilot's claim.  Nobody else holds the token,
    so the pilot keeps the first send's leaf (its stamp started the lease), deletes the other
    and runs the token (it used to yield, leaving it locked until its lease ran out)."""
    make_tokens(db, [token("a", ["true"])])
    doc = db.get("a")

    def the_first_send_on_the_other_copies(docs):
        mine = next(d for d in docs if d.get("_id") == "a")
        pos, parent = doc["_rev"].split("-", 1)
        h = "f" * 32
        first = dict(mine, _rev=f"{int(pos) + 1}-{h}", _revisions={"start": int(pos) + 1, "ids": [h, parent]},
                     lease=dict(mine["lease"], claimed=mine["lease"]["claimed"] - 5.0,
                                expires=mine["lease"]["expires"] - 5.0))
        assert not db.bulk_docs([first], new_edits=False).errors

    proxy.on_claim = the_first_send_on_the_other_copies
    c = client_via(proxy, couch, db)
    got = c.commit(pending=c.prepare_claim(doc)).claimed
    assert proxy.rewritten == 1 and c.stats.confirms == 1
    assert got is not None and got.doc["_rev"].endswith("f" * 32)  # the first send's leaf
    assert [d["_rev"] for d in live(db, "a")] == [got.doc["_rev"]]
    assert "_conflicts" not in db.get("a", conflicts=True)


def test_a_202_reap_beside_the_holders_finish_is_withdrawn(db, couch):
    """A reap (locked -> todo) that a cluster accepted on too few copies while the others
    took the holder's late finish of the same revision: the reaper checks every copy,
    deletes its own revision and decides again (nothing to reap), so the token is not
    offered to another pilot and no conflict stays."""
    now = time.time()
    make_tokens(db, [token("r1", ["true"], state="locked", attempts=1,
                           lease={"claim": "c0", "pilot": "late", "claimed": now - 120, "expires": now - 60})])
    held = db.get("r1")

    def the_holder_finished_on_the_other_copies(doc_id, new_rev):
        pos, parent = held["_rev"].split("-", 1)
        h = "f" * 32  # the highest revision id: CouchDB's winner
        done = dict(held, state="done", exit_code=0, lease=None, _rev=f"{int(pos) + 1}-{h}",
                    _revisions={"start": int(pos) + 1, "ids": [h, parent]})
        assert not db.bulk_docs([done], new_edits=False).errors

    proxy = QuorumProxy(couch.url, on_update=the_holder_finished_on_the_other_copies, handlers=["reap"])
    try:
        ans = client_via(proxy, couch, db, pilot="reaper").reap("r1", 0.0)
    finally:
        proxy.close()
    assert proxy.rewritten == 1
    assert not ans.ok and ans.reason == "state"  # decided again: the token is done
    assert [d["state"] for d in live(db, "r1")] == ["done"]
    assert "_conflicts" not in db.get("r1", conflicts=True)


def test_resolver_leaves_live_locks_alone_and_is_idempotent(db):
    from lrt.cli.tokens import format_status
    from lrt.queries.status import status_json

    make_tokens(db, [token("live", ["true"]), token("dead", ["true"]), token("fin", ["true"])])
    now = time.time()
    for doc_id in ("live", "dead", "fin"):
        doc = db.get(doc_id)
        exp = now + 3600 if doc_id == "live" else now - 100
        a, b = sibling(doc, "a", now - 50, exp), sibling(doc, "b", now - 40, exp)
        if doc_id == "fin":
            b.update(state="done", lease=None, exit_code=0)
        assert not db.bulk_docs([a], new_edits=False).errors
        assert not db.bulk_docs([b], new_edits=False).errors
    ids = ["dead", "fin", "live"]
    poll(lambda: conflicted_count(db) == 3, what="three conflicted tokens in the view")
    st = status_json(db)
    assert st["conflicted"] == 3 and "3 document(s) with conflicting revisions" in format_status(st)

    # someone else (a pilot that yielded) already deleted one losing leaf of "dead"
    dead_b = [d for d in live(db, "dead") if d["lease"]["claim"] == "b"][0]
    db.bulk_docs([{"_id": "dead", "_rev": dead_b["_rev"], "_deleted": True}])
    reps = {r["id"]: r for r in resolve_conflicts(db, ids)}
    assert set(reps) == {"fin"}  # dead has one live leaf now; live has live leases: left alone
    assert reps["fin"]["state"] == "done" and "failed" not in reps["fin"]
    assert [d["state"] for d in live(db, "fin")] == ["done"]
    assert len(live(db, "live")) == 2
    assert resolve_conflicts(db, ids) == []  # nothing more to do: idempotent
    poll(lambda: conflicted_count(db) == 1, what="only the live-leased token conflicted")


# ---------------------------------------------------------------------------
# creation: a new token answered 202


CREATE3 = "type: sw\ncommand: [a]\nid: 'sw_{i}'\nsweep: {i: {range: [0, 3]}}\n"


def first_revision(doc: dict, h: str) -> dict:
    """Another creator's first revision of ``doc`` with revision id ``1-<h>``: a second
    root of the revision tree, as a copy that accepted that creator's write holds it."""
    return dict(doc, _rev=f"1-{h}", _revisions={"start": 1, "ids": [h]}, created=doc["created"] + 1)


def create_via(proxy, couch, db, on_create):
    proxy.match, proxy.on_claim = is_creation, on_create
    return TokenSet.from_text(CREATE3).create(couch.server(proxy.url).database(db.name))


def test_a_202_new_token_alone_on_every_copy_is_created(db, couch, proxy):
    res = create_via(proxy, couch, db, None)
    assert proxy.rewritten == 1
    assert (res.created, res.present, res.failed, res.checked, res.withdrawn) == (3, 0, 0, 3, 0)
    assert [len(live(db, f"sw_{i}")) for i in range(3)] == [1, 1, 1]


def test_a_202_new_token_beside_the_winning_first_revision_is_withdrawn(db, couch, proxy):
    """The sibling is CouchDB's winner (highest revision id): its creator may have been
    answered 201 and counted it; ours is removed and counted present."""
    sibs = {}

    def another_creator_won(docs):
        sibs.update({d["_id"]: first_revision(d, "f" * 32) for d in docs})
        assert not db.bulk_docs(list(sibs.values()), new_edits=False).errors

    res = create_via(proxy, couch, db, another_creator_won)
    assert (res.created, res.present, res.failed, res.checked, res.withdrawn) == (0, 3, 0, 3, 3)
    for doc_id, sib in sibs.items():
        assert [d["_rev"] for d in live(db, doc_id)] == [sib["_rev"]]
        assert "_conflicts" not in db.get(doc_id, conflicts=True)


def test_a_winning_202_new_token_waits_for_the_sibling_to_go(db, couch, proxy, monkeypatch):
    """Ours is CouchDB's winner: a sibling whose creator removes it (it lost) leaves ours
    created; one that stays (answered 201) makes ours lose after the wait."""
    import lrt.tokens

    monkeypatch.setattr(lrt.tokens, "CONFIRM_WAIT", 2.0)
    sibs = {}

    def a_loser_withdraws_one(docs):
        sibs.update({d["_id"]: first_revision(d, "0" * 32) for d in docs})
        assert not db.bulk_docs(list(sibs.values()), new_edits=False).errors

        def later():
            time.sleep(0.3)
            db.bulk_docs([{"_id": "sw_0", "_rev": sibs["sw_0"]["_rev"], "_deleted": True}])
        threading.Thread(target=later, daemon=True).start()

    res = create_via(proxy, couch, db, a_loser_withdraws_one)
    assert (res.created, res.present, res.failed, res.checked, res.withdrawn) == (1, 2, 0, 3, 2)
    assert [d["_rev"] != sibs["sw_0"]["_rev"] for d in live(db, "sw_0")] == [True]
    for doc_id in ("sw_1", "sw_2"):
        assert [d["_rev"] for d in live(db, doc_id)] == [sibs[doc_id]["_rev"]]


# ---------------------------------------------------------------------------
# a real cluster


@pytest.mark.cluster
def test_pilots_on_every_node_run_each_token_once_and_leave_no_conflict(couch, tmp_path):
    """Pilots connected to different nodes claim the same tokens from views that each
    node serves from its own copies; every token runs exactly once, and when they are
    done no document has conflicting revisions."""
    with cluster_db(couch, "cluster") as db:
        rec = tmp_path / "rec"
        rec.mkdir()
        n = int(os.environ.get("LRT_TEST_CLUSTER_TOKENS", "300"))
        ids = make_tokens(db, (token(f"c{i:04d}", RECORD + [str(rec)]) for i in range(n)))
        for u in couch.nodes:  # every node answers the claim view before the pilots start
            v = couch.server(u).database(db.name)
            poll(lambda: len(v.view("lrt-window", "todo", limit=n + 1)["rows"]) == n, timeout=120,
                 what=f"the claim view on {u}")
        count = int(os.environ.get("LRT_TEST_CLUSTER_PILOTS", str(3 * len(couch.nodes))))
        # a small window: pilots meet on the same tokens
        procs = pilots_on_every_node(couch, db, count, tmp_path, "--idle-exit", "8", "--poll", "0.5",
                                     "--batch", "5", "--lease", "60", "--reap-grace", "5",
                                     "--stats", str(tmp_path / "stats{i}.json"))
        assert [p.wait(1800) for p in procs] == [0] * len(procs)
        runs = executions(rec)
        dup = [i for i, k in Counter(runs).items() if k > 1]
        assert not dup, f"{len(dup)} token(s) ran more than once, e.g. {dup[:5]}"
        assert sorted(runs) == sorted(ids)
        stats = [json.loads((tmp_path / f"stats{i}.json").read_text()) for i in range(len(procs))]
        print("claims", sum(s["claims"] for s in stats), "confirms", sum(s["confirms"] for s in stats),
              "dropped", sum(s["dropped"] for s in stats), "resolved", sum(s["resolved"] for s in stats))
        # every copy of every token has one live leaf, done
        for doc_id in ids:
            leaves = live(db, doc_id)
            assert [d["state"] for d in leaves] == ["done"], (doc_id, leaves)
        no_conflict_on_any_node(couch, db)
