// Documents with conflicting revisions (possible on a CouchDB cluster).  They are
// kept out of the claim queue until resolved (see docs/design.md).
function (doc) {
  if (doc._conflicts) {
    emit(doc._id, doc._conflicts);
  }
}
