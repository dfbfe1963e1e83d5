// What the list and the player share: where the API is, the credentials sent with
// every request, and the messages shown when the server refuses one.

const TOKEN_KEY = "stream-proxy-token";

// Opened through a signed URL (/s/<signature>/ or ?sig=<signature>): every request
// the page makes carries the signature the same way, so that it grants them too.
const signedPath = /^(\/s\/[^/]+)\//.exec(location.pathname);
export const base = signedPath ? signedPath[1] : "";
export const signature = new URLSearchParams(location.search).get("sig");

// What the signature grants (its payload is base64url JSON; the server checks its
// mac, the page only reads it to say what the link is for), or null.
export function signedGrant() {
  const token = signature || (signedPath ? signedPath[1].slice(3) : "");
  if (!token) return null;
  try {
    const payload = token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload));
  } catch {
    return null;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders() {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// A key as a URL path: each segment encoded, the slashes kept.
export function keyPath(key) {
  return key.split("/").map(encodeURIComponent).join("/");
}

// The URL of an API path ("/files/...") with the query in `params`.
export function apiUrl(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) query.set(name, value);
  }
  if (signature) query.set("sig", signature);
  const text = query.toString();
  return base + path + (text ? `?${text}` : "");
}

// A link to one of the page's own routes, keeping a ?sig= the page was opened with.
export function pageUrl(path, params = {}) {
  return apiUrl(path, params);
}

export class ApiFailure extends Error {
  constructor(status, error, message) {
    super(message);
    this.status = status;
    this.error = error;
  }
}

// What to tell a person about a refused or failed request.
export function describeFailure(status, body) {
  const said = body && typeof body.message === "string" ? body.message : "";
  if (status === 401) {
    return `Sign-in needed: ${said || "this needs credentials"}. Enter an access token above.`;
  }
  if (status === 403) {
    return `Not allowed: ${said || "these credentials do not allow this"}.`;
  }
  if (said) return `${said} (HTTP ${status}).`;
  return `The server answered HTTP ${status}.`;
}

async function failureOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && body.error ? body.error : "";
  return new ApiFailure(response.status, error, describeFailure(response.status, body));
}

// fetch() of an API path with the credentials; throws ApiFailure unless 2xx.
export async function apiFetch(path, { params = {}, method = "GET" } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path, params), { method, headers: authHeaders(), cache: "no-store" });
  } catch (e) {
    throw new ApiFailure(0, "network", `The server could not be reached (${e.message}).`);
  }
  if (!response.ok) throw await failureOf(response);
  return response;
}

export function showMessage(text, kind = "error") {
  const box = document.getElementById("message");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = !text;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

/** A labelled button (its text may be a symbol; the label says what it does). */
export function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}
