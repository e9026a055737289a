// Shared by every lrt-claim update handler.  lrt/design.py pastes this file
// where a handler has the line `__LRT_PRELUDE__;` (update handlers have no
// include mechanism that both Apache CouchDB and pouchdb-server support), and
// fills in the transition table, the edge specs (fields each edge clears, its
// defaults and error code) and the history bound from lrt/states.py.
// It relies on the handler's arguments being named (doc, req).
  var T = __LRT_TRANSITIONS__;
  var EDGES = __LRT_EDGES__;
  var HISTORY_LIMIT = __LRT_HISTORY_LIMIT__;
  var now = Date.now() / 1000;
  var b;
  try { b = JSON.parse(req.body || '{}'); } catch (e) { b = null; }
  // a refusal: nothing written, 200 {ok: false, reason}
  function no(reason, extra) {
    var r = {ok: false, reason: reason, now: now};
    for (var k in (extra || {})) { r[k] = extra[k]; }
    return [null, {code: 200, json: r}];
  }
  // true when this call repeats one whose answer was lost: the attempt that
  // `end`ed under the caller's claim is already the last history entry
  function repeated(end) {
    var hist = doc.history || [];
    var last = hist[hist.length - 1];
    return !!(b && last && last.claim === b.claim && last.end === end && doc.state !== 'locked');
  }
  // append the attempt that just ended to the token's bounded history
  function record(end, dst, exitCode, err) {
    var lease = doc.lease || {};
    var h = doc.history || [];
    h.push({end: end, attempt: doc.attempts || 0, claim: lease.claim || null,
            pilot: lease.pilot || doc.pilot || null, host: doc.host || null,
            batch_job: doc.batch_job || null, claimed: lease.claimed || null,
            expires: lease.expires || null, finished: now,
            state: dst, exit_code: exitCode, error: err ? {code: err.code, name: err.name} : null,
            late_request: null});
    while (h.length > HISTORY_LIMIT) { h.shift(); }
    doc.history = h;
  }
  // log attachments sent inline by the pilot (base64, small logs only)
  function attach(atts) {
    if (!atts) { return; }
    doc._attachments = doc._attachments || {};
    for (var name in atts) { doc._attachments[name] = atts[name]; }
  }
  // what edge `name` does to the token besides its state (lrt/states.py: Edge)
  function edge(name) {
    var e = EDGES[name], i, k;
    for (i = 0; i < e.removes.length; i++) { delete doc[e.removes[i]]; }
    for (i = 0; i < e.clears.length; i++) { doc[e.clears[i]] = null; }
    for (k in e.resets) { doc[k] = e.resets[k]; }
  }
  // doc[key], or edge `name`'s default when it is absent or null
  function dflt(name, key) {
    var v = doc[key];
    return (v === undefined || v === null) ? EDGES[name].defaults[key] : v;
  }
  // the token's error field with edge `name`'s error code
  function failure(name, message) {
    var c = EDGES[name].error;
    return {code: c.code, name: c.name, 'class': c['class'], message: message};
  }
