// Recover a token whose pilot vanished: only if its lease expired more than
// `grace` seconds ago by the SERVER's clock (the caller's clock is never
// trusted).  The attempt is recorded as PILOT_LOST; the token goes back to
// todo, or to failed when max_attempts are used up.
// PUT _design/lrt-claim/_update/reap/<id>, body {grace}.
function (doc, req) {
  __LRT_PRELUDE__;
  if (!b) { return no('bad_request'); }
  if (!doc) { return no('missing'); }
  if (doc.kind !== 'token' || doc.state !== 'locked') { return no('state', {state: doc.state}); }
  var grace = Math.max(0, Number(b.grace) || 0);
  var lease = doc.lease || {};
  var expires = lease.expires || 0;
  if (expires + grace >= now) { return no('alive', {expires: expires}); }
  var max = (doc.max_attempts === undefined || doc.max_attempts === null) ? 3 : doc.max_attempts;
  var dst = (doc.attempts || 0) >= max ? 'failed' : 'todo';
  if (doc.cancel_requested) { dst = 'cancelled'; }
  if ((T.locked || []).indexOf(dst) < 0) { return no('transition'); }
  delete doc._revisions;
  var err = {code: 41, name: 'PILOT_LOST', 'class': 'system',
             message: 'lease of pilot ' + (lease.pilot || '?') + ' expired at ' + expires +
                      ' (server clock); reaped at ' + now};
  record('reap', dst, null, err);
  doc.state = dst;
  doc.error = err;
  unlease();
  doc.exit_code = null;
  doc.cancel_requested = false;
  delete doc.release_requested;
  doc.updated = now;
  return [doc, {json: {ok: true, state: dst, now: now}}];
}
