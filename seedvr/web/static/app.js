// The page: pick a file, upload it with the settings as API fields, poll the job, show before and after.
// Plain browser JavaScript, no build step: the server sends this file as it is.
"use strict";

const $ = (id) => document.getElementById(id);
const FINAL = ["completed", "failed", "cancelled"];
const STAGES = {
  encode: "Encoding frames (VAE)",
  dit: "Restoring (DiT)",
  vae_decode: "Decoding frames (VAE)",
  write: "Writing the output",
};
const POLL_MS = 700;

const page = { config: null, file: null, inputUrl: null, job: null, busy: false };

class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 204) return null;
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    body = { error: `the server answered HTTP ${response.status}` };
  }
  if (!response.ok) throw new ApiError(body.error || `HTTP ${response.status}`, body.error_code);
  return body;
}

function megabytes(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} kB`;
}

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

function show(id, visible) {
  $(id).hidden = !visible;
}

function showError(message, code) {
  $("error").textContent = code ? `${message} (${code})` : message;
  show("error", Boolean(message));
}

// ------------------------------------------------------------------------------------------ settings

function fillSettings(config) {
  for (const name of Object.keys(config.presets)) {
    $("size").add(new Option(name, name, name === "720p", name === "720p"));
  }
  $("size").add(new Option("scale factor", "scale"));
  const where = { local: "the worker in this process", server: config.backend, runpod: "a RunPod endpoint" };
  $("backend").textContent = `Jobs run on ${where[config.mode] || config.backend}.`;
  $("limit").textContent = `Up to ${megabytes(config.max_upload_bytes)}.`;
}

function syncVariant() {
  const sevenB = $("model").value === "seedvr2_7b";
  const sharp = $("variant").querySelector('option[value="sharp"]');
  sharp.disabled = !sevenB;
  if (!sevenB) $("variant").value = "normal";
}

function restoreQuery() {
  const seed = $("seed").value.trim();
  if (!/^\d+$/.test(seed)) throw new ApiError("the seed must be a whole number of 0 or more", "INVALID_INPUT");
  const params = new URLSearchParams({
    name: page.file.name,
    model_type: $("model").value,
    model_variant: $("variant").value,
    seed,
    color_fix: $("color-fix").value,
  });
  const size = $("size").value;
  if (size === "scale") {
    params.set("scale", $("scale").value);
  } else {
    const [resH, resW] = page.config.presets[size];
    params.set("res_h", resH);
    params.set("res_w", resW);
  }
  return params.toString();
}

// ------------------------------------------------------------------------------------------ file

function pick(file) {
  if (!file || page.busy) return; // the running job's input must stay the one shown beside its result
  resetResult();
  showError("");
  const limit = page.config.max_upload_bytes;
  if (file.size > limit) {
    page.file = null;
    $("restore").disabled = true;
    show("picked", false);
    showError(`${file.name} is ${megabytes(file.size)}; this server accepts at most ${megabytes(limit)}.`, "TOO_LARGE");
    return;
  }
  page.file = file;
  if (page.inputUrl) URL.revokeObjectURL(page.inputUrl);
  page.inputUrl = URL.createObjectURL(file);
  $("picked").textContent = `${file.name} · ${megabytes(file.size)}`;
  show("picked", true);
  $("restore").disabled = false;
}

function wireDrop() {
  const drop = $("drop");
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    pick(event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", () => pick($("file").files[0]));
}

// ------------------------------------------------------------------------------------------ job

function upload(file, query) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `api/jobs?${query}`);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) showProgress(`Uploading… ${Math.round((100 * event.loaded) / event.total)}%`, (100 * event.loaded) / event.total, "");
    };
    xhr.onload = () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch (_) {
        body = {};
      }
      if (xhr.status === 202) resolve(body);
      else reject(new ApiError(body.error || `the upload failed (HTTP ${xhr.status})`, body.error_code));
    };
    xhr.onerror = () => reject(new ApiError("the upload failed: is the server still running?"));
    xhr.send(file);
  });
}

async function restore() {
  showError("");
  resetResult();
  setBusy(true);
  try {
    const job = await upload(page.file, restoreQuery());
    page.job = job.id;
    render(job);
    setTimeout(poll, POLL_MS);
  } catch (err) {
    setBusy(false);
    show("status", false);
    showError(err.message, err.code);
  }
}

async function poll(failures = 0) {
  let job;
  try {
    job = await api(`api/jobs/${page.job}`);
  } catch (err) {
    // The server answered with an error: final. The network failed: try a few more times.
    if (err instanceof ApiError || failures >= 5) {
      setBusy(false);
      showError(err.message, err.code);
    } else {
      setTimeout(() => poll(failures + 1), 2 * POLL_MS);
    }
    return;
  }
  render(job);
  if (FINAL.includes(job.state)) finish(job);
  else setTimeout(poll, POLL_MS);
}

async function cancel() {
  if (!page.job) return;
  $("cancel").disabled = true;
  try {
    await api(`api/jobs/${page.job}`, { method: "DELETE" });
  } catch (err) {
    showError(err.message, err.code);
  }
}

function setBusy(busy) {
  page.busy = busy;
  $("restore").disabled = busy || !page.file;
  $("file").disabled = busy;
  show("cancel", busy && page.config.can_cancel);
  $("cancel").disabled = false;
}

function showProgress(text, percent, times) {
  show("status", true);
  $("stage").textContent = text;
  $("times").textContent = times;
  const fill = $("bar-fill");
  fill.classList.toggle("indeterminate", percent === null);
  fill.style.setProperty("width", percent === null ? "100%" : `${Math.min(100, percent)}%`);
}

function render(job) {
  const elapsed = `Elapsed ${clock(job.elapsed_seconds)}`;
  const p = job.progress;
  if (job.state === "queued") {
    showProgress("Waiting for a worker…", null, elapsed);
  } else if (job.state === "running" && p) {
    const stage = STAGES[p.stage] || p.stage;
    const windows = p.windows ? ` · window ${p.window} of ${p.windows}` : "";
    const frames = p.frames_total > 1 ? ` · ${p.frames_done}/${p.frames_total} frames` : "";
    const eta = p.eta_seconds === null || p.eta_seconds === undefined ? "" : ` · about ${clock(p.eta_seconds)} left`;
    showProgress(`${stage}${windows}${frames} · ${Math.round(p.percent)}%`, p.percent, elapsed + eta);
  } else if (job.state === "running") {
    const text = page.config.reports_progress
      ? "Starting (the first job also loads the model)…"
      : "Running on the local worker (it reports no progress until it is done)…";
    showProgress(text, null, elapsed);
  } else if (job.state === "completed") {
    showProgress(`Done in ${clock(job.elapsed_seconds)}`, 100, "");
  } else {
    show("status", false);
  }
}

function finish(job) {
  setBusy(false);
  if (job.state === "completed") showResult(job.result, job.expires_in_seconds);
  else showError(job.error, job.error_code);
}

// ------------------------------------------------------------------------------------------ result

function resetResult() {
  show("result", false);
  for (const id of ["before-video", "after-video"]) {
    $(id).pause();
    $(id).removeAttribute("src");
  }
}

function showResult(result, expiresIn) {
  const info = result.processing_info || {};
  const video = result.media_type === "video";
  show("compare-video", video);
  show("compare-image", !video);
  if (video) {
    $("before-video").src = page.inputUrl;
    $("after-video").src = result.url;
  } else {
    $("before-image").src = page.inputUrl;
    $("after-image").src = result.url;
  }
  const frames = info.frames > 1 ? ` · ${info.frames} frames` : "";
  const took = info.timings && info.timings.total ? ` · ${info.timings.total.toFixed(1)} s on the worker` : "";
  const kept = expiresIn ? ` · kept on the server for ${Math.round(expiresIn / 60)} min` : "";
  $("summary").textContent =
    `${info.input_resolution || "?"} → ${result.resolution}${frames} · ${result.model_type} (${result.model_variant}) · seed ${info.seed}${took}${kept}`;
  $("download").href = result.download_url;
  $("download").setAttribute("download", result.download_name);
  $("download").textContent = `Download ${result.download_name}`;
  show("result", true);
}

// The restored video leads (it has the controls and the sound); the input follows it.
function wireVideoSync() {
  const lead = $("after-video");
  const follow = $("before-video");
  const align = () => {
    if (Math.abs(follow.currentTime - lead.currentTime) > 0.05) follow.currentTime = lead.currentTime;
  };
  lead.addEventListener("play", () => {
    align();
    follow.play().catch(() => {});
  });
  lead.addEventListener("pause", () => {
    follow.pause();
    align();
  });
  lead.addEventListener("seeked", align);
  lead.addEventListener("ratechange", () => {
    follow.playbackRate = lead.playbackRate;
  });
  lead.addEventListener("timeupdate", () => {
    if (Math.abs(follow.currentTime - lead.currentTime) > 0.2) align();
  });
}

function wireSlider() {
  const slider = $("compare-image");
  const split = () => slider.style.setProperty("--split", `${$("split").value}%`);
  $("split").addEventListener("input", split);
  $("after-image").addEventListener("load", () => {
    const image = $("after-image");
    slider.style.setProperty("--ratio", String(image.naturalWidth / image.naturalHeight));
  });
  split();
}

async function start() {
  try {
    page.config = await api("api/config");
  } catch (err) {
    showError(`could not reach the server: ${err.message}`);
    return;
  }
  fillSettings(page.config);
  wireDrop();
  wireVideoSync();
  wireSlider();
  $("model").addEventListener("change", syncVariant);
  $("size").addEventListener("change", () => show("scale-field", $("size").value === "scale"));
  $("restore").addEventListener("click", restore);
  $("cancel").addEventListener("click", cancel);
  syncVariant();
  document.body.dataset.ready = "true";
}

start();
