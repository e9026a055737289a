// Renew the lease of a running token.  Fencing: refused unless the token is
// still locked under the caller's claim (the pilot then kills its payload and
// leaves the token alone).  Also tells the pilot whether a cancel or a release
// (stop and requeue, lrt release) was asked.
// PUT _design/lrt-claim/_update/heartbeat/<id>, body {claim, lease_seconds}.
function (doc, req) {
  __LRT_PRELUDE__;
  if (!b || !b.claim) { return no('bad_request'); }
  if (!doc) { return no('missing'); }
  if (doc.state !== 'locked' || !doc.lease || doc.lease.claim !== b.claim) {
    return no('fenced', {state: doc.state});
  }
  var secs = Number(b.lease_seconds) || EDGES.renew.defaults.lease_seconds;
  delete doc._revisions;
  doc.lease.renewed = now;
  doc.lease.expires = now + secs;
  return [doc, {json: {ok: true, now: now, expires: doc.lease.expires,
                       cancel_requested: !!doc.cancel_requested,
                       release_requested: !!doc.release_requested}}];
}
