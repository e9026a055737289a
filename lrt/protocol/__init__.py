"""The token protocol: claim, heartbeat, finish, release, reap, cancel, and
conflict resolution -- used by the pilot, the admin commands and the web app.

Two kinds of writes, chosen per operation (docs/pilot.md, docs/design.md):

* **claim and finish** -- the two writes every token needs -- are made by the
  pilot as plain MVCC writes: the pilot holds the document at a revision,
  decides (:func:`lrt.protocol.decisions.lock_doc`,
  :func:`~lrt.protocol.decisions.finish_doc`, checked against
  :mod:`lrt.states`), and writes it back with that ``_rev``.  CouchDB accepts
  the write only if nobody changed the document since, so the decision is
  always made on the current document, never on a stale view row.  Because
  they are ordinary document writes, the finish of one token and the claim of
  the next travel in **one** ``_bulk_docs`` request
  (:meth:`lrt.protocol.client.TokenClient.commit`): one request per token on
  the happy path, where an update handler needs two.
* **heartbeat, release, reap, cancel** go through ``_update`` handlers in
  ``_design/lrt-claim`` (``lrt/views/lrt-claim/updates``): they run on the
  server's clock (lease renewal and expiry) or are called by someone who does
  not hold the document (reap, cancel).  Handler convention: a write answers
  201 (202 on a cluster whose write quorum was not reached) with
  ``{"ok": true, ...}``; a refusal writes nothing and answers 200 with
  ``{"ok": false, "reason": "..."}``; 409 means the write lost a race.

Clock: a claim stamps ``lease.claimed``/``expires`` with the pilot's estimate of
the *server's* clock (:meth:`lrt.couch.Server.note_server_time`, refined from
every handler answer -- an estimate that errs late by at most a round trip --,
else from ``Date`` headers); renewals and expiry are decided by handlers on the
server clock itself.

One concept per module:

* :mod:`lrt.protocol.decisions` -- the two pilot-made transitions as pure
  functions of the document (``lock_doc``, ``finish_doc``, the history entry);
* :mod:`lrt.protocol.client` -- ``TokenClient``: the writes (combined
  finish + claim, handler calls) and the server clock estimate;
* :mod:`lrt.protocol.window` -- ``Candidates``: the window of claimable rows
  read from the ``todo`` view;
* :mod:`lrt.protocol.conflicts` -- which leaf of a conflicted token survives,
  and the resolver;
* :mod:`lrt.protocol.quorum` -- writes a cluster accepted on fewer copies than
  its quorum (202): read every copy, keep the write only if it is the sole leaf;
* :mod:`lrt.protocol.reaping` -- tokens whose lease expired;
* :mod:`lrt.protocol.stats` -- the counters a pilot reports.

Pilot path: standard library + :mod:`lrt.couch` + :mod:`lrt.states` only.
Nothing here imports :mod:`lrt.pilot`, :mod:`lrt.cli` or :mod:`lrt.web`.
Nothing is imported here, so a caller loads only the modules it uses.
"""
