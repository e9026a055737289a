// Give a running token back at once (the pilot got SIGTERM/SIGINT or reached
// its walltime, or was asked to: lrt release): todo again, immediately claimable, and the attempt is NOT
// counted (attempts - 1; preemptions + 1), recorded in history as PREEMPTED.
// PUT _design/lrt-claim/_update/release/<id>, body {claim, log_tail,
// attachments, message}.
function (doc, req) {
  __LRT_PRELUDE__;
  if (!b || !b.claim) { return no('bad_request'); }
  if (!doc) { return no('missing'); }
  if (repeated('release')) {
    return [null, {code: 200, json: {ok: true, repeated: true, state: doc.state, now: now}}];
  }
  if (doc.state !== 'locked' || !doc.lease || doc.lease.claim !== b.claim) {
    return no('fenced', {state: doc.state});
  }
  if ((T.locked || []).indexOf('todo') < 0) { return no('transition'); }
  var err = failure('release', String(b.message || 'pilot stopped; token released').substring(0, 2000));
  record('release', 'todo', null, err);
  edge('release');
  doc.attempts = Math.max(0, (doc.attempts || 0) - 1);
  doc.preemptions = (doc.preemptions || 0) + 1;
  doc.state = 'todo';
  doc.error = err;
  if (b.log_tail !== undefined) { doc.log_tail = b.log_tail; }
  attach(b.attachments);
  if (doc.cancel_requested) { doc.state = 'cancelled'; doc.cancel_requested = false; }
  doc.updated = now;
  return [doc, {json: {ok: true, state: doc.state, now: now}}];
}
