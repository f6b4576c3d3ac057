// Upload with a progress bar per file. Each file takes two requests: a record is made first (so a file cut
// off mid-upload shows as failed, never as half-stored, and a file over a limit is refused before a byte is
// sent), then its bytes go as the raw body of a PUT, whose XHR progress events drive the bar. Folders dropped
// on the page are walked recursively; their paths are kept in the file names. Without JavaScript the form
// posts the chosen files as multipart instead.
(function () {
  "use strict";
  const section = document.getElementById("upload");
  if (!section) return;
  const form = document.getElementById("upload-form");
  const dropzone = document.getElementById("dropzone");
  const list = document.getElementById("upload-list");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const startUrl = section.dataset.startUrl;
  const ingestUrl = section.dataset.ingestUrl;
  const parallel = 3;
  document.querySelectorAll(".js-only").forEach((el) => { el.hidden = false; });

  function row(name) {
    const li = document.createElement("li");
    li.innerHTML = '<span class="name"></span> <progress max="100" value="0"></progress> <span class="state">waiting</span>';
    li.querySelector(".name").textContent = name;
    list.appendChild(li);
    return {
      progress: li.querySelector("progress"),
      set(state, cls) { const s = li.querySelector(".state"); s.textContent = state; li.className = cls || ""; },
    };
  }

  function start(name, size) {
    const body = new URLSearchParams({ name: name, size: String(size) });
    return fetch(startUrl, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "X-CSRFToken": csrf, "Accept": "application/json" },
    }).then((r) => r.json().then((data) => ({ ok: r.ok, data: data })));
  }

  function send(url, file, ui) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", url);
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) { ui.progress.value = (100 * e.loaded) / e.total; ui.set(Math.round((100 * e.loaded) / e.total) + "%"); }
      };
      xhr.onload = () => {
        let data = {};
        try { data = JSON.parse(xhr.responseText); } catch (err) { data = { status: "failed", message: "The server answered " + xhr.status + "." }; }
        resolve(data);
      };
      xhr.onerror = () => resolve({ status: "failed", message: "The connection broke; send the file again." });
      xhr.onabort = () => resolve({ status: "failed", message: "The upload was cancelled." });
      xhr.send(file);
    });
  }

  async function uploadOne(item) {
    const ui = row(item.name);
    const started = await start(item.name, item.file.size);
    if (!started.ok) {
      const msg = started.data.message || JSON.stringify(started.data.error || started.data);
      ui.set("refused: " + msg, "failed"); return;
    }
    ui.set("0%");
    const done = await send(started.data.upload_url, item.file, ui);
    ui.progress.value = 100;
    ui.set(done.status + (done.message ? ": " + done.message : ""), done.status === "stored" ? "ok" : "failed");
  }

  // Files being sent (and the ingest request after them). The status panel's poll answers "reload the page" once
  // the ingest it watched ends; a reload now would cut these uploads off, so it waits for the next poll.
  let sending = 0;
  document.body.addEventListener("htmx:beforeOnLoad", (e) => {
    if (sending > 0 && e.detail.xhr.getResponseHeader("HX-Refresh") === "true") e.preventDefault();
  });

  async function uploadAll(items) {
    sending += 1;
    try { await sendAll(items); } finally { sending -= 1; }
    // Refresh the status panel (it polls by itself while the ingest runs).
    if (window.htmx) { window.htmx.ajax("GET", window.location.pathname, { target: "#corpus-status", swap: "innerHTML" }); }
  }

  async function sendAll(items) {
    const queue = items.slice();
    const workers = [];
    for (let i = 0; i < Math.min(parallel, queue.length); i++) {
      workers.push((async () => { while (queue.length) { await uploadOne(queue.shift()); } })());
    }
    await Promise.all(workers);
    if (document.getElementById("auto-ingest").checked) {
      await fetch(ingestUrl, { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf, "HX-Request": "true" } });
    }
  }

  function walk(entry, path) {
    return new Promise((resolve) => {
      if (entry.isFile) {
        entry.file((file) => resolve([{ name: path + file.name, file: file }]), () => resolve([]));
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        const all = [];
        const next = () => reader.readEntries(async (entries) => {
          if (!entries.length) { resolve(all); return; }
          for (const child of entries) { all.push(...(await walk(child, path + entry.name + "/"))); }
          next();
        }, () => resolve(all));
        next();
      } else { resolve([]); }
    });
  }

  dropzone.addEventListener("dragover", (e) => { e.preventDefault(); dropzone.classList.add("over"); });
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
  dropzone.addEventListener("drop", async (e) => {
    e.preventDefault();
    dropzone.classList.remove("over");
    const entries = Array.from(e.dataTransfer.items || []).map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    let items = [];
    if (entries.length) { for (const entry of entries) { items.push(...(await walk(entry, ""))); } }
    else { items = Array.from(e.dataTransfer.files).map((f) => ({ name: f.name, file: f })); }
    uploadAll(items);
  });
  function fromInput(input) {
    const items = Array.from(input.files).map((f) => ({ name: f.webkitRelativePath || f.name, file: f }));
    input.value = "";
    uploadAll(items);
  }
  document.getElementById("file-input").addEventListener("change", (e) => fromInput(e.target));
  document.getElementById("folder-input").addEventListener("change", (e) => fromInput(e.target));
  form.addEventListener("submit", (e) => { e.preventDefault(); });
})();
