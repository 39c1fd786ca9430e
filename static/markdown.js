// Message text as the page shows it: Markdown-lite and math, built as DOM nodes.
//
// What is understood: ```fenced code blocks```, `inline code`, **bold**,
// *italic* and _italic_, [text](https://link) and bare http(s) links, and
// LaTeX math, $inline$ and $$display$$, typeset by the vendored KaTeX. Nothing
// of the text is ever parsed as HTML: every piece becomes a text node or an
// element made here, links only for http, https and mailto addresses, opened
// in a new tab without access to this page; KaTeX runs with `trust: false`
// (no \href, \url, \includegraphics or HTML) and bounded sizes.

const LINK_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const KATEX_OPTIONS = { throwOnError: false, trust: false, strict: "ignore", maxSize: 50, maxExpand: 300, output: "htmlAndMathml" };
const MAX_FORMULA = 2000; // characters of one formula; a longer one is shown as text

// One inline token per alternative; the group that matched says which.
const INLINE = new RegExp([
  /(`+)([^`\n]+?)\1(?!`)/.source, // 1, 2: code
  /\$\$([^$]+?)\$\$/.source, // 3: display math inside a line
  /\$([^\s$](?:[^$\n]*?[^\s$])?)\$(?!\d)/.source, // 4: inline math ("costs $5 and $10" is not)
  /\*\*([^*\n]+?)\*\*/.source, // 5: bold
  /(?<![\p{L}\p{N}*])\*([^\s*](?:[^*\n]*?[^\s*])?)\*(?![\p{L}\p{N}*])/.source, // 6: italic
  /(?<![\p{L}\p{N}_])_([^\s_](?:[^_\n]*?[^\s_])?)_(?![\p{L}\p{N}_])/.source, // 7: italic
  /\[([^\]\n]{1,200})\]\(([^()\s]{1,2000})\)/.source, // 8, 9: a named link
  /(https?:\/\/[^\s<>"'`]{1,2000}?)(?=[.,;:!?)\]]*(?:\s|$))/.source, // 10: a bare link
].join("|"), "gu");

/** `text` as a fragment of nodes: code blocks, display math, then inline marks. */
export function renderText(text) {
  const out = document.createDocumentFragment();
  const blocks = text.split(/```/);
  blocks.forEach((part, i) => {
    if (i % 2 === 1 && i < blocks.length - 1) {
      // Inside a fence: the first line may name a language; shown as written.
      const body = part.replace(/^[\w+-]*\n/, "");
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = body.replace(/\n$/, "");
      pre.append(code);
      out.append(pre);
    } else {
      appendParagraphMath(out, i % 2 === 1 ? "```" + part : part);
    }
  });
  return out;
}

function appendParagraphMath(out, text) {
  // $$...$$ spanning lines is display math; anything else goes to the inline pass.
  const parts = text.split(/\$\$([\s\S]+?)\$\$/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) out.append(math(part, true));
    else appendInline(out, part);
  });
}

function appendInline(out, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) out.append(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[2] !== undefined) out.append(element("code", m[2]));
    else if (m[3] !== undefined) out.append(math(m[3], true));
    else if (m[4] !== undefined) out.append(math(m[4], false));
    else if (m[5] !== undefined) out.append(marked("strong", m[5]));
    else if (m[6] !== undefined || m[7] !== undefined) out.append(marked("em", m[6] ?? m[7]));
    else if (m[8] !== undefined) out.append(link(m[9], m[8]) ?? document.createTextNode(m[0]));
    else if (m[10] !== undefined) out.append(link(m[10], m[10]) ?? document.createTextNode(m[0]));
  }
  if (last < text.length) out.append(document.createTextNode(text.slice(last)));
}

function element(tag, text) {
  const node = document.createElement(tag);
  node.textContent = text;
  return node;
}

/** Bold or italic text may hold the other marks (code, math, links) but not another block. */
function marked(tag, text) {
  const node = document.createElement(tag);
  appendInline(node, text);
  return node;
}

/** A link that opens in a new tab, without access to this page; `null` for any other address. */
function link(address, label) {
  let url;
  try {
    url = new URL(address);
  } catch {
    return null;
  }
  if (!LINK_PROTOCOLS.has(url.protocol)) return null;
  const node = document.createElement("a");
  node.href = url.href;
  node.target = "_blank";
  node.rel = "noopener noreferrer nofollow";
  node.textContent = label;
  return node;
}

/** A typeset formula (its source as text when KaTeX is missing or the formula is too long). */
function math(tex, display) {
  const node = document.createElement("span");
  node.className = display ? "math math-display" : "math";
  const katex = globalThis.katex;
  if (!katex || tex.length > MAX_FORMULA) {
    node.textContent = display ? `$$${tex}$$` : `$${tex}$`;
    return node;
  }
  try {
    katex.render(tex, node, { ...KATEX_OPTIONS, displayMode: display });
    node.dataset.testid = "math";
  } catch {
    node.textContent = display ? `$$${tex}$$` : `$${tex}$`;
  }
  return node;
}
