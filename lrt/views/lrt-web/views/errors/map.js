// Tokens whose last attempt ended in an error, grouped for the Failures page:
// key [error code, message prefix, type, state], value the time of the error
// (updated, server clock).  The prefix is the first line of the message with
// digit runs replaced by '#', so "exit status 3" and "exit status 4" group
// together.  _stats gives per group the count and first/last seen (min/max);
// group_level=1 groups by code, 2 by code and prefix; reduce=false lists the
// tokens of a group (the _id breaks ties, so paging by startkey/docid is exact).
function (doc) {
  if (doc.kind !== 'token' || !doc.error) { return; }
  if (doc.state !== 'error' && doc.state !== 'failed' && doc.state !== 'todo') { return; }
  var msg = String(doc.error.message || '').split('\n')[0];
  var prefix = msg.replace(/[0-9]+/g, '#').replace(/\s+/g, ' ').replace(/^\s+|\s+$/g, '').slice(0, 60);
  var code = doc.error.code === undefined ? null : doc.error.code;
  emit([code, prefix, doc.type, doc.state], typeof doc.updated === 'number' ? doc.updated : 0);
}
