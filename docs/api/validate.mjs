// Parses docs/asyncapi.yaml with the AsyncAPI parser and prints its diagnostics as JSON:
// {"document": path, "diagnostics": [{code, severity, message, path}], "errors": N, "warnings": N}.
// Exits 1 when any diagnostic is an error (or the document cannot be read), else 0.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { DiagnosticSeverity, Parser } from "@asyncapi/parser";

const here = path.dirname(fileURLToPath(import.meta.url));
const documentPath = path.resolve(process.argv[2] ?? path.join(here, "..", "asyncapi.yaml"));
const SEVERITY = {
  [DiagnosticSeverity.Error]: "error",
  [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "information",
  [DiagnosticSeverity.Hint]: "hint",
};

const source = await readFile(documentPath, "utf8");
const { document, diagnostics } = await new Parser().parse(source, { source: documentPath });
const found = diagnostics.map((d) => ({
  code: String(d.code),
  severity: SEVERITY[d.severity] ?? String(d.severity),
  message: d.message,
  path: d.path.join("."),
}));
const count = (severity) => found.filter((d) => d.severity === severity).length;
const report = {
  document: documentPath,
  parsed: document !== undefined,
  diagnostics: found,
  errors: count("error"),
  warnings: count("warning"),
};
process.stdout.write(JSON.stringify(report, null, 2) + "\n");
process.exitCode = report.errors > 0 || !report.parsed ? 1 : 0;
