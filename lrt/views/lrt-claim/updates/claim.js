// Claim one token for one pilot, judged on the DOCUMENT and the SERVER clock.
// PUT _design/lrt-claim/_update/claim/<id>, JSON body:
//   {claim: uuid (made by the pilot; a retried request with the same claim is
//    answered as a success, so a lost response never loses the token),
//    pilot, host, batch_job, type (optional: must match), lease_seconds,
//    remaining (optional: seconds of walltime the pilot has left)}
// Convention of every lrt-claim handler: a write answers 201/202 with
// {ok: true, ...}; a refusal writes nothing and answers 200 with
// {ok: false, reason: "..."}; a 409 means the write lost a race: call again.
function (doc, req) {
  __LRT_PRELUDE__;
  function answer(json) { json.now = now; return [null, {code: 200, json: json}]; }
  if (!b || typeof b.claim !== 'string' || !b.claim) { return no('bad_request'); }
  if (!doc) { return no('missing'); }
  if (doc.kind !== 'token') { return no('not_token'); }
  if (doc._conflicts && doc._conflicts.length) { return no('conflicted'); }
  var lease = doc.lease || null;
  if (doc.state === 'locked' && lease && lease.claim === b.claim) {
    delete doc._revisions;
    return answer({ok: true, repeated: true, doc: doc});
  }
  if (doc.state !== 'todo' || (T[doc.state] || []).indexOf('locked') < 0) {
    return no('state', {state: doc.state});
  }
  if (lease) { return no('leased'); }
  if (doc.cancel_requested) { return no('cancel_requested'); }
  if (b.type && doc.type !== b.type) { return no('type'); }
  if ((doc.not_before || 0) > now) { return no('not_before', {not_before: doc.not_before}); }
  if (typeof b.remaining === 'number' && doc.expected_duration &&
      doc.expected_duration > b.remaining) {
    return no('walltime', {expected_duration: doc.expected_duration});
  }
  var secs = Number(b.lease_seconds) || 600;
  delete doc._revisions;
  doc.state = 'locked';
  doc.attempts = (doc.attempts || 0) + 1;
  doc.lease = {pilot: b.pilot || null, claim: b.claim, claimed: now, renewed: now,
               expires: now + secs};
  doc.pilot = b.pilot || null;
  doc.host = b.host || null;
  doc.batch_job = b.batch_job || null;
  doc.exit_code = null;
  doc.error = null;
  doc.log_tail = null;
  doc.cancel_requested = false;
  doc.timings = {claimed: now};
  doc.updated = now;
  return [doc, {json: {ok: true, doc: doc, now: now}}];
}
