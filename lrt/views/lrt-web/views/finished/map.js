// Finished tokens by minute of their end (server clock): key [minute, state, type]
// where minute = floor(finished / 60).  With _count and group_level=3 over a
// startkey/endkey range of minutes this is the done/failed-per-minute plot and
// the rate behind the ETA, in one query whatever the number of tokens.
function (doc) {
  if (doc.kind !== 'token') { return; }
  var s = doc.state;
  if (s !== 'done' && s !== 'error' && s !== 'failed' && s !== 'cancelled') { return; }
  var t = (doc.timings && typeof doc.timings.finished === 'number') ? doc.timings.finished : doc.updated;
  if (typeof t !== 'number') { return; }
  emit([Math.floor(t / 60), s, doc.type], null);
}
