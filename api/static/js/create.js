// Upload a dataset (validation problems shown line by line) and start a job on it.

import { api } from "./api.js";
import { bytes, el, when } from "./util.js";

const field = (label, input, hint) =>
  el("label", { class: "field" }, el("span", { class: "label" }, label), input, hint ? el("span", { class: "hint" }, hint) : null);

/** A number input whose empty value means "auto". */
const numberInput = (id, attrs) => el("input", { id, name: id, type: "number", inputmode: "decimal", placeholder: "auto", ...attrs });

export function renderCreate(root, notify, navigate) {
  const fileInput = el("input", { id: "upload-file", type: "file", accept: ".jsonl,.json,application/jsonl", dataset: { testid: "upload-input" } });
  const uploadButton = el("button", { type: "submit", class: "primary", dataset: { testid: "upload-button" } }, "Upload");
  const uploadResult = el("div", { id: "upload-result", class: "small", role: "status" });
  const uploadErrors = el("ul", { id: "upload-errors", class: "problems", hidden: true, dataset: { testid: "upload-errors" } });
  const filesList = el("ul", { id: "files-list", class: "files" });

  const model = el("select", { id: "model", name: "model", required: true });
  const method = el("select", { id: "method", name: "method" });
  const training = el("select", { id: "training-file", name: "training_file" });
  const validation = el("select", { id: "validation-file", name: "validation_file" });
  // Bounds, methods and help come from the service's one table of hyper-parameters (applyTable).
  const epochs = numberInput("n-epochs", { step: 1 });
  const lr = numberInput("lr-multiplier", { step: "any" });
  const density = numberInput("density", { step: "any" });
  const batch = numberInput("batch-size", { step: 1 });
  const maxSteps = numberInput("max-steps", { step: 1 });
  const inputs = { n_epochs: epochs, learning_rate_multiplier: lr, density, batch_size: batch, max_steps: maxSteps };
  const suffix = el("input", { id: "suffix", name: "suffix", type: "text", maxlength: 40, placeholder: "optional, e.g. sst2-v1" });
  const densityField = field("Density", density, "Share of weights trained (SparseGrad / meProp)");
  const createError = el("div", { id: "create-error", class: "alert error", hidden: true, role: "alert" });
  const createButton = el("button", { type: "submit", class: "primary", dataset: { testid: "create-button" } }, "Start job");

  const uploadForm = el("form", { id: "upload-form", class: "card stack" },
    el("h2", {}, "1. Upload a dataset"),
    el("p", { class: "muted small" }, "JSONL, one example per line: ", el("code", {}, '{"text": …, "label": …}'),
      " for classification, ", el("code", {}, '{"messages": […]}'), " or ", el("code", {}, '{"prompt", "completion"}'), " for language models."),
    el("div", { class: "row" }, fileInput, uploadButton), uploadResult, uploadErrors,
    el("h3", {}, "Your datasets"), filesList);
  const jobForm = el("form", { id: "job-form", class: "card stack" },
    el("h2", {}, "2. Start a fine-tuning job"),
    el("div", { class: "grid2" }, field("Base model", model), field("Method", method),
      field("Training file", training), field("Validation file", validation, "Optional; gives the validation curve and metric")),
    el("div", { class: "grid3" }, field("Epochs", epochs), field("LR multiplier", lr), densityField),
    el("details", {}, el("summary", {}, "Advanced"),
      el("div", { class: "grid3" }, field("Batch size", batch), field("Max steps", maxSteps), field("Suffix", suffix))),
    createError, el("div", { class: "row" }, createButton));
  root.replaceChildren(el("div", { class: "stack" }, uploadForm, jobForm));

  let sparseMethods = ["sparsegrad"];  // the default method's kind until the table arrives
  async function applyTable() {
    const table = await api.hyperparameters();
    method.replaceChildren(...table.methods.map((m) => el("option", { value: m.name }, m.label)));
    sparseMethods = table.methods.filter((m) => m.sparse_delta).map((m) => m.name);
    for (const param of table.data) {
      const input = inputs[param.name];
      if (!input) continue;
      input.min = param.minimum;
      input.max = param.maximum;
      input.title = `${param.description}. Empty: ${param.auto}.`;
    }
  }
  applyTable().catch((err) => notify(`Could not load the hyper-parameter table: ${err.message}`, "error"));

  method.addEventListener("change", () => { densityField.hidden = !sparseMethods.includes(method.value); });

  async function loadFiles() {
    const page = await api.files();
    const mine = page.data.filter((f) => f.purpose === "fine-tune").sort((a, b) => b.created_at - a.created_at);
    // Nothing is preselected: the newest upload may well be the validation file.
    const options = (none) => [
      el("option", { value: "" }, none),
      ...mine.map((f) => el("option", { value: f.id }, `${f.filename} · ${f.id.slice(0, 13)}…`)),
    ];
    const keep = [training.value, validation.value];
    training.replaceChildren(...options("— choose a file —"));
    validation.replaceChildren(...options("— none —"));
    training.value = keep[0] || "";
    validation.value = keep[1] || "";
    filesList.replaceChildren(...(mine.length ? mine.map((f) => el("li", { dataset: { fileId: f.id } },
      el("span", {}, f.filename, " ", el("code", { class: "small", dataset: { testid: "file-id" } }, f.id)),
      el("span", { class: "muted small" }, `${bytes(f.bytes)} · ${when(f.created_at)}`)))
      : [el("li", { class: "muted" }, "No datasets uploaded yet.")]));
  }

  async function loadModels() {
    const page = await api.models();
    const bases = page.data.filter((m) => !String(m.id).startsWith("ft:"));
    model.replaceChildren(...bases.map((m) => el("option", { value: m.id }, m.task ? `${m.id} (${m.task})` : m.id)));
  }

  uploadForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = fileInput.files[0];
    uploadErrors.hidden = true;
    if (!file) { uploadResult.textContent = "Choose a .jsonl file first."; return; }
    uploadButton.disabled = true;
    uploadResult.textContent = `Uploading and validating ${file.name}…`;
    try {
      const f = await api.upload(file);
      fileInput.value = "";
      await loadFiles();
      uploadResult.textContent = `Uploaded ${f.filename} as ${f.id}.`;
      uploadResult.dataset.fileId = f.id; // set last: the selects already offer the new file
    } catch (err) {
      uploadResult.textContent = err.status === 400 ? `${file.name} was rejected:` : err.message;
      const problems = err.problems || [];
      uploadErrors.replaceChildren(...(problems.length ? problems : [{ line: 0, message: err.message }]).map((p) =>
        el("li", { dataset: { line: p.line } }, p.line ? el("strong", {}, `line ${p.line}: `) : null, p.message)));
      uploadErrors.hidden = false;
    } finally {
      uploadButton.disabled = false;
    }
  });

  jobForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    createError.hidden = true;
    if (!training.value) {
      createError.textContent = "Choose a training file.";
      createError.hidden = false;
      training.focus();
      return;
    }
    const hp = {};
    const put = (key, input, cast = Number) => { if (input.value !== "") hp[key] = cast(input.value); };
    put("n_epochs", epochs);
    put("learning_rate_multiplier", lr);
    if (!densityField.hidden) put("density", density);
    put("batch_size", batch);
    put("max_steps", maxSteps);
    const body = {
      model: model.value,
      training_file: training.value,
      method: { type: method.value, [method.value]: { hyperparameters: hp } },
    };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    createButton.disabled = true;
    try {
      const job = await api.createJob(body);
      notify(`Created ${job.id}`, "ok");
      navigate(`#/jobs/${job.id}`);
    } catch (err) {
      createError.textContent = err.message;
      createError.hidden = false;
    } finally {
      createButton.disabled = false;
    }
  });

  Promise.all([loadModels(), loadFiles()]).catch((err) => notify(err.message, "error"));
  return () => {};
}
