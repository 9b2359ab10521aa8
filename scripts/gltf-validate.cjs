#!/usr/bin/env node
// Khronos's glTF-Validator (the `gltf-validator` npm package pinned in .web/) on one .glb/.gltf file.
// Usage: node scripts/gltf-validate.cjs FILE [--max-issues N]
// Prints one JSON object: the validator's version, the counts by severity and the issues
// (code, severity 0 error / 1 warning / 2 info / 3 hint, message, JSON pointer), and exits
// 0 when the file has no errors, 1 when it has, 2 when it could not be validated at all.
"use strict";
const fs = require("fs");
const path = require("path");

const modules = path.join(__dirname, "..", ".web", "node_modules");
let validator;
try {
  validator = require(path.join(modules, "gltf-validator"));
} catch (e) {
  console.error("gltf-validator is not installed: run `bash scripts/web-deps.sh` (make setup does)");
  process.exit(2);
}
const args = process.argv.slice(2);
if (args.length < 1) {
  console.error("usage: node scripts/gltf-validate.cjs FILE [--max-issues N]");
  process.exit(2);
}
const file = args[0];
const at = args.indexOf("--max-issues");
const maxIssues = at >= 0 ? Number(args[at + 1]) : 100;
const bytes = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues,
    writeTimestamp: false,
    externalResourceFunction: (uri) =>
      new Promise((resolve, reject) => {
        fs.readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)), (err, data) =>
          err ? reject(String(err)) : resolve(new Uint8Array(data)));
      }),
  })
  .then((report) => {
    const issues = report.issues;
    console.log(JSON.stringify({
      validator: report.validatorVersion,
      errors: issues.numErrors, warnings: issues.numWarnings, infos: issues.numInfos, hints: issues.numHints,
      truncated: issues.truncated,
      messages: issues.messages.map((m) => ({ code: m.code, severity: m.severity, message: m.message, pointer: m.pointer })),
      info: report.info,
    }));
    process.exit(issues.numErrors > 0 ? 1 : 0);
  }, (err) => {
    console.error(`the validator could not read ${file}: ${err}`);
    process.exit(2);
  });
