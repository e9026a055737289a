// UWS job lists (lrt/web/uws): the tokens made from a task, newest last.  Two key
// spaces, each ending in the _id so keys are unique:
//   ["o", task, owner, created, _id]   one user's jobs of a task (what a user lists)
//   ["a", task, created, _id]          everybody's jobs of a task (what an admin lists)
// value {s: state, c: created, x: destruction, r: run id, o: owner}
function (doc) {
  if (doc.kind !== 'token' || !doc.task || !doc.task.name) { return; }
  var v = {s: doc.state, c: doc.created || 0, x: doc.destruction || null,
           r: doc.run_id || null, o: doc.owner || null};
  emit(['o', doc.type, doc.owner || '', doc.created || 0, doc._id], v);
  emit(['a', doc.type, doc.created || 0, doc._id], v);
}
