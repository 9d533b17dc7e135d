// meshlib's live mesh page: polls /api/mesh and draws it. Every value from the mesh is put on the
// page as text (textContent, or an attribute value through setAttribute): never as markup.
"use strict";

(function () {
  const POLL_MS = 2000;
  const graph = document.getElementById("graph");
  const SVG_NS = graph.namespaceURI; // the SVG namespace, from the page's own <svg>
  const NODE_W = 170;
  const NODE_H = 44;
  const openTraces = new Set();
  let last = null;

  // ---------------------------------------------------------------- building blocks

  function element(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined && text !== null) made.textContent = String(text);
    return made;
  }

  function shape(tag, attributes, text) {
    const made = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      made.setAttribute(name, String(value));
    }
    if (text !== undefined && text !== null) made.textContent = String(text);
    return made;
  }

  function cell(text, className) {
    return element("td", className, text === undefined || text === null ? "–" : text);
  }

  function short(text, length) {
    const value = String(text);
    return value.length > length ? value.slice(0, length - 1) + "…" : value;
  }

  function rate(value) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "0";
    return value >= 100 ? value.toFixed(0) : value >= 1 ? value.toFixed(2) : value.toFixed(3);
  }

  function percent(value) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "0%";
    const shown = value * 100;
    return (shown >= 10 ? shown.toFixed(0) : shown.toFixed(1)) + "%";
  }

  function millis(value) {
    if (value === null || value === undefined) return "–";
    return (value >= 100 ? value.toFixed(0) : value.toFixed(1)) + " ms";
  }

  function ago(view, when) {
    if (when === null || when === undefined) return "never";
    const seconds = Math.max(0, view.generated_at - when);
    if (seconds < 1.5) return "just now";
    if (seconds < 120) return Math.round(seconds) + " s ago";
    if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  function mtls(value) {
    if (value === null || value === undefined) return { text: "?", className: "mtls unknown" };
    if (value >= 0.999) return { text: "mTLS", className: "mtls on" };
    if (value <= 0) return { text: "plain", className: "mtls off" };
    return { text: "mTLS " + percent(value), className: "mtls partial" };
  }

  function fill(tbody, rows, columns, emptyText) {
    if (!rows.length) {
      const tr = element("tr");
      const td = element("td", "empty", emptyText);
      td.colSpan = columns;
      tr.append(td);
      tbody.replaceChildren(tr);
      return;
    }
    tbody.replaceChildren(...rows);
  }

  // ---------------------------------------------------------------- the graph

  function drawGraph(view) {
    const nodes = new Map(view.nodes.map((node) => [node.id, node]));
    const edgeLayer = document.getElementById("edges");
    const nodeLayer = document.getElementById("nodes");
    const labelLayer = document.getElementById("edge-labels");
    graph.setAttribute("width", view.size.width);
    graph.setAttribute("height", view.size.height);
    document.getElementById("graph-empty").hidden = view.nodes.length > 0;

    const edges = [];
    const labels = [];
    const outgoing = new Map();
    const incoming = new Map();
    for (const edge of view.edges) {
      outgoing.set(edge.source, (outgoing.get(edge.source) || 0) + 1);
      incoming.set(edge.destination, (incoming.get(edge.destination) || 0) + 1);
    }
    for (const edge of view.edges) {
      const from = nodes.get(edge.source);
      const to = nodes.get(edge.destination);
      if (!from || !to || from === to) continue;
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      let x2 = to.x;
      const y2 = to.y + NODE_H / 2;
      let curve;
      if (to.x > from.x) {
        const bend = (x2 - x1) / 2;
        curve = [x1, y1, x1 + bend, y1, x2 - bend, y2, x2, y2];
      } else {
        // same column or backwards: around the right side
        x2 = to.x + NODE_W;
        const out = Math.max(x1, x2) + 60;
        curve = [x1, y1, out, y1, out, y2, x2, y2];
      }
      const [ax, ay, bx, by, cx, cy, dx, dy] = curve;
      const d = `M${ax},${ay} C${bx},${by} ${cx},${cy} ${dx},${dy}`;
      const classes = ["edge", edge.status];
      if (edge.stale) classes.push("stale");
      const group = shape("g", {
        class: classes.join(" "),
        "data-source": edge.source,
        "data-destination": edge.destination,
        "data-status": edge.status,
        "data-rate": edge.rate === null ? "" : edge.rate,
        "data-error-rate": edge.error_rate === null ? "" : edge.error_rate,
        "data-mtls": edge.mtls === null ? "" : edge.mtls,
      });
      const path = shape("path", { d: d, "marker-end": `url(#arrow-${edge.status})` });
      const title = shape(
        "title",
        {},
        `${edge.source} → ${edge.destination}\n${rate(edge.rate)} req/s, errors ${percent(edge.error_rate)}\n` +
          `p50 ${millis(edge.p50)}, p99 ${millis(edge.p99)}, ${mtls(edge.mtls).text}` +
          (edge.stale ? "\n(last known numbers: the reporting service is not answering)" : ""),
      );
      group.append(path, title);
      edges.push(group);

      const text = [rate(edge.rate) + " rps"];
      if (edge.error_rate) text.push(percent(edge.error_rate) + " err");
      if (edge.mtls !== null && edge.mtls >= 0.999) text.push("mTLS");
      // the label where the edge is apart from its siblings: near the end of a fan-out, near
      // the start of a fan-in
      const fanOut = (outgoing.get(edge.source) || 0) > (incoming.get(edge.destination) || 0);
      const t = fanOut ? 0.72 : 0.28;
      const u = 1 - t;
      const midX = u * u * u * ax + 3 * u * u * t * bx + 3 * u * t * t * cx + t * t * t * dx;
      const midY = u * u * u * ay + 3 * u * u * t * by + 3 * u * t * t * cy + t * t * t * dy - 5;
      const label = shape("g", {
        class: `edge-label ${edge.status}`,
        "data-source": edge.source,
        "data-destination": edge.destination,
      });
      label.append(shape("text", { x: midX, y: midY, "text-anchor": "middle" }, text.join(" · ")));
      labels.push(label);
    }
    edgeLayer.replaceChildren(...edges);
    labelLayer.replaceChildren(...labels);

    const drawn = [];
    for (const node of view.nodes) {
      const group = shape("g", {
        class: `node ${node.state}`,
        "data-id": node.id,
        "data-workload": node.workload,
        "data-state": node.state,
        transform: `translate(${node.x},${node.y})`,
      });
      group.append(shape("rect", { width: NODE_W, height: NODE_H, rx: 6, ry: 6 }));
      group.append(shape("text", { class: "name", x: 10, y: 18 }, short(node.workload, 19)));
      let sub;
      if (node.state === "stale") {
        sub = "stale · last seen " + ago(view, node.last_seen);
      } else {
        const parts = [];
        if (node.namespace !== "default") parts.push(node.namespace);
        if (node.version && node.version !== "unknown") parts.push(node.version);
        if (node.state === "observed") parts.push("from metrics");
        sub = parts.join(" · ");
      }
      group.append(shape("text", { class: "sub", x: 10, y: 35 }, short(sub, 28)));
      group.append(
        shape(
          "title",
          {},
          `${node.workload}\nnamespace ${node.namespace}, app ${node.app}, version ${node.version}\n` +
            (node.state === "stale"
              ? `stale: last seen ${ago(view, node.last_seen)}`
              : node.state === "observed"
                ? "known from the metrics only"
                : "its admin endpoint answers"),
        ),
      );
      drawn.push(group);
    }
    nodeLayer.replaceChildren(...drawn);
  }

  // ---------------------------------------------------------------- the tables

  function drawTraffic(view) {
    document.getElementById("window").textContent = `(rates over the last ${view.window} s)`;
    const rows = view.edges.map((edge) => {
      const tr = element("tr", `${edge.status}${edge.stale ? " stale" : ""}`);
      tr.dataset.source = edge.source;
      tr.dataset.destination = edge.destination;
      const security = mtls(edge.mtls);
      tr.append(
        cell(edge.source),
        cell(edge.destination),
        cell(rate(edge.rate), "num rate"),
        cell(percent(edge.error_rate), "num errors"),
        cell(millis(edge.p50), "num"),
        cell(millis(edge.p99), "num"),
        cell(security.text, security.className),
        cell(edge.reporter + (edge.stale ? " (stale)" : "")),
      );
      return tr;
    });
    fill(document.querySelector("#edges-table tbody"), rows, 8, "No traffic seen yet.");
  }

  function drawRoutes(view) {
    const rows = view.routes.map((route) => {
      const tr = element("tr", route.status);
      tr.append(
        cell(route.workload),
        cell(route.virtual_service || "(none)"),
        cell(route.route),
        cell(route.destination),
        cell(rate(route.rate), "num rate"),
        cell(percent(route.error_rate), "num errors"),
        cell(millis(route.p50), "num"),
        cell(millis(route.p99), "num"),
      );
      return tr;
    });
    fill(document.querySelector("#routes-table tbody"), rows, 8, "No calls seen yet.");
  }

  function drawResilience(view) {
    const breakers = view.breakers.map((breaker) => {
      const tr = element("tr");
      tr.append(
        cell(breaker.workload),
        cell(breaker.destination, "mono"),
        cell(breaker.state, `breaker ${breaker.state}`),
        cell(breaker.failures, "num"),
      );
      return tr;
    });
    fill(
      document.querySelector("#breakers-table tbody"),
      breakers,
      4,
      "No circuit breaker in use (spec.circuitBreakers).",
    );
    const ejections = view.ejections.map((ejection) => {
      const tr = element("tr");
      tr.append(
        cell(ejection.workload),
        cell(ejection.destination, "mono"),
        cell(ejection.endpoint, "mono"),
        cell(ejection.ejections, "num"),
        cell(ejection.ejected_for === null ? null : ejection.ejected_for + " s", "num"),
      );
      return tr;
    });
    fill(
      document.querySelector("#ejections-table tbody"),
      ejections,
      5,
      "No endpoint ejected by outlier detection.",
    );
  }

  function drawServices(view) {
    const rows = view.services.map((service) => {
      const tr = element("tr", service.state);
      tr.dataset.node = service.node;
      tr.dataset.state = service.state;
      const revision = cell(service.revision ? service.revision.slice(0, 12) : null, "mono");
      if (service.revision) revision.title = service.revision;
      if (service.expected_revision) {
        const synced = service.expected_revision === service.revision;
        revision.append(
          element("span", synced ? "thin" : "problem", synced ? " (its files' config)" : " (not its files' config yet)"),
        );
      }
      const problems = [service.error, service.problem, service.config_error].filter((p) => p);
      tr.append(
        cell(service.name),
        cell(service.version),
        cell(service.state, `state ${service.state}`),
        cell(ago(view, service.last_seen)),
        revision,
        cell(service.reloads, "num"),
        cell(service.metrics),
        cell(service.url, "mono"),
        cell(problems.join("; ") || "", "problem"),
      );
      return tr;
    });
    fill(document.querySelector("#services-table tbody"), rows, 9, "No services to poll.");
  }

  function drawTraces(view) {
    const box = document.getElementById("traces");
    if (!view.traces.length) {
      box.replaceChildren(element("p", "thin", "No traces yet (the services' /_mesh/traces)."));
      return;
    }
    const made = view.traces.map((trace) => {
      const details = element("details");
      details.dataset.traceId = trace.trace_id;
      details.open = openTraces.has(trace.trace_id);
      details.addEventListener("toggle", () => {
        if (details.open) openTraces.add(trace.trace_id);
        else openTraces.delete(trace.trace_id);
      });
      const summary = element("summary");
      summary.append(
        element("strong", "", trace.root || "(no root span)"),
        document.createTextNode(
          ` · ${trace.service} · ${millis(trace.duration_ms)} · ${trace.span_count} spans `,
        ),
        element("code", "thin", trace.trace_id.slice(0, 16)),
      );
      if (trace.errors) summary.append(element("span", "errors", ` · ${trace.errors} failed`));
      const list = element("ol", "tree");
      const total = trace.duration_ms || 1;
      for (const span of trace.spans) {
        const item = element("li", span.status === "ERROR" ? "error" : "");
        const label = element("span", "label");
        label.style.paddingLeft = `${span.depth * 1.2}em`;
        label.append(element("span", "kind", span.kind), document.createTextNode(span.name));
        label.append(element("span", "service", span.service));
        if (span.code) label.append(element("span", "service", span.code));
        for (const event of span.events) label.append(element("span", "event", event));
        label.title = [`${span.name} (${span.service}) ${millis(span.duration_ms)}`]
          .concat(span.attributes)
          .join("\n");
        const track = element("span", "bar-track");
        const bar = element("span", "bar");
        bar.style.left = `${(100 * span.offset_ms) / total}%`;
        bar.style.width = `${(100 * span.duration_ms) / total}%`;
        bar.title = millis(span.duration_ms);
        track.append(bar);
        item.append(label, track);
        list.append(item);
      }
      details.append(summary, list);
      return details;
    });
    box.replaceChildren(...made);
  }

  function drawHeader(view) {
    document.getElementById("source").textContent =
      `${view.mode === "prometheus" ? "Prometheus mode" : "admin mode"}: ${view.source}`;
    const problems = document.getElementById("problems");
    problems.replaceChildren(...view.problems.map((problem) => element("li", "", problem)));
    problems.hidden = view.problems.length === 0;
  }

  function draw(view) {
    drawHeader(view);
    drawGraph(view);
    drawTraffic(view);
    drawRoutes(view);
    drawResilience(view);
    drawServices(view);
    drawTraces(view);
  }

  // ---------------------------------------------------------------- polling

  async function refresh() {
    const updated = document.getElementById("updated");
    try {
      const response = await fetch("api/mesh", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const view = await response.json();
      last = view;
      draw(view);
      updated.dataset.state = "live";
      updated.textContent = `updated ${new Date(view.generated_at * 1000).toLocaleTimeString()}`;
      document.body.dataset.generatedAt = String(view.generated_at);
    } catch (error) {
      updated.dataset.state = "unreachable";
      updated.textContent =
        "the dashboard server does not answer" + (last ? ": showing the last data" : "");
    } finally {
      window.setTimeout(refresh, POLL_MS);
    }
  }

  refresh();
})();
