// The JavaScript client's types (clients/js/ppgate.d.ts): a typed program checks with
// `tsc --noEmit --strict` (TypeScript from npm, a dev dependency of tests/browser), a type error in
// it is caught, and the declarations name exactly what ppgate.mjs exports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, appendFileSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import * as client from "../../clients/js/ppgate.mjs";
import { root } from "./harness.mjs";

const modules = path.join(root, "tests", "browser", "node_modules");
const tsc = path.join(modules, ".bin", "tsc");
const example = path.join(root, "clients", "js", "examples", "typed.ts");

function typecheck(file) {
  return spawnSync(tsc, ["--noEmit", "--strict", "--target", "es2022", "--module", "nodenext",
                         "--moduleResolution", "nodenext", "--types", "node",
                         "--typeRoots", path.join(modules, "@types"), file],
                   { encoding: "utf8", timeout: 120000 });
}

test("a typed program checks against ppgate.d.ts", { timeout: 150000 }, () => {
  const done = typecheck(example);
  assert.equal(done.status, 0, done.stdout + done.stderr);
});

test("a type error in it is caught", { timeout: 150000 }, () => {
  // Beside the example, so that "ppgate" resolves to this package as it does there.
  const wrong = path.join(path.dirname(example), `.typed-wrong-${process.pid}.ts`);
  copyFileSync(example, wrong);
  try {
    appendFileSync(wrong, "\nexport async function wrong(): Promise<string> {\n" +
      "  const node = await connect(\"http://127.0.0.1:1\");\n" +
      "  return node.workers();\n}\n");
    const done = typecheck(wrong);
    assert.notEqual(done.status, 0, "tsc accepted a number returned as a string");
    assert.match(done.stdout, /Type 'number' is not assignable to type 'string'/);
  } finally {
    rmSync(wrong, { force: true });
  }
});

test("ppgate.d.ts declares exactly what ppgate.mjs exports", () => {
  const declarations = readFileSync(path.join(root, "clients", "js", "ppgate.d.ts"), "utf8");
  const declared = new Set([...declarations.matchAll(/^export (?:class|function) (\w+)/gm)].map((m) => m[1]));
  assert.deepEqual([...declared].sort(), Object.keys(client).sort());
});
