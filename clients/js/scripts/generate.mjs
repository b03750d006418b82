#!/usr/bin/env node
// Generates src/generated/api.ts from Herald's own OpenAPI document: every
// component schema (REST shapes, each catalog event's payload as the server
// derives it) as a TypeScript type, and the socket events of
// `x-herald-realtime` as one map from event name to payload.
//
//   node scripts/generate.mjs            write src/generated/api.ts
//   node scripts/generate.mjs --check    exit 1 when the committed file differs
//   --openapi FILE                       read the document from FILE instead
//
// Without --openapi the document comes from `herald openapi` (no server
// needed): the binary at $HERALD_BIN, by default
// $CARGO_TARGET_DIR/debug/herald, or target/debug/herald at the repository root.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const out = resolve(here, "../src/generated/api.ts");

const args = process.argv.slice(2);
const check = args.includes("--check");
const fileArg = args.indexOf("--openapi");

function heraldBin() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(root, "target");
  return join(target, "debug", "herald");
}

function loadDocument() {
  if (fileArg >= 0) return JSON.parse(readFileSync(args[fileArg + 1], "utf8"));
  const bin = heraldBin();
  if (!existsSync(bin)) {
    console.error(`generate: no herald binary at ${bin} (build it with \`cargo build -p herald-server\`, or set HERALD_BIN, or pass --openapi FILE)`);
    process.exit(2);
  }
  return JSON.parse(execFileSync(bin, ["openapi"], { encoding: "utf8", maxBuffer: 64 << 20 }));
}

/** `event.points_added` → `PointsAddedPayload`; `realtime.connected` → `ConnectedPayload`. */
function typeName(component) {
  const [, kind, name] = /^(?:(event|realtime)\.)?(.+)$/.exec(component);
  if (!kind) return name;
  return name.split(/[_.-]/).map((w) => w[0].toUpperCase() + w.slice(1)).join("") + "Payload";
}

const MAX_ENUM = 64;
const literal = (v) => JSON.stringify(v);
const key = (k) => (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(k) ? k : JSON.stringify(k));
const comment = (text, indent) => {
  if (!text) return "";
  const lines = String(text).replace(/\*\//g, "*\\/").split("\n");
  if (lines.length === 1) return `${indent}/** ${lines[0]} */\n`;
  return `${indent}/**\n${lines.map((l) => `${indent} * ${l}`.trimEnd()).join("\n")}\n${indent} */\n`;
};
const union = (parts) => {
  const unique = [...new Set(parts)];
  return unique.length === 1 ? unique[0] : unique.map((p) => (p.includes(" & ") ? `(${p})` : p)).join(" | ");
};

/** A JSON Schema (the subset Herald's document uses) as a TypeScript type. */
function ts(schema, indent = "") {
  if (schema === true || schema === undefined) return "unknown";
  if (schema === false) return "never";
  if (schema.$ref) return typeName(schema.$ref.replace("#/components/schemas/", ""));
  // `type: [t, "null"]` beside an enum or const: the value, or null.
  const orNull = (t) =>
    Array.isArray(schema.type) && schema.type.includes("null") && t !== "null" ? union([t, "null"]) : t;
  if ("const" in schema) return orNull(literal(schema.const));
  if (schema.enum) {
    return orNull(schema.enum.length > MAX_ENUM ? "string" : union(schema.enum.map(literal)));
  }
  if (schema.oneOf || schema.anyOf) {
    const base = { ...schema };
    delete base.oneOf;
    delete base.anyOf;
    delete base.description;
    const variants = (schema.oneOf || schema.anyOf).map((v) => ts(v, indent));
    // `anyOf` beside an object's own properties constrains it; the
    // properties are the type.
    if (base.properties) return ts(base, indent);
    return union(variants);
  }
  if (schema.allOf) return schema.allOf.map((s) => ts(s, indent)).join(" & ");
  if (Array.isArray(schema.type)) {
    return union(schema.type.map((t) => ts({ ...schema, type: t }, indent)));
  }
  switch (schema.type) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "null":
      return "null";
    case "array":
      return `Array<${ts(schema.items, indent)}>`;
    case "object":
    case undefined:
      return object(schema, indent);
    default:
      return "unknown";
  }
}

function object(schema, indent) {
  const props = schema.properties || {};
  const names = Object.keys(props);
  const extra = schema.additionalProperties;
  if (names.length === 0) {
    if (extra && typeof extra === "object") {
      const value = ts(extra, indent);
      const keys = schema.propertyNames?.enum;
      return keys ? `Partial<Record<${union(keys.map(literal))}, ${value}>>` : `Record<string, ${value}>`;
    }
    return extra === false ? "Record<string, never>" : "Record<string, unknown>";
  }
  const required = new Set(schema.required || []);
  const inner = indent + "  ";
  const fields = names.map((n) => {
    const p = props[n];
    return `${comment(p.description, inner)}${inner}${key(n)}${required.has(n) ? "" : "?"}: ${ts(p, inner)};`;
  });
  return `{\n${fields.join("\n")}\n${indent}}`;
}

function generate(doc) {
  const schemas = doc.components.schemas;
  const realtime = doc["x-herald-realtime"].events;
  const parts = [
    "// Generated by scripts/generate.mjs from Herald's OpenAPI document",
    "// (`herald openapi`). Do not edit: run `npm run generate`; CI fails when",
    "// this file and the server disagree.",
    "",
    `/** The Herald API version this file was generated from. */`,
    `export const API_VERSION = ${literal(doc.info.version)};`,
    "",
  ];
  for (const name of Object.keys(schemas).sort()) {
    const schema = schemas[name];
    parts.push(`${comment(schema.description, "")}export type ${typeName(name)} = ${ts(schema)};`, "");
  }
  const catalog = Object.keys(realtime).filter((e) => realtime[e].eventId);
  parts.push(
    "/** The catalog's events, as sockets receive them (the payload plus `eventId`). */",
    `export const CATALOG_EVENTS = [\n${catalog.map((e) => `  ${literal(e)},`).join("\n")}\n] as const;`,
    "",
    "export type CatalogEventName = (typeof CATALOG_EVENTS)[number];",
    "",
    "/** Every event a socket receives, by name: its payload. */",
    "export interface ServerEvents {",
  );
  for (const name of Object.keys(realtime).sort()) {
    const e = realtime[name];
    const payload = ts(e.payload) + (e.eventId ? " & { eventId: string }" : "");
    parts.push(`${comment(e.description, "  ")}  ${key(name)}: ${payload};`);
  }
  parts.push("}", "");
  parts.push(
    "/** The `code` of a problem document. */",
    'export type ProblemCode = Problem["code"];',
    "",
  );
  return parts.join("\n");
}

const text = generate(loadDocument());
if (check) {
  const current = existsSync(out) ? readFileSync(out, "utf8") : "";
  if (current !== text) {
    console.error("generate: src/generated/api.ts is stale: run `npm run generate` in clients/js and commit it");
    process.exit(1);
  }
  console.log("generate: src/generated/api.ts is up to date");
} else {
  writeFileSync(out, text);
  console.log(`generate: wrote ${out}`);
}
