// lmzoo playground: plain JavaScript against this server's /api endpoints (no build step, no CDN).
// The page asks /api/models which tools each model has; every tool is one runner below.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], chat: [] };

// what the input box holds for each tool, and an example to start from ({mask}: the model's gap token)
const HINTS = {
  "fill-mask": ["a text with {mask} where tokens should be predicted", "the king and {mask} of the castle"],
  "nsp": ["sentence A (sentence B below)", "the king speaks with the queen."],
  "generate": ["a prompt to continue", "the king"],
  "chat": ["your line (the conversation is kept until New chat)", "good morrow"],
  "complete": ["a code prefix", "def add(a, b):\n    "],
  "text2text": ["one input text per line, e.g. translate English to German: ...", "translate: the king"],
  "reconstruct": ["a text with {mask} gaps to fill", "the king {mask} the queen"],
  "predict": ["one text per line to label (a tagger: words separated by spaces)", "the king speaks"],
  "explain": ["a text to show the objective on (blank lines separate documents)",
              "the king and the queen of the castle speak with a knight about the war"],
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function currentModel() { return state.models.find((m) => m.name === $("model").value); }
function tool() { return $("tool").value; }
function num(id) { return Number($(id).value); }
function showError(message) { $("error").textContent = message; }

async function api(path, body) {
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify(body) });
  const data = await response.json().catch(() => ({ error: { message: `HTTP ${response.status}` } }));
  if (!response.ok) throw new Error(data.error ? data.error.message : `HTTP ${response.status}`);
  return data;
}

// decoding options as the CLI takes them: temperature 0 is greedy
function sampling() {
  const t = num("temperature"), p = num("top-p");
  const options = { max_new_tokens: num("max-new-tokens") };
  if (t > 0) Object.assign(options, { temperature: t, seed: num("seed") });
  if (p < 1) Object.assign(options, { top_p: p, seed: num("seed") });
  return options;
}

// --- renderers -----------------------------------------------------------------------------------

function bars(entries) {  // [[label, probability], ...] → bars, the longest for the most probable
  const top = Math.max(...entries.map(([, value]) => value), 1e-9);
  return el("div", { class: "bars" }, ...entries.map(([label, value]) => el("div", { class: "bar" },
    el("span", { class: "label", title: label }, label),
    el("span", {}, el("span", { class: "fill", style: `display:block;width:${(100 * value / top).toFixed(1)}%` })),
    el("span", { class: "value" }, value.toFixed(3)))));
}

function chips(tokens, classOf = () => "", below = () => null) {
  return el("div", { class: "chips" }, ...tokens.map((t, i) => {
    const chip = el("span", { class: `chip ${classOf(i) || ""}` }, t);
    const small = below(i);
    if (small !== null && small !== undefined) chip.append(el("small", {}, small));
    return chip;
  }));
}

function grid(tokens, matrix, predicted) {  // XLNet: which positions each position's query stream sees
  const table = el("table", { class: "grid" });
  table.append(el("tr", {}, el("th"), ...tokens.map((t, j) =>
    el("th", { class: predicted.has(j) ? "predicted" : "", title: t }, t))));
  matrix.forEach((row, i) => table.append(el("tr", {},
    el("th", { class: predicted.has(i) ? "predicted" : "", title: tokens[i] }, tokens[i]),
    ...row.map((on) => el("td", { class: on ? "on" : "" })))));
  return table;
}

const EXPLAINERS = {
  positions(e) {  // mlm, mlm+nsp: the tokens chosen, what the model reads there
    const out = [el("h3", {}, `${e.title}: chosen ${(100 * e.chosen_rate).toFixed(0)}% of ${e.candidates} tokens`),
      chips(e.positions.map((p) => p.token), (i) => e.positions[i].status,
            (i) => (e.positions[i].status === "context" || e.positions[i].status === "special")
              ? null : e.positions[i].input)];
    const legend = ["masked", "replaced", "kept"].map((k) => el("span", { class: `chip ${k}` }, `${k} ${e.counts[k]}`));
    out.push(el("div", { class: "chips" }, ...legend));  // [MASK] / a random token / the token itself
    if (e.nsp_meaning) out.unshift(el("h3", {}, `pair label ${e.nsp_label}: ${e.nsp_meaning}`));
    return out;
  },
  clm(e) {
    return [el("h3", {}, `${e.title}: every token predicts the next`),
            chips(e.positions.map((p) => p.input), () => "", (i) => e.positions[i].target ?? "·")];
  },
  span(e) {
    return [el("h3", {}, `original (noise ${(100 * e.noise_rate).toFixed(0)}%)`),
            chips(e.original, (i) => (e.noise[i] ? "noise" : ""), (i) => e.noise[i]),
            el("h3", {}, "encoder input"), chips(e.inputs),
            el("h3", {}, "decoder target"), chips(e.targets, () => "target")];
  },
  denoise(e) {
    const steps = e.steps.flatMap((s) => [el("h3", {}, s.noise || s.name || "step"), chips(s.tokens)]);
    return [el("h3", {}, "original"), chips(e.original), ...steps,
            el("h3", {}, "encoder input"), chips(e.inputs), el("h3", {}, "decoder target"),
            chips(e.targets, () => "target")];
  },
  plm(e) {
    const predicted = new Set(e.predicted);
    return [el("h3", {}, "factorization order"), chips(e.order.map((i) => e.tokens[i]),
              (k) => (predicted.has(e.order[k]) ? "masked" : "")),
            el("h3", {}, "query stream: row i sees column j (never itself)"),
            grid(e.tokens, e.query_stream, predicted)];
  },
};

function renderExplanation(e) {
  const kind = e.positions && e.positions[0] && "status" in e.positions[0] ? "positions"
    : e.objective === "clm" ? "clm" : e.spans ? "span" : e.steps ? "denoise" : e.query_stream ? "plm" : null;
  return kind ? EXPLAINERS[kind](e) : [el("pre", { class: "text" }, JSON.stringify(e, null, 2))];
}

// --- runners: one per tool -----------------------------------------------------------------------

const RUNNERS = {
  async "fill-mask"(m, text, out) {
    const data = await api("/api/fill-mask", { model: m.name, text, top_k: num("top-k") });
    data.masks.forEach((blank, n) => out.append(el("h3", {}, `mask ${n + 1}`),
                                                bars(blank.map((p) => [p.token, p.probability]))));
  },
  async nsp(m, text, out) {
    const data = await api("/api/nsp", { model: m.name, first: text, second: $("input2").value });
    out.append(el("h3", {}, "P(B follows A)"), bars([["is next", data.probability]]));
  },
  async generate(m, prompt, out) {
    const beams = num("beams");
    if (beams > 1) {
      const data = await api("/api/generate", { model: m.name, prompt, num_beams: beams, ...sampling() });
      data.texts.forEach((t) => out.append(el("div", { class: "text" }, t)));
      return;
    }
    const text = el("div", { class: "text" });
    if (!m.encoder_decoder) text.append(el("span", { class: "prompt" }, prompt));
    const stream = el("span", { "data-testid": "stream" });
    text.append(stream);
    out.append(text);
    await streamEvents("/api/generate", { model: m.name, prompt, stream: true, ...sampling() },
                       (event) => { if (event.text) stream.append(event.text); });
  },
  async chat(m, line, out) {
    const turns = [...state.chat, { speaker: "Romeo", text: line }];
    const data = await api("/api/chat", { model: m.name, turns, ...sampling() });
    state.chat = [...turns, { speaker: "Juliet", text: data.reply }];
    for (const t of state.chat) out.append(el("div", { class: "turn" }, el("b", {}, t.speaker.toUpperCase()), t.text));
  },
  async complete(m, prefix, out) {
    const data = await api("/api/complete", { model: m.name, prefix, ...sampling() });
    out.append(el("div", { class: "text" }, el("span", { class: "prompt" }, prefix), data.completion));
  },
  async text2text(m, text, out) { await seq2seq("/api/text2text", m, text, out); },
  async reconstruct(m, text, out) { await seq2seq("/api/reconstruct", m, text, out); },
  async predict(m, text, out) {
    const data = await api("/api/predict", { model: m.name, texts: lines(text) });
    data.predictions.forEach((p, n) => {
      out.append(el("h3", {}, lines(text)[n]));
      if (p.tags) out.append(chips(lines(text)[n].split(/\s+/).filter(Boolean), () => "", (i) => p.tags[i]));
      else if (p.scores) out.append(bars(Object.entries(p.scores)));
      else out.append(el("div", {}, `score ${p.score}`));
    });
  },
  async explain(m, text, out) {
    const data = await api("/api/explain", { model: m.name, objective: $("objective").value, text,
                                             seed: num("seed") });
    out.append(...renderExplanation(data));
  },
};

function lines(text) { return text.split("\n").map((l) => l.trim()).filter(Boolean); }

async function seq2seq(path, m, text, out) {
  const data = await api(path, { model: m.name, texts: lines(text), max_new_tokens: num("max-new-tokens"),
                                 num_beams: num("beams") });
  data.outputs.forEach((o) => out.append(el("div", { class: "text" }, o || "(empty)")));
}

// server-sent events over fetch (EventSource cannot POST): one JSON object per "data:" line
async function streamEvents(path, body, onEvent) {
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                       body: JSON.stringify(body) });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new Error(data.error ? data.error.message : `HTTP ${response.status}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      const event = JSON.parse(line);
      if (event.error) throw new Error(event.error.message);
      onEvent(event);
    }
  }
}

// --- page ----------------------------------------------------------------------------------------

function fillTools() {
  const m = currentModel();
  $("tool").replaceChildren(...m.tools.map((t) => el("option", { value: t.name }, t.title)));
  $("objective").replaceChildren(...m.objectives.map((o) => el("option", { value: o }, o)));
  $("model-info").textContent = `${m.architecture}, ${m.context} positions${m.quantized ? ", int8" : ""}`;
  toolChanged();
}

function toolChanged() {
  const m = currentModel(), t = tool();
  const [hint, example] = HINTS[t];
  const mask = m.mask_token || "<mask>";
  $("hint").textContent = hint.replaceAll("{mask}", mask);
  $("input").value = example.replaceAll("{mask}", mask);
  $("input2").hidden = t !== "nsp";
  if (t === "nsp") $("input2").value = "the queen answers the king.";
  $("reset").hidden = t !== "chat";
  for (const label of $("options").querySelectorAll("label")) label.hidden = !label.dataset.for.split(" ").includes(t);
  state.chat = [];
  $("output").replaceChildren();
  showError("");
}

async function run() {
  const m = currentModel();
  const out = el("div");
  $("output").replaceChildren(out);
  showError("");
  $("run").disabled = true;
  try {
    await RUNNERS[tool()](m, $("input").value, out);
  } catch (e) {
    showError(e.message);
  } finally {
    $("run").disabled = false;
  }
}

async function start() {
  try {
    const response = await fetch("/api/models");
    state.models = (await response.json()).models;
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
    return;
  }
  $("model").replaceChildren(...state.models.map((m) => el("option", { value: m.name }, m.name)));
  $("model").addEventListener("change", fillTools);
  $("tool").addEventListener("change", toolChanged);
  $("run").addEventListener("click", run);
  $("reset").addEventListener("click", () => { state.chat = []; $("output").replaceChildren(); });
  $("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  fillTools();
  document.body.dataset.ready = "true";  // the models are listed: tests wait for this
}

start();
