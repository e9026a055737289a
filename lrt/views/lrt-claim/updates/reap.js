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
  var dst = (doc.attempts || 0) >= dflt('reap', 'max_attempts') ? 'failed' : 'todo';
  if (doc.cancel_requested) { dst = 'cancelled'; }
  if ((T.locked || []).indexOf(dst) < 0) { return no('transition'); }
  var err = failure('reap', 'lease of pilot ' + (lease.pilot || '?') + ' expired at ' + expires +
                            ' (server clock); reaped at ' + now);
  record('reap', dst, null, err);
  edge('reap');
  doc.state = dst;
  doc.error = err;
  doc.updated = now;
  return [doc, {json: {ok: true, state: dst, now: now}}];
}
