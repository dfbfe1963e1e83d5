// The player: /watch?key=<key>. An HLS rendition when the server has one ready
// (GET /videos/<key> answers {"state": "done", "hls": <path>}), played with hls.js
// (static/vendor/hls.light.min.js, the global `Hls`); else the original object, which
// the <video> reads with Range requests as it plays and seeks.

import { apiUrl, authHeaders, base, keyPath, pageUrl, showMessage, signature } from "./api.js";

const video = document.getElementById("video");
const key = new URLSearchParams(location.search).get("key") || "";

// An API path the server handed out ("/files/..."), as a URL carrying our signature.
function servedUrl(path) {
  const url = new URL(path, location.href);
  if (url.origin !== location.origin) return null; // connect-src allows this origin only
  let pathname = url.pathname;
  if (base && !pathname.startsWith(`${base}/`)) pathname = base + pathname;
  if (signature && !url.searchParams.has("sig")) url.searchParams.set("sig", signature);
  return pathname + url.search;
}

async function rendition() {
  try {
    const response = await fetch(apiUrl(`/videos/${keyPath(key)}`), { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) return null;
    const body = await response.json();
    if (body.state !== "done" || typeof body.hls !== "string") return null;
    return servedUrl(body.hls);
  } catch {
    return null; // no renditions on this server: the original plays
  }
}

function playOriginal() {
  video.src = apiUrl(`/files/${keyPath(key)}`);
  video.dataset.source = "original";
  document.getElementById("source").textContent = "Playing the original file.";
}

function playHls(url) {
  const hls = new Hls({
    xhrSetup: (xhr) => {
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    },
  });
  hls.on(Hls.Events.ERROR, (_event, data) => {
    if (!data.fatal) return;
    hls.destroy();
    playOriginal(); // the rendition is broken or gone: the original still plays
  });
  hls.loadSource(url);
  hls.attachMedia(video);
  video.dataset.source = "hls";
  document.getElementById("source").textContent = "Playing the HLS rendition.";
}

video.addEventListener("error", () => {
  const e = video.error;
  // A <video> cannot send the bearer token: with access control on, the original
  // plays only for anonymous readers or through a signed URL.
  const hint = authHeaders().Authorization
    ? " The video player cannot send an access token: open it through a signed URL."
    : "";
  showMessage(`The video cannot be played (${e ? e.message || `error ${e.code}` : "unknown error"}).${hint}`);
});

async function main() {
  document.getElementById("back").href = pageUrl("/");
  if (!key) {
    showMessage("No video chosen: open one from the list of files.");
    return;
  }
  document.getElementById("title").textContent = key.split("/").pop();
  document.title = `${key} · stream-proxy`;
  const hls = await rendition();
  if (hls && typeof Hls !== "undefined" && Hls.isSupported()) playHls(hls);
  else if (hls && video.canPlayType("application/vnd.apple.mpegurl")) video.src = hls;
  else playOriginal();
}

main();
