// Trunk post_build hook: writes dist/sw.js, the service worker bundle (web/build/sw.js) preceded by its
// precache list, i.e. every file of the built site, and a version derived from their content. A new
// build with any changed byte is a new service worker, which the page announces as an update.
import { createHash } from "node:crypto";
import { readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const staging = process.env.TRUNK_STAGING_DIR;
if (!staging) throw new Error("precache.mjs runs as Trunk's post_build hook (TRUNK_STAGING_DIR unset)");
const bundle = fileURLToPath(new URL("../build/sw.js", import.meta.url));

async function walk(dir) {
  const out = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await walk(full)));
    else if (entry.isFile()) out.push(full);
  }
  return out;
}

const files = (await walk(staging))
  .map((f) => path.relative(staging, f).split(path.sep).join("/"))
  .filter((f) => f !== "sw.js")
  .sort();
const hash = createHash("sha256");
for (const file of files) {
  hash.update(file).update("\0").update(await readFile(path.join(staging, file))).update("\0");
}
const sw = await readFile(bundle, "utf8");
hash.update(sw);
const precache = { version: hash.digest("hex").slice(0, 16), files };
await writeFile(path.join(staging, "sw.js"), `self.__WEBSD_PRECACHE=${JSON.stringify(precache)};\n${sw}`);
console.log(`sw.js: version ${precache.version}, ${files.length} files precached`);
