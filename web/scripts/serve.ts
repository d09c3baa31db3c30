// `npm run serve -- --root ../dist [--models DIR] [--port 8080]`
import { parseArgs } from "node:util";
import { startServer } from "./static-server";

const { values } = parseArgs({
  options: {
    root: { type: "string", default: "../dist" },
    models: { type: "string" },
    port: { type: "string", default: "8080" },
    host: { type: "string", default: "127.0.0.1" },
  },
});
const { url } = await startServer({
  root: values.root,
  port: Number(values.port),
  host: values.host,
  ...(values.models ? { models: values.models } : {}),
});
console.log(`serving ${values.root} at ${url}` + (values.models ? ` and ${values.models} at ${url}models/` : ""));
