// The claim queue, alone in its design document so that a claim never waits for
// the monitoring indexes.  Key: [type, -priority, created, _id]: per type,
// highest priority first, then oldest.  Conflicted documents are left out until
// resolved.  The value carries what a pilot needs to pick a candidate without
// reading the document: not_before (retry backoff, server clock) and
// expected_duration (walltime fit), both in seconds.
function (doc) {
  if (doc.kind === 'token' && doc.state === 'todo' && !doc._conflicts) {
    emit([doc.type, -(doc.priority || 0), doc.created || 0, doc._id],
         {nb: doc.not_before || 0, dur: doc.expected_duration || 0});
  }
}
