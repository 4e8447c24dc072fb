/*
 * Palisade chat page: pre-chat form, queue, conversation.
 *
 * Rules this file keeps (and the CSP enforces most of them):
 *  - every string that came from a visitor or an operator reaches the DOM through
 *    textContent only; nothing is ever parsed as markup;
 *  - the visitor token lives in memory and in sessionStorage, never in a cookie or URL;
 *  - the event stream is read with fetch() (EventSource cannot send Authorization),
 *    resumed with Last-Event-ID, and stored events are de-duplicated by id;
 *  - postMessage goes only to the embedding page's exact origin, never to "*".
 */
(function () {
  'use strict';

  var API = '/api/v1/visitor';
  var STORE_KEY = 'palisade.visitor.chat';
  var TYPING_IDLE_MS = 3000;
  var TYPING_SHOW_MS = 7000;
  var STREAM_STALL_MS = 45000;
  var STATUS_POLL_MS = 30000;

  function $(id) { return document.getElementById(id); }

  var el = {
    dot: $('status-dot'),
    sub: $('bar-sub'),
    closeBtn: $('close-btn'),
    viewLoading: $('view-loading'),
    viewPrechat: $('view-prechat'),
    viewChat: $('view-chat'),
    form: $('prechat-form'),
    heading: $('prechat-heading'),
    intro: $('prechat-intro'),
    name: $('f-name'),
    email: $('f-email'),
    emailField: $('field-email'),
    question: $('f-question'),
    prechatError: $('prechat-error'),
    startBtn: $('start-btn'),
    status: $('chat-status'),
    messages: $('messages'),
    typing: $('typing'),
    chatError: $('chat-error'),
    compose: $('compose'),
    input: $('msg-input'),
    sendBtn: $('send-btn'),
    actions: $('chat-actions'),
    endBtn: $('end-btn'),
    endedBox: $('ended-box'),
    newChatBtn: $('new-chat-btn')
  };

  var state = {
    online: null,
    token: null,
    chatId: null,
    lastId: 0,          // highest stored event id received on the stream
    seen: {},           // stored event ids already rendered
    operatorName: null,
    queuePosition: null,
    ended: false,
    generation: 0,      // bumps on every new chat / reset; stale loops stop
    abort: null,
    typingSent: false,
    typingTimer: null,
    typingShowTimer: null,
    parentOrigin: null,
    statusTimer: null,
    visitorName: null
  };

  /* ---------- small helpers ---------- */

  function show(view) {
    el.viewLoading.hidden = view !== 'loading';
    el.viewPrechat.hidden = view !== 'prechat';
    el.viewChat.hidden = view !== 'chat';
  }

  function setText(node, text) {
    node.textContent = text == null ? '' : String(text);
  }

  function showError(node, text) {
    setText(node, text);
    node.hidden = !text;
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function formatTime(ts) {
    if (typeof ts !== 'number') { return ''; }
    try {
      return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    } catch (e) {
      return '';
    }
  }

  function store(obj) {
    try {
      if (obj) {
        window.sessionStorage.setItem(STORE_KEY, JSON.stringify(obj));
      } else {
        window.sessionStorage.removeItem(STORE_KEY);
      }
    } catch (e) { /* storage may be blocked: memory is enough */ }
  }

  function load() {
    try {
      var raw = window.sessionStorage.getItem(STORE_KEY);
      if (!raw) { return null; }
      var obj = JSON.parse(raw);
      if (obj && typeof obj.token === 'string' && obj.token) { return obj; }
    } catch (e) { /* ignore */ }
    return null;
  }

  function errorMessage(status, fallback) {
    if (status === 413) { return 'That is too long. Please shorten it.'; }
    if (status === 429) { return 'You are sending too fast. Please wait a moment.'; }
    if (status === 0) { return 'Cannot reach the chat service. Check your connection.'; }
    return fallback;
  }

  function api(method, path, body, auth) {
    var headers = { 'Accept': 'application/json' };
    var init = { method: method, headers: headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    if (auth) {
      headers['Authorization'] = 'Bearer ' + state.token;
    }
    return fetch(API + path, init).then(function (res) {
      var ct = res.headers.get('Content-Type') || '';
      var parse = ct.indexOf('application/json') !== -1 ? res.json().catch(function () { return null; }) : Promise.resolve(null);
      return parse.then(function (data) { return { status: res.status, ok: res.ok, data: data, res: res }; });
    }, function () {
      return { status: 0, ok: false, data: null, res: null };
    });
  }

  /* ---------- the embedding page (postMessage, exact origin only) ---------- */

  var inFrame = window.parent !== window;

  function validOrigin(o) {
    return typeof o === 'string' && /^https?:\/\/[^\s/]+$/.test(o);
  }

  function learnParentOrigin() {
    if (!inFrame) { return; }
    try {
      if (location.ancestorOrigins && location.ancestorOrigins.length > 0 && validOrigin(location.ancestorOrigins[0])) {
        state.parentOrigin = location.ancestorOrigins[0];
        return;
      }
    } catch (e) { /* ignore */ }
    try {
      if (document.referrer) {
        var o = new URL(document.referrer).origin;
        if (validOrigin(o)) { state.parentOrigin = o; }
      }
    } catch (e) { /* ignore */ }
  }

  function postToParent(msg) {
    if (!inFrame || !state.parentOrigin) { return; }
    msg.palisade = 1;
    try {
      window.parent.postMessage(msg, state.parentOrigin);
    } catch (e) { /* ignore */ }
  }

  function parentKnown() {
    el.closeBtn.hidden = !(inFrame && state.parentOrigin);
    if (state.online !== null) {
      postToParent({ type: 'status', online: state.online });
    }
  }

  window.addEventListener('message', function (event) {
    // Only the window that embeds us, and we answer only to its own origin.
    if (!inFrame || event.source !== window.parent) { return; }
    var data = event.data;
    if (!data || typeof data !== 'object' || data.palisade !== 1 || data.type !== 'hello') { return; }
    if (!validOrigin(event.origin)) { return; }
    if (state.parentOrigin && state.parentOrigin !== event.origin) { return; }
    state.parentOrigin = event.origin;
    parentKnown();
  });

  el.closeBtn.addEventListener('click', function () {
    postToParent({ type: 'close' });
  });

  /* ---------- online status ---------- */

  function applyOnline(online) {
    state.online = online;
    el.dot.classList.toggle('online', online);
    if (!state.token || state.ended) {
      setText(el.sub, online ? 'We are online' : 'We are away right now');
    }
    setText(el.heading, online ? 'Chat with us' : 'Leave us a message');
    if (online) {
      setText(el.intro, 'Tell us who you are and what you need; an operator will be with you shortly.');
      setText(el.startBtn, 'Start chat');
    } else {
      setText(el.intro, 'No one is available right now. Leave your question and an operator will pick it up as soon as possible.');
      setText(el.startBtn, 'Leave a message');
    }
    postToParent({ type: 'status', online: online });
  }

  // The pre-chat fields come from policy (visitor.toml): [{name, label, required}] or names.
  function applyFields(fields) {
    if (!Array.isArray(fields) || fields.length === 0) { return; }
    var byName = {};
    fields.forEach(function (f) {
      if (typeof f === 'string') {
        byName[f] = {};
      } else if (f && typeof f === 'object' && typeof f.name === 'string') {
        byName[f.name] = f;
      }
    });
    if (!byName.name) { return; } // not a list we understand: keep the defaults
    var labels = { name: 'f-name', email: 'f-email', question: 'f-question' };
    Object.keys(labels).forEach(function (key) {
      var f = byName[key];
      var label = document.querySelector('label[for="' + labels[key] + '"]');
      if (f && typeof f.label === 'string' && f.label && label) {
        setText(label, f.label); // policy text, still set as text only
      }
    });
    el.emailField.hidden = !byName.email;
    el.email.required = !!(byName.email && byName.email.required === true);
  }

  function refreshStatus() {
    return api('GET', '/status').then(function (r) {
      if (r.ok && r.data && typeof r.data.online === 'boolean') {
        applyOnline(r.data.online);
        applyFields(r.data.fields);
      } else if (state.online === null) {
        applyOnline(false);
      }
    });
  }

  function scheduleStatus() {
    clearTimeout(state.statusTimer);
    state.statusTimer = setTimeout(function () {
      if (!document.hidden) {
        refreshStatus().then(scheduleStatus);
      } else {
        scheduleStatus();
      }
    }, STATUS_POLL_MS);
  }

  /* ---------- rendering ---------- */

  function scrollToEnd() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  function renderMessage(from, author, text, ts) {
    var li = document.createElement('li');
    li.className = 'msg ' + (from === 'visitor' ? 'from-visitor' : 'from-operator');
    var meta = document.createElement('span');
    meta.className = 'msg-meta';
    var who = document.createElement('span');
    who.className = 'msg-author';
    setText(who, author || (from === 'visitor' ? 'You' : 'Operator'));
    meta.appendChild(who);
    var t = formatTime(ts);
    if (t) {
      var time = document.createElement('time');
      time.className = 'msg-time';
      time.dateTime = new Date(ts).toISOString();
      setText(time, ' · ' + t);
      meta.appendChild(time);
    }
    var p = document.createElement('p');
    p.className = 'msg-text';
    setText(p, text);
    li.appendChild(meta);
    li.appendChild(p);
    el.messages.appendChild(li);
    scrollToEnd();
    return li;
  }

  function renderSystem(text) {
    var li = document.createElement('li');
    li.className = 'msg system';
    setText(li, text);
    el.messages.appendChild(li);
    scrollToEnd();
    return li;
  }

  function updateStatusLine() {
    if (state.ended) {
      setText(el.status, 'Chat ended');
      setText(el.sub, 'Chat ended');
    } else if (state.operatorName) {
      setText(el.status, 'You are chatting with ' + state.operatorName);
      setText(el.sub, 'Connected');
    } else if (typeof state.queuePosition === 'number') {
      setText(el.status, 'Waiting for an operator… you are number ' + state.queuePosition + ' in the queue');
      setText(el.sub, 'Waiting for an operator');
    } else {
      setText(el.status, 'Waiting for an operator…');
      setText(el.sub, 'Waiting for an operator');
    }
  }

  function showTyping(on) {
    clearTimeout(state.typingShowTimer);
    if (on && !state.ended) {
      setText(el.typing, (state.operatorName || 'The operator') + ' is typing…');
      state.typingShowTimer = setTimeout(function () { setText(el.typing, ''); }, TYPING_SHOW_MS);
    } else {
      setText(el.typing, '');
    }
  }

  function enterEnded() {
    if (state.ended) { return; }
    state.ended = true;
    showTyping(false);
    stopTyping(false);
    el.compose.hidden = true;
    el.actions.hidden = true;
    el.endedBox.hidden = false;
    el.input.disabled = true;
    el.sendBtn.disabled = true;
    updateStatusLine();
    store(null);
    if (state.abort) {
      try { state.abort.abort(); } catch (e) { /* ignore */ }
    }
    refreshStatus();
  }

  /* One stored or ephemeral event, from the stream, the transcript or an API answer. */
  function handleEvent(type, data, sseId) {
    if (!data || typeof data !== 'object') { return; }
    var id = null;
    if (typeof data.id === 'number') {
      id = data.id;
    } else if (sseId !== null && sseId !== undefined && /^\d+$/.test(sseId)) {
      id = parseInt(sseId, 10);
    }
    var kind = data.kind || type;
    var stored = kind === 'message' || kind === 'joined' || kind === 'ended' || kind === 'started';

    if (stored) {
      if (id === null) { return; }
      if (state.seen[id]) { return; } // never render a stored event twice
      state.seen[id] = true;
    }

    switch (kind) {
      case 'started':
        renderMessage('visitor', data.author, data.text, data.ts);
        break;
      case 'message':
        if (data.from === 'operator') { showTyping(false); }
        renderMessage(data.from === 'operator' ? 'operator' : 'visitor', data.author, data.text, data.ts);
        break;
      case 'joined':
        state.operatorName = typeof data.author === 'string' && data.author ? data.author : 'an operator';
        renderSystem(state.operatorName + ' joined the chat');
        updateStatusLine();
        if (state.online !== true) { applyOnline(true); } // an operator is clearly here
        break;
      case 'ended':
        renderSystem(data.from === 'visitor' ? 'You ended the chat' :
          (state.operatorName ? state.operatorName + ' ended the chat' : 'The operator ended the chat'));
        enterEnded();
        break;
      case 'queue':
        if (typeof data.position === 'number') {
          state.queuePosition = data.position;
          updateStatusLine();
        }
        break;
      case 'typing':
        if (data.from === 'operator') { showTyping(data.typing === true); }
        break;
      default:
        break;
    }
  }

  /* ---------- server-sent events over fetch ---------- */

  function SseParser(onEvent) {
    this.buf = '';
    this.data = [];
    this.hasData = false;
    this.event = '';
    this.id = null;
    this.onEvent = onEvent;
  }

  SseParser.prototype.push = function (chunk) {
    this.buf += chunk;
    var buf = this.buf;
    var start = 0;
    var n = buf.length;
    for (;;) {
      var i = start;
      while (i < n) {
        var c = buf.charCodeAt(i);
        if (c === 10 || c === 13) { break; }
        i++;
      }
      if (i >= n) { break; }
      if (buf.charCodeAt(i) === 13 && i + 1 >= n) { break; } // \r at the end: wait for a possible \n
      var line = buf.slice(start, i);
      start = (buf.charCodeAt(i) === 13 && buf.charCodeAt(i + 1) === 10) ? i + 2 : i + 1;
      this.line(line);
    }
    this.buf = buf.slice(start);
  };

  SseParser.prototype.line = function (line) {
    if (line === '') {
      if (this.hasData) {
        this.onEvent(this.event || 'message', this.data.join('\n'), this.id);
      }
      this.data = [];
      this.hasData = false;
      this.event = '';
      this.id = null;
      return;
    }
    if (line.charCodeAt(0) === 58) { return; } // ":" comment (keep-alive)
    var colon = line.indexOf(':');
    var field = colon === -1 ? line : line.slice(0, colon);
    var value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) { value = value.slice(1); }
    if (field === 'data') {
      this.data.push(value);
      this.hasData = true;
    } else if (field === 'event') {
      this.event = value;
    } else if (field === 'id') {
      if (value.indexOf('\u0000') === -1) { this.id = value; }
    }
    // "retry" is ignored: the client has its own backoff.
  };

  function onSseEvent(type, raw, sseId) {
    var data;
    try {
      data = JSON.parse(raw);
    } catch (e) {
      return;
    }
    handleEvent(type, data, sseId);
    if (sseId !== null && /^\d+$/.test(sseId)) {
      var n = parseInt(sseId, 10);
      if (n > state.lastId) { state.lastId = n; }
    } else if (data && typeof data.id === 'number' && (type === 'message' || type === 'joined' || type === 'ended' || type === 'started')) {
      if (data.id > state.lastId) { state.lastId = data.id; }
    }
  }

  function readStream(body, gen, ctrl) {
    var reader = body.getReader();
    var decoder = new TextDecoder('utf-8');
    var parser = new SseParser(onSseEvent);
    var stallTimer = null;
    function armStall() {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(function () {
        try { ctrl.abort(); } catch (e) { /* ignore */ }
      }, STREAM_STALL_MS);
    }
    armStall();
    function pump() {
      return reader.read().then(function (r) {
        if (r.done || gen !== state.generation) {
          clearTimeout(stallTimer);
          parser.push(decoder.decode());
          return;
        }
        armStall();
        parser.push(decoder.decode(r.value, { stream: true }));
        return pump();
      }, function (err) {
        clearTimeout(stallTimer);
        throw err;
      });
    }
    return pump();
  }

  function streamLoop(gen) {
    var backoff = 1000;
    var sendZero = true; // first try resumes from 0 so nothing stored is missed

    function once() {
      if (gen !== state.generation || state.ended || !state.token) { return Promise.resolve(); }
      var ctrl = new AbortController();
      state.abort = ctrl;
      var headers = { 'Accept': 'text/event-stream', 'Authorization': 'Bearer ' + state.token };
      if (state.lastId > 0 || sendZero) {
        headers['Last-Event-ID'] = String(state.lastId);
      }
      var connectedAt = Date.now();
      return fetch(API + '/events', { headers: headers, cache: 'no-store', credentials: 'omit', signal: ctrl.signal })
        .then(function (res) {
          if (res.status === 401 || res.status === 403 || res.status === 404 || res.status === 410) {
            return 'gone';
          }
          if (res.status === 400 && state.lastId === 0 && sendZero) {
            sendZero = false;
            return 'retry-now';
          }
          if (!res.ok || !res.body) {
            return 'retry';
          }
          showError(el.chatError, '');
          return readStream(res.body, gen, ctrl).then(function () { return 'closed'; });
        })
        .catch(function () { return 'retry'; })
        .then(function (outcome) {
          if (gen !== state.generation || state.ended) { return; }
          if (outcome === 'gone') {
            chatGone();
            return;
          }
          if (outcome === 'retry-now') {
            return once();
          }
          if (Date.now() - connectedAt > 10000) {
            backoff = 1000; // the last connection was healthy for a while
          }
          if (backoff >= 8000) {
            showError(el.chatError, 'Connection lost. Reconnecting…');
          }
          var wait = backoff + Math.floor(Math.random() * 500);
          backoff = Math.min(backoff * 2, 30000);
          return sleep(wait).then(once);
        });
    }
    return once();
  }

  function chatGone() {
    // The token no longer opens a chat (ended and expired, or unknown).
    if (!state.ended) {
      renderSystem('This chat is no longer available.');
      enterEnded();
    }
  }

  /* ---------- starting / resuming a chat ---------- */

  function resetChat() {
    state.generation++;
    if (state.abort) {
      try { state.abort.abort(); } catch (e) { /* ignore */ }
    }
    state.abort = null;
    state.token = null;
    state.chatId = null;
    state.lastId = 0;
    state.seen = {};
    state.operatorName = null;
    state.queuePosition = null;
    state.ended = false;
    state.typingSent = false;
    clearTimeout(state.typingTimer);
    showTyping(false);
    while (el.messages.firstChild) { el.messages.removeChild(el.messages.firstChild); }
    el.compose.hidden = false;
    el.actions.hidden = false;
    el.endedBox.hidden = true;
    el.input.disabled = false;
    el.sendBtn.disabled = false;
    el.input.value = '';
    showError(el.chatError, '');
  }

  function openChat(token, chatId, fromStorage, name) {
    resetChat();
    state.token = token;
    state.chatId = chatId;
    state.visitorName = typeof name === 'string' ? name : null;
    store({ token: token, chat_id: chatId, name: state.visitorName });
    updateStatusLine();
    show('chat');
    var gen = state.generation;
    var first = fromStorage ? loadTranscript(gen) : Promise.resolve(true);
    first.then(function (ok) {
      if (!ok || gen !== state.generation) { return; }
      streamLoop(gen);
      if (!state.ended) {
        try { el.input.focus(); } catch (e) { /* ignore */ }
      }
    });
  }

  function loadTranscript(gen) {
    return api('GET', '/transcript', undefined, true).then(function (r) {
      if (gen !== state.generation) { return false; }
      if (r.status === 401 || r.status === 403 || r.status === 404 || r.status === 410) {
        store(null);
        resetChat();
        show('prechat');
        return false;
      }
      if (r.ok && r.data && Array.isArray(r.data.events)) {
        r.data.events.forEach(function (ev) {
          if (ev && typeof ev === 'object') {
            handleEvent(ev.kind, ev, null);
            if (typeof ev.id === 'number' && ev.id > state.lastId) { state.lastId = ev.id; }
          }
        });
      }
      return !state.ended;
    });
  }

  el.form.addEventListener('submit', function (e) {
    e.preventDefault();
    var name = el.name.value.trim();
    var email = el.email.value.trim();
    var question = el.question.value.trim();
    if (!name) {
      showError(el.prechatError, 'Please enter your name.');
      el.name.focus();
      return;
    }
    if (!question) {
      showError(el.prechatError, 'Please enter your question.');
      el.question.focus();
      return;
    }
    if (!email && el.email.required && !el.emailField.hidden) {
      showError(el.prechatError, 'Please enter your email address.');
      el.email.focus();
      return;
    }
    if (email && !el.emailField.hidden && !el.email.checkValidity()) {
      showError(el.prechatError, 'Please enter a valid email address, or leave it empty.');
      el.email.focus();
      return;
    }
    showError(el.prechatError, '');
    el.startBtn.disabled = true;
    var body = { name: name, question: question };
    if (email && !el.emailField.hidden) { body.email = email; }
    api('POST', '/chats', body, false).then(function (r) {
      el.startBtn.disabled = false;
      if (r.status === 201 || (r.ok && r.data && r.data.token)) {
        if (!r.data || typeof r.data.token !== 'string') {
          showError(el.prechatError, 'The chat service answered unexpectedly. Please try again.');
          return;
        }
        openChat(r.data.token, r.data.chat_id, false, name);
        el.question.value = '';
        return;
      }
      var msg = r.data && typeof r.data.error === 'string' ? r.data.error : 'Could not start the chat. Please try again.';
      showError(el.prechatError, errorMessage(r.status, msg));
    });
  });

  /* ---------- composing ---------- */

  function sendTyping(on) {
    if (!state.token || state.ended) { return; }
    api('POST', '/typing', { typing: on }, true);
  }

  function stopTyping(send) {
    clearTimeout(state.typingTimer);
    if (state.typingSent) {
      state.typingSent = false;
      if (send !== false) { sendTyping(false); }
    }
  }

  el.input.addEventListener('input', function () {
    if (state.ended || !state.token) { return; }
    if (!el.input.value.trim()) {
      stopTyping();
      return;
    }
    if (!state.typingSent) {
      state.typingSent = true;
      sendTyping(true);
    }
    clearTimeout(state.typingTimer);
    state.typingTimer = setTimeout(function () { stopTyping(); }, TYPING_IDLE_MS);
  });

  el.input.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });

  el.compose.addEventListener('submit', function (e) {
    e.preventDefault();
    send();
  });

  function send() {
    var text = el.input.value.trim();
    if (!text || state.ended || !state.token) { return; }
    el.input.value = '';
    stopTyping();
    var gen = state.generation;
    var li = renderMessage('visitor', state.visitorName || 'You', text, Date.now());
    li.classList.add('pending');
    api('POST', '/messages', { text: text }, true).then(function (r) {
      if (gen !== state.generation) { return; }
      if (r.ok && r.data && typeof r.data.id === 'number') {
        if (state.seen[r.data.id]) {
          // the stream was faster: the stored event is already on screen
          if (li.parentNode) { li.parentNode.removeChild(li); }
        } else {
          state.seen[r.data.id] = true;
          li.classList.remove('pending');
        }
        showError(el.chatError, '');
        return;
      }
      li.classList.remove('pending');
      li.classList.add('failed');
      var note = document.createElement('span');
      note.className = 'msg-note';
      setText(note, 'Not delivered');
      li.appendChild(note);
      var msg = r.data && typeof r.data.error === 'string' ? r.data.error : 'Your message was not delivered.';
      showError(el.chatError, errorMessage(r.status, msg));
      if (!el.input.value) { el.input.value = text; }
    });
  }

  el.endBtn.addEventListener('click', function () {
    if (state.ended || !state.token) { return; }
    el.endBtn.disabled = true;
    var gen = state.generation;
    api('POST', '/end', {}, true).then(function (r) {
      el.endBtn.disabled = false;
      if (gen !== state.generation) { return; }
      if (r.ok) {
        var id = r.data && typeof r.data.id === 'number' ? r.data.id : null;
        if (id !== null) {
          handleEvent('ended', { id: id, chat_id: state.chatId, kind: 'ended', from: 'visitor', ts: Date.now() }, null);
        }
        if (!state.ended) {
          renderSystem('You ended the chat');
          enterEnded();
        }
        return;
      }
      var msg = r.data && typeof r.data.error === 'string' ? r.data.error : 'Could not end the chat.';
      showError(el.chatError, errorMessage(r.status, msg));
    });
  });

  el.newChatBtn.addEventListener('click', function () {
    resetChat();
    store(null);
    setText(el.sub, state.online ? 'We are online' : 'We are away right now');
    show('prechat');
    try { el.question.focus(); } catch (e) { /* ignore */ }
  });

  /* ---------- start ---------- */

  learnParentOrigin();
  parentKnown();
  refreshStatus().then(function () {
    scheduleStatus();
    var saved = load();
    if (saved) {
      openChat(saved.token, saved.chat_id, true, saved.name);
    } else {
      show('prechat');
    }
  });
})();
