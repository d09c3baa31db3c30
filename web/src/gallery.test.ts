// Unit tests of the gallery's failure messages (the IndexedDB behaviour is tested end to end in
// e2e/app.test.ts: its database deleted from elsewhere, a write over quota).
import assert from "node:assert/strict";
import { test } from "node:test";
import { writeFailure } from "./gallery";

test("a write over quota says the storage is full and what to do; other failures name the error", () => {
  const quota = writeFailure(new DOMException("The quota has been exceeded.", "QuotaExceededError"));
  assert.match(quota, /not saved in the gallery: this site's storage is full/);
  assert.match(quota, /Download it now/);
  const other = writeFailure(new DOMException("The database connection is closing.", "InvalidStateError"));
  assert.doesNotMatch(other, /storage is full/);
  assert.match(other, /not saved in the gallery \(InvalidStateError: The database connection is closing\.\)/);
  assert.match(writeFailure("odd"), /\(odd\)/);
});
