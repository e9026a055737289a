// Finished tokens by the minute of their end (server clock), for the done/failed-per-minute
// plot, the rate behind the ETA and `lrt status --watch`.  Key [type or null, hour, 5-minute,
// minute] (hour = floor(minute / 60), 5-minute = floor(minute / 5), minute =
// floor(finished / 60)), value [done, failed] summed by _sum (failed = states error and
// failed; cancelled tokens are not counted).  Every token is emitted twice, once with its
// type and once with type null (all types).  One query per bucket width over a contiguous
// key range: group_level=2 gives one row per hour, 3 per 5 minutes, 4 per minute, each with
// both outcomes, so the dashboard reads old parts of its window in hours and only the recent
// minutes one by one (CouchDB's grouped reduce costs about a millisecond per group; see
// lrt/queries/rates.py and docs/benchmarks.md "Dashboard").
function (doc) {
  if (doc.kind !== 'token') { return; }
  var s = doc.state, v = null;
  if (s === 'done') { v = [1, 0]; } else if (s === 'error' || s === 'failed') { v = [0, 1]; }
  if (v === null) { return; }
  var t = (doc.timings && typeof doc.timings.finished === 'number') ? doc.timings.finished : doc.updated;
  if (typeof t !== 'number') { return; }
  var m = Math.floor(t / 60), h = Math.floor(m / 60), f = Math.floor(m / 5);
  emit([null, h, f, m], v);
  if (typeof doc.type === 'string') { emit([doc.type, h, f, m], v); }
}
