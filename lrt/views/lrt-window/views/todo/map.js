// The claim window: lrt-claim/todo's rows (same filter, same key) with the whole
// document as the value, so a pilot reads its window without include_docs, which
// makes CouchDB look up every row's document (about 0.3 ms of server CPU per row
// on Apache CouchDB 3.4; the value costs a larger index instead: docs/benchmarks.md).
// A design document of its own, so adding it did not rebuild lrt-claim's index.
// The document is the one indexed: its _rev makes a claim from it a conditional
// write, so a stale row only loses its claim (409), as with include_docs.
// Keep the key identical to lrt-claim/todo/map.js.
function (doc) {
  if (doc.kind === 'token' && doc.state === 'todo' && !doc._conflicts) {
    var h = 0;
    for (var i = 0; i < doc._id.length; i++) {
      h = (h * 31 + doc._id.charCodeAt(i)) % __LRT_QUEUE_SHARDS__;
    }
    emit([doc.type, -(doc.priority || 0), h, doc.created || 0, doc._id], doc);
  }
}
