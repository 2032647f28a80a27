"""The web app's page: static HTML, CSS and script, with no data in it.

Everything the page shows (prompts, layer names from a user's file, errors) comes from
``GET /state`` or a POST's JSON reply and is put on the page with ``textContent`` or as an
input's ``value``, never parsed as HTML.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>layergen</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.2em; background: #f6f6f4; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .4em; } h1 small { color: #777; font-weight: normal; }
fieldset { border: 1px solid #ccc; border-radius: 6px; margin: 0 0 1em; background: #fff; }
label { display: inline-block; margin: .25em 1em .25em 0; }
input[type=number] { width: 6em; }
#prompt { width: 38em; max-width: 100%; }
#layer-prompts { width: 38em; max-width: 100%; height: 4.5em; }
#status { min-height: 1.4em; color: #444; } #status.error { color: #b00; font-weight: bold; }
main { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
#composite-panel { width: 260px; }
.picture { width: 256px; height: 256px; image-rendering: pixelated; border: 1px solid #bbb; }
.thumb { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #bbb; }
.rgba { background: repeating-conic-gradient(#ccc 0 25%, #fff 0 50%) 0 0 / 16px 16px; }
.layer { display: flex; gap: .6em; align-items: center; background: #fff; border: 1px solid #ddd;
         border-radius: 6px; padding: .4em .6em; margin-bottom: .5em; }
.layer.hidden-layer .thumb { opacity: .35; }
.layer .info { width: 22em; } .layer .name { font-weight: bold; }
.layer .new-prompt { width: 21em; } .layer button { margin: .15em .2em .15em 0; }
#downloads a { margin-right: 1em; } #downloads.off a { pointer-events: none; color: #aaa; }
</style></head>
<body>
<h1>layergen <small id="model"></small></h1>
<fieldset><legend>Generate</legend>
<label>Prompt <input id="prompt" type="text"
  placeholder="a large red star on the left on a blue striped background"></label><br>
<label>Layer prompts, one per line, the background first (empty: from the prompt)<br>
<textarea id="layer-prompts" placeholder="a blue striped background&#10;a large red star"></textarea></label><br>
<label id="boxes-field" hidden>Layer boxes, one per line as above: x0,y0,x1,y1 in 0..1 or none<br>
<textarea id="layer-boxes" placeholder="none&#10;0,0,0.5,0.5"></textarea></label><br>
<label>Seed <input id="seed" type="number" min="0" value="0"></label>
<label>Steps <input id="steps" type="number" min="1"></label>
<label>Guidance <input id="guidance" type="number" min="0" step="0.5"></label>
<label>Restyle strength <input id="strength" type="number" min="0.05" max="1" step="0.05"></label>
<button id="generate">Generate</button>
<label>or open a file <input id="upload" type="file" accept=".psd,.ora,.zip"></label>
</fieldset>
<p id="status"></p>
<main>
<section id="composite-panel"><h3>Composite</h3><img id="composite" class="picture" alt="composite">
<p id="doc-prompt"></p><p id="last"></p>
<p id="downloads" class="off">Download:
<a id="download-psd" href="/download/layered.psd" download>PSD</a>
<a id="download-ora" href="/download/layered.ora" download>OpenRaster</a>
<a id="download-zip" href="/download/layers.zip" download>PNG layers (ZIP)</a></p>
</section>
<section><h3>Layers <small>(front first; each: its RGBA layer and its mask)</small></h3>
<div id="layers"></div></section>
</main>
<script>
"use strict";
const $ = id => document.getElementById(id);
let state = null;

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}
function value(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}
function sampling(extra) {
  return Object.assign({seed: value("seed"), steps: value("steps"), guidance: value("guidance")}, extra);
}
function setBusy(busy) {
  document.querySelectorAll("button, input, textarea").forEach(e => { e.disabled = busy; });
  document.body.dataset.busy = busy ? "1" : "0";
}
async function send(route, body, what) {
  setBusy(true);
  setStatus(what + " ...", false);
  let reply = null;
  try {
    const response = await fetch(route, {method: "POST", body: body});
    const text = await response.text();
    try { reply = JSON.parse(text); } catch (e) { reply = {error: text}; }
  } catch (e) {
    reply = {error: "no answer from the server (" + e + ")"};
  }
  setBusy(false);
  if (reply.error) { setStatus(reply.error, true); show(state); return; }
  setStatus(what + ": done", false);
  show(reply);
}
function post(route, request, what) { return send(route, JSON.stringify(request), what); }

function element(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function button(cls, text, title, onclick) {
  const b = element("button", cls, text);
  b.title = title;
  b.addEventListener("click", onclick);
  return b;
}
function layerRow(doc, i, version) {
  const count = doc.layer_prompts.length;
  const row = element("div", "layer" + (doc.visible[i] ? "" : " hidden-layer"));
  row.dataset.layer = String(i);
  const rgba = element("img", "thumb rgba");
  rgba.alt = "layer " + i;
  rgba.src = "/layer/" + i + ".png?v=" + version;
  const mask = element("img", "thumb mask");
  mask.alt = "mask " + i;
  mask.src = "/mask/" + i + ".png?v=" + version;
  const info = element("div", "info");
  info.append(element("div", "name", i === 0 ? "background" : "layer " + i));
  info.append(element("div", "prompt", doc.layer_prompts[i]));
  const shown = element("input", "visible");
  shown.type = "checkbox";
  shown.checked = doc.visible[i];
  shown.title = i === 0 ? "the background is always shown" : "show this layer";
  shown.addEventListener("change", () => post("/visibility", {layer: i, visible: shown.checked},
    "layer " + i + (shown.checked ? " shown" : " hidden")));
  const eye = element("label", "", "shown ");
  eye.append(shown);
  info.append(eye);
  if (i > 0) {
    const order = Array.from({length: count - 1}, (_, j) => j + 1);
    const move = step => {
      const at = order.indexOf(i), to = at + step;
      [order[at], order[to]] = [order[to], order[at]];
      post("/order", {order: order}, "layers reordered");
    };
    const up = button("up", "\\u25b2", "bring forward", () => move(1));
    const down = button("down", "\\u25bc", "send backward", () => move(-1));
    up.dataset.off = i === count - 1 ? "1" : "0";
    down.dataset.off = i === 1 ? "1" : "0";
    info.append(up, down);
  }
  const prompt = element("input", "new-prompt");
  prompt.type = "text";
  prompt.value = doc.layer_prompts[i];
  prompt.title = "a new prompt for this layer";
  info.append(element("br"), prompt, element("br"));
  info.append(button("replace", "Regenerate", "regenerate this layer with the prompt above, the others kept",
    () => post("/replace", sampling({layer: i, prompt: prompt.value}), "layer " + i + " regenerated")));
  info.append(button("restyle", "Restyle", "restyle this layer towards the prompt above (strength)",
    () => post("/restyle", sampling({layer: i, prompt: prompt.value, strength: value("strength")}),
      "layer " + i + " restyled")));
  if (i === 0) {
    info.append(button("background", "New background behind the shown layers", "hidden layers are dropped",
      () => post("/background", sampling({prompt: prompt.value}), "new background")));
  }
  row.append(info, rgba, mask);
  return row;
}
function show(s) {
  state = s;
  if (!s) return;
  document.body.dataset.version = String(s.version);
  $("model").textContent = s.model;
  $("steps").placeholder = s.defaults.steps;
  $("guidance").placeholder = s.defaults.guidance;
  $("strength").placeholder = s.defaults.strength;
  $("boxes-field").hidden = !s.defaults.boxes;
  const doc = s.document;
  const layers = $("layers");
  layers.replaceChildren();
  $("downloads").className = doc ? "" : "off";
  if (!doc) { $("composite").removeAttribute("src"); return; }
  $("composite").src = "/composite.png?v=" + s.version;
  $("doc-prompt").textContent = doc.prompt;
  const last = s.last || {};
  $("last").textContent = last.action ? "last: " + last.action
    + (last.seed !== undefined ? ", seed " + last.seed : "") + (last.steps ? ", " + last.steps + " steps" : "")
    + ", " + doc.size[1] + "x" + doc.size[0] + " px" : "";
  for (let i = doc.layer_prompts.length - 1; i >= 0; i--) layers.append(layerRow(doc, i, s.version));
  layers.querySelectorAll("[data-off='1']").forEach(b => { b.disabled = true; });
  layers.querySelector(".layer[data-layer='0'] .visible").disabled = true;
}
function parseBox(line) {
  return line === "none" ? null : line.split(",").map(Number);
}
$("generate").addEventListener("click", () => {
  const lines = $("layer-prompts").value.split("\\n").map(l => l.trim()).filter(l => l);
  const boxes = $("layer-boxes").value.split("\\n").map(l => l.trim()).filter(l => l).map(parseBox);
  const request = {prompt: $("prompt").value, layer_prompts: lines.length ? lines : "auto"};
  if (boxes.length) request.layer_boxes = boxes;
  post("/generate", sampling(request), "generated");
});
$("prompt").addEventListener("keydown", e => { if (e.key === "Enter") $("generate").click(); });
$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (file) send("/upload?name=" + encodeURIComponent(file.name), file, "opened " + file.name);
});
fetch("/state").then(r => r.json()).then(show);
</script>
</body></html>
"""
