// Streams playground answers: posts the form to the stream URL and reads server-sent events with fetch
// (EventSource cannot POST). Events: routing, reasoning (a reasoning expert's thinking, shown apart), delta, done,
// error. Compare mode runs a second stream for the base.
(function () {
  "use strict";
  const form = document.getElementById("playground-form");
  if (!form || !window.fetch || !window.TextDecoder) return; // the plain form post still works

  function panel(id) {
    const root = document.getElementById(id);
    return {
      root: root,
      routing: root.querySelector('[data-role="routing"]'),
      text: root.querySelector('[data-role="text"]'),
      reasoningBox: root.querySelector('[data-role="reasoning-box"]'),
      reasoning: root.querySelector('[data-role="reasoning"]'),
      usage: root.querySelector('[data-role="usage"]'),
    };
  }

  function renderRouting(target, routing) {
    target.textContent = "";
    const line = document.createElement("p");
    if (routing.mode === "moe") {
      line.textContent = routing.fallback
        ? "Base model answers: no expert scored above the threshold."
        : "Routed to " + routing.experts.map((e) => e.model + " (" + e.weight.toFixed(2) + ")").join(", ");
    } else if (routing.mode === "expert") {
      line.textContent = "Answered by " + routing.experts[0].model + ".";
    } else {
      line.textContent = "Answered by the base model.";
    }
    target.appendChild(line);
    if (!routing.scores || !routing.scores.length) return;
    const list = document.createElement("ul");
    list.className = "score-bars";
    routing.scores.forEach((entry) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.className = "score-label";
      label.textContent = entry.model;
      const bar = document.createElement("span");
      bar.className = "score-bar";
      bar.style.width = Math.max(0, Math.min(100, entry.score * 100)).toFixed(1) + "%";
      const value = document.createElement("span");
      value.className = "score-value";
      value.textContent = entry.score.toFixed(3);
      item.append(label, bar, value);
      list.appendChild(item);
    });
    target.appendChild(list);
  }

  async function stream(data, target) {
    target.text.textContent = "";
    target.reasoning.textContent = "";
    target.reasoningBox.hidden = true;
    target.usage.textContent = "…";
    target.routing.textContent = "";
    const response = await fetch(form.dataset.streamUrl, {
      method: "POST",
      body: data,
      headers: { "X-CSRFToken": data.get("csrfmiddlewaretoken") },
      credentials: "same-origin",
    });
    if (!response.ok || !response.body) {
      target.usage.textContent = "The request was refused (" + response.status + ").";
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const name = (block.match(/^event: (.*)$/m) || [])[1];
        const payload = JSON.parse((block.match(/^data: (.*)$/m) || [, "{}"])[1]);
        if (name === "routing") renderRouting(target.routing, payload);
        else if (name === "reasoning") {
          target.reasoningBox.hidden = false;
          target.reasoning.textContent += payload.text;
        } else if (name === "delta") target.text.textContent += payload.text;
        else if (name === "done")
          target.usage.textContent =
            payload.prompt_tokens + " prompt + " + payload.completion_tokens + " completion tokens (" + payload.finish_reason + ")";
        else if (name === "error") target.usage.textContent = payload.message;
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const compare = document.getElementById("id_compare").checked;
    const main = panel("answer-main");
    const base = panel("answer-base");
    base.root.hidden = !compare;
    main.root.querySelector(".answer-title").textContent = form.querySelector("#id_model").selectedOptions[0].text;
    const jobs = [stream(data, main)];
    if (compare) {
      const baseData = new FormData(form);
      baseData.set("model", "base");
      jobs.push(stream(baseData, base));
    }
    Promise.all(jobs).catch((error) => {
      main.usage.textContent = "The answer stopped: " + error;
    });
  });
})();
