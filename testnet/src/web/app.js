// The testnet's live view: fetches /api/nodes every 2 s and draws each
// node as a card in its column. Node data is only ever set as text.
"use strict";

const REFRESH_MS = 2000;

function column(node) {
  if (node.role === "authority") return "authorities";
  if (node.role === "mailbox") return node.listed ? "mailboxes" : "unlisted";
  if (node.layer) return "layer-" + node.layer;
  return "unlisted";
}

function line(cls, text) {
  const div = document.createElement("div");
  div.className = cls;
  div.textContent = text;
  return div;
}

function card(node) {
  const el = document.createElement("div");
  el.className = "node " + (node.ready ? "ready" : "not-ready");
  el.dataset.node = node.name;
  el.dataset.role = node.role;
  el.appendChild(line("bar", ""));
  const body = document.createElement("div");
  body.className = "body";
  body.appendChild(line("name", node.name));
  if (node.jurisdiction) {
    body.appendChild(line("where", node.jurisdiction + " · " + (node.operator || "")));
  }
  body.appendChild(line("health", node.ready ? "ready" : "not ready: " + node.health));
  body.appendChild(line("rate", node.detail));
  el.appendChild(body);
  return el;
}

function draw(snapshot) {
  const groups = {};
  for (const node of snapshot.nodes) {
    const c = column(node);
    (groups[c] = groups[c] || []).push(node);
  }
  for (const section of document.querySelectorAll(".column")) {
    const name = section.dataset.column;
    const list = groups[name] || [];
    const holder = section.querySelector(".nodes");
    holder.replaceChildren(...list.map(card));
    section.classList.toggle("empty", list.length === 0 && name === "unlisted");
  }
  const when = new Date(snapshot.updated_unix_secs * 1000).toLocaleTimeString();
  document.getElementById("summary").textContent =
    snapshot.ready + " of " + snapshot.nodes.length + " nodes ready · updated " + when;
  document.getElementById("consensus").textContent = "Consensus: " + snapshot.consensus;
  document.body.dataset.ready = String(snapshot.ready);
  document.body.dataset.nodes = String(snapshot.nodes.length);
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("/api/nodes", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
    error.hidden = true;
  } catch (e) {
    error.textContent = "cannot reach the testnet (" + e.message + "); is `bastet-testnet up --web` still running?";
    error.hidden = false;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
