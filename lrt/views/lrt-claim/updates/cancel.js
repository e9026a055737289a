// Cancel a token: waiting/staging/todo become cancelled at once; a locked
// token gets cancel_requested = true and its pilot stops the payload at its
// next look at the token (every --cancel-check seconds, 20 by default) and
// records it cancelled.
// PUT _design/lrt-claim/_update/cancel/<id>, body {} (optional {by}).
function (doc, req) {
  __LRT_PRELUDE__;
  b = b || {};
  if (!doc) { return no('missing'); }
  if (doc.kind !== 'token') { return no('not_token'); }
  delete doc._revisions;
  if (doc.state === 'locked') {
    if (doc.cancel_requested) { return no('already_requested', {state: 'locked'}); }
    doc.cancel_requested = true;
    doc.updated = now;
    return [doc, {json: {ok: true, state: 'locked', cancel_requested: true, now: now}}];
  }
  if ((T[doc.state] || []).indexOf('cancelled') < 0) { return no('state', {state: doc.state}); }
  var was = doc.state;
  doc.state = 'cancelled';
  doc.error = failure('cancel', 'cancelled by ' + String((b && b.by) || 'a user') + ' while ' + was);
  doc.updated = now;
  return [doc, {json: {ok: true, state: 'cancelled', now: now}}];
}
