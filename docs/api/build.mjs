// Builds docs/api/build/index.html from docs/asyncapi.yaml: the AsyncAPI React component
// rendered on the server (react-dom/server) and hydrated in the browser by the component's
// own standalone bundle, with its style sheet, the bundle and the document inlined, so the
// page needs nothing from anywhere else (the server answers it at /docs). index.html.gz
// beside it is what the server sends to browsers that accept gzip.
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

import { DiagnosticSeverity, Parser, stringify } from "@asyncapi/parser";
import ReactComponent from "@asyncapi/react-component";
import React from "react";
import { renderToString } from "react-dom/server";

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const documentPath = path.join(here, "..", "asyncapi.yaml");
const outDir = path.join(here, "build");
const componentDir = path.dirname(require.resolve("@asyncapi/react-component/package.json"));

// The component's options: the sidebar for navigation, examples shown, and the
// operations holding their messages (the separate message and schema lists would
// repeat every payload a third time).
const CONFIG = {
  show: { sidebar: true, info: true, servers: true, operations: true, messages: false, schemas: false, errors: true },
  expand: { messageExamples: true },
  sidebar: { showServers: "byDefault", showOperations: "byDefault" },
};

const BASE_STYLE = `
html{-moz-tab-size:4;tab-size:4;line-height:1.15;-webkit-text-size-adjust:100%}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
/* The component's own title is not a heading: this one is, for screen readers only. */
.page-title{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
`;
// WCAG 2.1 AA: the component's badges and secondary text are too light for their background
// (white on teal 2.6:1, orange on white 2.5:1, grey on white 4.0:1, ...); darker shades of the
// same hues reach 4.5:1.
const SHADES = { teal: "#285e61", blue: "#2b6cb0", red: "#c53030", green: "#276749", orange: "#9c4221",
  yellow: "#975a16", purple: "#553c9a", indigo: "#434190", pink: "#97266d" };
const CONTRAST_STYLE = Object.entries(SHADES).map(([hue, shade]) => [400, 500, 600].map((n) =>
  `.aui-root .bg-${hue}-${n}{background-color:${shade}}.aui-root .text-${hue}-${n},`
  + `.aui-root .hover\\:text-${hue}-${n}:hover{color:${shade}}`).join("\n")).join("\n")
  // Grey text: darker on the light panels, as it was on the dark ones (the code examples).
  + "\n.aui-root .text-gray-400,.aui-root .text-gray-500,.aui-root .text-gray-600{color:#4a5568}"
  + "\n.aui-root :is(.bg-gray-700,.bg-gray-800,.bg-gray-900,.panel-item--right) :is(.text-gray-400,.text-gray-500,.text-gray-600)"
  + "{color:#cbd5e0}\n.aui-root .bg-gray-600{background-color:#4a5568}";
// The component puts a caption ("Examples values:") straight into a <ul>; a list may hold only
// items, so such lists (and their items) are marked as plain groups for assistive technology,
// also when the component draws them again (a panel opened).
const LIST_FIX = `
(function () {
  function fix(root) {
    root.querySelectorAll("ul:not([role]), ol:not([role])").forEach(function (list) {
      var loose = Array.prototype.some.call(list.childNodes, function (n) {
        return n.nodeType === 3 && n.textContent.trim() !== "";
      });
      if (!loose) return;
      list.setAttribute("role", "none");
      Array.prototype.forEach.call(list.children, function (item) {
        if (item.tagName === "LI") item.setAttribute("role", "none");
      });
    });
  }
  var root = document.getElementById("asyncapi");
  fix(root);
  new MutationObserver(function () { fix(root); }).observe(root, { childList: true, subtree: true });
})();
`;
// The component's disclosure buttons do not say whether their panel is open. Its arrow does:
// turned (-rotate-90) when open, or, in the sidebar's tag lists, -rotate-180 open and -rotate-90
// closed with the list (shown or "hidden") right after the button. Each such button gets
// aria-expanded from that, again whenever the component redraws or turns an arrow.
const EXPANDED_FIX = `
(function () {
  function open(button, arrow) {
    var turned = arrow.getAttribute("class") || "";
    if (/(^|\\s)-rotate-180(\\s|$)/.test(turned)) return true;
    var panel = button.nextElementSibling;
    if (panel && /(^|\\s)(hidden|block)(\\s|$)/.test(panel.className)) return !panel.classList.contains("hidden");
    return /(^|\\s)-rotate-90(\\s|$)/.test(turned);
  }
  function mark(root) {
    root.querySelectorAll("button[type=button]").forEach(function (button) {
      var arrow = button.querySelector(":scope > svg");
      if (!arrow) return;
      var state = open(button, arrow) ? "true" : "false";
      if (button.getAttribute("aria-expanded") !== state) button.setAttribute("aria-expanded", state);
    });
  }
  var root = document.getElementById("asyncapi");
  mark(root);
  new MutationObserver(function () { mark(root); }).observe(root,
    { childList: true, subtree: true, attributes: true, attributeFilter: ["class"] });
})();
`;
// Without scripts the collapsed panels (replies, payload details) stay open.
const NOSCRIPT_STYLE = ".aui-root button + div.hidden{display:block!important}";

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// JSON inside <script>: nothing in it may close the element or open a comment.
function scriptJson(value) {
  return JSON.stringify(value).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(/\u2029/g, "\\u2029");
}

// The component links a few badges to other sites (the IANA media-type registry for
// `application/json`); the page links to nothing outside itself, so those become text.
function withoutExternalLinks(html) {
  return html.replace(/<a\b([^>]*?)\shref="https?:\/\/[^"]*"([^>]*)>/g, (_, before, after) => {
    const rest = `${before}${after}`
      .replace(/\s(?:target|rel)="[^"]*"/g, "")
      .replace(/\stitle="[^"]*Opens in new window\)?"/g, "");
    return `<a${rest}>`;
  });
}

const source = await readFile(documentPath, "utf8");
const { document, diagnostics } = await new Parser().parse(source, { source: documentPath });
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
if (document === undefined || errors.length > 0) {
  for (const d of errors) console.error(`${d.code} at ${d.path.join(".")}: ${d.message}`);
  console.error(`${documentPath}: not a valid AsyncAPI document; run node validate.mjs`);
  process.exit(1);
}

const schema = stringify(document);
const body = withoutExternalLinks(
  renderToString(React.createElement(ReactComponent.AsyncApiComponentWP, { schema, config: CONFIG })),
);
const css = await readFile(path.join(componentDir, "styles", "default.min.css"), "utf8");
const bundle = await readFile(path.join(componentDir, "browser", "standalone", "without-parser.js"), "utf8");
const info = document.info();
const title = `${info.title()} ${info.version()}`;

const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="description" content="${escapeHtml(`${title}: every Socket.IO event, payload and ack (AsyncAPI ${document.version()}).`)}">
<title>${escapeHtml(title)} (AsyncAPI)</title>
<link rel="icon" href="data:,">
<style>${BASE_STYLE}</style>
<style>${css}</style>
<style>${CONTRAST_STYLE}</style>
<noscript><style>${NOSCRIPT_STYLE}</style></noscript>
</head>
<body>
<h1 class="page-title">${escapeHtml(title)}: API reference</h1>
<main id="asyncapi">${body}</main>
<script>${bundle.replace(/<\/script/gi, "<\\/script")}</script>
<script>
AsyncApiStandalone.hydrate({ schema: ${scriptJson(JSON.parse(schema))}, config: ${scriptJson(CONFIG)} },
  document.getElementById("asyncapi"));
</script>
<script>${LIST_FIX}</script>
<script>${EXPANDED_FIX}</script>
</body>
</html>
`;

await rm(outDir, { recursive: true, force: true });
await mkdir(outDir, { recursive: true });
await writeFile(path.join(outDir, "index.html"), page);
await writeFile(path.join(outDir, "index.html.gz"), gzipSync(page, { level: 9 }));
await writeFile(
  path.join(outDir, "THIRD-PARTY-LICENSES.txt"),
  [
    "index.html inlines @asyncapi/react-component (Apache-2.0): its style sheet and its standalone bundle.",
    "",
    await readFile(path.join(componentDir, "LICENSE"), "utf8"),
    await readFile(path.join(componentDir, "browser", "standalone", "without-parser.js.LICENSE.txt"), "utf8"),
  ].join("\n"),
);
console.log(`${path.relative(process.cwd(), path.join(outDir, "index.html"))}: ${(page.length / 1e6).toFixed(1)} MB`);
