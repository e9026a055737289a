// The dependency graph at the level of token sets: [child set, parent set] for
// every dependency (a per-token dependency records its parent's set as `set`).
// With _count and group=true it is the whole graph in one small answer: `lrt
// create` refuses a config that would close a cycle.
function (doc) {
  if (doc.kind === 'token' && doc.after && doc.after.length) {
    for (var i = 0; i < doc.after.length; i++) {
      var d = doc.after[i] || {};
      var parent = d.tokenset || d.set;
      if (parent) {
        emit([doc.tokenset, parent], null);
      }
    }
  }
}
