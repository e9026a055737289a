// Tokens per [tokenset, state].  With the built-in _count and group_level=2 over
// startkey [S], endkey [S, {}], a set-level dependency is decided from counts (one
// reduce read), not by reading the set's tokens: of the parents of a set only the
// finish that completes the set, as this count sees it, writes the child.
function (doc) {
  if (doc.kind === 'token') {
    emit([doc.tokenset, doc.state], null);
  }
}
