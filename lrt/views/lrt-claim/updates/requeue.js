// Ask the pilot running a token to stop it and give it back: the pilot sees
// release_requested at its next look at the token (every --cancel-check
// seconds), stops the payload and calls `release` (todo again, the attempt NOT
// counted).  Only for a locked token; a cancel request wins over it.
// PUT _design/lrt-claim/_update/requeue/<id>, body {} (optional {by}).
function (doc, req) {
  __LRT_PRELUDE__;
  b = b || {};
  if (!doc) { return no('missing'); }
  if (doc.kind !== 'token') { return no('not_token'); }
  if (doc.state !== 'locked') { return no('state', {state: doc.state}); }
  if (doc.release_requested) { return no('already_requested', {state: 'locked'}); }
  delete doc._revisions;
  doc.release_requested = {by: String((b && b.by) || 'a user').substring(0, 200), at: now};
  doc.updated = now;
  return [doc, {json: {ok: true, state: 'locked', release_requested: true, now: now}}];
}
