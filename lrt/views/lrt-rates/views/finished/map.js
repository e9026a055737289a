// Finished tokens by minute of their end (server clock), for the done/failed-per-minute
// plot, the rate behind the ETA and `lrt status --watch`.  Key [outcome, type, minute]
// with outcome "done" or "failed" (error and failed states) and minute =
// floor(finished / 60); every token is emitted twice, once with its type and once with
// type null (all types), so one query per outcome over a contiguous key range with
// group_level=3 gives one row per minute, filtered by type or not.  (A key
// [minute, state, type] grouped at level 3 interleaves many small groups and is several
// times slower on CouchDB.)  Cancelled tokens are not counted.
function (doc) {
  if (doc.kind !== 'token') { return; }
  var s = doc.state, o = null;
  if (s === 'done') { o = 'done'; } else if (s === 'error' || s === 'failed') { o = 'failed'; }
  if (o === null) { return; }
  var t = (doc.timings && typeof doc.timings.finished === 'number') ? doc.timings.finished : doc.updated;
  if (typeof t !== 'number') { return; }
  var m = Math.floor(t / 60);
  emit([o, null, m], null);
  emit([o, doc.type, m], null);
}
