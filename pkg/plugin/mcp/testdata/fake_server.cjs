// A scripted MCP server over stdio for the tests of package mcp: it covers
// what the everything server does not (pagination, server→client requests,
// JSON-RPC errors, stray output, crashes, a server that ignores SIGTERM).
// The mode is the first argument.
"use strict";
const readline = require("readline");

const mode = process.argv[2] || "normal";
const out = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");

if (mode === "exit-at-start") {
  process.stderr.write("fatal: bad configuration\n");
  process.exit(3);
}
if (mode === "ignore-term") {
  process.on("SIGTERM", () => process.stderr.write("ignoring SIGTERM\n"));
  setInterval(() => {}, 1 << 30); // stay alive after stdin closes
}
if (mode === "silent") {
  setInterval(() => {}, 1 << 30); // never answers
}

const tools = [
  { name: "ask", description: "asks the client things", inputSchema: { type: "object" } },
  { name: "rpc-error", description: "answers with a JSON-RPC error", inputSchema: { type: "object" } },
  { name: "client-info", description: "returns what initialize received", inputSchema: { type: "object" } },
  { name: "crash", description: "exits mid-call", inputSchema: { type: "object" } },
  { name: "no-content", description: "answers without content" },
  { name: "garbage", description: "prints non-JSON before answering", inputSchema: { type: "object" } },
  { name: "args", description: "returns its arguments", inputSchema: { type: "object" } },
  { name: "hang", description: "never answers", inputSchema: { type: "object" } },
  { name: "list-changed", description: "adds the tool late", inputSchema: { type: "object" } },
];

let initParams = null;
let initialized = false;
let nextServerId = 0;
const waiting = new Map(); // server request id -> resolve

function request(method, params, id) {
  return new Promise((resolve) => {
    waiting.set(JSON.stringify(id), resolve);
    out({ jsonrpc: "2.0", id, method, params });
  });
}

function text(s) {
  return { content: [{ type: "text", text: s }] };
}

async function callTool(name, args) {
  switch (name) {
    case "ask": {
      out({ jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: "asking" } });
      out({ jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1, progress: 1 } });
      const answers = await Promise.all([
        request("ping", undefined, "s-" + ++nextServerId),
        request("roots/list", {}, ++nextServerId),
        request("sampling/createMessage", { messages: [], maxTokens: 1 }, ++nextServerId),
      ]);
      return text(JSON.stringify(answers));
    }
    case "client-info":
      return text(JSON.stringify({ initParams, initializedFirst: initialized }));
    case "crash":
      process.stderr.write("about to crash\n");
      process.exit(7);
      return null;
    case "no-content":
      return { structuredContent: { a: 1 } };
    case "garbage":
      process.stdout.write("this is not JSON\n\n");
      return text("after garbage");
    case "list-changed":
      if (!tools.some((t) => t.name === "late")) tools.push({ name: "late", inputSchema: { type: "object" } });
      out({ jsonrpc: "2.0", method: "notifications/tools/list_changed" });
      return text("announced");
    case "hang":
      return new Promise(() => {});
    case "args":
      return text(JSON.stringify(args === undefined ? "absent" : args));
    default:
      return { content: [{ type: "text", text: `unknown tool ${name}` }], isError: true };
  }
}

async function handle(msg) {
  if (msg.method === undefined) {
    const resolve = waiting.get(JSON.stringify(msg.id));
    if (resolve) {
      waiting.delete(JSON.stringify(msg.id));
      resolve(msg);
    }
    return;
  }
  if (msg.id === undefined) {
    if (msg.method === "notifications/initialized") initialized = true;
    return;
  }
  const reply = (result) => out({ jsonrpc: "2.0", id: msg.id, result });
  switch (msg.method) {
    case "initialize":
      initParams = msg.params;
      if (mode === "silent") return;
      return reply({
        protocolVersion: "2025-06-18",
        capabilities: mode === "no-tools" ? {} : { tools: { listChanged: true } },
        serverInfo: { name: "fake", version: "1.2.3" },
      });
    case "tools/list": {
      if (!initialized) {
        return out({ jsonrpc: "2.0", id: msg.id, error: { code: -32002, message: "not initialized" } });
      }
      // Two tools a page; cursors are page numbers.
      const page = msg.params && msg.params.cursor ? Number(msg.params.cursor) : 0;
      const result = { tools: tools.slice(page * 2, page * 2 + 2) };
      if ((page + 1) * 2 < tools.length) result.nextCursor = String(page + 1);
      return reply(result);
    }
    case "tools/call":
      if (msg.params.name === "rpc-error") {
        return out({ jsonrpc: "2.0", id: msg.id, error: { code: -32000, message: "boom", data: { x: 1 } } });
      }
      return reply(await callTool(msg.params.name, msg.params.arguments));
    default:
      return out({ jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: "Method not found" } });
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() !== "") handle(JSON.parse(line));
});
