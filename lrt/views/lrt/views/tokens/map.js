// Every token keyed by [state, type, _id].  With the built-in _count reduce and
// group_level=2 this is the status table (counts per state and type) in one
// query; with reduce=false and startkey [S, T], endkey [S, T, {}] it lists the
// tokens of one state and type for list/reset/delete.  The _id makes keys
// unique, so paging by startkey is exact on every server.
function (doc) {
  if (doc.kind === 'token') {
    emit([doc.state, doc.type, doc._id], null);
  }
}
