// The list page: the token, the objects under a prefix (folders derived from the
// keys, as the listing has no delimiter), paging, deleting, and the upload area.

import {
  ApiFailure,
  apiFetch,
  apiUrl,
  button,
  formatBytes,
  getToken,
  keyPath,
  pageUrl,
  setToken,
  showMessage,
  signedGrant,
} from "./api.js";
import { startUploads } from "./uploads.js";

const PAGE_SIZE = 100;
const COUNT_PAGE = 1000; // the listing's largest page, to count a folder's objects

const state = { prefix: "", cursors: [null], page: 0 };

const $ = (id) => document.getElementById(id);

function folderOf(prefix) {
  const cut = prefix.lastIndexOf("/");
  return cut < 0 ? "" : prefix.slice(0, cut + 1);
}

function playable(object) {
  const type = object.content_type || "";
  return type.startsWith("video/") || type.startsWith("audio/");
}

function cell(content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

function folderRow(folder, name) {
  const tr = document.createElement("tr");
  tr.className = "folder";
  tr.dataset.folder = folder;
  const open = button(`${name}/`, `Open folder ${name}`, () => go(folder));
  open.className = "link";
  const remove = button("Delete", `Delete folder ${name}`, () => deleteFolder(folder));
  tr.append(cell(open), cell("folder"), cell("", "wide"), cell("", "wide"), cell(remove));
  return tr;
}

function objectRow(object, name) {
  const tr = document.createElement("tr");
  tr.dataset.key = object.key;
  const link = document.createElement("a");
  link.textContent = name;
  link.href = playable(object) ? pageUrl("/watch", { key: object.key }) : apiUrl(`/files/${keyPath(object.key)}`);
  const date = new Date(object.last_modified);
  const time = document.createElement("time");
  time.dateTime = object.last_modified;
  time.textContent = date.toLocaleString();
  const remove = button("Delete", `Delete ${name}`, () => deleteObject(object.key));
  tr.append(
    cell(link),
    cell(formatBytes(object.size), "size"),
    cell(object.content_type || "", "wide"),
    cell(time, "wide"),
    cell(remove),
  );
  return tr;
}

function renderCrumbs(folder) {
  const nav = $("crumbs");
  nav.replaceChildren();
  const all = button("All files", "All files", () => go(""));
  all.className = "link";
  nav.append(all);
  let path = "";
  for (const part of folder.split("/").filter(Boolean)) {
    path += `${part}/`;
    const target = path;
    nav.append(" / ");
    const b = button(part, `Folder ${target}`, () => go(target));
    b.className = "link";
    nav.append(b);
  }
}

async function load() {
  const folder = folderOf(state.prefix);
  renderCrumbs(folder);
  $("prefix").value = state.prefix;
  const cursor = state.cursors[state.page];
  let body;
  try {
    const params = { prefix: state.prefix, limit: String(PAGE_SIZE) };
    if (cursor) params.cursor = cursor;
    body = await (await apiFetch("/files", { params })).json();
  } catch (error) {
    $("rows").replaceChildren();
    $("empty").hidden = true;
    showMessage(error instanceof ApiFailure ? error.message : String(error));
    return;
  }
  showMessage("");
  const rows = [];
  const folders = new Set();
  for (const object of body.objects) {
    const rest = object.key.slice(folder.length);
    const slash = rest.indexOf("/");
    if (slash >= 0) {
      const name = rest.slice(0, slash);
      if (!folders.has(name)) {
        folders.add(name);
        rows.push(folderRow(`${folder}${name}/`, name));
      }
    } else {
      rows.push(objectRow(object, rest));
    }
  }
  $("rows").replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
  state.cursors[state.page + 1] = body.next_cursor;
  $("previous").disabled = state.page === 0;
  $("next").disabled = !body.next_cursor;
  $("page-info").textContent = `Page ${state.page + 1}`;
}

function go(prefix) {
  state.prefix = prefix;
  state.cursors = [null];
  state.page = 0;
  load();
}

async function deleteObject(key) {
  if (!window.confirm(`Delete “${key}”?`)) return;
  try {
    await apiFetch(`/files/${keyPath(key)}`, { method: "DELETE" });
  } catch (error) {
    showMessage(error.message);
    return;
  }
  await load();
  showMessage(`Deleted ${key}.`, "info");
}

// How many objects are under `folder`: the listing, page after page.
async function countUnder(folder) {
  let count = 0;
  let cursor = null;
  do {
    const params = { prefix: folder, limit: String(COUNT_PAGE) };
    if (cursor) params.cursor = cursor;
    const body = await (await apiFetch("/files", { params })).json();
    count += body.objects.length;
    cursor = body.next_cursor;
  } while (cursor);
  return count;
}

async function deleteFolder(folder) {
  let text;
  try {
    const count = await countUnder(folder);
    const noun = count === 1 ? "object" : "objects";
    if (!window.confirm(`Delete ${count} ${noun} under “${folder}”?`)) return;
    const body = await (await apiFetch(`/files/${keyPath(folder)}`, { method: "DELETE" })).json();
    text = `Deleted ${body.deleted} objects under ${folder}.`;
  } catch (error) {
    showMessage(error.message);
    return;
  }
  if (state.prefix.startsWith(folder)) state.prefix = folderOf(folder.slice(0, -1));
  state.cursors = [null];
  state.page = 0;
  await load();
  showMessage(text, "info");
}

function setUp() {
  $("token").value = getToken();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
    go(state.prefix);
  });
  $("token-clear").addEventListener("click", () => {
    setToken("");
    $("token").value = "";
    go(state.prefix);
  });
  $("filter").addEventListener("submit", (event) => {
    event.preventDefault();
    go($("prefix").value);
  });
  $("previous").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    load();
  });
  $("next").addEventListener("click", () => {
    state.page += 1;
    load();
  });
  const input = $("file");
  const refresh = () => (signedGrant() ? undefined : load());
  input.addEventListener("change", () => {
    startUploads([...input.files], $("uploads"), refresh);
    input.value = ""; // so that choosing the same file again is a change too
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    startUploads([...event.dataTransfer.files], $("uploads"), refresh);
  });
  const grant = signedGrant();
  if (grant) {
    // A signed link grants one action on a key or prefix, never a listing: say what
    // it is for instead of asking for a list it cannot have.
    const what = grant.action === "write" ? "upload" : "read";
    const where = grant.scope === "prefix" ? `files under “${grant.target}”` : `“${grant.target}”`;
    const until = new Date(grant.expires * 1000).toLocaleString();
    document.getElementById("list-section").hidden = true;
    showMessage(`This link lets you ${what} ${where} until ${until}.`, "info");
    return;
  }
  load();
}

setUp();
