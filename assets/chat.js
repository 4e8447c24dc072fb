/*
 * Palisade chat page (inside the widget's iframe): page tracking, invitations,
 * pre-chat form, queue, conversation, rating, transcript download, leave-a-message.
 *
 * Rules this file keeps (and the CSP enforces most of them):
 *  - every string that came from a visitor, an operator or the policy reaches the DOM
 *    through textContent only; nothing is ever parsed as markup;
 *  - the visitor token (who is browsing) lives in localStorage, the chat token (one chat)
 *    in sessionStorage; both are sent as "Authorization: Bearer", never in a cookie or URL;
 *  - event streams are read with fetch() (EventSource cannot send Authorization), the
 *    chat stream is resumed with Last-Event-ID, and stored events are de-duplicated by id;
 *  - postMessage is accepted only from the embedding window at its exact origin and is
 *    sent only to that origin, never to "*".
 */
(function () {
  'use strict';

  var API = '/api/v1/visitor';
  var CHAT_KEY = 'palisade.visitor.chat';
  var VISITOR_KEY = 'palisade.visitor.token';
  var TYPING_IDLE_MS = 3000;
  var TYPING_SHOW_MS = 7000;
  var STREAM_STALL_MS = 45000;
  var STATUS_POLL_MS = 15000;
  var PAGE_WAIT_MS = 1500;
  var STORED = { started: 1, message: 1, joined: 1, requeued: 1, ended: 1 };

  function $(id) { return document.getElementById(id); }

  var el = {
    dot: $('status-dot'),
    sub: $('bar-sub'),
    closeBtn: $('close-btn'),
    viewLoading: $('view-loading'),
    viewInvite: $('view-invite'),
    viewPrechat: $('view-prechat'),
    viewOffline: $('view-offline'),
    viewChat: $('view-chat'),
    inviteFrom: $('invite-heading'),
    inviteText: $('invite-text'),
    inviteError: $('invite-error'),
    inviteAccept: $('invite-accept'),
    inviteDecline: $('invite-decline'),
    form: $('prechat-form'),
    heading: $('prechat-heading'),
    intro: $('prechat-intro'),
    fields: $('prechat-fields'),
    prechatError: $('prechat-error'),
    startBtn: $('start-btn'),
    offForm: $('offline-form'),
    offName: $('o-name'),
    offEmail: $('o-email'),
    offDeptField: $('o-department-field'),
    offDept: $('o-department'),
    offMessage: $('o-message'),
    offError: $('offline-error'),
    offSend: $('offline-send'),
    offDone: $('offline-done'),
    offAgain: $('offline-again'),
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
    ratingForm: $('rating-form'),
    stars: $('stars'),
    ratingComment: $('rating-comment'),
    ratingError: $('rating-error'),
    ratingSend: $('rating-send'),
    ratingDone: $('rating-done'),
    dlTxt: $('dl-txt'),
    dlHtml: $('dl-html'),
    dlError: $('dl-error'),
    newChatBtn: $('new-chat-btn')
  };

  var state = {
    view: 'loading',
    online: null,
    departments: [],
    fieldsKey: null,
    // the chat
    token: null,
    chatId: null,
    lastId: 0,          // highest stored event id received
    seen: {},           // stored event ids already rendered
    operatorName: null,
    hadOperator: false,
    queuePosition: null,
    ended: false,
    rated: false,
    rating: 0,
    receipt: { delivered: 0, read: 0 },
    readSent: 0,
    readCandidate: 0,   // highest stored event id on screen
    lastOtherId: 0,     // highest one from the operator's side (what a read receipt is about)
    readTimer: null,
    generation: 0,      // bumps on every new chat / reset; stale loops stop
    abort: null,
    typingSent: false,
    typingTimer: null,
    typingShowTimer: null,
    visitorName: null,
    // the embedding page
    parentOrigin: null,
    panelOpen: null,    // unknown until the loader says
    statusTimer: null,
    // tracking
    visitorToken: null,
    tracking: 'waiting', // waiting | starting | on | off
    page: null,          // the last page the loader reported
    pageSent: null,      // the url last reported to the server
    presenceAbort: null,
    invite: null,        // the invitation on screen
    inviteReturn: null,  // the view to go back to after it
    inviteOpened: false  // the invitation opened the panel
  };

  /* ---------- small helpers ---------- */

  function show(view) {
    state.view = view;
    el.viewLoading.hidden = view !== 'loading';
    el.viewInvite.hidden = view !== 'invite';
    el.viewPrechat.hidden = view !== 'prechat';
    el.viewOffline.hidden = view !== 'offline';
    el.viewChat.hidden = view !== 'chat';
  }

  function setText(node, text) {
    node.textContent = text == null ? '' : String(text);
  }

  function showError(node, text) {
    setText(node, text);
    node.hidden = !text;
  }

  function make(tag, className, text) {
    var n = document.createElement(tag);
    if (className) { n.className = className; }
    if (text !== undefined) { setText(n, text); }
    return n;
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

  function session(key, obj) {
    try {
      if (obj === undefined) {
        var raw = window.sessionStorage.getItem(key);
        return raw ? JSON.parse(raw) : null;
      }
      if (obj) {
        window.sessionStorage.setItem(key, JSON.stringify(obj));
      } else {
        window.sessionStorage.removeItem(key);
      }
    } catch (e) { /* storage may be blocked: memory is enough */ }
    return null;
  }

  function loadVisitorToken() {
    try {
      var t = window.localStorage.getItem(VISITOR_KEY);
      return typeof t === 'string' && t ? t : null;
    } catch (e) {
      return null;
    }
  }

  function saveVisitorToken(t) {
    try {
      if (t) {
        window.localStorage.setItem(VISITOR_KEY, t);
      } else {
        window.localStorage.removeItem(VISITOR_KEY);
      }
    } catch (e) { /* blocked storage: this page view only */ }
  }

  function saveChat() {
    if (!state.token) {
      session(CHAT_KEY, null);
      return;
    }
    session(CHAT_KEY, {
      token: state.token,
      chat_id: state.chatId,
      name: state.visitorName,
      ended: state.ended,
      rated: state.rated
    });
  }

  function loadChat() {
    var obj = session(CHAT_KEY);
    if (obj && typeof obj === 'object' && typeof obj.token === 'string' && obj.token) { return obj; }
    return null;
  }

  function errorMessage(status, fallback) {
    if (status === 413) { return 'That is too long. Please shorten it.'; }
    if (status === 429) { return 'You are sending too fast. Please wait a moment.'; }
    if (status === 0) { return 'Cannot reach the chat service. Check your connection.'; }
    return fallback;
  }

  function apiError(r, fallback) {
    var msg = r.data && typeof r.data.error === 'string' ? r.data.error : fallback;
    return errorMessage(r.status, msg);
  }

  /* token: a bearer token, or null for none */
  function api(method, path, body, token) {
    var headers = { 'Accept': 'application/json' };
    var init = { method: method, headers: headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    if (token) {
      headers['Authorization'] = 'Bearer ' + token;
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

  function str(v, max) {
    if (typeof v !== 'string') { return ''; }
    return v.length > max ? v.slice(0, max) : v;
  }

  window.addEventListener('message', function (event) {
    // Only the window that embeds us, at its own origin.
    if (!inFrame || event.source !== window.parent) { return; }
    var data = event.data;
    if (!data || typeof data !== 'object' || data.palisade !== 1) { return; }
    if (!validOrigin(event.origin)) { return; }
    if (state.parentOrigin && state.parentOrigin !== event.origin) { return; }
    if (!state.parentOrigin) {
      state.parentOrigin = event.origin;
      parentKnown();
    }
    if (data.type === 'hello') {
      parentKnown();
    } else if (data.type === 'page') {
      var page = { url: str(data.url, 2000), title: str(data.title, 300), referrer: str(data.referrer, 2000) };
      if (!page.url) { return; }
      // the page must be on the embedding origin: nothing else can claim to be it
      try {
        if (new URL(page.url).origin !== event.origin) { return; }
      } catch (e) {
        return;
      }
      onPage(page);
    } else if (data.type === 'panel' && typeof data.open === 'boolean') {
      var was = state.panelOpen;
      state.panelOpen = data.open;
      if (data.open && was === false) {
        if (!state.token || state.ended) { refreshStatus(); }
        markRead();
      }
      if (!data.open) { state.inviteOpened = false; }
    }
  });

  el.closeBtn.addEventListener('click', function () {
    // The visitor's own choice holds at once: nothing that arrives before the loader
    // confirms may be marked read.
    state.panelOpen = false;
    state.inviteOpened = false;
    postToParent({ type: 'close' });
  });

  function panelVisible() {
    return document.visibilityState !== 'hidden' && state.panelOpen !== false;
  }

  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible') { markRead(); }
  });

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

  /* Read one SSE response body until it ends, stalls or `alive()` turns false. */
  function readStream(body, ctrl, alive, onEvent) {
    var reader = body.getReader();
    var decoder = new TextDecoder('utf-8');
    var parser = new SseParser(function (type, raw, id) {
      var data;
      try {
        data = JSON.parse(raw);
      } catch (e) {
        return;
      }
      onEvent(type, data, id);
    });
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
        if (r.done || !alive()) {
          clearTimeout(stallTimer);
          if (!alive()) {
            try { ctrl.abort(); } catch (e) { /* ignore */ }
          }
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

  /* ---------- tracking: hello, page views, presence, invitations ---------- */

  function onPage(page) {
    state.page = page;
    if (state.tracking === 'waiting') {
      startTracking();
    } else if (state.tracking === 'on') {
      sendPageview();
    }
    // 'starting': startTracking sends the latest page when hello is done
  }

  function startTracking() {
    if (state.tracking !== 'waiting') { return; }
    state.tracking = 'starting';
    var page = state.page || { url: location.href, title: document.title, referrer: '' };
    state.visitorToken = state.visitorToken || loadVisitorToken();
    hello(page).then(function (ok) {
      if (!ok) {
        state.tracking = 'off';
        return;
      }
      state.tracking = 'on';
      presenceLoop();
      if (state.page && state.page.url !== state.pageSent) { sendPageview(); }
    });
  }

  function hello(page) {
    return api('POST', '/hello', { url: page.url, title: page.title, referrer: page.referrer }, state.visitorToken)
      .then(function (r) {
        if (r.ok && r.data && typeof r.data.visitor_token === 'string' && r.data.visitor_token) {
          state.visitorToken = r.data.visitor_token;
          saveVisitorToken(state.visitorToken);
          state.pageSent = page.url;
          return true;
        }
        return false;
      });
  }

  function sendPageview() {
    var page = state.page;
    if (!page || !state.visitorToken) { return; }
    state.pageSent = page.url;
    api('POST', '/pageview', { url: page.url, title: page.title, referrer: page.referrer }, state.visitorToken)
      .then(function (r) {
        if (r.status === 401 || r.status === 403 || r.status === 404) {
          // the server forgot us (expired): introduce ourselves again with this page
          state.visitorToken = null;
          saveVisitorToken(null);
          hello(page);
        }
      });
  }

  function presenceLoop() {
    var backoff = 1000;
    function once() {
      if (!state.visitorToken) {
        return hello(state.page || { url: location.href, title: document.title, referrer: '' }).then(function (ok) {
          if (!ok) { return sleep(30000).then(once); }
          return once();
        });
      }
      var ctrl = new AbortController();
      state.presenceAbort = ctrl;
      var token = state.visitorToken;
      var connectedAt = Date.now();
      return fetch(API + '/presence', {
        headers: { 'Accept': 'text/event-stream', 'Authorization': 'Bearer ' + token },
        cache: 'no-store', credentials: 'omit', signal: ctrl.signal
      }).then(function (res) {
        if (res.status === 401 || res.status === 403) { return 'unknown'; }
        if (res.status === 404 || res.status === 405) { return 'unsupported'; }
        if (!res.ok || !res.body) { return 'retry'; }
        return readStream(res.body, ctrl, function () { return token === state.visitorToken; }, onPresenceEvent)
          .then(function () { return 'closed'; });
      }).catch(function () { return 'retry'; }).then(function (outcome) {
        if (outcome === 'unsupported') { return; }
        if (outcome === 'unknown') {
          if (token === state.visitorToken) {
            state.visitorToken = null;
            saveVisitorToken(null);
          }
          return sleep(500).then(once);
        }
        if (Date.now() - connectedAt > 10000) { backoff = 1000; }
        var wait = backoff + Math.floor(Math.random() * 500);
        backoff = Math.min(backoff * 2, 30000);
        return sleep(wait).then(once);
      });
    }
    once();
  }

  function onPresenceEvent(type, data) {
    if (!data || typeof data !== 'object') { return; }
    if (type === 'invite') {
      showInvite(data);
    } else if (type === 'invite_withdrawn') {
      if (state.invite && (data.invite_id === undefined || data.invite_id === state.invite.invite_id)) {
        leaveInvite(true);
      }
    }
  }

  function firstString() {
    for (var i = 0; i < arguments.length; i++) {
      if (typeof arguments[i] === 'string' && arguments[i]) { return arguments[i]; }
    }
    return '';
  }

  function showInvite(inv) {
    if (inv.invite_id === undefined || inv.invite_id === null) { return; }
    if (state.token && !state.ended) { return; } // already chatting
    if (state.view !== 'invite') {
      state.inviteReturn = state.view === 'loading' ? null : state.view;
    }
    state.invite = inv;
    var from = firstString(inv.operator_name, inv.display_name, inv.operator, inv.author, inv.from);
    setText(el.inviteFrom, from ? from + ' would like to chat with you' : 'We would like to chat with you');
    setText(el.inviteText, firstString(inv.message, inv.text) || 'Hello! Can we help you with anything?');
    showError(el.inviteError, '');
    el.inviteAccept.disabled = false;
    el.inviteDecline.disabled = false;
    show('invite');
    if (state.panelOpen !== true) {
      state.inviteOpened = true;
      postToParent({ type: 'open' });
    }
  }

  function leaveInvite(closePanel) {
    state.invite = null;
    var back = state.inviteReturn;
    state.inviteReturn = null;
    if (state.token && !state.ended) {
      show('chat');
    } else if (back === 'chat' && state.token) {
      show('chat');
    } else {
      showForms();
    }
    if (closePanel && state.inviteOpened) {
      state.inviteOpened = false;
      postToParent({ type: 'close' });
    }
  }

  el.inviteAccept.addEventListener('click', function () {
    var inv = state.invite;
    if (!inv) { return; }
    el.inviteAccept.disabled = true;
    el.inviteDecline.disabled = true;
    api('POST', '/invite/accept', { invite_id: inv.invite_id }, state.visitorToken).then(function (r) {
      if (state.invite !== inv) { return; }
      if (r.ok && r.data && typeof r.data.token === 'string' && r.data.token) {
        state.invite = null;
        state.inviteReturn = null;
        state.inviteOpened = false;
        openChat(r.data.token, r.data.chat_id, false, null);
        return;
      }
      el.inviteAccept.disabled = false;
      el.inviteDecline.disabled = false;
      if (r.status === 404 || r.status === 409 || r.status === 410) {
        showError(el.inviteError, 'This invitation is no longer available.');
        setTimeout(function () { if (state.invite === inv) { leaveInvite(false); } }, 2500);
      } else {
        showError(el.inviteError, apiError(r, 'Could not start the chat. Please try again.'));
      }
    });
  });

  el.inviteDecline.addEventListener('click', function () {
    var inv = state.invite;
    if (!inv) { return; }
    el.inviteAccept.disabled = true;
    el.inviteDecline.disabled = true;
    api('POST', '/invite/decline', { invite_id: inv.invite_id }, state.visitorToken);
    leaveInvite(true); // closes the panel again if the invitation opened it
  });

  /* ---------- online status and the forms ---------- */

  function showForms() {
    if (state.online === false) {
      show('offline');
    } else {
      show('prechat');
    }
  }

  function applyOnline(online) {
    var changed = state.online !== online;
    state.online = online;
    el.dot.classList.toggle('online', online);
    if (!state.token || state.ended) {
      setText(el.sub, online ? 'We are online' : 'We are away right now');
    }
    postToParent({ type: 'status', online: online });
    if (!changed) { return; }
    if (state.view === 'prechat' && !online) {
      moveToOffline(false);
      show('offline');
    } else if (state.view === 'offline' && online && el.offDone.hidden && !el.offMessage.value.trim()) {
      show('prechat');
    }
  }

  var DEFAULT_FIELDS = [
    { name: 'name', label: 'Name', required: true, type: 'text' },
    { name: 'email', label: 'Email', required: false, type: 'email' },
    { name: 'question', label: 'Question', required: true, type: 'textarea' }
  ];
  var KNOWN_FIELDS = { name: 1, email: 1, department: 1, question: 1 };

  function normaliseFields(fields) {
    var out = [];
    var have = {};
    (Array.isArray(fields) ? fields : []).forEach(function (f) {
      if (typeof f === 'string') { f = { name: f }; }
      if (!f || typeof f !== 'object' || typeof f.name !== 'string' || !KNOWN_FIELDS[f.name] || have[f.name]) { return; }
      have[f.name] = true;
      var type = f.type;
      if (type !== 'text' && type !== 'email' && type !== 'textarea' && type !== 'select') {
        type = f.name === 'email' ? 'email' : f.name === 'question' ? 'textarea' : f.name === 'department' ? 'select' : 'text';
      }
      out.push({
        name: f.name,
        label: typeof f.label === 'string' && f.label ? f.label : f.name.charAt(0).toUpperCase() + f.name.slice(1),
        required: f.name === 'name' ? true : f.required === true,
        type: type,
        options: Array.isArray(f.options) ? f.options.filter(function (o) { return typeof o === 'string'; }) : null
      });
    });
    if (out.length === 0) { return DEFAULT_FIELDS.slice(); }
    // the API always needs a name (the policy decides about everything else)
    if (!have.name) { out.unshift(DEFAULT_FIELDS[0]); }
    return out;
  }

  function buildFields(fields, departments) {
    var list = normaliseFields(fields);
    var key = JSON.stringify([list, departments]);
    if (key === state.fieldsKey) { return; }
    state.fieldsKey = key;
    var old = {};
    var inputs = el.fields.querySelectorAll('input, textarea, select');
    for (var i = 0; i < inputs.length; i++) { old[inputs[i].name] = inputs[i].value; }
    while (el.fields.firstChild) { el.fields.removeChild(el.fields.firstChild); }
    list.forEach(function (f) {
      var opts = f.type === 'select' ? (f.options && f.options.length ? f.options : departments) : null;
      if (f.type === 'select' && (!opts || opts.length === 0)) { return; } // nothing to choose from
      var wrap = make('div', 'field');
      wrap.setAttribute('data-field', f.name);
      var id = 'f-' + f.name;
      var label = make('label', '', f.label);
      label.htmlFor = id;
      if (!f.required) {
        label.appendChild(document.createTextNode(' '));
        label.appendChild(make('span', 'optional', '(optional)'));
      }
      var input;
      if (f.type === 'textarea') {
        input = make('textarea');
        input.rows = 3;
        input.maxLength = 2000;
      } else if (f.type === 'select') {
        input = make('select');
        var first = make('option', '', f.required ? 'Choose…' : 'Any');
        first.value = '';
        input.appendChild(first);
        opts.forEach(function (o) {
          var op = make('option', '', o);
          op.value = o;
          input.appendChild(op);
        });
      } else {
        input = make('input');
        input.type = f.type === 'email' ? 'email' : 'text';
        input.maxLength = f.type === 'email' ? 200 : 100;
        if (f.name === 'name') { input.autocomplete = 'name'; }
        if (f.name === 'email') { input.autocomplete = 'email'; }
      }
      input.id = id;
      input.name = f.name;
      input.required = f.required;
      if (old[f.name]) { input.value = old[f.name]; }
      input.setAttribute('data-label', f.label);
      wrap.appendChild(label);
      wrap.appendChild(input);
      el.fields.appendChild(wrap);
    });
    // the leave-a-message form offers the same departments
    while (el.offDept.firstChild) { el.offDept.removeChild(el.offDept.firstChild); }
    var any = make('option', '', 'Any');
    any.value = '';
    el.offDept.appendChild(any);
    departments.forEach(function (d) {
      var op = make('option', '', d);
      op.value = d;
      el.offDept.appendChild(op);
    });
    el.offDeptField.hidden = departments.length === 0;
  }

  function refreshStatus() {
    return api('GET', '/status').then(function (r) {
      if (r.ok && r.data && typeof r.data.online === 'boolean') {
        state.departments = Array.isArray(r.data.departments) ?
          r.data.departments.filter(function (d) { return typeof d === 'string' && d; }) : [];
        buildFields(r.data.fields, state.departments);
        applyOnline(r.data.online);
      } else if (state.online === null) {
        buildFields(null, []);
        applyOnline(false);
      }
    });
  }

  function scheduleStatus() {
    clearTimeout(state.statusTimer);
    state.statusTimer = setTimeout(function () {
      if (!document.hidden && (!state.token || state.ended)) {
        refreshStatus().then(scheduleStatus);
      } else {
        scheduleStatus();
      }
    }, STATUS_POLL_MS);
  }

  function fieldInput(name) {
    return el.fields.querySelector('[name="' + name + '"]');
  }

  el.form.addEventListener('submit', function (e) {
    e.preventDefault();
    var body = {};
    var inputs = el.fields.querySelectorAll('input, textarea, select');
    for (var i = 0; i < inputs.length; i++) {
      var input = inputs[i];
      var value = input.value.trim();
      var label = input.getAttribute('data-label') || input.name;
      if (!value && input.required) {
        showError(el.prechatError, (input.tagName === 'SELECT' ? 'Please choose: ' : 'Please fill in: ') + label + '.');
        input.focus();
        return;
      }
      if (value && input.type === 'email' && !input.checkValidity()) {
        showError(el.prechatError, 'Please enter a valid email address' + (input.required ? '.' : ', or leave it empty.'));
        input.focus();
        return;
      }
      if (value) { body[input.name] = value; }
    }
    showError(el.prechatError, '');
    el.startBtn.disabled = true;
    api('POST', '/chats', body, state.visitorToken).then(function (r) {
      el.startBtn.disabled = false;
      if (r.ok && r.data && typeof r.data.token === 'string' && r.data.token) {
        openChat(r.data.token, r.data.chat_id, false, body.name);
        var q = fieldInput('question');
        if (q) { q.value = ''; }
        return;
      }
      if (r.status === 409 && r.data && r.data.offline === true) {
        // nobody can take it now: offer to leave a message instead
        el.offName.value = body.name || '';
        el.offEmail.value = body.email || '';
        el.offMessage.value = body.question || '';
        if (body.department) { el.offDept.value = body.department; }
        applyOnline(false);
        show('offline');
        showError(el.offError, 'Sorry, no one is available right now. Send this as a message instead?');
        return;
      }
      showError(el.prechatError, apiError(r, 'Could not start the chat. Please try again.'));
    });
  });

  // carry what the visitor already typed over to the leave-a-message form
  function moveToOffline(force) {
    var n = fieldInput('name');
    var m = fieldInput('email');
    var q = fieldInput('question');
    if (n && (force || !el.offName.value)) { el.offName.value = n.value; }
    if (m && (force || !el.offEmail.value)) { el.offEmail.value = m.value; }
    if (q && (force || !el.offMessage.value)) { el.offMessage.value = q.value; }
  }

  el.offForm.addEventListener('submit', function (e) {
    e.preventDefault();
    var body = {
      name: el.offName.value.trim(),
      email: el.offEmail.value.trim(),
      message: el.offMessage.value.trim()
    };
    if (!body.name) {
      showError(el.offError, 'Please enter your name.');
      el.offName.focus();
      return;
    }
    if (!body.email || !el.offEmail.checkValidity()) {
      showError(el.offError, 'Please enter your email address, so that we can answer.');
      el.offEmail.focus();
      return;
    }
    if (!body.message) {
      showError(el.offError, 'Please enter your message.');
      el.offMessage.focus();
      return;
    }
    if (!el.offDeptField.hidden && el.offDept.value) { body.department = el.offDept.value; }
    showError(el.offError, '');
    el.offSend.disabled = true;
    api('POST', '/offline-message', body, state.visitorToken).then(function (r) {
      el.offSend.disabled = false;
      if (r.ok) {
        el.offMessage.value = '';
        el.offForm.hidden = true;
        el.offDone.hidden = false;
        return;
      }
      showError(el.offError, apiError(r, 'Your message could not be sent. Please try again.'));
    });
  });

  el.offAgain.addEventListener('click', function () {
    el.offDone.hidden = true;
    el.offForm.hidden = false;
    if (state.online) {
      show('prechat');
    }
    try { el.offMessage.focus(); } catch (e) { /* ignore */ }
  });

  /* ---------- rendering the conversation ---------- */

  function scrollToEnd() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  function renderMessage(from, author, text, ts, id) {
    var li = make('li', 'msg ' + (from === 'visitor' ? 'from-visitor' : 'from-operator'));
    if (typeof id === 'number') { li.setAttribute('data-id', String(id)); }
    var meta = make('span', 'msg-meta');
    meta.appendChild(make('span', 'msg-author', author || (from === 'visitor' ? 'You' : 'Operator')));
    var t = formatTime(ts);
    if (t) {
      var time = make('time', 'msg-time', ' · ' + t);
      time.dateTime = new Date(ts).toISOString();
      meta.appendChild(time);
    }
    li.appendChild(meta);
    li.appendChild(make('p', 'msg-text', text));
    el.messages.appendChild(li);
    scrollToEnd();
    return li;
  }

  function renderSystem(text) {
    var li = make('li', 'msg system', text);
    el.messages.appendChild(li);
    scrollToEnd();
    return li;
  }

  /* "Delivered" / "Read" under the visitor's last message */
  function updateReceipt() {
    var mine = el.messages.querySelectorAll('.msg.from-visitor[data-id]');
    var last = mine.length ? mine[mine.length - 1] : null;
    var text = '';
    if (last) {
      var id = Number(last.getAttribute('data-id'));
      if (state.receipt.read >= id) {
        text = 'Read';
      } else if (state.receipt.delivered >= id) {
        text = 'Delivered';
      }
    }
    var old = el.messages.querySelector('.receipt');
    if (old && (old.parentNode !== last || !text)) {
      old.parentNode.removeChild(old);
      old = null;
    }
    if (text) {
      if (!old) {
        old = make('span', 'receipt');
        last.appendChild(old);
      }
      setText(old, text);
      old.classList.toggle('read', text === 'Read');
    }
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

  /* tell the server how far the visitor has seen, while the chat is on screen */
  function markRead() {
    if (!state.token || state.ended || state.lastOtherId <= state.readSent || !panelVisible() || state.view !== 'chat') {
      return;
    }
    clearTimeout(state.readTimer);
    var gen = state.generation;
    state.readTimer = setTimeout(function () {
      // Checked again when it fires: the visitor may have minimised the chat meanwhile.
      if (gen !== state.generation || state.ended || !panelVisible()) { return; }
      var upTo = state.readCandidate;
      if (state.lastOtherId <= state.readSent) { return; }
      state.readSent = upTo;
      api('POST', '/read', { up_to: upTo }, state.token).then(function (r) {
        if (!r.ok && r.status !== 404 && gen === state.generation && state.readSent === upTo) {
          state.readSent = 0; // try again with the next event
        }
      });
    }, 200);
  }

  function enterEnded() {
    if (state.ended) { return; }
    state.ended = true;
    clearTimeout(state.readTimer);
    showTyping(false);
    stopTyping(false);
    el.compose.hidden = true;
    el.actions.hidden = true;
    el.endedBox.hidden = false;
    el.input.disabled = true;
    el.sendBtn.disabled = true;
    el.ratingForm.hidden = state.rated;
    el.ratingDone.hidden = !state.rated;
    updateStatusLine();
    saveChat();
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

    if (STORED[kind]) {
      if (id === null) { return; }
      if (id > state.lastId) { state.lastId = id; }
      if (state.seen[id]) { return; } // never render a stored event twice
      state.seen[id] = true;
      if (id > state.readCandidate) { state.readCandidate = id; }
      if (data.from !== 'visitor' && id > state.lastOtherId) { state.lastOtherId = id; }
    }

    switch (kind) {
      case 'started':
        renderMessage('visitor', data.author || state.visitorName, data.text, data.ts, id);
        updateReceipt();
        break;
      case 'message':
        if (data.from === 'operator') {
          showTyping(false);
          renderMessage('operator', data.author, data.text, data.ts, id);
          markRead();
        } else {
          renderMessage('visitor', data.author, data.text, data.ts, id);
          updateReceipt();
        }
        break;
      case 'joined':
        var name = typeof data.author === 'string' && data.author ? data.author : 'an operator';
        renderSystem(state.hadOperator ? 'You are now chatting with ' + name : name + ' joined the chat');
        state.hadOperator = true;
        state.operatorName = name;
        state.queuePosition = null;
        updateStatusLine();
        markRead();
        if (state.online !== true) { applyOnline(true); } // an operator is clearly here
        break;
      case 'requeued':
        state.operatorName = null;
        showTyping(false);
        renderSystem(typeof data.text === 'string' && data.text ? data.text : 'Please wait: you will be connected to the next available operator.');
        updateStatusLine();
        break;
      case 'ended':
        renderSystem(data.from === 'visitor' ? 'You ended the chat' :
          (state.operatorName ? state.operatorName + ' ended the chat' : 'The chat was ended'));
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
      case 'receipt':
        if (typeof data.delivered_up_to === 'number' && data.delivered_up_to > state.receipt.delivered) {
          state.receipt.delivered = data.delivered_up_to;
        }
        if (typeof data.read_up_to === 'number' && data.read_up_to > state.receipt.read) {
          state.receipt.read = data.read_up_to;
        }
        if (state.receipt.read > state.receipt.delivered) { state.receipt.delivered = state.receipt.read; }
        updateReceipt();
        break;
      default:
        break;
    }
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
          return readStream(res.body, ctrl, function () { return gen === state.generation; }, handleEvent)
            .then(function () { return 'closed'; });
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
    // The token no longer opens a live chat (ended, or unknown).
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
    state.hadOperator = false;
    state.queuePosition = null;
    state.ended = false;
    state.rated = false;
    state.rating = 0;
    state.receipt = { delivered: 0, read: 0 };
    state.readSent = 0;
    state.readCandidate = 0;
    state.lastOtherId = 0;
    clearTimeout(state.readTimer);
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
    el.ratingComment.value = '';
    setStars(0);
    showError(el.chatError, '');
    showError(el.ratingError, '');
    showError(el.dlError, '');
  }

  function openChat(token, chatId, fromStorage, name, saved) {
    resetChat();
    state.token = token;
    state.chatId = chatId;
    state.visitorName = typeof name === 'string' && name ? name : null;
    state.rated = !!(saved && saved.rated);
    saveChat();
    updateStatusLine();
    show('chat');
    var gen = state.generation;
    var first = fromStorage ? loadTranscript(gen, saved && saved.ended) : Promise.resolve(true);
    first.then(function (live) {
      if (gen !== state.generation) { return; }
      if (!live) { return; }
      if (fromStorage) { postToParent({ type: 'open' }); } // a chat in progress follows the visitor
      streamLoop(gen);
      markRead();
      if (!state.ended && state.panelOpen !== false) {
        try { el.input.focus(); } catch (e) { /* ignore */ }
      }
    });
  }

  function loadTranscript(gen, wasEnded) {
    return api('GET', '/transcript', undefined, state.token).then(function (r) {
      if (gen !== state.generation) { return false; }
      if (r.status === 401 || r.status === 403 || r.status === 404 || r.status === 410) {
        session(CHAT_KEY, null);
        resetChat();
        showForms();
        return false;
      }
      if (r.ok && r.data && Array.isArray(r.data.events)) {
        r.data.events.forEach(function (ev) {
          if (ev && typeof ev === 'object') { handleEvent(ev.kind, ev, null); }
        });
      }
      if (wasEnded && !state.ended) { enterEnded(); }
      return !state.ended;
    });
  }

  /* ---------- composing ---------- */

  function sendTyping(on) {
    if (!state.token || state.ended) { return; }
    api('POST', '/typing', { typing: on }, state.token);
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

  el.input.addEventListener('focus', markRead);

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
    api('POST', '/messages', { text: text }, state.token).then(function (r) {
      if (gen !== state.generation) { return; }
      if (r.ok && r.data && typeof r.data.id === 'number') {
        if (state.seen[r.data.id]) {
          // the stream was faster: the stored event is already on screen
          if (li.parentNode) { li.parentNode.removeChild(li); }
        } else {
          state.seen[r.data.id] = true;
          if (r.data.id > state.lastId) { state.lastId = r.data.id; }
          li.setAttribute('data-id', String(r.data.id));
          li.classList.remove('pending');
        }
        updateReceipt();
        showError(el.chatError, '');
        return;
      }
      li.classList.remove('pending');
      li.classList.add('failed');
      li.appendChild(make('span', 'msg-note', 'Not delivered'));
      showError(el.chatError, apiError(r, 'Your message was not delivered.'));
      if (!el.input.value) { el.input.value = text; }
    });
  }

  el.endBtn.addEventListener('click', function () {
    if (state.ended || !state.token) { return; }
    el.endBtn.disabled = true;
    var gen = state.generation;
    // what is on screen has been read: say so before the chat closes
    clearTimeout(state.readTimer);
    var flush = state.lastOtherId > state.readSent && panelVisible() ?
      api('POST', '/read', { up_to: state.readCandidate }, state.token) : Promise.resolve();
    state.readSent = Math.max(state.readSent, state.readCandidate);
    flush.then(function () {
      return api('POST', '/end', {}, state.token);
    }).then(function (r) {
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
      showError(el.chatError, apiError(r, 'Could not end the chat.'));
    });
  });

  /* ---------- after the chat: rating and transcript ---------- */

  function setStars(n) {
    state.rating = n;
    var stars = el.stars.querySelectorAll('.star');
    for (var i = 0; i < stars.length; i++) {
      var v = Number(stars[i].getAttribute('data-value'));
      stars[i].classList.toggle('on', v <= n);
      stars[i].setAttribute('aria-checked', v === n ? 'true' : 'false');
    }
    el.ratingSend.disabled = !(n >= 1 && n <= 5);
  }

  el.stars.addEventListener('click', function (e) {
    var t = e.target;
    if (t && t.classList && t.classList.contains('star')) {
      setStars(Number(t.getAttribute('data-value')));
      showError(el.ratingError, '');
    }
  });

  el.stars.addEventListener('keydown', function (e) {
    if (e.key === 'ArrowRight' || e.key === 'ArrowUp') {
      e.preventDefault();
      setStars(Math.min(5, state.rating + 1));
    } else if (e.key === 'ArrowLeft' || e.key === 'ArrowDown') {
      e.preventDefault();
      setStars(Math.max(1, state.rating - 1));
    }
  });

  el.ratingForm.addEventListener('submit', function (e) {
    e.preventDefault();
    if (!state.token || !(state.rating >= 1 && state.rating <= 5)) {
      showError(el.ratingError, 'Please choose from 1 to 5 stars.');
      return;
    }
    var body = { rating: state.rating };
    var comment = el.ratingComment.value.trim();
    if (comment) { body.comment = comment; }
    el.ratingSend.disabled = true;
    var gen = state.generation;
    api('POST', '/rating', body, state.token).then(function (r) {
      if (gen !== state.generation) { return; }
      el.ratingSend.disabled = false;
      if (r.ok || r.status === 409) {
        state.rated = true;
        saveChat();
        el.ratingForm.hidden = true;
        setText(el.ratingDone, r.ok ? 'Thank you for your feedback!' : 'You already rated this chat. Thank you!');
        el.ratingDone.hidden = false;
        return;
      }
      showError(el.ratingError, apiError(r, 'Your rating could not be sent.'));
    });
  });

  function download(kind) {
    if (!state.token) { return; }
    var btn = kind === 'txt' ? el.dlTxt : el.dlHtml;
    btn.disabled = true;
    showError(el.dlError, '');
    var chatId = String(state.chatId == null ? 'chat' : state.chatId).replace(/[^0-9A-Za-z_-]/g, '').slice(0, 64);
    fetch(API + '/transcript.' + kind, {
      headers: { 'Authorization': 'Bearer ' + state.token },
      cache: 'no-store', credentials: 'omit'
    }).then(function (res) {
      if (!res.ok) { throw new Error('HTTP ' + res.status); }
      return res.blob();
    }).then(function (blob) {
      // a Blob URL with `download`: saved as a file, never shown in this page
      var typed = new Blob([blob], { type: kind === 'txt' ? 'text/plain' : 'application/octet-stream' });
      var url = URL.createObjectURL(typed);
      var a = document.createElement('a');
      a.href = url;
      a.download = 'chat-transcript-' + chatId + '.' + kind;
      a.rel = 'noopener';
      a.hidden = true;
      document.body.appendChild(a);
      a.click();
      setTimeout(function () {
        URL.revokeObjectURL(url);
        if (a.parentNode) { a.parentNode.removeChild(a); }
      }, 10000);
    }).catch(function () {
      showError(el.dlError, 'The transcript could not be downloaded. Please try again.');
    }).then(function () {
      btn.disabled = false;
    });
  }

  el.dlTxt.addEventListener('click', function () { download('txt'); });
  el.dlHtml.addEventListener('click', function () { download('html'); });

  el.newChatBtn.addEventListener('click', function () {
    resetChat();
    session(CHAT_KEY, null);
    setText(el.sub, state.online ? 'We are online' : 'We are away right now');
    showForms();
    refreshStatus();
    var first = el.fields.querySelector('input, textarea, select');
    try { (state.view === 'offline' ? el.offName : first).focus(); } catch (e) { /* ignore */ }
  });

  /* ---------- start ---------- */

  learnParentOrigin();
  parentKnown();
  state.visitorToken = loadVisitorToken();
  refreshStatus().then(function () {
    scheduleStatus();
    var saved = loadChat();
    if (saved) {
      openChat(saved.token, saved.chat_id, true, saved.name, saved);
    } else if (state.view === 'loading') {
      showForms();
    }
  });
  // page tracking starts with the loader's first page message (or without one, after a moment)
  setTimeout(function () {
    if (state.tracking === 'waiting') { startTracking(); }
  }, inFrame ? PAGE_WAIT_MS : 0);
})();
