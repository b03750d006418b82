// Rebuilds the console into a temporary directory and fails when the result
// differs from the committed dist/ (which the herald binary embeds): a change
// to the console's source, or to the library it is built on, must come with
// its rebuilt assets (`npm run build`).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const committed = join(root, "dist");
const fresh = mkdtempSync(join(tmpdir(), "herald-console-"));
try {
  execFileSync(process.execPath, [join(root, "node_modules/vite/bin/vite.js"), "build", "--logLevel", "warn"], {
    cwd: root,
    env: { ...process.env, CONSOLE_OUT_DIR: fresh },
    stdio: "inherit",
  });
  const names = (dir) => readdirSync(dir).sort();
  const want = names(fresh);
  const have = names(committed);
  const problems = [];
  for (const name of new Set([...want, ...have])) {
    if (!want.includes(name)) problems.push(`${name}: committed but no longer built`);
    else if (!have.includes(name)) problems.push(`${name}: built but not committed`);
    else if (!readFileSync(join(fresh, name)).equals(readFileSync(join(committed, name)))) {
      problems.push(`${name}: differs from a fresh build`);
    }
  }
  if (problems.length > 0) {
    console.error(`console/dist is out of date; run \`npm --prefix console run build\` and commit it:\n  ${problems.join("\n  ")}`);
    process.exit(1);
  }
  console.log(`console/dist matches a fresh build (${want.length} files)`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
