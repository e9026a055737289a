// The claim queue, alone in its design document so that a claim never waits for
// the monitoring indexes.  Key: [type, -priority, shard, created, _id]: per type,
// highest priority first; within a priority, the tokens are spread over
// __LRT_QUEUE_SHARDS__ shards by a hash of their id, so that pilots can start reading
// at a random shard and do not all fight for the first rows (lrt/protocol/window.py,
// Candidates); oldest first within a shard.  Conflicted documents are left out
// until resolved.  The value carries what a pilot needs to skip a candidate
// without a write: not_before (retry backoff, server clock) and expected_duration
// (walltime fit), both in seconds.
function (doc) {
  if (doc.kind === 'token' && doc.state === 'todo' && !doc._conflicts) {
    var h = 0;
    for (var i = 0; i < doc._id.length; i++) {
      h = (h * 31 + doc._id.charCodeAt(i)) % __LRT_QUEUE_SHARDS__;
    }
    emit([doc.type, -(doc.priority || 0), h, doc.created || 0, doc._id],
         {nb: doc.not_before || 0, dur: doc.expected_duration || 0});
  }
}
