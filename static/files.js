// Attachments on the page: uploads (the attach button, drag and drop) with their
// progress, the files waiting to go with the next message, and what messages
// show of theirs: image previews that open full size, file chips that download.
// Files are fetched with the session's token (an <img src> could not carry it),
// so previews and downloads are blob URLs made here.

import { el } from "./dom.js";

export const MAX_FILES = 10; // per message
const MAX_BYTES = 10 * 1024 * 1024; // the server's default; it answers 413 past its own

/** Blob URLs of fetched files and thumbnails, by URL (kept while the page lives). */
const blobs = new Map();
let tokenOf = () => "";

/** Where file requests get the session's token from. */
export function useToken(source) {
  tokenOf = source;
}

function humanSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** The files chosen for the next message: each uploads at once and shows its progress. */
export class Tray {
  /** `list` is the <ul> of chips; `groupId()` the open group; `error(text)` shows a refusal. */
  constructor({ list, groupId, error }) {
    Object.assign(this, { list, groupId, error });
    this.items = []; // {id: local, file, xhr, attachment, error, node}
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest("[data-remove]");
      if (button) this.remove(button.dataset.remove);
    });
  }

  /** Files picked or dropped: upload each (at most `MAX_FILES` in the tray). */
  add(files) {
    for (const file of files) {
      if (this.items.length >= MAX_FILES) {
        this.error(`At most ${MAX_FILES} files go with one message.`);
        break;
      }
      this._upload(file);
    }
  }

  get uploading() {
    return this.items.some((item) => !item.attachment && !item.error);
  }

  /** The ids of the uploaded files, then an empty tray for the next message. */
  take() {
    const ids = this.items.filter((item) => item.attachment).map((item) => item.attachment.id);
    this.clear();
    return ids;
  }

  clear() {
    for (const item of this.items) item.xhr?.abort();
    this.items = [];
    this.list.replaceChildren();
    this.list.hidden = true;
  }

  remove(localId) {
    const item = this.items.find((i) => i.id === localId);
    if (!item) return;
    item.xhr?.abort();
    item.node.remove();
    this.items = this.items.filter((i) => i !== item);
    this.list.hidden = this.items.length === 0;
  }

  _upload(file) {
    const item = { id: `f${Math.random().toString(36).slice(2)}`, file, xhr: null, attachment: null, error: null };
    const progress = el("progress", { max: "100", value: "0", "aria-label": `Uploading ${file.name}` });
    const status = el("span", { class: "file-status", "data-testid": "upload-status" }, "uploading…");
    const remove = el("button", { type: "button", "data-remove": item.id, "aria-label": `Remove ${file.name}` }, "✕");
    item.node = el("li", { class: "file-chip pending", "data-testid": "upload" });
    item.node.append(el("span", { class: "file-name" }, file.name), progress, status, remove);
    this.items.push(item);
    this.list.append(item.node);
    this.list.hidden = false;

    const fail = (text) => {
      item.error = text;
      item.node.classList.add("failed");
      status.textContent = text;
      status.dataset.testid = "attachment-error";
      progress.remove();
      this.error(`${file.name}: ${text}`);
    };
    if (file.size > MAX_BYTES) {
      fail(`larger than ${humanSize(MAX_BYTES)}`);
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", `/study-groups/${encodeURIComponent(this.groupId())}/attachments`);
    xhr.setRequestHeader("Authorization", `Bearer ${tokenOf()}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress.value = Math.round((event.loaded / event.total) * 100);
    });
    xhr.addEventListener("load", () => {
      item.xhr = null;
      const body = xhr.response;
      if (xhr.status === 200 && body?.ok) {
        item.attachment = body.attachment;
        item.node.classList.remove("pending");
        progress.remove();
        status.textContent = humanSize(body.attachment.size);
      } else {
        fail(body?.error?.message || `upload failed (${xhr.status})`);
      }
    });
    xhr.addEventListener("error", () => fail("upload failed (network)"));
    xhr.send(form);
  }
}

async function blobUrl(url) {
  if (!blobs.has(url)) {
    blobs.set(url, (async () => {
      const resp = await fetch(url, { headers: { Authorization: `Bearer ${tokenOf()}` } });
      if (!resp.ok) throw new Error(`${resp.status}`);
      return URL.createObjectURL(await resp.blob());
    })());
    blobs.get(url).catch(() => blobs.delete(url));
  }
  return blobs.get(url);
}

/** What a message shows of its files: previews of images, chips of the rest. */
export function attachmentList(attachments) {
  const list = el("ul", { class: "attachments", "aria-label": "Attachments" });
  for (const a of attachments) {
    const item = el("li");
    const url = `/attachments/${a.id}`;
    if (a.width && a.height) {
      const img = el("img", { alt: `${a.name}, open full size`, "data-testid": "attachment-preview" });
      const ratio = Math.min(1, 320 / Math.max(a.width, a.height));
      img.width = Math.max(1, Math.round(a.width * ratio));
      img.height = Math.max(1, Math.round(a.height * ratio));
      const open = el("button", { type: "button", class: "attachment-image", "data-action": "open-file",
        "data-url": url, "data-name": a.name });
      open.append(img);
      blobUrl(`${url}/thumbnail`).then((src) => { img.src = src; }, () => { img.alt = `${a.name} (not available)`; });
      item.append(open);
    } else {
      const chip = el("button", { type: "button", class: "file-chip", "data-action": "download-file", "data-url": url,
        "data-name": a.name, "data-testid": "attachment-file" });
      chip.append(el("span", { class: "file-name" }, a.name), el("span", { class: "file-size" }, humanSize(a.size)));
      item.append(chip);
    }
    list.append(item);
  }
  return list;
}

/** An image at full size, in the page's viewer dialog (Escape or Close ends it). */
export async function openImage(dialog, url, name) {
  const img = dialog.querySelector("img");
  img.removeAttribute("src");
  img.alt = name;
  dialog.querySelector("[data-name]").textContent = name;
  dialog.showModal();
  img.src = await blobUrl(url);
}

/** A file saved under its name. */
export async function downloadFile(url, name) {
  const link = el("a", { href: await blobUrl(url), download: name });
  document.body.append(link);
  link.click();
  link.remove();
}
