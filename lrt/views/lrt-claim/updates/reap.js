// Recover a token whose pilot vanished: only if its lease expired more than
// `grace` seconds ago by the SERVER's clock (the caller's clock is never
// trusted).  The attempt is recorded as PILOT_LOST; the token goes back to
// todo, or to failed when max_attempts are used up.
// PUT _design/lrt-claim/_update/reap/<id>, body {grace}.
function (doc, req) {
  // keep in step with lrt.states.HISTORY_LIMIT (a test checks they agree)
  var HISTORY_LIMIT = 20;
  var T = __LRT_TRANSITIONS__;
  var now = Date.now() / 1000;
  var b;
  try { b = JSON.parse(req.body || '{}'); } catch (e) { b = null; }
  function no(reason, extra) {
    var r = {ok: false, reason: reason, now: now};
    for (var k in (extra || {})) { r[k] = extra[k]; }
    return [null, {code: 200, json: r}];
  }
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
  var h = doc.history || [];
  h.push({end: 'reap', attempt: doc.attempts || 0, claim: lease.claim || null,
          pilot: lease.pilot || doc.pilot || null, host: doc.host || null,
          batch_job: doc.batch_job || null, claimed: lease.claimed || null, finished: now,
          state: dst, exit_code: null, error: {code: 41, name: 'PILOT_LOST'}});
  while (h.length > HISTORY_LIMIT) { h.shift(); }
  doc.history = h;
  doc.state = dst;
  doc.error = err;
  doc.lease = null;
  doc.pilot = null;
  doc.host = null;
  doc.batch_job = null;
  doc.exit_code = null;
  doc.cancel_requested = false;
  doc.updated = now;
  return [doc, {json: {ok: true, state: dst, now: now}}];
}
