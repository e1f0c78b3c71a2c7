// Renders /openapi.json as plain HTML. Text goes through textContent only (never innerHTML),
// so nothing in the document can inject markup.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(doc, value) {
  let seen = 0;
  while (value && value.$ref && seen++ < 10) {
    value = value.$ref.slice(2).split("/").reduce((at, key) => (at ? at[key.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), doc);
  }
  return value || {};
}

function json(value) {
  return el("pre", {}, JSON.stringify(value, null, 2));
}

function parameters(doc, params) {
  if (!params || params.length === 0) return null;
  const table = el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "schema"), el("th", {}, "description")));
  for (const raw of params) {
    const p = resolve(doc, raw);
    table.append(el("tr", {},
      el("td", {}, el("code", {}, p.name + (p.required ? " *" : ""))),
      el("td", {}, p.in || ""),
      el("td", {}, el("code", {}, JSON.stringify(p.schema || {}))),
      el("td", { class: "desc" }, p.description || "")));
  }
  return table;
}

function responses(doc, all) {
  const list = el("div", {});
  for (const [status, raw] of Object.entries(all || {})) {
    const r = resolve(doc, raw);
    const name = raw.$ref ? " (" + raw.$ref.split("/").pop() + ")" : "";
    const body = el("details", {}, el("summary", {}, el("strong", {}, status), name + " " + (r.description || "").split("\n")[0]));
    if (r.headers) body.append(el("p", {}, "Headers: " + Object.keys(r.headers).join(", ")));
    for (const [type, media] of Object.entries(r.content || {})) {
      body.append(el("p", {}, el("code", {}, type)), json(media.schema || {}));
    }
    list.append(body);
  }
  return list;
}

function operation(doc, path, method, op) {
  const box = el("details", { id: op.operationId || "" },
    el("summary", {}, el("span", { class: "method " + method }, method), el("code", {}, path), " — " + (op.summary || "")));
  box.append(el("p", {}, "operationId: ", el("code", {}, op.operationId || "")));
  if (op.security && op.security.length) box.append(el("p", {}, "Security: ", el("code", {}, JSON.stringify(op.security))));
  if (op.description) box.append(el("p", { class: "desc" }, op.description));
  box.append(parameters(doc, op.parameters));
  if (op.requestBody) {
    const rb = resolve(doc, op.requestBody);
    box.append(el("h4", {}, "Request body" + (rb.required ? "" : " (optional)")));
    for (const [type, media] of Object.entries(rb.content || {})) box.append(el("p", {}, el("code", {}, type)), json(media.schema || {}));
  }
  box.append(el("h4", {}, "Responses"), responses(doc, op.responses));
  return box;
}

function render(doc) {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  const main = document.getElementById("content");
  main.replaceChildren(el("p", { class: "desc" }, doc.info.description || ""));
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(doc, path, method, op));
    }
  }
  for (const tag of doc.tags || []) {
    main.append(el("h2", {}, tag.name), el("p", {}, tag.description || ""), ...(byTag.get(tag.name) || []));
  }
  main.append(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries((doc.components || {}).schemas || {})) {
    main.append(el("details", { id: "schema-" + name }, el("summary", {}, el("code", {}, name)), json(schema)));
  }
  if (doc.webhooks) {
    main.append(el("h2", {}, "Webhooks"));
    for (const [name, item] of Object.entries(doc.webhooks)) {
      for (const [method, op] of Object.entries(item)) main.append(operation(doc, name, method, op));
    }
  }
}

fetch("/openapi.json")
  .then((r) => r.json())
  .then(render)
  .catch((e) => { document.getElementById("content").textContent = "Could not load /openapi.json: " + e; });
