/* The wsgate demo page: sign in, one panel per module with server-side unread badges, a push form, the node. */
(function () {
  "use strict";

  var MAX_MESSAGES_PER_PANEL = 100;
  var MAX_LOG_LINES = 60;
  var STATE_TEXT = {
    idle: "signed out",
    connecting: "connecting…",
    open: "connected",
    reconnecting: "reconnecting…",
    closed: "disconnected",
  };

  var $ = function (id) { return document.getElementById(id); };
  var demo = (window.demo = { config: null, client: null, user: null, panels: {} });

  function log(text, kind) {
    var item = document.createElement("li");
    if (kind) item.className = kind;
    var time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.appendChild(time);
    item.appendChild(document.createTextNode(" " + text));
    var list = $("log");
    list.insertBefore(item, list.firstChild);
    while (list.children.length > MAX_LOG_LINES) list.removeChild(list.lastChild);
  }

  function describe(data) {
    if (typeof data === "string") return data;
    if (data && typeof data === "object" && typeof data.text === "string") return data.text;
    return JSON.stringify(data);
  }

  function title(module) {
    return module.charAt(0).toUpperCase() + module.slice(1);
  }

  /** The panel of `module`, created on first use (modules beyond the configured ones get one too). */
  function panel(module) {
    if (demo.panels[module]) return demo.panels[module];
    var node = $("panel-template").content.firstElementChild.cloneNode(true);
    node.dataset.module = module;
    node.querySelector("h2").textContent = title(module);
    node.querySelector(".read-all").addEventListener("click", function () { readAll(module); });
    node.querySelector(".messages").addEventListener("click", function (event) {
      var item = event.target.closest(".msg");
      if (item) read(item);
    });
    $("panels").appendChild(node);
    var entry = { node: node, list: node.querySelector(".messages"), badge: node.querySelector(".badge") };
    demo.panels[module] = entry;
    setBadge(module, (demo.client && demo.client.unread[module]) || 0);
    var option = document.createElement("option");
    option.value = option.textContent = module;
    $("push-module").appendChild(option);
    return entry;
  }

  function setBadge(module, count) {
    var badge = panel(module).badge;
    badge.textContent = String(count);
    badge.classList.toggle("zero", !count);
  }

  function read(item) {
    if (!item.classList.contains("unread")) return;
    item.classList.remove("unread");
    demo.client.ack(item.dataset.id);
  }

  function readAll(module) {
    var items = panel(module).list.querySelectorAll(".msg.unread");
    for (var i = 0; i < items.length; i++) read(items[i]);
  }

  function showMessage(msg) {
    var entry = panel(msg.module);
    var item = document.createElement("li");
    item.className = "msg unread fresh";
    item.dataset.id = msg.id;
    item.tabIndex = 0;
    item.title = "click to mark as read (id " + msg.id + ")";
    var main = document.createElement("div");
    var event = document.createElement("span");
    event.className = "event";
    var from = msg.data && typeof msg.data === "object" && typeof msg.data.from === "string" ? msg.data.from : "";
    event.textContent = msg.event + (from ? " · from " + from : "");
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = describe(msg.data);
    main.appendChild(event);
    main.appendChild(text);
    var time = document.createElement("time");
    time.textContent = new Date(msg.ts || Date.now()).toLocaleTimeString();
    item.appendChild(main);
    item.appendChild(time);
    item.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") read(item); });
    entry.list.insertBefore(item, entry.list.firstChild);
    entry.node.classList.add("has-messages");
    while (entry.list.children.length > MAX_MESSAGES_PER_PANEL) entry.list.removeChild(entry.list.lastChild);
    setTimeout(function () { item.classList.remove("fresh"); }, 1200);
    $("last-id").textContent = demo.client.lastId || "–";
  }

  function showUnread(unread) {
    var modules = Object.keys(demo.panels).concat(Object.keys(unread));
    for (var i = 0; i < modules.length; i++) setBadge(modules[i], unread[modules[i]] || 0);
    var total = 0;
    for (var key in unread) total += unread[key] || 0;
    document.title = (total ? "(" + total + ") " : "") + "wsgate demo";
  }

  function showState(state, info) {
    var pill = $("state");
    pill.dataset.state = state;
    var text = STATE_TEXT[state] || state;
    if (state === "reconnecting" && info && typeof info.delayMs === "number") {
      text = "reconnecting in " + (info.delayMs / 1000).toFixed(1) + " s";
      log("connection lost" + (info.code ? " (close " + info.code + (info.reason ? " " + info.reason : "") + ")" : "") +
          (info.reason && !info.code ? " (" + info.reason + ")" : "") + "; retry " + info.attempt, "warn");
    }
    $("state-text").textContent = text;
    if (state === "open") {
      $("node").textContent = demo.client.node || "?";
      $("session").textContent = demo.client.session || "–";
      var recovered = demo.client.recovered;
      log("connected to " + demo.client.node + (recovered === true ? ", missed messages replayed" :
          recovered === false ? ", some missed messages were too old to replay" : ""), "ok");
    } else {
      $("node").textContent = "–";
    }
    $("reconnects").textContent = demo.client ? String(demo.client.stats.welcomes > 0 ? demo.client.stats.welcomes - 1 : 0) : "0";
  }

  function getToken() {
    return fetch("/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: demo.user }),
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw new Error(body.error || "token refused");
        return body.token;
      });
    });
  }

  function curlFor(user) {
    var body = JSON.stringify({ to: { users: [user] }, module: demo.config.modules[0], event: "created",
                                data: { text: "hello " + user } });
    return "curl -s -X POST " + demo.config.pushApi + " \\\n  -H 'Authorization: Bearer " + demo.config.apiKey +
      "' \\\n  -H 'Content-Type: application/json' \\\n  -d '" + body + "'";
  }

  function signIn(user) {
    demo.user = user;
    var url = new URL(location.href);
    url.searchParams.set("user", user);
    history.replaceState(null, "", url.href);
    $("login").hidden = true;
    $("app").hidden = false;
    $("user").textContent = user;
    $("user-pill").hidden = false;
    $("push-to").value = user;
    $("curl").textContent = curlFor(user);
    for (var i = 0; i < demo.config.modules.length; i++) panel(demo.config.modules[i]);
    demo.client = new window.WsGate({
      url: demo.config.websocket,
      getToken: getToken,
      onState: showState,
      onUnread: showUnread,
      onError: function (frame) { log("server error " + frame.code + ": " + frame.reason, "warn"); },
    });
    demo.client.on("*", showMessage);
  }

  function signOut() {
    if (demo.client) demo.client.close();
    var url = new URL(location.href);
    url.searchParams.delete("user");
    location.href = url.href;
  }

  function push(event) {
    event.preventDefault();
    var all = $("push-all").checked;
    var users = $("push-to").value.split(/[\s,]+/).filter(Boolean);
    if (!all && !users.length) {
      $("push-result").textContent = "name at least one user, or tick everyone";
      return;
    }
    var body = {
      to: all ? { all: true } : { users: users },
      module: $("push-module").value,
      event: $("push-event").value || "created",
      data: { text: $("push-text").value, from: demo.user },
      store: $("push-store").checked,
    };
    $("push-send").disabled = true;
    fetch("/push", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then(function (response) {
        return response.json().then(function (answer) {
          if (!response.ok) throw new Error(answer.error || answer.reason || "HTTP " + response.status);
          $("push-result").textContent = "pushed " + answer.id + " to " + answer.online_sessions +
            " online session(s)" + (answer.stored ? ", stored for " + answer.stored : "");
          $("push-text").value = "";
        });
      })
      .catch(function (error) {
        $("push-result").textContent = "push failed: " + error.message;
      })
      .then(function () { $("push-send").disabled = false; });
  }

  function loadClient(src) {
    return new Promise(function (resolve, reject) {
      var script = document.createElement("script");
      script.src = src;
      script.onload = function () { resolve(window.WsGate); };
      script.onerror = function () { reject(new Error("could not load the client from " + src)); };
      document.head.appendChild(script);
    });
  }

  function fail(error) {
    var note = document.createElement("p");
    note.className = "error";
    note.textContent = error.message;
    $("login").appendChild(note);
  }

  function start() {
    $("login-form").addEventListener("submit", function (event) {
      event.preventDefault();
      signIn($("login-user").value.trim());
    });
    var chips = document.querySelectorAll(".chip[data-user]");
    for (var i = 0; i < chips.length; i++) {
      chips[i].addEventListener("click", function (event) { signIn(event.currentTarget.dataset.user); });
    }
    $("logout").addEventListener("click", signOut);
    $("push-form").addEventListener("submit", push);
    $("push-all").addEventListener("change", function () { $("push-to").disabled = $("push-all").checked; });

    fetch("/config.json")
      .then(function (response) { return response.json(); })
      .then(function (config) {
        demo.config = config;
        // The client script comes from the nodes themselves (wsnode serves it), through the gateway.
        return loadClient(config.client);
      })
      .then(function () {
        document.body.dataset.ready = "true";
        var user = new URL(location.href).searchParams.get("user");
        if (user) signIn(user);
      })
      .catch(fail);
  }

  start();
})();
