// The reverse index of dependencies (lrt/deps): every token that waits for others,
// keyed by what it waits for -- ['id', parent id] for a per-token dependency,
// ['set', tokenset] for a whole set -- whatever its own state, so that a reset of
// a parent also finds the children that already ran.  Value: the child's state
// and the dependency's `on` (ok, any, notok).  A pilot that records a parent's
// finish reads the rows of that parent's id and set (one request).  Alone in
// _design/lrt-deps so that neither the claim queue nor the status view is rebuilt.
function (doc) {
  if (doc.kind === 'token' && doc.after && doc.after.length) {
    for (var i = 0; i < doc.after.length; i++) {
      var d = doc.after[i] || {};
      if (d.id) {
        emit(['id', d.id], {state: doc.state, on: d.on || 'ok'});
      } else if (d.tokenset) {
        emit(['set', d.tokenset], {state: doc.state, on: d.on || 'ok'});
      }
    }
  }
}
