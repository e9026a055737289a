// The dashboard's and `lrt list`'s token rows, with the columns in the value so a
// list never needs include_docs.  Three key spaces, each ending in the _id so
// keys are unique and paging by startkey is exact:
//   ["s", state, type, _id]                 list by state and type
//   ["ts", tokenset, state, type, _id]      list / count by tokenset (group_level=3 or 4)
//   ["e", error code, state, type, _id]     list by error code
// value {a: attempts, p: pilot, h: host, d: wall seconds, e: error code, t: tokenset,
//        u: updated, st: [inputs online, inputs total] while staging}
function (doc) {
  if (doc.kind !== 'token') { return; }
  var err = doc.error || null;
  var v = {a: doc.attempts || 0, p: doc.pilot || null, h: doc.host || null,
           d: (doc.timings && typeof doc.timings.wall === 'number') ? doc.timings.wall : null,
           e: err && err.code !== undefined ? err.code : null, t: doc.tokenset || null,
           u: doc.updated || null};
  if (doc.state === 'staging' && doc.staging) {
    v.st = [doc.staging.online || 0, doc.staging.total || 0];
  }
  emit(['s', doc.state, doc.type, doc._id], v);
  emit(['ts', doc.tokenset || '', doc.state, doc.type, doc._id], v);
  if (err && err.code !== undefined && err.code !== null) {
    emit(['e', err.code, doc.state, doc.type, doc._id], v);
  }
}
