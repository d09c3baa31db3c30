// `npm run serve -- --root ../dist [--models DIR] [--port 8080] [--fault PATH=KIND:N ...] [--connect ORIGIN ...]
//   [--exact]`
// Serves the app, and model folders under /models/ through the fault-injecting model server (same
// origin: the built policy allows it). A development server: the policy it sends lets the worker reach a
// model server on any port of this machine (the built policy has no loopback); `--exact` sends the
// built policy plus only the `--connect` origins (e.g. `--connect http://127.0.0.1:9000`).
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
    exact: { type: "boolean", default: false },
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
  connectAnyLoopback: !values.exact,
  ...(values.models ? { models: values.models } : {}),
});
console.log(`serving ${values.root} at ${url}` + (values.models ? ` and ${values.models} at ${url}models/` : ""));
