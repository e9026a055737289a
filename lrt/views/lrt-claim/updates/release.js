// Give a running token back at once (the pilot got SIGTERM/SIGINT or reached
// its walltime): todo again, immediately claimable, and the attempt is NOT
// counted (attempts - 1; preemptions + 1), recorded in history as PREEMPTED.
// PUT _design/lrt-claim/_update/release/<id>, body {claim, log_tail,
// attachments, message}.
function (doc, req) {
  var T = __LRT_TRANSITIONS__;
  // keep in step with lrt.states.HISTORY_LIMIT (a test checks they agree)
  var HISTORY_LIMIT = 20;
  var now = Date.now() / 1000;
  var b;
  try { b = JSON.parse(req.body || '{}'); } catch (e) { b = null; }
  function no(reason, extra) {
    var r = {ok: false, reason: reason, now: now};
    for (var k in (extra || {})) { r[k] = extra[k]; }
    return [null, {code: 200, json: r}];
  }
  if (!b || !b.claim) { return no('bad_request'); }
  if (!doc) { return no('missing'); }
  var last = (doc.history || [])[(doc.history || []).length - 1];
  if (last && last.claim === b.claim && last.end === 'release' && doc.state !== 'locked') {
    // a repeated request whose first answer was lost: already recorded
    return [null, {code: 200, json: {ok: true, repeated: true, state: doc.state, now: now}}];
  }
  if (doc.state !== 'locked' || !doc.lease || doc.lease.claim !== b.claim) {
    return no('fenced', {state: doc.state});
  }
  if ((T.locked || []).indexOf('todo') < 0) { return no('transition'); }
  delete doc._revisions;
  var lease = doc.lease;
  var err = {code: 42, name: 'PREEMPTED', 'class': 'system',
             message: String(b.message || 'pilot stopped; token released').substring(0, 2000)};
  var h = doc.history || [];
  h.push({end: 'release', attempt: doc.attempts || 0, claim: lease.claim, pilot: lease.pilot || doc.pilot || null,
          host: doc.host || null, batch_job: doc.batch_job || null, claimed: lease.claimed,
          finished: now, state: 'todo', exit_code: null, error: {code: 42, name: 'PREEMPTED'}});
  while (h.length > HISTORY_LIMIT) { h.shift(); }
  doc.history = h;
  doc.attempts = Math.max(0, (doc.attempts || 0) - 1);
  doc.preemptions = (doc.preemptions || 0) + 1;
  doc.state = 'todo';
  doc.lease = null;
  doc.pilot = null;
  doc.host = null;
  doc.batch_job = null;
  doc.exit_code = null;
  doc.error = err;
  if (b.log_tail !== undefined) { doc.log_tail = b.log_tail; }
  if (b.attachments) {
    doc._attachments = doc._attachments || {};
    for (var name in b.attachments) { doc._attachments[name] = b.attachments[name]; }
  }
  if (doc.cancel_requested) { doc.state = 'cancelled'; doc.cancel_requested = false; }
  doc.updated = now;
  return [doc, {json: {ok: true, state: doc.state, now: now}}];
}
