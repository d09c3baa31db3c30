// Unit tests of the form's parsing (node:test through tsx; run by `npm run typecheck`).
import assert from "node:assert/strict";
import { test } from "node:test";
import { formValuesOf, LIMITS, MAX_SEED, parseSettings, type FormValues } from "./settings";

const good: FormValues = {
  prompt: "a cat",
  negative: "blurry",
  steps: "8",
  guidance: "7.5",
  seed: "0",
  width: "64",
  height: "64",
  scheduler: "ddim",
  batch: "1",
  strength: "0.75",
};

test("valid values become the engine's settings", () => {
  const p = parseSettings(good, "txt2img");
  assert.ok(p.ok);
  assert.deepEqual(p.settings, {
    prompt: "a cat",
    negativePrompt: "blurry",
    steps: 8,
    guidance: 7.5,
    seed: 0,
    width: 64,
    height: 64,
    batch: 1,
    scheduler: "ddim",
  });
  const i2i = parseSettings(good, "img2img");
  assert.ok(i2i.ok && i2i.settings.strength === 0.75);
});

test("each bad field is named with a message", () => {
  const cases: [Partial<FormValues>, keyof FormValues, RegExp][] = [
    [{ width: "63" }, "width", /multiple of 8/],
    [{ height: "0" }, "height", /multiple of 8/],
    [{ width: "4104" }, "width", /^4104x64 is larger than the 4096 px this app supports$/],
    [{ height: "4104" }, "height", /^64x4104 is larger than the 4096 px this app supports$/],
    [{ steps: "100000" }, "steps", /1 to 1000/],
    [{ steps: "2.5" }, "steps", /whole number/],
    [{ steps: "" }, "steps", /whole number/],
    [{ guidance: "abc" }, "guidance", /Guidance/],
    [{ guidance: "-1" }, "guidance", /Guidance/],
    [{ guidance: "50.5" }, "guidance", /0 to 50/],
    [{ batch: "17" }, "batch", /1 to 16/],
    [{ seed: "-1" }, "seed", /seed/],
    [{ seed: String(2 ** 53 + 2) }, "seed", /2\^53/],
    [{ seed: "1".repeat(400) }, "seed", /9007199254740991/],
    [{ scheduler: "heun" }, "scheduler", /Unknown scheduler/],
    [{ batch: "0" }, "batch", /batch/],
  ];
  for (const [change, field, message] of cases) {
    const p = parseSettings({ ...good, ...change }, "txt2img");
    assert.ok(!p.ok, JSON.stringify(change));
    assert.equal(p.field, field);
    assert.match(p.message, message);
  }
  const strength = parseSettings({ ...good, strength: "1.5" }, "img2img");
  assert.ok(!strength.ok && strength.field === "strength");
  const noStep = parseSettings({ ...good, steps: "2", strength: "0.2" }, "img2img");
  assert.ok(!noStep.ok && /no denoising step/.test(noStep.message));
  // txt2img ignores the strength field.
  assert.ok(parseSettings({ ...good, strength: "junk" }, "txt2img").ok);
});

test("the seed's boundary is the engine's: 2^53 - 1 passes, 2^53 and 2^53 + 1 do not", () => {
  // The engine gets the seed as a JS number; serde-wasm-bindgen takes only safe integers (see MAX_SEED).
  assert.equal(MAX_SEED, 2 ** 53 - 1);
  assert.equal(LIMITS.maxSeed, MAX_SEED);
  const top = parseSettings({ ...good, seed: "9007199254740991" }, "txt2img");
  assert.ok(top.ok && top.settings.seed === 2 ** 53 - 1 && Number.isSafeInteger(top.settings.seed));
  // Typed as digits: 2^53 + 1 is not a JS number, Number() reads it as 2^53; both are refused.
  for (const seed of ["9007199254740992", "9007199254740993"]) {
    const p = parseSettings({ ...good, seed }, "txt2img");
    assert.ok(!p.ok, seed);
    assert.equal(p.field, "seed");
    assert.match(p.message, /from 0 to 9007199254740991 \(2\^53 - 1\)/);
  }
});

test("settings round-trip through the form values (reuse)", () => {
  const p = parseSettings(good, "img2img");
  assert.ok(p.ok);
  const back = parseSettings({ ...good, ...formValuesOf(p.settings) }, "img2img");
  assert.ok(back.ok);
  assert.deepEqual(back.settings, p.settings);
});
