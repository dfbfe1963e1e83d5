// Uploads through tus-js-client (static/vendor/tus.min.js, the global `tus`): a row
// per file with a progress bar, percent, speed and time left; pause, resume, cancel.
// tus-js-client keeps each upload's URL in localStorage under the file's fingerprint
// (name, type, size, modification time, endpoint), so that choosing the same file
// again after a reload or a lost connection continues where the server stopped.

import { apiUrl, authHeaders, button, describeFailure, formatBytes, showMessage } from "./api.js";

// Chunks of 8 MiB: a pause, a reload or a dropped connection costs at most one chunk
// (the server keeps what arrived of a cut-off PATCH anyway), and no request is larger
// than a reverse proxy's body limit is likely to be.
const CHUNK_SIZE = 8 * 1024 * 1024;
const SPEED_WINDOW_MS = 3000; // speed is averaged over the last few seconds

function failureText(error) {
  const response = error && error.originalResponse;
  if (response && response.getStatus && response.getStatus() > 0) {
    let body = null;
    try {
      body = JSON.parse(response.getBody());
    } catch {
      body = null;
    }
    return describeFailure(response.getStatus(), body);
  }
  return `The upload failed: ${error && error.message ? error.message : error}`;
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s left`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s left`;
  return `${Math.floor(m / 60)} h ${m % 60} min left`;
}

class UploadRow {
  constructor(file, list, onDone) {
    this.file = file;
    this.onDone = onDone;
    this.samples = [];
    this.item = document.createElement("li");
    this.item.className = "upload";
    this.item.dataset.name = file.name;
    const name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = `${file.name} (${formatBytes(file.size)})`;
    this.bar = document.createElement("progress");
    this.bar.max = 100;
    this.bar.value = 0;
    this.bar.setAttribute("aria-label", `Progress of ${file.name}`);
    this.status = document.createElement("span");
    this.status.className = "upload-status";
    this.status.setAttribute("aria-live", "polite");
    this.pauseButton = button("Pause", `Pause ${file.name}`, () => this.togglePause());
    this.cancelButton = button("Cancel", `Cancel ${file.name}`, () => this.cancel());
    const actions = document.createElement("span");
    actions.className = "upload-actions";
    actions.append(this.pauseButton, this.cancelButton);
    this.item.append(name, this.bar, this.status, actions);
    list.prepend(this.item);
    this.upload = this.makeUpload();
  }

  makeUpload() {
    const file = this.file;
    const metadata = { filename: file.name };
    if (file.type) metadata.filetype = file.type;
    return new tus.Upload(file, {
      endpoint: new URL(apiUrl("/uploads/"), location.href).href,
      chunkSize: CHUNK_SIZE,
      retryDelays: [0, 1000, 3000, 5000],
      metadata,
      headers: authHeaders(),
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      onProgress: (sent, total) => this.progress(sent, total),
      onSuccess: (payload) => this.succeeded(payload),
      onError: (error) => this.failed(error),
    });
  }

  setState(state, text) {
    this.item.dataset.state = state;
    if (text !== undefined) this.status.textContent = text;
  }

  async start() {
    this.setState("starting", "Starting…");
    try {
      const previous = await this.upload.findPreviousUploads();
      if (previous.length > 0) {
        // The newest first: the one most likely to be still on the server.
        previous.sort((a, b) => String(b.creationTime).localeCompare(String(a.creationTime)));
        this.upload.resumeFromPreviousUpload(previous[0]);
        this.item.dataset.resumed = "true";
      }
    } catch {
      // No stored uploads to look at (storage refused): start afresh.
    }
    this.samples = [];
    this.upload.start();
    this.setState("uploading", "Uploading…");
  }

  progress(sent, total) {
    const now = performance.now();
    this.samples.push([now, sent]);
    while (this.samples.length > 2 && now - this.samples[0][0] > SPEED_WINDOW_MS) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const speed = now > t0 ? ((sent - b0) * 1000) / (now - t0) : 0;
    const percent = total > 0 ? Math.floor((sent * 100) / total) : 0;
    this.bar.value = percent;
    this.item.dataset.percent = String(percent);
    const parts = [`${percent}%`];
    if (speed > 0) parts.push(`${formatBytes(speed)}/s`, formatDuration((total - sent) / speed));
    this.status.textContent = parts.join(" · ");
  }

  succeeded(payload) {
    this.bar.value = 100;
    this.item.dataset.percent = "100";
    const response = payload && payload.lastResponse;
    const location = response && response.getHeader ? response.getHeader("Object-Location") : null;
    this.item.dataset.object = location || "";
    this.setState("done", "Done");
    this.pauseButton.disabled = true;
    this.cancelButton.disabled = true;
    this.onDone();
  }

  failed(error) {
    const text = failureText(error);
    this.setState("error", text);
    this.pauseButton.textContent = "Retry";
    this.pauseButton.setAttribute("aria-label", `Retry ${this.file.name}`);
    showMessage(`${this.file.name}: ${text}`);
  }

  togglePause() {
    const state = this.item.dataset.state;
    if (state === "uploading" || state === "starting") {
      this.upload.abort(false).catch(() => {});
      this.setState("paused", "Paused");
      this.pauseButton.textContent = "Resume";
      this.pauseButton.setAttribute("aria-label", `Resume ${this.file.name}`);
    } else if (state === "paused" || state === "error") {
      this.pauseButton.textContent = "Pause";
      this.pauseButton.setAttribute("aria-label", `Pause ${this.file.name}`);
      this.upload.options.headers = authHeaders(); // a token entered since
      this.samples = [];
      this.upload.start();
      this.setState("uploading", "Uploading…");
    }
  }

  async cancel() {
    this.pauseButton.disabled = true;
    this.cancelButton.disabled = true;
    this.setState("cancelling", "Cancelling…");
    try {
      // true: terminate, so that the server drops what it has (tus DELETE), and forget it here.
      await this.upload.abort(true);
      this.setState("cancelled", "Cancelled");
    } catch (error) {
      this.setState("error", failureText(error));
    }
  }
}

export function startUploads(files, list, onDone) {
  if (typeof tus === "undefined" || !tus.isSupported) {
    showMessage("This browser cannot upload here (tus-js-client is not supported).");
    return;
  }
  for (const file of files) new UploadRow(file, list, onDone).start();
}
