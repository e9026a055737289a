// Waiting tokens, keyed by [shard, _id] (shard: a hash of the id over 64), so that
// the sweep of idle pilots and `lrt reap` (lrt/deps) starts at a random shard and
// pilots spread over the waiting tokens instead of all re-reading the first ones.
function (doc) {
  if (doc.kind === 'token' && doc.state === 'waiting') {
    var h = 0;
    for (var i = 0; i < doc._id.length; i++) {
      h = (h * 31 + doc._id.charCodeAt(i)) % 64;
    }
    emit([h, doc._id], null);
  }
}
