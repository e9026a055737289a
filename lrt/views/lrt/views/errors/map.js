// Tokens whose last attempt ended in an error, keyed by [error code, type, state].
// The built-in _count reduce gives "how many tokens failed with which code".
function (doc) {
  if (doc.kind === 'token' && doc.error && (doc.state === 'error' || doc.state === 'failed' ||
                                            doc.state === 'todo')) {
    emit([doc.error.code, doc.type, doc.state], doc.error.name || null);
  }
}
