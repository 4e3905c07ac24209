// The page's entry point: sign-in with an API key (kept in localStorage), hash routing
// (#/jobs, #/jobs/<id>, #/new) and a notice line for errors and confirmations.

import { api, auth, onUnauthorized } from "./js/api.js";
import { renderCreate } from "./js/create.js";
import { renderJob } from "./js/job.js";
import { renderJobs } from "./js/jobs.js";
import { el } from "./js/util.js";

const main = document.getElementById("main");
const notice = document.getElementById("notice");
const signoutButton = document.getElementById("signout");
const nav = document.getElementById("nav");
let cleanup = () => {};
let noticeTimer = null;

function notify(message, kind = "info") {
  notice.textContent = message;
  notice.className = `notice ${kind}`;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, kind === "error" ? 8000 : 3000);
}

const navigate = (hash) => { window.location.hash = hash; };

function renderSignin() {
  const input = el("input", { id: "api-key", type: "password", autocomplete: "current-password", required: true,
    placeholder: "sgft-…", dataset: { testid: "api-key-input" } });
  const error = el("div", { id: "signin-error", class: "alert error", hidden: true, role: "alert" });
  const button = el("button", { type: "submit", class: "primary", dataset: { testid: "signin-button" } }, "Sign in");
  const form = el("form", { id: "signin-form", class: "card signin stack" },
    el("h2", {}, "Sign in"),
    el("p", { class: "muted small" }, "Paste an API key. An operator creates one with ", el("code", {}, "sgft keys create --tenant NAME"), "."),
    el("label", { class: "field" }, el("span", { class: "label" }, "API key"), input), error, button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    error.hidden = true;
    try {
      await api.check(input.value.trim());
      auth.key = input.value.trim();
      route();
    } catch (err) {
      error.textContent = err.status === 401 ? "This API key is not valid." : err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  main.replaceChildren(form);
  input.focus();
}

function route() {
  cleanup();
  cleanup = () => {};
  const signedIn = Boolean(auth.key);
  signoutButton.hidden = !signedIn;
  nav.hidden = !signedIn;
  if (!signedIn) { renderSignin(); return; }
  const hash = window.location.hash.replace(/^#\/?/, "");
  const [section, id] = hash.split("/");
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("active", link.dataset.section === (section || "jobs"));
  if (section === "jobs" && id) cleanup = renderJob(main, decodeURIComponent(id), notify);
  else if (section === "new") cleanup = renderCreate(main, notify, navigate);
  else cleanup = renderJobs(main, notify);
  window.scrollTo(0, 0);
}

signoutButton.addEventListener("click", () => { auth.key = ""; navigate("#/jobs"); route(); });
onUnauthorized.add(() => { auth.key = ""; notify("Your API key was refused; sign in again.", "error"); route(); });
window.addEventListener("hashchange", route);
route();
