// Unit tests of model selection from the page URL and the local server's listing.
import assert from "node:assert/strict";
import { test } from "node:test";
import { readdirSync, readFileSync } from "node:fs";
import { BUILTIN, builtinChoices, labelOf, localChoices, manifestUrl, modelParam } from "./catalog";

const page = "http://127.0.0.1:8080/app/?x=1";

test("?model= is absolute or relative to the page; empty or non-http is refused", () => {
  assert.deepEqual(modelParam("http://127.0.0.1:8080/app/"), { kind: "none" });
  assert.deepEqual(modelParam(`${page}&model=models/tiny/manifest.json`), {
    kind: "url",
    url: "http://127.0.0.1:8080/app/models/tiny/manifest.json",
  });
  assert.deepEqual(modelParam(`${page}&model=${encodeURIComponent("https://cdn.example/m/manifest.json")}`), {
    kind: "url",
    url: "https://cdn.example/m/manifest.json",
  });
  const empty = modelParam(`${page}&model=`);
  assert.ok(empty.kind === "error" && /empty/.test(empty.message));
  const js = manifestUrl("javascript:alert(1)", page);
  assert.ok(js.kind === "error" && /http/.test(js.message));
});

test("the local listing and the built-in models become choices", () => {
  const local = localChoices({ models: [{ name: "tiny-sd", manifest: "tiny-sd/manifest.json" }, { bogus: 1 }] }, "http://h/models/index.json");
  assert.deepEqual(local, [{ url: "http://h/models/tiny-sd/manifest.json", label: "tiny-sd (local server)", source: "local" }]);
  assert.deepEqual(localChoices("nonsense", "http://h/"), []);
  const builtin = builtinChoices(page);
  assert.ok(builtin.length >= 2);
  assert.ok(builtin.every((c) => c.url.startsWith("http://127.0.0.1:8080/app/hub/")));
  assert.equal(labelOf("https://cdn.example/m/manifest.json"), "m (cdn.example)");
});

test("each built-in model's download size is its manifest's (www/hub/)", () => {
  for (const { path, label, bytes } of BUILTIN) {
    const manifest = JSON.parse(readFileSync(new URL(`../../www/${path}`, import.meta.url), "utf8"));
    const total = (manifest.files as { size: number }[]).reduce((sum, f) => sum + f.size, 0);
    assert.equal(bytes, total, label);
  }
  assert.equal(BUILTIN.length, readdirSync(new URL("../../www/hub/", import.meta.url)).filter((f) => f.endsWith(".json")).length);
});
