// The job page's playground: the base model and the fine-tune answer the same input side by side.
// Causal LM: a chat turn, both replies streamed token by token. Classification: one text per line, the
// fine-tune's labels and scores (a base model has no classification head of its own).

import { api } from "./api.js";
import { el, num } from "./util.js";

function pane(title, testid) {
  const out = el("pre", { class: "reply", dataset: { testid } });
  return { out, node: el("div", { class: "pane" }, el("h4", { class: "mono small" }, title), out) };
}

function chatPlayground(card, job) {
  const input = el("textarea", { rows: 3, placeholder: "Ask something…", dataset: { testid: "playground-input" } });
  const send = el("button", { type: "button", class: "primary", dataset: { testid: "playground-send" } }, "Send");
  const base = pane(`base · ${job.model}`, "playground-base");
  const tuned = pane(`fine-tune · ${job.fine_tuned_model}`, "playground-tuned");
  const error = el("div", { class: "alert error", hidden: true, dataset: { testid: "playground-error" } });
  async function run(model, target) {
    target.out.textContent = "";
    target.out.dataset.done = "false";
    const messages = [{ role: "user", content: input.value }];
    await api.chat({ model, messages, max_tokens: 64, temperature: 0 }, (piece) => { target.out.textContent += piece; });
    target.out.dataset.done = "true";
  }
  send.addEventListener("click", async () => {
    if (!input.value.trim()) return;
    send.disabled = true;
    error.hidden = true;
    try {
      await Promise.all([run(job.model, base), run(job.fine_tuned_model, tuned)]);
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
    } finally {
      send.disabled = false;
    }
  });
  card.append(input, el("div", { class: "actions" }, send), error, el("div", { class: "grid2" }, base.node, tuned.node));
}

function classifyPlayground(card, job) {
  const input = el("textarea", { rows: 3, placeholder: "One text per line", dataset: { testid: "playground-input" } });
  const send = el("button", { type: "button", class: "primary", dataset: { testid: "playground-send" } }, "Predict");
  const rows = el("tbody", { dataset: { testid: "playground-predictions" } });
  const error = el("div", { class: "alert error", hidden: true, dataset: { testid: "playground-error" } });
  send.addEventListener("click", async () => {
    const texts = input.value.split("\n").map((t) => t.trim()).filter(Boolean);
    if (!texts.length) return;
    send.disabled = true;
    error.hidden = true;
    try {
      const result = await api.predict(job.fine_tuned_model, texts);
      rows.replaceChildren(...result.data.map((p, i) => el("tr", {},
        el("td", {}, texts[i]), el("td", { class: "muted" }, "no head"),
        el("td", { class: "mono" }, p.label ?? "—"), el("td", {}, num(p.score)))));
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
    } finally {
      send.disabled = false;
    }
  });
  card.append(input, el("div", { class: "actions" }, send), error,
    el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Text"),
      el("th", {}, `base · ${job.model}`), el("th", {}, "fine-tune label"), el("th", {}, "score"))), rows)));
}

/** Fill `card` (once the job has succeeded) with the playground for the fine-tune's task. */
export async function renderPlayground(card, job) {
  const model = await api.model(job.fine_tuned_model);
  card.replaceChildren(el("h3", {}, "Playground"));
  card.dataset.task = model.task;
  if (model.task === "causal_lm") chatPlayground(card, job);
  else classifyPlayground(card, job);
  card.hidden = false;
}
