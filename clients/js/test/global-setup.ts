// Starts the real `herald` binary for the tests: port 0, a temporary data
// directory (SQLite database and queue), a known JWT secret and no leeway on
// token expiry. The binary is $HERALD_BIN, by default
// $CARGO_TARGET_DIR/debug/herald (or target/debug/herald at the repository root).
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

import type { TestProject } from "vitest/node";

/** The page origin the DOM tests run on: Herald allows it (CORS, sockets). */
export const PAGE_ORIGIN = "http://127.0.0.1:5173";

declare module "vitest" {
  export interface ProvidedContext {
    herald: { url: string; secret: string; serviceToken: string };
  }
}

const root = resolve(import.meta.dirname, "../../..");

function binary(): string {
  const bin =
    process.env.HERALD_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(root, "target"), "debug", "herald");
  if (!existsSync(bin)) {
    throw new Error(`no herald binary at ${bin}: run \`cargo build -p herald-server\` or set HERALD_BIN`);
  }
  return bin;
}

let child: ChildProcess | undefined;
let dir: string | undefined;

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const bin = binary();
  dir = mkdtempSync(join(tmpdir(), "herald-client-test-"));
  const secret = randomBytes(32).toString("hex");
  const env = {
    ...process.env,
    HERALD__SERVER__HOST: "127.0.0.1",
    HERALD__SERVER__PORT: "0",
    HERALD__SERVER__DATA_DIR: dir,
    HERALD__DATABASE__URL: `sqlite://${join(dir, "herald.db")}`,
    HERALD__DELIVERY__QUEUE_URL: `sqlite://${join(dir, "queue.db")}`,
    HERALD__DELIVERY__WORKERS_IN_SERVE: "false",
    HERALD__CHANNELS__OUTBOX_DIR: join(dir, "outbox"),
    HERALD__AUTH__SECRET: secret,
    HERALD__AUTH__LEEWAY_SECONDS: "0",
    HERALD__ROUTING__FILE: join(root, "config/routing.toml"),
    HERALD__TEMPLATES__DIR: join(root, "templates"),
    HERALD__REALTIME__ALLOWED_ORIGINS: PAGE_ORIGIN,
    HERALD__LOG__FORMAT: "json",
    RUST_LOG: "info,sqlx=warn",
  };
  const proc = spawn(bin, ["serve"], { cwd: root, env, stdio: ["ignore", "pipe", "inherit"] });
  child = proc;
  const url = await new Promise<string>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("herald did not start listening within 30 s")), 30_000);
    proc.once("exit", (code) => fail(new Error(`herald exited with ${code} before listening`)));
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      try {
        const entry = JSON.parse(line) as { fields?: { message?: string; addr?: string } };
        if (entry.fields?.message === "Herald is listening" && entry.fields.addr) {
          clearTimeout(timer);
          ok(`http://${entry.fields.addr}`);
        }
      } catch {
        // Not a log line of ours.
      }
    });
  });
  const serviceToken = execFileSync(bin, ["token", "--role", "service", "--sub", "client-tests", "--ttl", "1h"], {
    cwd: root,
    env,
    encoding: "utf8",
  }).trim();
  project.provide("herald", { url, secret, serviceToken });
  return async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((ok) => child!.once("exit", ok));
      child.kill("SIGTERM");
      await exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  };
}
