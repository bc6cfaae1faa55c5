// Map page of `eoforge serve`: upload a GeoTIFF as a job, poll its progress, overlay the prediction.
"use strict";
const $ = (id) => document.getElementById(id);
const map = L.map("map", { zoomControl: true, attributionControl: false }).setView([0, 0], 2);
let imageLayer = null;
let mapLayer = null;

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function renderLegend(legend, counts) {
  const ul = $("legend");
  ul.innerHTML = "";
  for (const c of legend) {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = c.color;
    const name = document.createElement("span");
    name.textContent = c.name;
    li.append(sw, name);
    const n = counts && counts.find((k) => k.id === c.id);
    if (n) {
      const cnt = document.createElement("span");
      cnt.className = "count";
      cnt.textContent = n.area_ha !== null ? `${n.area_ha.toFixed(2)} ha` : `${n.pixels} px`;
      li.append(cnt);
    }
    ul.append(li);
  }
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}

function upload(file) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/jobs?preview=true");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) { $("progress").value = e.loaded / e.total; }
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = { detail: xhr.statusText }; }
      if (xhr.status === 202) resolve(body);
      else reject(new Error(`${xhr.status}: ${body.detail}`));
    };
    xhr.onerror = () => reject(new Error("network error"));
    xhr.send(form);
  });
}

async function run(file) {
  $("controls").disabled = true;
  $("progress").hidden = false;
  $("progress").value = 0;
  try {
    setStatus(`uploading ${file.name}…`);
    const job = await upload(file);
    let state = job;
    while (state.status === "queued" || state.status === "running") {
      setStatus(`predicting… ${Math.round(100 * state.progress.fraction)} %`);
      $("progress").value = state.progress.fraction;
      await new Promise((r) => setTimeout(r, 300));
      state = await getJSON(`/jobs/${job.id}`);
    }
    if (state.status !== "done") throw new Error(state.error || "prediction failed");
    const [preview, counts] = await Promise.all([
      getJSON(`/jobs/${job.id}/preview`),
      getJSON(`/jobs/${job.id}/result?format=json`),
    ]);
    show(preview, counts);
    $("download").href = `/jobs/${job.id}/result`;
    $("download").setAttribute("download", `${file.name.replace(/\.[^.]*$/, "")}-map.tif`);
    $("controls").disabled = false;
    setStatus(`done: ${file.name}`);
  } catch (err) {
    setStatus(String(err.message || err), true);
  } finally {
    $("progress").hidden = true;
  }
}

function show(preview, counts) {
  if (imageLayer) map.removeLayer(imageLayer);
  if (mapLayer) map.removeLayer(mapLayer);
  const bounds = L.latLngBounds(preview.bounds);
  imageLayer = L.imageOverlay(preview.image, bounds).addTo(map);
  mapLayer = L.imageOverlay(preview.map, bounds, { opacity: Number($("opacity").value) }).addTo(map);
  mapLayer.getElement().style.imageRendering = "pixelated";
  map.fitBounds(bounds);
  renderLegend(preview.legend, counts.classes);
}

$("opacity").addEventListener("input", (e) => { if (mapLayer) mapLayer.setOpacity(Number(e.target.value)); });
$("show-map").addEventListener("change", (e) => {
  if (!mapLayer) return;
  if (e.target.checked) mapLayer.addTo(map); else map.removeLayer(mapLayer);
});
$("file").addEventListener("change", (e) => { if (e.target.files.length) run(e.target.files[0]); });
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) run(e.dataTransfer.files[0]); });

getJSON("/model").then((item) => {
  const p = item.properties;
  $("model").textContent = `${p["mlm:name"]}: ${p["mlm:input"][0].bands.join(", ")}`;
  const legend = p["mlm:output"][0]["classification:classes"].map((c) => ({
    id: c.value, name: c.name, color: `#${c.color_hint}`,
  }));
  renderLegend(legend, null);
}).catch((err) => setStatus(`model: ${err.message}`, true));
