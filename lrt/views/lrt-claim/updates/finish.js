// Record the end of an attempt: done, cancelled, or an error that the SERVER
// turns into todo (retry with backoff), error (not retried) or failed
// (max_attempts used up).  Fenced like heartbeat: only the claim holder may.
// PUT _design/lrt-claim/_update/finish/<id>, body {claim, outcome:
// "done"|"error"|"cancelled", exit_code, error: {code,name,class,message},
// retryable (the error code's default), timings, log_tail, output,
// attachments: {name: {content_type, data (base64)}}}.
function (doc, req) {
  __LRT_PRELUDE__;
  if (!b || !b.claim) { return no('bad_request'); }
  if (!doc) { return no('missing'); }
  if (repeated('finish')) {
    return [null, {code: 200, json: {ok: true, repeated: true, state: doc.state, now: now}}];
  }
  if (doc.state !== 'locked' || !doc.lease || doc.lease.claim !== b.claim) {
    return no('fenced', {state: doc.state});
  }
  var err = b.error || null;
  var dst;
  if (b.outcome === 'done') {
    dst = 'done';
  } else if (b.outcome === 'cancelled' || (doc.cancel_requested && b.outcome !== 'done')) {
    dst = 'cancelled';
  } else {
    var retry = (err && err['class'] === 'payload') ?
        !!(doc.retry && doc.retry.payload_errors) : !!b.retryable;
    var max = (doc.max_attempts === undefined || doc.max_attempts === null) ? 3 : doc.max_attempts;
    if (!retry) { dst = 'error'; } else if ((doc.attempts || 0) >= max) { dst = 'failed'; } else { dst = 'todo'; }
  }
  if ((T.locked || []).indexOf(dst) < 0) { return no('transition', {to: dst}); }
  delete doc._revisions;
  var lease = doc.lease;
  var t = doc.timings || {};
  var bt = b.timings || {};
  for (var k in bt) { if (k !== 'claimed') { t[k] = bt[k]; } }
  t.finished = t.finished || now;
  doc.timings = t;
  doc.state = dst;
  doc.exit_code = (b.exit_code === undefined) ? null : b.exit_code;
  doc.error = (dst === 'done') ? null : err;
  if (b.log_tail !== undefined) { doc.log_tail = b.log_tail; }
  if (b.output !== undefined && b.output !== null) { doc.output = b.output; }
  attach(b.attachments);
  record('finish', dst, doc.exit_code, err);
  doc.lease = null;
  doc.cancel_requested = false;
  doc.updated = now;
  if (dst === 'todo') {
    var backoff = (doc.retry && typeof doc.retry.backoff === 'number') ? doc.retry.backoff : 30;
    doc.not_before = now + backoff * Math.pow(2, Math.max(0, (doc.attempts || 1) - 1));
    unlease();
  }
  return [doc, {json: {ok: true, state: dst, now: now, not_before: doc.not_before || null}}];
}
