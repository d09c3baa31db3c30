// `npm run serve -- --root ../dist [--models DIR] [--port 8080] [--fault PATH=KIND:N ...] [--connect ORIGIN ...]`
// Serves the app, and model folders under /models/ through the fault-injecting model server (same
// origin: the built policy allows it). `--connect http://127.0.0.1:9000` adds a model server you run
// on another port to the policy's connect-src (the built policy has no loopback).
import { parseArgs } from "node:util";
import { startServer } from "./static-server";

const { values } = parseArgs({
  options: {
    root: { type: "string", default: "../dist" },
    models: { type: "string" },
    port: { type: "string", default: "8080" },
    host: { type: "string", default: "127.0.0.1" },
    fault: { type: "string", multiple: true },
    connect: { type: "string", multiple: true },
  },
});
const faults = (values.fault ?? []).map((spec) => {
  const at = spec.lastIndexOf("=");
  if (at < 0) throw new Error(`--fault ${spec}: expected PATH=KIND:N`);
  return { path: spec.slice(0, at), fault: spec.slice(at + 1) };
});
const { url } = await startServer({
  root: values.root,
  port: Number(values.port),
  host: values.host,
  faults,
  connectOrigins: values.connect ?? [],
  ...(values.models ? { models: values.models } : {}),
});
console.log(`serving ${values.root} at ${url}` + (values.models ? ` and ${values.models} at ${url}models/` : ""));
