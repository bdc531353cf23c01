/* The web page of docs/serving.md, "The web page".
 *
 * It uses only the public API, at relative URLs (`models`, `classify`, `localize`), so that it
 * works behind a path prefix, and it draws the class score maps of docs/serving.md, "Score maps",
 * over the image, and, when the store serves a localization model, the boxes of `localize`
 * (docs/serving.md, "Localizing"). The API's error messages are shown as they come; with VERYDEEP_API_KEY set, a 401 shows
 * the key field, and the key is sent as `Authorization: Bearer <key>` and kept in this tab's
 * sessionStorage only.
 */
"use strict";

const KEY_ITEM = "verydeep.apiKey";
/* Viridis, from the lowest score on the map to the highest: the stops of .legend-bar in page.css. */
const COLOURS = [
  [0x44, 0x01, 0x54],
  [0x3b, 0x52, 0x8b],
  [0x21, 0x91, 0x8c],
  [0x5e, 0xc9, 0x62],
  [0xfd, 0xe7, 0x25],
];
/* Points of the heatmap's grid along the image's longer side (it is drawn stretched, smoothed). */
const GRID_POINTS = 320;
const AVERAGE = "average";
/* The boxes' colours, by rank of their class (colour-blind safe, Okabe and Ito). */
const BOX_COLOURS = ["#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7"];

const state = {
  key: readStoredKey(),
  models: null, // the answer of GET models
  file: null,
  previewUrl: null,
  previewOk: false,
  answer: null, // the answer of POST classify for `file`
  busy: false,
  again: false, // another classification was asked for while one ran
  located: null, // the answer of POST localize for `file`
  locating: false,
};

const $ = (id) => document.getElementById(id);

/* ---- The API ---- */

class ApiError extends Error {
  constructor(status, code, message, requestId = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

/* `path` (relative) with the key if there is one; the JSON answer, or an ApiError carrying the
 * API's own {"error": {"code", "message"}} (or the text of an answer that is not JSON). */
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(0, "network_error", `the service could not be reached (${err.message})`);
  }
  const text = await response.text();
  // The ID the service logged the request under (docs/serving.md, the access log).
  const requestId = response.headers.get("X-Request-ID");
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: a proxy's error page, or uvicorn's plain-text answer to malformed HTTP.
  }
  if (response.ok && body !== null) return body;
  if (body && body.error && typeof body.error.message === "string") {
    throw new ApiError(response.status, body.error.code, body.error.message, requestId);
  }
  const message = text.trim().slice(0, 500) || response.statusText || "no answer";
  throw new ApiError(response.status, `HTTP ${response.status}`, message, requestId);
}

/* ---- The API key ---- */

function readStoredKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM);
  } catch {
    return null; // storage turned off: the key lives in this page only
  }
}

function storeKey(key) {
  state.key = key || null;
  try {
    if (state.key) sessionStorage.setItem(KEY_ITEM, state.key);
    else sessionStorage.removeItem(KEY_ITEM);
  } catch {
    // storage turned off
  }
}

function askForKey() {
  $("key-form").hidden = false;
  $("key-note").textContent = state.key
    ? "The service refused this key: enter the right one."
    : "This service needs an API key.";
  $("key").focus();
}

async function onKeySubmit(event) {
  event.preventDefault();
  storeKey($("key").value.trim());
  $("key").value = "";
  $("key-note").textContent = state.key ? "Key in use." : "No key.";
  if (!(await loadModels())) return;
  if (state.file) classify();
  else $("file").focus();
}

function onKeyForget() {
  storeKey(null);
  $("key-note").textContent = "Key forgotten: the next request goes without one.";
}

/* ---- Models ---- */

async function loadModels() {
  setStatus("Loading the models...");
  try {
    state.models = await api("models");
  } catch (err) {
    setStatus("");
    showError(err);
    if (err.status === 401) askForKey();
    return false;
  }
  hideError();
  fillModels(state.models);
  setStatus(state.file ? "" : "Choose, drop or paste an image.");
  updateRunButton();
  return true;
}

function fillModels(info) {
  const select = $("model");
  const classifiers = info.models.filter((m) => !isLocalizer(m));
  const names = new Set([...info.ensembles, ...classifiers].map((entry) => entry.name));
  select.replaceChildren();
  if (info.default && !names.has(info.default)) {
    select.append(new Option(`${info.default} (default)`, info.default, true, true));
  }
  const groups = [
    ["Ensembles", info.ensembles.map((e) => [e.name, e.members.join(" + ")])],
    ["Models", classifiers.map((m) => [m.name, `${m.config}, ${m.weight_layers} layers`])],
  ];
  for (const [title, items] of groups) {
    if (!items.length) continue;
    const group = document.createElement("optgroup");
    group.label = title;
    for (const [name, about] of items) {
      const isDefault = name === info.default;
      group.append(new Option(`${name} (${about})`, name, isDefault, isDefault));
    }
    select.append(group);
  }
  fillLocalizers(info.models.filter(isLocalizer));
  updateScalesHint();
}

function isLocalizer(model) {
  return model.task === "localization";
}

/* The localization models, when there are any: the Localize button appears. Several that name
 * the same classifier are also offered together, their box sets merged (`model=a,b`, as the
 * paper combined its localisation nets). */
function fillLocalizers(localizers) {
  const select = $("loc-model");
  select.replaceChildren();
  for (const m of localizers) {
    const by = m.localization.classifier ? `, ranked by ${m.localization.classifier}` : "";
    select.append(new Option(`${m.name} (${m.localization.regression}${by})`, m.name));
  }
  const classifiers = new Set(localizers.map((m) => m.localization.classifier));
  if (localizers.length > 1 && classifiers.size === 1 && !classifiers.has(null)) {
    const names = localizers.map((m) => m.name);
    select.append(new Option(`${names.join(" + ")} (boxes merged)`, names.join(",")));
  }
  $("localize-controls").hidden = localizers.length === 0;
}

/* The test scales that a request without `scales` runs: each member's own. */
function defaultScales(name) {
  const models = new Map(state.models.models.map((m) => [m.name, m]));
  const ensemble = state.models.ensembles.find((e) => e.name === name);
  const members = ensemble ? ensemble.members : name.split(",");
  const scales = new Set(members.flatMap((member) => models.get(member)?.test_scales ?? []));
  return [...scales].sort((a, b) => a - b);
}

function updateScalesHint() {
  const scales = state.models && $("model").value ? defaultScales($("model").value) : [];
  $("scales").placeholder = scales.length ? scales.join(",") : "default";
  $("scales-hint").textContent = scales.length
    ? `Empty: the model's own test scales (${scales.join(", ")}).`
    : "Empty: the model's own test scales.";
}

/* ---- The image ---- */

function setImage(file) {
  if (!file) return;
  state.file = file;
  state.answer = null;
  state.previewOk = false;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  $("preview").src = state.previewUrl;
  $("picture").hidden = false;
  $("no-preview").hidden = true;
  reveal($("status"));
  clearAnswer();
  clearBoxes();
  updateRunButton();
  classify();
}

function onPreviewLoad() {
  state.previewOk = true;
  $("preview").hidden = false;
  $("no-preview").hidden = true;
  redraw();
}

function onPreviewError() {
  state.previewOk = false;
  $("preview").hidden = true;
  $("no-preview").hidden = false;
  redraw();
}

function redraw() {
  drawMap();
  drawBoxes();
}

function firstFile(items) {
  for (const item of Array.from(items || [])) {
    const file = item instanceof File ? item : item.kind === "file" && item.getAsFile();
    if (file) return file;
  }
  return null;
}

function wireDropAndPaste() {
  const zone = $("drop");
  zone.addEventListener("dragenter", () => zone.classList.add("over"));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  // Anywhere on the page: a file dropped outside the zone would otherwise open in the tab.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    setImage(firstFile(event.dataTransfer && event.dataTransfer.files));
  });
  document.addEventListener("paste", (event) => {
    const file = firstFile(event.clipboardData && event.clipboardData.items);
    if (!file) return; // pasted text goes where it was pasted
    event.preventDefault();
    setImage(file);
  });
}

/* ---- Classifying ---- */

function requestParams() {
  const params = new URLSearchParams();
  if ($("model").value) params.set("model", $("model").value);
  const scales = $("scales").value.replace(/\s+/g, "");
  if (scales) params.set("scales", scales);
  params.set("flip", $("flip").checked ? "true" : "false");
  const method = $("method").value;
  params.set("method", method);
  // Multi-crop has no dense score map, and the API refuses `maps` with it.
  if (method !== "multicrop") params.set("maps", "top");
  return params;
}

async function classify() {
  if (!state.file) return;
  if (state.busy) {
    state.again = true;
    return;
  }
  const body = new FormData();
  body.append("image", state.file, state.file.name || "pasted-image");
  state.busy = true;
  updateRunButton();
  hideError();
  clearAnswer();
  setStatus(`Classifying ${state.file.name || "the pasted image"}...`);
  try {
    const answer = await api(`classify?${requestParams()}`, { method: "POST", body });
    if (!state.again) showAnswer(answer);
  } catch (err) {
    if (!state.again) {
      setStatus("");
      showError(err);
      if (err.status === 401) askForKey();
    }
  } finally {
    state.busy = false;
    updateRunButton();
  }
  if (state.again) {
    state.again = false;
    classify();
  }
}

function onSubmit(event) {
  event.preventDefault();
  classify();
}

function updateRunButton() {
  $("run").disabled = !state.file || state.busy;
  $("run").textContent = state.busy ? "Classifying..." : "Classify";
  $("localize").disabled = !state.file || state.locating;
  $("localize").textContent = state.locating ? "Localizing..." : "Localize";
}

/* ---- Localizing ---- */

function localizeParams() {
  const params = new URLSearchParams();
  if ($("loc-model").value) params.set("model", $("loc-model").value);
  const scales = $("scales").value.replace(/\s+/g, "");
  if (scales) params.set("scales", scales);
  params.set("flip", $("flip").checked ? "true" : "false");
  return params;
}

async function localize() {
  if (!state.file || state.locating) return;
  const file = state.file;
  const body = new FormData();
  body.append("image", file, file.name || "pasted-image");
  state.locating = true;
  updateRunButton();
  hideError();
  clearBoxes();
  setStatus(`Localizing ${file.name || "the pasted image"}...`);
  try {
    const answer = await api(`localize?${localizeParams()}`, { method: "POST", body });
    if (state.file === file) showBoxes(answer);
  } catch (err) {
    if (state.file === file) {
      setStatus("");
      showError(err);
      if (err.status === 401) askForKey();
    }
  } finally {
    state.locating = false;
    updateRunButton();
  }
}

function clearBoxes() {
  state.located = null;
  $("loc-answer").hidden = true;
  drawBoxes();
}

function showBoxes(answer) {
  state.located = answer;
  const list = $("box-list");
  list.replaceChildren();
  answer.predictions.forEach((p, rank) => {
    const swatch = element("span", "swatch");
    swatch.style.background = BOX_COLOURS[rank % BOX_COLOURS.length];
    const [x0, y0, x1, y1] = p.box.map((c) => Math.round(c));
    const item = document.createElement("li");
    item.append(
      swatch,
      element("span", "name", p.label),
      ` ${percent(p.probability)}, box (${x0}, ${y0})-(${x1}, ${y1}), box score ` +
        `${p.box_score.toFixed(2)}`,
    );
    list.append(item);
  });
  const t = answer.timing_ms;
  const rows = [
    [
      "Boxes by",
      answer.localizers.map((l) => `${l.model} (Q ${l.scales.join(", ")})`).join(" + "),
    ],
    ["Ranked by", answer.classified_by],
    ["Scales", `${answer.scales.join(", ")}, ${answer.flip ? "with" : "without"} flip`],
    ["Boxes merged", `${answer.boxes_per_class} per class`],
    [
      "Time",
      `decode ${number(t.decode)} ms, inference ${number(t.inference)} ms (merging ` +
        `${number(t.merge)} ms), total ${number(t.total)} ms`,
    ],
  ];
  $("loc-summary").replaceChildren(
    ...rows.flatMap(([term, value]) => [element("dt", "", term), element("dd", "", value)]),
  );
  $("loc-title").textContent = `Boxes of the top ${answer.predictions.length}`;
  $("loc-answer").hidden = false;
  const top = answer.predictions[0];
  setStatus(`${top.label}: box score ${top.box_score.toFixed(2)} (${number(t.total)} ms)`);
  drawBoxes();
}

/* The boxes over the image: the upload's pixels scaled to the displayed size, most probable
 * class on top, each with its label. */
function drawBoxes() {
  const canvas = $("boxes");
  const answer = state.located;
  if (!answer) {
    sizeCanvas(canvas, 0, 0);
    return;
  }
  const size = displaySize(answer.image);
  sizeCanvas(canvas, size.width, size.height);
  if (!size.width || !size.height) return;
  const ratio = window.devicePixelRatio || 1;
  const sx = (size.width * ratio) / answer.image.width;
  const sy = (size.height * ratio) / answer.image.height;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.lineWidth = 2 * ratio;
  context.font = `${Math.round(12 * ratio)}px sans-serif`;
  context.textBaseline = "top";
  [...answer.predictions].reverse().forEach((p) => {
    const rank = answer.predictions.indexOf(p);
    const colour = BOX_COLOURS[rank % BOX_COLOURS.length];
    const [x0, y0, x1, y1] = p.box;
    const left = x0 * sx;
    const top = y0 * sy;
    context.strokeStyle = colour;
    context.strokeRect(left, top, (x1 - x0) * sx, (y1 - y0) * sy);
    const text = `${p.label} ${percent(p.probability)}`;
    const width = context.measureText(text).width + 6 * ratio;
    const height = 16 * ratio;
    const y = top >= height ? top - height : top;
    context.fillStyle = colour;
    context.fillRect(left, y, width, height);
    context.fillStyle = "#000";
    context.fillText(text, left + 3 * ratio, y + 2 * ratio);
  });
}

/* ---- The answer ---- */

function clearAnswer() {
  state.answer = null;
  $("answer").hidden = true;
  $("map-controls").hidden = true;
  $("no-map").hidden = true;
  drawMap();
}

function showAnswer(answer) {
  state.answer = answer;
  renderPredictions(answer);
  renderSummary(answer);
  renderMapChoices(answer);
  $("answer").hidden = false;
  const top = answer.predictions[0];
  setStatus(`${top.label}, ${percent(top.probability)} (${number(answer.timing_ms.total)} ms)`);
  drawMap();
}

function renderPredictions(answer) {
  const hasMaps = Boolean(answer.maps && answer.maps.length);
  const list = $("prediction-list");
  list.replaceChildren();
  answer.predictions.forEach((prediction, rank) => {
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = "class";
    radio.value = String(prediction.index);
    radio.checked = rank === 0;
    radio.disabled = !hasMaps;
    radio.addEventListener("change", drawMap);
    const bar = element("span", "bar");
    const fill = document.createElement("span");
    fill.style.width = `${(prediction.probability * 100).toFixed(1)}%`;
    bar.append(fill);
    const label = element("label", "prediction");
    label.append(
      radio,
      element("span", "name", prediction.label),
      bar,
      element("span", "probability", percent(prediction.probability)),
    );
    const item = document.createElement("li");
    item.append(label);
    list.append(item);
  });
  $("top-title").textContent = `Top ${answer.predictions.length}`;
  $("top-hint").textContent = hasMaps ? "(pick one to see its score map)" : "";
}

function renderSummary(answer) {
  const members = answer.members.length > 1 ? ` (${answer.members.join(", ")})` : "";
  const t = answer.timing_ms;
  const rows = [
    ["Model", `${answer.model}${members}`],
    ["Method", `${answer.method}, ${answer.flip ? "with" : "without"} flip`],
    ["Scales", answer.scales.join(", ")],
    ["Views", `${answer.views} per model`],
    ["Image", `${answer.image.width} x ${answer.image.height}`],
    [
      "Time",
      `decode ${number(t.decode)} ms, inference ${number(t.inference)} ms, ` +
        `total ${number(t.total)} ms`,
    ],
  ];
  $("summary").replaceChildren(
    ...rows.flatMap(([term, value]) => [element("dt", "", term), element("dd", "", value)]),
  );
}

function renderMapChoices(answer) {
  const maps = answer.maps || [];
  $("map-controls").hidden = maps.length === 0;
  $("no-map").hidden = maps.length > 0;
  $("no-map").textContent =
    answer.method === "multicrop" ? "Multi-crop has no dense score map: predictions only." : "";
  const select = $("map-scale");
  select.replaceChildren();
  const scales = [...new Set(maps.map((entry) => entry.scale))].sort((a, b) => a - b);
  if (scales.length > 1) {
    select.append(new Option(`average over scales (${scales.join(", ")})`, AVERAGE));
  }
  for (const q of scales) {
    const entry = maps.find((m) => m.scale === q);
    select.append(new Option(`Q = ${q} (${entry.height} x ${entry.width} cells)`, String(q)));
  }
}

/* ---- The score map ---- */

function selectedClass() {
  const checked = document.querySelector('input[name="class"]:checked');
  return checked ? Number(checked.value) : state.answer.predictions[0].index;
}

function selectedEntries(maps) {
  const choice = $("map-scale").value;
  return choice === AVERAGE ? maps : maps.filter((entry) => String(entry.scale) === choice);
}

/* The CSS size of the heatmap: the displayed image's, or, for a format the browser cannot show,
 * a box of the upload's proportions. */
function displaySize(image) {
  const preview = $("preview");
  if (state.previewOk) return { width: preview.clientWidth, height: preview.clientHeight };
  const width = Math.min(Math.max($("picture").clientWidth - 32, 0), 640);
  return { width, height: Math.round((width * image.height) / image.width) };
}

function drawMap() {
  const canvas = $("heatmap");
  const answer = state.answer;
  const maps = (answer && answer.maps) || [];
  canvas.classList.toggle("alone", !state.previewOk);
  if (!maps.length) {
    sizeCanvas(canvas, 0, 0);
    return;
  }
  const size = displaySize(answer.image);
  sizeCanvas(canvas, size.width, size.height);
  if (!size.width || !size.height) return;
  const classIndex = selectedClass();
  const entries = selectedEntries(maps);
  const field = scoreField(entries, classIndex, gridFor(size));
  paintField(canvas, field, Number($("opacity").value));
  showLegend(field, entries, classIndex);
}

function sizeCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
}

function gridFor(size) {
  const step = Math.max(size.width, size.height) / GRID_POINTS;
  return {
    width: Math.max(1, Math.round(size.width / Math.max(step, 1))),
    height: Math.max(1, Math.round(size.height / Math.max(step, 1))),
  };
}

/* One class's score on a grid over the image, averaged over `entries` (members and scales).
 * Cell (i, j) of an entry scores the `window`-pixel square at (stride * j, stride * i) of the
 * image rescaled to image_width x image_height; its score is placed at the square's centre and
 * interpolated bilinearly between centres. Beyond the outer centres the outer cells' scores hold
 * up to the image's edges, so that every map covers the whole image and a mean over scales is a
 * mean everywhere; the squares reach all but the last (image_width mod 32) columns, and with
 * flip the mirror's squares reach those too (docs/serving.md, "Score maps"). */
function scoreField(entries, classIndex, grid) {
  const values = new Float64Array(grid.width * grid.height);
  const counts = new Uint16Array(values.length);
  for (const entry of entries) {
    const row = entry.classes.indexOf(classIndex);
    if (row >= 0) addEntry(values, counts, entry, entry.scores[row], grid);
  }
  let min = Infinity;
  let max = -Infinity;
  for (let k = 0; k < values.length; k++) {
    if (counts[k] === 0) {
      values[k] = NaN;
      continue;
    }
    values[k] /= counts[k];
    min = Math.min(min, values[k]);
    max = Math.max(max, values[k]);
  }
  return { ...grid, values, min, max };
}

function addEntry(values, counts, entry, scores, grid) {
  const columns = [];
  for (let gx = 0; gx < grid.width; gx++) {
    const x = ((gx + 0.5) * entry.image_width) / grid.width; // in the rescaled image
    columns.push(between(x, entry, entry.width));
  }
  for (let gy = 0; gy < grid.height; gy++) {
    const y = ((gy + 0.5) * entry.image_height) / grid.height;
    const [i0, i1, fy] = between(y, entry, entry.height);
    for (let gx = 0; gx < grid.width; gx++) {
      const [j0, j1, fx] = columns[gx];
      const top = lerp(scores[i0 * entry.width + j0], scores[i0 * entry.width + j1], fx);
      const bottom = lerp(scores[i1 * entry.width + j0], scores[i1 * entry.width + j1], fx);
      const k = gy * grid.width + gx;
      values[k] += lerp(top, bottom, fy);
      counts[k] += 1;
    }
  }
}

/* Along one axis: the two cells whose windows' centres (stride * n + window / 2) are either side
 * of `position`, and the weight of the second. */
function between(position, entry, cells) {
  const u = Math.min(Math.max((position - entry.window / 2) / entry.stride, 0), cells - 1);
  const first = Math.floor(u);
  return [first, Math.min(first + 1, cells - 1), u - first];
}

function lerp(a, b, t) {
  return a + (b - a) * t;
}

function colour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (COLOURS.length - 1);
  const i = Math.min(Math.floor(x), COLOURS.length - 2);
  return COLOURS[i].map((c, channel) => Math.round(lerp(c, COLOURS[i + 1][channel], x - i)));
}

function paintField(canvas, field, opacity) {
  const grid = document.createElement("canvas");
  grid.width = field.width;
  grid.height = field.height;
  const pixels = new ImageData(field.width, field.height);
  const span = field.max - field.min;
  field.values.forEach((value, k) => {
    if (Number.isNaN(value)) return; // stays transparent
    const [r, g, b] = colour(span > 0 ? (value - field.min) / span : 0.5);
    pixels.data.set([r, g, b, 255], k * 4);
  });
  grid.getContext("2d").putImageData(pixels, 0, 0);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.globalAlpha = opacity;
  context.imageSmoothingEnabled = true;
  context.drawImage(grid, 0, 0, canvas.width, canvas.height);
}

function showLegend(field, entries, classIndex) {
  const finite = Number.isFinite(field.min);
  $("legend-min").textContent = finite ? field.min.toFixed(2) : "";
  $("legend-mid").textContent = finite ? ((field.min + field.max) / 2).toFixed(2) : "";
  $("legend-max").textContent = finite ? field.max.toFixed(2) : "";
  const prediction = state.answer.predictions.find((p) => p.index === classIndex);
  const scales = [...new Set(entries.map((e) => e.scale))];
  const members = [...new Set(entries.map((e) => e.model))];
  const where = scales.length > 1 ? `mean over scales ${scales.join(", ")}` : `at Q = ${scales[0]}`;
  const who = members.length > 1 ? `, mean over ${members.join(", ")}` : "";
  const { window: side, stride } = entries[0];
  $("legend-caption").textContent =
    `Raw score of "${prediction ? prediction.label : classIndex}" (before softmax), ${where}${who}: ` +
    `colours run from the lowest score on the map (left) to the highest (right). Each cell ` +
    `scores a ${side}-pixel window of the rescaled image, ${stride} pixels from the next.`;
}

/* ---- Small helpers ---- */

/* On a phone the results are below the form: bring them up when they are out of sight. */
function reveal(node) {
  if (node.getBoundingClientRect().top > window.innerHeight * 0.75) {
    node.scrollIntoView({ block: "start" });
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(err) {
  $("error-code").textContent = err.status ? `${err.status} ${err.code}:` : `${err.code}:`;
  $("error-message").textContent = err.message;
  // A failure of the service's own (5xx) is for its operator: the ID finds its log lines.
  const traced = err.status >= 500 && err.requestId;
  $("error-request").textContent = traced ? `(request ${err.requestId})` : "";
  $("error-request").hidden = !traced;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(p) {
  return `${(p * 100).toFixed(p >= 0.001 ? 1 : 2)}%`;
}

function number(ms) {
  return typeof ms === "number" ? ms.toFixed(1) : "?";
}

/* ---- Start ---- */

function start() {
  $("key-form").addEventListener("submit", onKeySubmit);
  $("key-forget").addEventListener("click", onKeyForget);
  $("classify-form").addEventListener("submit", onSubmit);
  $("localize").addEventListener("click", localize);
  $("file").addEventListener("change", (event) => setImage(event.target.files[0]));
  $("model").addEventListener("change", updateScalesHint);
  $("map-scale").addEventListener("change", drawMap);
  $("opacity").addEventListener("input", drawMap);
  $("preview").addEventListener("load", onPreviewLoad);
  $("preview").addEventListener("error", onPreviewError);
  new ResizeObserver(() => redraw()).observe($("preview"));
  window.addEventListener("resize", redraw);
  wireDropAndPaste();
  if (state.key) $("key-form").hidden = false;
  loadModels();
}

start();
