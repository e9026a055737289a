// Locked tokens keyed by lease expiry (server clock, Unix seconds): the reaper
// asks for endkey = now - grace to find leases that ran out.
function (doc) {
  if (doc.kind === 'token' && doc.state === 'locked') {
    var lease = doc.lease || {};
    emit(lease.expires || 0, {type: doc.type, pilot: lease.pilot || null, host: doc.host || null});
  }
}
