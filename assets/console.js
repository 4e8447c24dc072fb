/*
 * Palisade operator console.
 *
 * Every visitor-supplied string (names, emails, questions, messages) reaches the DOM
 * through textContent (or an attribute value) only: nothing is ever parsed as markup.
 * The session is an HttpOnly cookie set by login; every POST is same-origin JSON, so
 * the browser adds the Origin header the server checks.
 */
(function () {
  'use strict';

  var API = '/api/v1/operator';
  var TYPING_IDLE_MS = 3000;
  var TYPING_SHOW_MS = 7000;

  function $(id) { return document.getElementById(id); }

  var el = {
    meBox: $('me-box'),
    meName: $('me-name'),
    conn: $('conn-state'),
    logoutBtn: $('logout-btn'),
    loadingView: $('loading-view'),
    loginView: $('login-view'),
    appView: $('app-view'),
    loginForm: $('login-form'),
    username: $('login-username'),
    password: $('login-password'),
    auth: $('login-auth'),
    loginError: $('login-error'),
    loginBtn: $('login-btn'),
    queueCount: $('queue-count'),
    queueEmpty: $('queue-empty'),
    queueList: $('queue-list'),
    notice: $('notice'),
    chatsCount: $('chats-count'),
    chatsEmpty: $('chats-empty'),
    panels: $('chat-panels')
  };

  var state = {
    me: null,
    queue: [],
    chats: new Map(),      // chat_id -> chat view
    dismissed: new Set(),  // ended chats the operator closed locally
    es: null,
    backoff: 1000,
    reconnectTimer: null,
    resyncTimer: null,
    noticeTimer: null,
    focusChat: null,
    session: 0             // bumps on login/logout; stale callbacks stop
  };

  /* ---------- helpers ---------- */

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

  function showView(name) {
    el.loadingView.hidden = name !== 'loading';
    el.loginView.hidden = name !== 'login';
    el.appView.hidden = name !== 'app';
    el.meBox.hidden = name !== 'app';
  }

  function request(method, path, body) {
    var init = {
      method: method,
      headers: { 'Accept': 'application/json' },
      credentials: 'same-origin',
      cache: 'no-store'
    };
    if (method === 'POST') {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    return fetch(path, init).then(function (res) {
      var ct = res.headers.get('Content-Type') || '';
      var parse = ct.indexOf('application/json') !== -1 ? res.json().catch(function () { return null; }) : Promise.resolve(null);
      return parse.then(function (data) { return { status: res.status, ok: res.ok, data: data, res: res }; });
    }, function () {
      return { status: 0, ok: false, data: null, res: null };
    });
  }

  function errorText(r, fallback) {
    if (r.status === 0) { return 'Cannot reach the server.'; }
    if (r.status === 413) { return 'That message is too long.'; }
    if (r.status === 429) { return 'Too many requests. Please wait a moment.'; }
    if (r.data && typeof r.data.error === 'string') { return r.data.error; }
    return fallback + ' (HTTP ' + r.status + ')';
  }

  function formatTime(ts) {
    if (typeof ts !== 'number') { return ''; }
    try {
      return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    } catch (e) {
      return '';
    }
  }

  function formatWait(since) {
    if (typeof since !== 'number') { return ''; }
    var s = Math.max(0, Math.floor((Date.now() - since) / 1000));
    if (s < 60) { return 'waiting ' + s + ' s'; }
    var m = Math.floor(s / 60);
    if (m < 60) { return 'waiting ' + m + ' min ' + String(s % 60).padStart(2, '0') + ' s'; }
    return 'waiting ' + Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
  }

  function notice(text) {
    showError(el.notice, text);
    clearTimeout(state.noticeTimer);
    if (text) {
      state.noticeTimer = setTimeout(function () { showError(el.notice, ''); }, 8000);
    }
  }

  /* ---------- login / session ---------- */

  el.loginForm.addEventListener('submit', function (e) {
    e.preventDefault();
    var body = {
      username: el.username.value.trim(),
      password: el.password.value,
      auth_string: el.auth.value
    };
    if (!body.username || !body.password || !body.auth_string) {
      showError(el.loginError, 'Please fill in all three fields.');
      return;
    }
    showError(el.loginError, '');
    el.loginBtn.disabled = true;
    request('POST', API + '/login', body).then(function (r) {
      el.loginBtn.disabled = false;
      if (r.ok) {
        el.password.value = '';
        el.auth.value = '';
        startApp(r.data && typeof r.data === 'object' ? r.data : { username: body.username });
        return;
      }
      if (r.status === 401) {
        showError(el.loginError, 'Invalid credentials');
        el.auth.value = '';
        el.password.value = '';
        el.password.focus();
      } else if (r.status === 429) {
        var after = r.res ? parseInt(r.res.headers.get('Retry-After') || '', 10) : NaN;
        showError(el.loginError, isFinite(after) && after > 0 ?
          'Too many attempts. Please try again in ' + after + ' seconds.' :
          'Too many attempts. Please try again later.');
      } else if (r.status === 403) {
        showError(el.loginError, 'The server refused this request (origin check).');
      } else {
        showError(el.loginError, errorText(r, 'Sign-in failed'));
      }
    });
  });

  el.logoutBtn.addEventListener('click', function () {
    el.logoutBtn.disabled = true;
    request('POST', API + '/logout').then(function () {
      el.logoutBtn.disabled = false;
      endSession('');
    });
  });

  function endSession(message) {
    state.session++;
    if (state.es) { state.es.close(); state.es = null; }
    clearTimeout(state.reconnectTimer);
    clearTimeout(state.resyncTimer);
    state.me = null;
    state.queue = [];
    state.chats.forEach(function (c) { clearTimeout(c.typingTimer); clearTimeout(c.typingShowTimer); });
    state.chats.clear();
    state.dismissed.clear();
    while (el.panels.firstChild) { el.panels.removeChild(el.panels.firstChild); }
    renderQueue();
    renderChatCount();
    showView('login');
    showError(el.loginError, message);
    document.title = 'Palisade console';
    try { el.username.focus(); } catch (e) { /* ignore */ }
  }

  function setMe(me) {
    if (!me || typeof me !== 'object') { return; }
    state.me = me;
    setText(el.meName, me.display_name || me.username || '');
  }

  function startApp(me) {
    state.session++;
    setMe(me);
    showView('app');
    renderQueue();
    renderChatCount();
    connect();
  }

  /* ---------- event stream ---------- */

  function setConn(text, cls) {
    setText(el.conn, text);
    el.conn.className = 'conn' + (cls ? ' ' + cls : '');
  }

  function connect() {
    var session = state.session;
    if (state.es) { state.es.close(); }
    clearTimeout(state.reconnectTimer);
    setConn('Connecting…', '');
    var es = new EventSource(API + '/events');
    state.es = es;

    function on(type, fn) {
      es.addEventListener(type, function (ev) {
        if (session !== state.session || es !== state.es) { return; }
        var data;
        try {
          data = JSON.parse(ev.data);
        } catch (e) {
          return;
        }
        fn(data, ev);
      });
    }

    es.onopen = function () {
      if (es !== state.es) { return; }
      state.backoff = 1000;
      setConn('Live', 'live');
    };
    es.onerror = function () {
      if (es !== state.es) { return; }
      setConn('Reconnecting…', 'down');
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (HTTP error): is the session still valid?
        es.close();
        state.es = null;
        request('GET', API + '/me').then(function (r) {
          if (session !== state.session) { return; }
          if (r.status === 401) {
            endSession('Your session has ended. Please sign in again.');
            return;
          }
          var wait = state.backoff + Math.floor(Math.random() * 500);
          state.backoff = Math.min(state.backoff * 2, 30000);
          state.reconnectTimer = setTimeout(function () {
            if (session === state.session) { connect(); }
          }, wait);
        });
      }
    };

    on('snapshot', applySnapshot);
    on('queue', function (d) { setQueue(d && d.queue); });
    on('chat', function (c) { upsertChat(c); });
    ['message', 'joined', 'ended', 'started'].forEach(function (t) {
      on(t, function (d) { storedEvent(d, t); });
    });
    on('typing', function (d) {
      if (!d || d.from !== 'visitor') { return; }
      var chat = state.chats.get(d.chat_id);
      if (chat) { showVisitorTyping(chat, d.typing === true); }
    });
  }

  function applySnapshot(s) {
    if (!s || typeof s !== 'object') { return; }
    setMe(s.me);
    setQueue(s.queue);
    var present = new Set();
    (Array.isArray(s.chats) ? s.chats : []).forEach(function (c) {
      if (c && typeof c === 'object') {
        present.add(c.chat_id);
        upsertChat(c);
      }
    });
    Array.from(state.chats.keys()).forEach(function (id) {
      if (!present.has(id)) { removeChat(id); }
    });
    renderChatCount();
  }

  function resync() {
    // An event for a chat we don't know yet: fetch the whole state once.
    clearTimeout(state.resyncTimer);
    var session = state.session;
    state.resyncTimer = setTimeout(function () {
      request('GET', API + '/state').then(function (r) {
        if (session !== state.session) { return; }
        if (r.ok && r.data) { applySnapshot(r.data); }
      });
    }, 150);
  }

  /* ---------- queue ---------- */

  function setQueue(q) {
    state.queue = Array.isArray(q) ? q.filter(function (x) { return x && typeof x === 'object'; }) : [];
    renderQueue();
  }

  function renderQueue() {
    while (el.queueList.firstChild) { el.queueList.removeChild(el.queueList.firstChild); }
    state.queue.forEach(function (q) {
      var li = make('li', 'queue-item');
      li.setAttribute('data-chat-id', String(q.chat_id));
      li.appendChild(make('span', 'queue-name', q.name));
      li.appendChild(make('p', 'queue-question', q.question));
      var foot = make('div', 'queue-foot');
      var wait = make('span', 'queue-wait', formatWait(q.waiting_since));
      wait.setAttribute('data-since', String(q.waiting_since));
      var btn = make('button', 'primary accept-btn', 'Accept');
      btn.type = 'button';
      btn.setAttribute('aria-label', 'Accept chat with ' + String(q.name));
      btn.addEventListener('click', function () { accept(q.chat_id, btn); });
      foot.appendChild(wait);
      foot.appendChild(btn);
      li.appendChild(foot);
      el.queueList.appendChild(li);
    });
    var n = state.queue.length;
    setText(el.queueCount, n);
    el.queueCount.classList.toggle('hot', n > 0);
    el.queueEmpty.hidden = n > 0;
    document.title = (n > 0 ? '(' + n + ' waiting) ' : '') + 'Palisade console';
  }

  setInterval(function () {
    var spans = el.queueList.querySelectorAll('.queue-wait');
    for (var i = 0; i < spans.length; i++) {
      setText(spans[i], formatWait(Number(spans[i].getAttribute('data-since'))));
    }
  }, 1000);

  function accept(chatId, btn) {
    btn.disabled = true;
    var session = state.session;
    request('POST', API + '/chats/' + encodeURIComponent(chatId) + '/accept').then(function (r) {
      if (session !== state.session) { return; }
      btn.disabled = false;
      if (r.ok) {
        state.focusChat = chatId;
        state.queue = state.queue.filter(function (q) { return q.chat_id !== chatId; });
        renderQueue();
        var chat = state.chats.get(chatId);
        if (chat) {
          focusChat(chat);
        } else {
          resync();
        }
        return;
      }
      if (r.status === 409) {
        notice('Another operator already took this chat.');
      } else if (r.status === 404) {
        notice('This chat is no longer waiting.');
      } else if (r.status === 401) {
        endSession('Your session has ended. Please sign in again.');
        return;
      } else {
        notice(errorText(r, 'Could not accept the chat'));
      }
      if (r.status === 409 || r.status === 404) {
        state.queue = state.queue.filter(function (q) { return q.chat_id !== chatId; });
        renderQueue();
      }
    });
  }

  /* ---------- chats ---------- */

  function renderChatCount() {
    var n = 0;
    state.chats.forEach(function (c) { if (!c.ended) { n++; } });
    setText(el.chatsCount, n);
    el.chatsEmpty.hidden = state.chats.size > 0;
  }

  function createChat(c) {
    var chat = {
      id: c.chat_id,
      name: '',
      ended: false,
      seen: new Set(),
      typingSent: false,
      typingTimer: null,
      typingShowTimer: null
    };
    var panel = make('section', 'card chat-panel');
    panel.setAttribute('data-chat-id', String(c.chat_id));
    panel.id = 'chat-panel-' + String(c.chat_id).replace(/[^0-9A-Za-z_-]/g, '');

    var head = make('header', 'chat-head');
    var row = make('div', 'chat-head-row');
    var name = make('h3', 'chat-name');
    var badge = make('span', 'state', 'Active');
    row.appendChild(name);
    row.appendChild(badge);
    var email = make('p', 'chat-email');
    var question = make('p', 'chat-question');
    head.appendChild(row);
    head.appendChild(email);
    head.appendChild(question);

    var list = make('ol', 'messages');
    list.setAttribute('aria-live', 'polite');
    var typing = make('p', 'typing');
    typing.setAttribute('aria-live', 'polite');
    var err = make('p', 'error chat-error');
    err.setAttribute('role', 'alert');
    err.hidden = true;

    var form = make('form', 'compose');
    form.noValidate = true;
    var inputId = panel.id + '-input';
    var label = make('label', 'sr-only', 'Message');
    label.htmlFor = inputId;
    var input = make('textarea', 'msg-input');
    input.id = inputId;
    input.rows = 2;
    input.maxLength = 4000;
    input.placeholder = 'Type a reply…';
    var send = make('button', 'primary send-btn', 'Send');
    send.type = 'submit';
    form.appendChild(label);
    form.appendChild(input);
    form.appendChild(send);

    var actions = make('div', 'chat-actions');
    var endBtn = make('button', 'danger end-btn', 'End chat');
    endBtn.type = 'button';
    var closeBtn = make('button', 'secondary dismiss-btn', 'Close');
    closeBtn.type = 'button';
    closeBtn.hidden = true;
    actions.appendChild(endBtn);
    actions.appendChild(closeBtn);

    panel.appendChild(head);
    panel.appendChild(list);
    panel.appendChild(typing);
    panel.appendChild(err);
    panel.appendChild(form);
    panel.appendChild(actions);

    chat.el = {
      panel: panel, name: name, badge: badge, email: email, question: question, list: list,
      typing: typing, err: err, form: form, input: input, send: send, endBtn: endBtn, closeBtn: closeBtn
    };

    input.addEventListener('input', function () { onInput(chat); });
    input.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        sendMessage(chat);
      }
    });
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      sendMessage(chat);
    });
    endBtn.addEventListener('click', function () { endChat(chat); });
    closeBtn.addEventListener('click', function () {
      state.dismissed.add(chat.id);
      removeChat(chat.id);
      renderChatCount();
    });

    state.chats.set(chat.id, chat);
    el.panels.appendChild(panel);
    return chat;
  }

  function removeChat(id) {
    var chat = state.chats.get(id);
    if (!chat) { return; }
    clearTimeout(chat.typingTimer);
    clearTimeout(chat.typingShowTimer);
    if (chat.el.panel.parentNode) { chat.el.panel.parentNode.removeChild(chat.el.panel); }
    state.chats.delete(id);
  }

  function upsertChat(c) {
    if (!c || typeof c !== 'object' || c.chat_id === undefined || c.chat_id === null) { return; }
    if (state.dismissed.has(c.chat_id)) { return; }
    var chat = state.chats.get(c.chat_id) || createChat(c);
    chat.name = typeof c.name === 'string' ? c.name : chat.name;
    setText(chat.el.name, chat.name);
    chat.el.panel.setAttribute('aria-label', 'Chat with ' + chat.name);
    setText(chat.el.email, c.email ? c.email : '');
    chat.el.email.hidden = !c.email;
    setText(chat.el.question, c.question ? c.question : '');
    chat.el.question.hidden = !c.question;
    var events = Array.isArray(c.events) ? c.events.slice() : [];
    events.sort(function (a, b) { return (a && b && typeof a.id === 'number' && typeof b.id === 'number') ? a.id - b.id : 0; });
    events.forEach(function (ev) { addEvent(chat, ev); });
    if (c.state === 'ended') { setEnded(chat); }
    renderChatCount();
    if (state.focusChat === chat.id) { focusChat(chat); }
  }

  function focusChat(chat) {
    state.focusChat = null;
    try {
      chat.el.panel.scrollIntoView({ block: 'nearest' });
      if (!chat.ended) { chat.el.input.focus(); }
    } catch (e) { /* ignore */ }
  }

  function storedEvent(ev, type) {
    if (!ev || typeof ev !== 'object') { return; }
    if (!ev.kind) { ev.kind = type; }
    var chat = state.chats.get(ev.chat_id);
    if (!chat) {
      if (!state.dismissed.has(ev.chat_id)) { resync(); }
      return;
    }
    addEvent(chat, ev);
  }

  function renderMsg(chat, from, author, text, ts) {
    var li = make('li', 'msg ' + (from === 'operator' ? 'from-operator' : 'from-visitor'));
    var meta = make('span', 'msg-meta');
    meta.appendChild(make('span', 'msg-author', author || (from === 'operator' ? 'Operator' : 'Visitor')));
    var t = formatTime(ts);
    if (t) { meta.appendChild(make('time', 'msg-time', ' · ' + t)); }
    li.appendChild(meta);
    li.appendChild(make('p', 'msg-text', text));
    chat.el.list.appendChild(li);
    chat.el.list.scrollTop = chat.el.list.scrollHeight;
    return li;
  }

  function renderSystem(chat, text) {
    var li = make('li', 'msg system', text);
    chat.el.list.appendChild(li);
    chat.el.list.scrollTop = chat.el.list.scrollHeight;
  }

  function addEvent(chat, ev) {
    if (!ev || typeof ev !== 'object' || typeof ev.id !== 'number') { return; }
    if (chat.seen.has(ev.id)) { return; } // never render a stored event twice
    chat.seen.add(ev.id);
    var myName = state.me ? (state.me.display_name || state.me.username) : null;
    switch (ev.kind) {
      case 'started':
        renderMsg(chat, 'visitor', ev.author || chat.name, ev.text, ev.ts);
        break;
      case 'message':
        if (ev.from === 'visitor') { showVisitorTyping(chat, false); }
        renderMsg(chat, ev.from === 'operator' ? 'operator' : 'visitor', ev.author, ev.text, ev.ts);
        break;
      case 'joined':
        renderSystem(chat, (ev.author && ev.author === myName ? 'You (' + ev.author + ')' : (ev.author || 'An operator')) + ' joined the chat');
        break;
      case 'ended':
        renderSystem(chat, ev.from === 'visitor' ? 'The visitor ended the chat' : 'Chat ended by operator');
        setEnded(chat);
        break;
      default:
        break;
    }
  }

  function setEnded(chat) {
    if (chat.ended) { return; }
    chat.ended = true;
    stopTyping(chat, false);
    showVisitorTyping(chat, false);
    chat.el.panel.classList.add('ended');
    setText(chat.el.badge, 'Ended');
    chat.el.badge.classList.add('ended');
    chat.el.form.hidden = true;
    chat.el.endBtn.hidden = true;
    chat.el.closeBtn.hidden = false;
    renderChatCount();
  }

  function showVisitorTyping(chat, on) {
    clearTimeout(chat.typingShowTimer);
    if (on && !chat.ended) {
      setText(chat.el.typing, (chat.name || 'The visitor') + ' is typing…');
      chat.typingShowTimer = setTimeout(function () { setText(chat.el.typing, ''); }, TYPING_SHOW_MS);
    } else {
      setText(chat.el.typing, '');
    }
  }

  function chatPath(chat, what) {
    return API + '/chats/' + encodeURIComponent(chat.id) + '/' + what;
  }

  function sendTyping(chat, on) {
    request('POST', chatPath(chat, 'typing'), { typing: on });
  }

  function stopTyping(chat, send) {
    clearTimeout(chat.typingTimer);
    if (chat.typingSent) {
      chat.typingSent = false;
      if (send !== false) { sendTyping(chat, false); }
    }
  }

  function onInput(chat) {
    if (chat.ended) { return; }
    if (!chat.el.input.value.trim()) {
      stopTyping(chat);
      return;
    }
    if (!chat.typingSent) {
      chat.typingSent = true;
      sendTyping(chat, true);
    }
    clearTimeout(chat.typingTimer);
    chat.typingTimer = setTimeout(function () { stopTyping(chat); }, TYPING_IDLE_MS);
  }

  function sendMessage(chat) {
    var text = chat.el.input.value.trim();
    if (!text || chat.ended) { return; }
    chat.el.input.value = '';
    stopTyping(chat);
    var myName = state.me ? (state.me.display_name || state.me.username) : 'You';
    var li = renderMsg(chat, 'operator', myName, text, Date.now());
    li.classList.add('pending');
    request('POST', chatPath(chat, 'messages'), { text: text }).then(function (r) {
      if (r.ok && r.data && typeof r.data.id === 'number') {
        if (chat.seen.has(r.data.id)) {
          if (li.parentNode) { li.parentNode.removeChild(li); } // the stream was faster
        } else {
          chat.seen.add(r.data.id);
          li.classList.remove('pending');
        }
        showError(chat.el.err, '');
        return;
      }
      li.classList.remove('pending');
      li.classList.add('failed');
      li.appendChild(make('span', 'msg-note', 'Not delivered'));
      showError(chat.el.err, errorText(r, 'Message not delivered'));
      if (!chat.el.input.value) { chat.el.input.value = text; }
      if (r.status === 401) { endSession('Your session has ended. Please sign in again.'); }
    });
  }

  function endChat(chat) {
    if (chat.ended) { return; }
    chat.el.endBtn.disabled = true;
    request('POST', chatPath(chat, 'end')).then(function (r) {
      chat.el.endBtn.disabled = false;
      if (r.ok) {
        if (r.data && typeof r.data.id === 'number') {
          addEvent(chat, { id: r.data.id, chat_id: chat.id, kind: 'ended', from: 'operator', ts: Date.now() });
        }
        if (!chat.ended) {
          renderSystem(chat, 'Chat ended by operator');
          setEnded(chat);
        }
        return;
      }
      showError(chat.el.err, errorText(r, 'Could not end the chat'));
      if (r.status === 401) { endSession('Your session has ended. Please sign in again.'); }
    });
  }

  /* ---------- start ---------- */

  showView('loading');
  request('GET', API + '/me').then(function (r) {
    if (r.ok && r.data) {
      startApp(r.data);
    } else {
      showView('login');
      if (r.status !== 401 && r.status !== 403) {
        showError(el.loginError, r.status === 0 ? 'Cannot reach the server.' : '');
      }
      try { el.username.focus(); } catch (e) { /* ignore */ }
    }
  });
})();
