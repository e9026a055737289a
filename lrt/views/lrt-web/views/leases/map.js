// Live leases by pilot: key [pilot, _id] for every locked token, value what the
// Pilots page shows (no include_docs): {type, host, claimed, renewed, expires,
// job: batch job id, system: batch system}.  _count with group_level=1 counts
// the tokens each pilot holds.
function (doc) {
  if (doc.kind !== 'token' || doc.state !== 'locked') { return; }
  var l = doc.lease || {};
  var j = doc.batch_job || {};
  emit([l.pilot || doc.pilot || '', doc._id],
       {type: doc.type, host: doc.host || null, claimed: l.claimed || null, renewed: l.renewed || null,
        expires: l.expires || null, job: j.id === undefined ? null : String(j.id), system: j.system || null});
}
