/*
 * Palisade operator console.
 *
 * Every visitor-supplied string (names, emails, questions, messages, page URLs, titles,
 * referrers, IP addresses, rating comments, offline messages) and every operator-supplied
 * string reaches the DOM through textContent (or an attribute value) only: nothing is
 * ever parsed as markup. The QR code of the two-factor enrolment is shown as an <img>
 * from a data: URL, never inserted as SVG markup.
 * The session is an HttpOnly cookie set by login; every POST/PUT/DELETE is same-origin
 * JSON, so the browser adds the Origin header the server checks.
 * The server enforces every role; the console only hides what a role cannot use.
 */
(function () {
  'use strict';

  var API = '/api/v1/operator';
  var TYPING_IDLE_MS = 3000;
  var TYPING_SHOW_MS = 7000;
  var TEAM_POLL_MS = 5000;
  var LIVE_POLL_MS = 2000;

  function $(id) { return document.getElementById(id); }

  var el = {
    meBox: $('me-box'),
    meName: $('me-name'),
    meRole: $('me-role'),
    conn: $('conn-state'),
    presence: $('presence-select'),
    presenceDot: $('presence-dot'),
    logoutBtn: $('logout-btn'),
    loadingView: $('loading-view'),
    loginView: $('login-view'),
    enrolView: $('enrol-view'),
    appView: $('app-view'),
    loginForm: $('login-form'),
    username: $('login-username'),
    password: $('login-password'),
    auth: $('login-auth'),
    totp: $('login-totp'),
    loginError: $('login-error'),
    loginBtn: $('login-btn'),
    // enrolment
    enrolRequired: $('enrol-required'),
    enrolStart: $('enrol-start'),
    enrolBegin: $('enrol-begin'),
    enrolScan: $('enrol-scan'),
    enrolQr: $('enrol-qr'),
    enrolSecret: $('enrol-secret'),
    enrolForm: $('enrol-form'),
    enrolCode: $('enrol-code'),
    enrolConfirm: $('enrol-confirm'),
    enrolDone: $('enrol-done'),
    recoveryCodes: $('recovery-codes'),
    enrolFinish: $('enrol-finish'),
    enrolError: $('enrol-error'),
    enrolCancel: $('enrol-cancel'),
    enrolLogout: $('enrol-logout'),
    // stats
    statVisitors: $('stat-visitors'),
    statActive: $('stat-active'),
    statWaiting: $('stat-waiting'),
    statLongest: $('stat-longest'),
    statToday: $('stat-today'),
    statMissed: $('stat-missed'),
    statRating: $('stat-rating'),
    statRatingLabel: $('stat-rating-label'),
    // tabs
    tabs: document.querySelectorAll('.tab'),
    tabChatsBadge: $('tab-chats-badge'),
    inboxBadge: $('inbox-badge'),
    notice: $('notice'),
    // work view
    queueCount: $('queue-count'),
    queueEmpty: $('queue-empty'),
    queueList: $('queue-list'),
    teamList: $('team-list'),
    visitorsCount: $('visitors-count'),
    visitorsBody: $('visitors-body'),
    visitorsEmpty: $('visitors-empty'),
    inviteMessage: $('invite-message'),
    chatsCount: $('chats-count'),
    chatsEmpty: $('chats-empty'),
    panels: $('chat-panels'),
    // live view
    liveCount: $('live-count'),
    liveBody: $('live-body'),
    liveEmpty: $('live-empty'),
    monitorEmpty: $('monitor-empty'),
    monitorPanels: $('monitor-panels'),
    // inbox
    inboxEmpty: $('inbox-empty'),
    inboxList: $('inbox-list'),
    // canned
    cannedForm: $('canned-form'),
    cannedFormTitle: $('canned-form-title'),
    cannedShortcut: $('canned-shortcut'),
    cannedTitle: $('canned-title'),
    cannedText: $('canned-text'),
    cannedError: $('canned-error'),
    cannedSave: $('canned-save'),
    cannedCancel: $('canned-cancel'),
    cannedBody: $('canned-body'),
    cannedEmpty: $('canned-empty'),
    // search
    searchForm: $('search-form'),
    sQ: $('s-q'),
    sName: $('s-name'),
    sOperator: $('s-operator'),
    sDepartment: $('s-department'),
    sFrom: $('s-from'),
    sTo: $('s-to'),
    searchBtn: $('search-btn'),
    searchError: $('search-error'),
    searchSummary: $('search-summary'),
    searchTable: $('search-table'),
    searchBody: $('search-body'),
    transcriptView: $('transcript-view'),
    transcriptTitle: $('transcript-title'),
    transcriptMeta: $('transcript-meta'),
    transcriptEvents: $('transcript-events'),
    transcriptExtra: $('transcript-extra'),
    transcriptClose: $('transcript-close'),
    // account
    acctName: $('acct-name'),
    acctUser: $('acct-user'),
    acctRole: $('acct-role'),
    acctDepartments: $('acct-departments'),
    acctTotp: $('acct-totp'),
    totpEnable: $('totp-enable')
  };

  var state = {
    me: null,
    view: 'work',
    queue: [],
    chats: new Map(),      // chat_id -> my chat panel
    monitors: new Map(),   // chat_id -> monitor panel
    monitoring: new Set(), // chat ids this supervisor monitors
    dismissed: new Set(),  // ended chats the operator closed locally
    visitors: [],
    visitorsAt: 0,         // when the list arrived (on-site time ticks from there)
    visitorRows: new Map(),
    invites: new Map(),    // visitor_id -> {status, invite_id}
    stats: null,
    inboxUnread: 0,
    canned: [],
    cannedEdit: null,
    operators: [],
    departments: [],
    categories: null,      // wrap-up categories, when the server offers a list
    live: [],
    es: null,
    backoff: 1000,
    reconnectTimer: null,
    resyncTimer: null,
    noticeTimer: null,
    teamTimer: null,
    liveTimer: null,
    focusChat: null,
    enrolForced: false,
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
    if (text !== undefined && text !== null) { setText(n, text); }
    return n;
  }

  function button(className, text, onClick) {
    var b = make('button', className, text);
    b.type = 'button';
    if (onClick) { b.addEventListener('click', onClick); }
    return b;
  }

  function clear(node) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
  }

  function str(v) {
    return typeof v === 'string' ? v : (typeof v === 'number' ? String(v) : '');
  }

  function isSup() {
    return !!(state.me && (state.me.role === 'supervisor' || state.me.role === 'admin'));
  }

  function isMe(operator) {
    if (!state.me || operator === undefined || operator === null) { return false; }
    var o = typeof operator === 'object' ? (operator.username || operator.display_name) : operator;
    return o === state.me.username || (!!state.me.display_name && o === state.me.display_name);
  }

  function showView(name) {
    el.loadingView.hidden = name !== 'loading';
    el.loginView.hidden = name !== 'login';
    el.enrolView.hidden = name !== 'enrol';
    el.appView.hidden = name !== 'app';
    el.meBox.hidden = !(name === 'app' || name === 'enrol');
  }

  function request(method, path, body) {
    var init = {
      method: method,
      headers: { 'Accept': 'application/json' },
      credentials: 'same-origin',
      cache: 'no-store'
    };
    if (method === 'POST' || method === 'PUT') {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    return fetch(path, init).then(function (res) {
      var ct = res.headers.get('Content-Type') || '';
      var parse = ct.indexOf('application/json') !== -1 ? res.json().catch(function () { return null; }) : Promise.resolve(null);
      return parse.then(function (data) {
        var r = { status: res.status, ok: res.ok, data: data, res: res };
        if (res.status === 403 && data && data.enrol === true && state.me) {
          showEnrol(true);
        }
        return r;
      });
    }, function () {
      return { status: 0, ok: false, data: null, res: null };
    });
  }

  function errorText(r, fallback) {
    if (r.status === 0) { return 'Cannot reach the server.'; }
    if (r.status === 413) { return 'That is too long.'; }
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

  function formatDateTime(ts) {
    if (typeof ts !== 'number') { return ''; }
    try {
      return new Date(ts).toLocaleString([], { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
    } catch (e) {
      return '';
    }
  }

  function formatDuration(secs) {
    if (typeof secs !== 'number' || !isFinite(secs)) { return '–'; }
    var s = Math.max(0, Math.floor(secs));
    if (s < 60) { return s + ' s'; }
    var m = Math.floor(s / 60);
    if (m < 60) { return m + ' min ' + String(s % 60).padStart(2, '0') + ' s'; }
    return Math.floor(m / 60) + ' h ' + String(m % 60).padStart(2, '0') + ' min';
  }

  function formatWait(since) {
    if (typeof since !== 'number') { return ''; }
    return 'waiting ' + formatDuration((Date.now() - since) / 1000);
  }

  function notice(text) {
    showError(el.notice, text);
    clearTimeout(state.noticeTimer);
    if (text) {
      state.noticeTimer = setTimeout(function () { showError(el.notice, ''); }, 8000);
    }
  }

  function chatUrl(id, what) {
    return API + '/chats/' + encodeURIComponent(id) + (what ? '/' + what : '');
  }

  function pageVisible() {
    return document.visibilityState !== 'hidden';
  }

  /* ---------- login / session ---------- */

  el.loginForm.addEventListener('submit', function (e) {
    e.preventDefault();
    var body = {
      username: el.username.value.trim(),
      password: el.password.value,
      auth_string: el.auth.value
    };
    var code = el.totp.value.replace(/\s+/g, '');
    if (code) { body.totp = code; }
    if (!body.username || !body.password || !body.auth_string) {
      showError(el.loginError, 'Please fill in username, password and authentication string.');
      return;
    }
    showError(el.loginError, '');
    el.loginBtn.disabled = true;
    request('POST', API + '/login', body).then(function (r) {
      el.loginBtn.disabled = false;
      if (r.ok) {
        el.password.value = '';
        el.auth.value = '';
        el.totp.value = '';
        startApp(r.data && typeof r.data === 'object' ? r.data : { username: body.username });
        return;
      }
      if (r.status === 401) {
        showError(el.loginError, 'Invalid credentials');
        el.auth.value = '';
        el.password.value = '';
        el.totp.value = '';
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

  function logout() {
    el.logoutBtn.disabled = true;
    request('POST', API + '/logout').then(function () {
      el.logoutBtn.disabled = false;
      endSession('');
    });
  }

  el.logoutBtn.addEventListener('click', logout);
  el.enrolLogout.addEventListener('click', logout);

  function stopTimers() {
    clearTimeout(state.reconnectTimer);
    clearTimeout(state.resyncTimer);
    clearInterval(state.teamTimer);
    clearInterval(state.liveTimer);
    state.teamTimer = null;
    state.liveTimer = null;
  }

  function endSession(message) {
    state.session++;
    if (state.es) { state.es.close(); state.es = null; }
    stopTimers();
    state.me = null;
    state.view = 'work';
    state.enrolForced = false;
    state.queue = [];
    state.chats.forEach(function (c) { clearChatTimers(c); });
    state.monitors.forEach(function (c) { clearChatTimers(c); });
    state.chats.clear();
    state.monitors.clear();
    state.monitoring.clear();
    state.dismissed.clear();
    state.visitors = [];
    state.invites.clear();
    state.visitorRows.clear();
    state.categories = null;
    clear(el.panels);
    clear(el.monitorPanels);
    clear(el.visitorsBody);
    clear(el.inboxList);
    clear(el.searchBody);
    el.searchTable.hidden = true;
    el.transcriptView.hidden = true;
    renderQueue();
    renderChatCount();
    renderVisitors();
    showView('login');
    showError(el.loginError, message);
    document.title = 'Palisade console';
    try { el.username.focus(); } catch (e) { /* ignore */ }
  }

  function setMe(me) {
    if (!me || typeof me !== 'object') { return; }
    state.me = Object.assign({}, state.me || {}, me);
    me = state.me;
    setText(el.meName, me.display_name || me.username || '');
    setText(el.meRole, me.role || '');
    el.meRole.hidden = !me.role;
    var sup = isSup();
    var supOnly = document.querySelectorAll('.sup-only');
    for (var i = 0; i < supOnly.length; i++) { supOnly[i].hidden = !sup; }
    if (!sup && state.view === 'live') { selectView('work'); }
    if (me.presence === 'online' || me.presence === 'away') {
      el.presence.value = me.presence;
    }
    el.presenceDot.className = 'pdot ' + (me.presence || 'offline');
    var cats = findCategories(me);
    if (cats) { state.categories = cats; }
    if (Array.isArray(me.all_departments)) { addDepartments(me.all_departments); }
    if (Array.isArray(me.departments)) { addDepartments(me.departments); }
    renderAccount();
    renderCannedTable();
  }

  function startApp(me) {
    state.session++;
    setMe(me);
    if (state.me && state.me.totp_required === true && state.me.totp_enabled !== true) {
      showEnrol(true);
      return;
    }
    state.enrolForced = false;
    showView('app');
    selectView(state.view || 'work');
    renderQueue();
    renderChatCount();
    renderVisitors();
    connect();
    loadOperators();
    loadCanned();
    clearInterval(state.teamTimer);
    var session = state.session;
    state.teamTimer = setInterval(function () {
      if (session === state.session && pageVisible()) { loadOperators(); }
    }, TEAM_POLL_MS);
  }

  /* ---------- tabs ---------- */

  function selectView(name) {
    if (name === 'live' && !isSup()) { name = 'work'; }
    state.view = name;
    for (var i = 0; i < el.tabs.length; i++) {
      var t = el.tabs[i];
      var on = t.getAttribute('data-view') === name;
      t.setAttribute('aria-selected', on ? 'true' : 'false');
      t.classList.toggle('active', on);
    }
    ['work', 'live', 'inbox', 'canned', 'search', 'account'].forEach(function (v) {
      $('view-' + v).hidden = v !== name;
    });
    clearInterval(state.liveTimer);
    state.liveTimer = null;
    if (name === 'live') {
      loadLive();
      var session = state.session;
      state.liveTimer = setInterval(function () {
        if (session === state.session && state.view === 'live' && pageVisible()) { loadLive(); }
      }, LIVE_POLL_MS);
    } else if (name === 'inbox') {
      loadInbox();
    } else if (name === 'canned') {
      loadCanned();
    } else if (name === 'search') {
      fillSearchOptions();
    } else if (name === 'work') {
      state.chats.forEach(function (c) { markRead(c); });
    }
  }

  for (var ti = 0; ti < el.tabs.length; ti++) {
    el.tabs[ti].addEventListener('click', function (e) {
      selectView(e.currentTarget.getAttribute('data-view'));
    });
  }

  document.addEventListener('visibilitychange', function () {
    if (pageVisible() && state.view === 'work') {
      state.chats.forEach(function (c) { markRead(c); });
    }
  });

  /* ---------- presence ---------- */

  el.presence.addEventListener('change', function () {
    var value = el.presence.value;
    el.presence.disabled = true;
    request('POST', API + '/presence', { presence: value }).then(function (r) {
      el.presence.disabled = false;
      if (r.ok) {
        if (state.me) { state.me.presence = value; }
        el.presenceDot.className = 'pdot ' + value;
        notice(value === 'away' ? 'You are away: no new chats are assigned to you.' : 'You are online.');
        loadOperators();
      } else {
        el.presence.value = state.me && state.me.presence === 'away' ? 'away' : 'online';
        notice(errorText(r, 'Could not change your status'));
      }
    });
  });

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
          if (r.ok && r.data && r.data.totp_required === true && r.data.totp_enabled !== true) {
            setMe(r.data);
            showEnrol(true);
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
    on('chat', function (c) { onChatObject(c); });
    on('chat_removed', function (d) { onChatRemoved(d); });
    ['message', 'joined', 'requeued', 'ended', 'started', 'whisper', 'transfer', 'wrapup', 'rating'].forEach(function (t) {
      on(t, function (d) { storedEvent(d, t); });
    });
    on('typing', function (d) {
      if (!d || d.from !== 'visitor') { return; }
      var chat = state.chats.get(d.chat_id) || state.monitors.get(d.chat_id);
      if (chat) { showVisitorTyping(chat, d.typing === true); }
    });
    on('receipt', function (d) {
      if (!d) { return; }
      var chat = state.chats.get(d.chat_id) || state.monitors.get(d.chat_id);
      if (chat) { applyReceipt(chat, d); }
    });
    on('visitors', function (d) { setVisitors(d && d.visitors); });
    on('invite', function (d) { onInvite(d); });
    on('stats', function (d) { setStats(d); });
    on('inbox', function (d) {
      if (d && typeof d.unread === 'number') { setInboxUnread(d.unread); }
      if (state.view === 'inbox') { loadInbox(); }
    });
  }

  function applySnapshot(s) {
    if (!s || typeof s !== 'object') { return; }
    setMe(s.me);
    var cats = findCategories(s);
    if (cats) { state.categories = cats; }
    if (Array.isArray(s.departments)) { addDepartments(s.departments); }
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
    var watched = new Set();
    (Array.isArray(s.monitoring) ? s.monitoring : []).forEach(function (c) {
      if (c && typeof c === 'object') {
        watched.add(c.chat_id);
        state.monitoring.add(c.chat_id);
        upsertMonitor(c);
      }
    });
    Array.from(state.monitors.keys()).forEach(function (id) {
      if (!watched.has(id)) { removeMonitor(id); }
    });
    state.monitoring = watched;
    if (Array.isArray(s.visitors)) { setVisitors(s.visitors); }
    if (s.stats) { setStats(s.stats); }
    if (typeof s.inbox_unread === 'number') { setInboxUnread(s.inbox_unread); }
    renderChatCount();
    loadOperators(); // our own presence changed with this stream
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

  function findCategories(o) {
    if (!o || typeof o !== 'object') { return null; }
    var cands = [o.wrapup_categories, o.categories, o.wrapup && o.wrapup.categories, o.policy && o.policy.wrapup_categories];
    for (var i = 0; i < cands.length; i++) {
      var c = cands[i];
      if (Array.isArray(c) && c.length) {
        var list = c.map(function (x) { return typeof x === 'string' ? x : (x && typeof x.name === 'string' ? x.name : null); })
          .filter(function (x) { return x; });
        if (list.length) { return list; }
      }
    }
    return null;
  }

  /* ---------- stats ---------- */

  function num(v) {
    return typeof v === 'number' && isFinite(v) ? v : null;
  }

  function setStats(s) {
    if (!s || typeof s !== 'object') { return; }
    state.stats = s;
    var show = function (node, v) { setText(node, v === null ? '–' : v); };
    show(el.statVisitors, num(s.visitors_online));
    show(el.statActive, num(s.chats_active));
    show(el.statWaiting, num(s.chats_waiting));
    var lw = num(s.longest_wait_secs);
    setText(el.statLongest, lw === null ? '–' : formatDuration(lw));
    show(el.statToday, num(s.chats_today));
    show(el.statMissed, num(s.missed_today));
    var avg = num(s.average_rating);
    var count = num(s.ratings_count);
    setText(el.statRating, avg === null || count === 0 ? '–' : avg.toFixed(1) + ' ★');
    setText(el.statRatingLabel, 'Average rating' + (count ? ' (' + count + ')' : ''));
    el.statWaiting.parentNode.classList.toggle('hot', (num(s.chats_waiting) || 0) > 0);
  }

  /* ---------- queue ---------- */

  function setQueue(q) {
    state.queue = Array.isArray(q) ? q.filter(function (x) { return x && typeof x === 'object'; }) : [];
    state.queue.forEach(function (x) { if (x.department) { addDepartments([x.department]); } });
    renderQueue();
    renderVisitors();
  }

  function renderQueue() {
    clear(el.queueList);
    state.queue.forEach(function (q) {
      var li = make('li', 'queue-item');
      li.setAttribute('data-chat-id', String(q.chat_id));
      var top = make('div', 'queue-top');
      top.appendChild(make('span', 'queue-name', q.name));
      if (q.department) { top.appendChild(make('span', 'tag', q.department)); }
      li.appendChild(top);
      li.appendChild(make('p', 'queue-question', q.question));
      var foot = make('div', 'queue-foot');
      var wait = make('span', 'queue-wait', formatWait(q.waiting_since));
      wait.setAttribute('data-since', String(q.waiting_since));
      var btn = button('primary accept-btn', 'Accept');
      btn.setAttribute('aria-label', 'Accept chat with ' + str(q.name));
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

  function accept(chatId, btn) {
    btn.disabled = true;
    var session = state.session;
    request('POST', chatUrl(chatId, 'accept')).then(function (r) {
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
        notice(r.data && typeof r.data.error === 'string' ? r.data.error : 'Another operator already took this chat.');
      } else if (r.status === 404) {
        notice('This chat is no longer waiting.');
      } else if (r.status === 401) {
        endSession('Your session has ended. Please sign in again.');
        return;
      } else {
        notice(errorText(r, 'Could not accept the chat'));
      }
      if (r.status === 404) {
        state.queue = state.queue.filter(function (q) { return q.chat_id !== chatId; });
        renderQueue();
      }
    });
  }

  /* ---------- team (operators) ---------- */

  function addDepartments(list) {
    (list || []).forEach(function (d) {
      if (typeof d === 'string' && d && state.departments.indexOf(d) === -1) { state.departments.push(d); }
    });
    state.departments.sort();
  }

  function loadOperators() {
    var session = state.session;
    return request('GET', API + '/operators').then(function (r) {
      if (session !== state.session || !r.ok || !r.data || !Array.isArray(r.data.operators)) { return; }
      state.operators = r.data.operators.filter(function (o) { return o && typeof o === 'object' && typeof o.username === 'string'; });
      state.operators.forEach(function (o) { addDepartments(o.departments); });
      renderTeam();
    });
  }

  function renderTeam() {
    clear(el.teamList);
    state.operators.forEach(function (o) {
      var li = make('li', 'team-item');
      li.setAttribute('data-username', o.username);
      var p = o.presence === 'online' || o.presence === 'away' ? o.presence : 'offline';
      var dot = make('span', 'pdot ' + p);
      dot.setAttribute('aria-hidden', 'true');
      li.appendChild(dot);
      var name = make('span', 'team-name', (o.display_name || o.username) + (isMe(o.username) ? ' (you)' : ''));
      li.appendChild(name);
      li.appendChild(make('span', 'team-presence', p));
      if (typeof o.chats === 'number') {
        li.appendChild(make('span', 'team-load', o.chats + (typeof o.max_chats === 'number' ? '/' + o.max_chats : '')));
      }
      el.teamList.appendChild(li);
    });
  }

  /* ---------- visitors (who's on) ---------- */

  function setVisitors(list) {
    state.visitors = Array.isArray(list) ? list.filter(function (v) { return v && typeof v === 'object' && v.visitor_id !== undefined; }) : [];
    state.visitorsAt = Date.now();
    renderVisitors();
  }

  // a short label for a user agent (the whole string is in the tooltip); text only
  function browserName(ua) {
    if (!ua) { return ''; }
    var m = /(Edg|OPR|Firefox|Chrome|Safari)\/(\d+)/.exec(ua);
    var os = /Windows|Android|iPhone|iPad|Mac OS X|Linux/.exec(ua);
    if (!m) { return ua.length > 40 ? ua.slice(0, 40) + '…' : ua; }
    var name = { Edg: 'Edge', OPR: 'Opera' }[m[1]] || m[1];
    if (name === 'Safari' && /Version\/(\d+)/.test(ua)) { m[2] = /Version\/(\d+)/.exec(ua)[1]; }
    return name + ' ' + m[2] + (os ? ' · ' + (os[0] === 'Mac OS X' ? 'macOS' : os[0]) : '');
  }

  function visitorStatus(v) {
    if (v.chatting) {
      var queued = v.chat_id !== undefined && v.chat_id !== null &&
        state.queue.some(function (q) { return q.chat_id === v.chat_id; });
      return queued ? { text: 'Waiting', cls: 'waiting' } : { text: 'Chatting', cls: 'chatting' };
    }
    var inv = state.invites.get(String(v.visitor_id));
    var s = inv ? inv.status : null;
    if (!s && (v.invite === 'pending' || v.invite === 'declined')) { s = v.invite; }
    if (s === 'pending') { return { text: 'Invited', cls: 'invited' }; }
    if (s === 'declined') { return { text: 'Declined', cls: 'declined' }; }
    if (s === 'accepted') { return { text: 'Accepted', cls: 'chatting' }; }
    if (s === 'expired') { return { text: 'Invitation expired', cls: '' }; }
    return { text: 'Browsing', cls: '' };
  }

  function onSiteSecs(v) {
    var elapsed = (Date.now() - state.visitorsAt) / 1000;
    if (typeof v.on_site_secs === 'number') { return v.on_site_secs + elapsed; }
    if (typeof v.first_seen === 'number') { return (Date.now() - v.first_seen) / 1000; }
    return null;
  }

  function createVisitorRow(id) {
    var tr = make('tr', 'visitor-row');
    tr.setAttribute('data-visitor-id', id);
    var row = { tr: tr };
    var who = make('td', 'v-who');
    row.ip = make('span', 'v-ip');
    var sub = make('span', 'v-sub');
    row.vid = make('span', 'v-id');
    row.ua = make('span', 'v-ua');
    sub.appendChild(row.vid);
    sub.appendChild(row.ua);
    who.appendChild(row.ip);
    who.appendChild(sub);
    var page = make('td', 'v-page');
    row.title = make('span', 'v-title');
    row.url = make('span', 'v-url');
    page.appendChild(row.title);
    page.appendChild(row.url);
    row.referrer = make('td', 'v-referrer');
    row.pages = make('td', 'v-pages num');
    row.onSite = make('td', 'v-onsite num');
    var statusTd = make('td', 'v-status-cell');
    row.status = make('span', 'v-status');
    statusTd.appendChild(row.status);
    var act = make('td', 'v-action');
    row.invite = button('secondary small invite-btn', 'Invite', function () { invite(id, row); });
    act.appendChild(row.invite);
    [who, page, row.referrer, row.pages, row.onSite, statusTd, act].forEach(function (td) { tr.appendChild(td); });
    return row;
  }

  function renderVisitors() {
    var seen = new Set();
    var body = el.visitorsBody;
    var prev = null;
    state.visitors.forEach(function (v) {
      var id = String(v.visitor_id);
      seen.add(id);
      var row = state.visitorRows.get(id);
      if (!row) {
        row = createVisitorRow(id);
        state.visitorRows.set(id, row);
      }
      row.v = v;
      setText(row.ip, str(v.ip) || 'unknown address');
      setText(row.vid, '#' + id.slice(0, 8));
      setText(row.ua, v.user_agent ? ' · ' + browserName(str(v.user_agent)) : '');
      row.ua.title = str(v.user_agent);
      setText(row.title, str(v.page_title) || '(no title)');
      setText(row.url, str(v.page_url));
      row.url.title = str(v.page_url);
      setText(row.referrer, str(v.referrer) || 'direct');
      row.referrer.title = str(v.referrer);
      setText(row.pages, typeof v.pages_viewed === 'number' ? v.pages_viewed : '');
      setText(row.onSite, formatDuration(onSiteSecs(v)));
      var st = visitorStatus(v);
      setText(row.status, st.text);
      row.status.className = 'v-status ' + st.cls;
      var inv = state.invites.get(id);
      row.invite.disabled = !!v.chatting || (inv && inv.status === 'pending') || row.busy === true;
      row.invite.setAttribute('aria-label', 'Invite visitor ' + (str(v.ip) || id) + ' to chat');
      var next = prev ? prev.nextSibling : body.firstChild;
      if (next !== row.tr) { body.insertBefore(row.tr, next); }
      prev = row.tr;
    });
    state.visitorRows.forEach(function (row, id) {
      if (!seen.has(id)) {
        if (row.tr.parentNode) { row.tr.parentNode.removeChild(row.tr); }
        state.visitorRows.delete(id);
      }
    });
    setText(el.visitorsCount, state.visitors.length);
    el.visitorsEmpty.hidden = state.visitors.length > 0;
  }

  setInterval(function () {
    state.visitorRows.forEach(function (row) {
      if (row.v) { setText(row.onSite, formatDuration(onSiteSecs(row.v))); }
    });
    var spans = el.queueList.querySelectorAll('.queue-wait');
    for (var i = 0; i < spans.length; i++) {
      setText(spans[i], formatWait(Number(spans[i].getAttribute('data-since'))));
    }
    var since = document.querySelectorAll('[data-since-ms]');
    for (var j = 0; j < since.length; j++) {
      setText(since[j], formatDuration((Date.now() - Number(since[j].getAttribute('data-since-ms'))) / 1000));
    }
  }, 1000);

  function invite(id, row) {
    var message = el.inviteMessage.value.trim();
    row.busy = true;
    row.invite.disabled = true;
    var session = state.session;
    request('POST', API + '/visitors/' + encodeURIComponent(id) + '/invite', message ? { message: message } : {}).then(function (r) {
      if (session !== state.session) { return; }
      row.busy = false;
      if (r.ok) {
        var known = state.invites.get(id);
        // an invite event may already have said more than "pending"
        if (!known || known.invite_id !== (r.data && r.data.invite_id)) {
          state.invites.set(id, { status: 'pending', invite_id: r.data ? r.data.invite_id : null });
        }
        notice('Invitation sent.');
      } else {
        notice(errorText(r, 'Could not send the invitation'));
      }
      renderVisitors();
    });
  }

  function onInvite(d) {
    if (!d || d.visitor_id === undefined) { return; }
    var id = String(d.visitor_id);
    state.invites.set(id, { status: d.status, invite_id: d.invite_id });
    if (d.status === 'declined') {
      notice('A visitor declined your invitation.');
    } else if (d.status === 'accepted') {
      notice('A visitor accepted your invitation.');
      if (d.chat_id !== undefined && !state.chats.has(d.chat_id)) { state.focusChat = d.chat_id; }
    }
    renderVisitors();
  }

  /* ---------- chats (mine, monitored, transcripts share the rendering) ---------- */

  function renderChatCount() {
    var n = 0;
    state.chats.forEach(function (c) { if (!c.ended) { n++; } });
    setText(el.chatsCount, n);
    setText(el.tabChatsBadge, n);
    el.chatsEmpty.hidden = state.chats.size > 0;
    el.monitorEmpty.hidden = state.monitors.size > 0;
  }

  function clearChatTimers(chat) {
    clearTimeout(chat.typingTimer);
    clearTimeout(chat.typingShowTimer);
    clearTimeout(chat.readTimer);
  }

  function newChatState(id, mode) {
    return {
      id: id,
      mode: mode,          // 'mine' | 'monitor' | 'transcript'
      name: '',
      ended: false,
      seen: new Set(),
      lastId: 0,
      lastVisitorId: 0,    // highest event from the visitor's side (what a read receipt is about)
      readSent: 0,
      receipt: { delivered: 0, read: 0 },
      typingSent: false,
      typingTimer: null,
      typingShowTimer: null,
      readTimer: null,
      reading: null,       // the read receipt on its way, if any
      leaving: false,      // a transfer of this chat is on its way
      wrapped: false,
      c: null
    };
  }

  function buildHead(chat, badgeText) {
    var head = make('header', 'chat-head');
    var row = make('div', 'chat-head-row');
    var name = make('h3', 'chat-name');
    var badge = make('span', 'state', badgeText);
    row.appendChild(name);
    row.appendChild(badge);
    var tags = make('p', 'chat-tags');
    var dept = make('span', 'tag chat-department');
    dept.hidden = true;
    var op = make('span', 'chat-operator');
    tags.appendChild(dept);
    tags.appendChild(op);
    var email = make('p', 'chat-email');
    var question = make('p', 'chat-question');
    head.appendChild(row);
    head.appendChild(tags);
    head.appendChild(email);
    head.appendChild(question);
    chat.el.name = name;
    chat.el.badge = badge;
    chat.el.dept = dept;
    chat.el.op = op;
    chat.el.email = email;
    chat.el.question = question;
    return head;
  }

  function createChat(c) {
    var chat = newChatState(c.chat_id, 'mine');
    chat.el = {};
    var panel = make('section', 'card chat-panel');
    panel.setAttribute('data-chat-id', String(c.chat_id));
    panel.id = 'chat-panel-' + String(c.chat_id).replace(/[^0-9A-Za-z_-]/g, '');
    chat.el.panel = panel;

    var head = buildHead(chat, 'Active');
    var list = make('ol', 'messages');
    list.setAttribute('aria-live', 'polite');
    var typing = make('p', 'typing');
    typing.setAttribute('aria-live', 'polite');
    var err = make('p', 'error chat-error');
    err.setAttribute('role', 'alert');
    err.hidden = true;
    chat.el.list = list;
    chat.el.typing = typing;
    chat.el.err = err;

    // compose, with canned responses (/shortcut + Tab/Enter, or the picker)
    var form = make('form', 'compose');
    form.noValidate = true;
    var inputId = panel.id + '-input';
    var label = make('label', 'sr-only', 'Message');
    label.htmlFor = inputId;
    var input = make('textarea', 'msg-input');
    input.id = inputId;
    input.rows = 2;
    input.maxLength = 4000;
    input.placeholder = 'Type a reply… (/ for canned responses)';
    input.setAttribute('aria-autocomplete', 'list');
    var suggest = make('ul', 'canned-suggest');
    suggest.setAttribute('role', 'listbox');
    suggest.hidden = true;
    var picker = make('div', 'canned-picker');
    picker.hidden = true;
    var pickerSearch = make('input', 'canned-search');
    pickerSearch.type = 'search';
    pickerSearch.placeholder = 'Search canned responses…';
    pickerSearch.setAttribute('aria-label', 'Search canned responses');
    var pickerList = make('ul', 'canned-pick-list');
    picker.appendChild(pickerSearch);
    picker.appendChild(pickerList);
    var cannedBtn = button('secondary canned-btn', 'Canned');
    cannedBtn.setAttribute('aria-haspopup', 'true');
    var send = make('button', 'primary send-btn', 'Send');
    send.type = 'submit';
    var inputWrap = make('div', 'compose-input');
    inputWrap.appendChild(suggest);
    inputWrap.appendChild(picker);
    inputWrap.appendChild(input);
    form.appendChild(label);
    form.appendChild(inputWrap);
    var btns = make('div', 'compose-buttons');
    btns.appendChild(send);
    btns.appendChild(cannedBtn);
    form.appendChild(btns);
    chat.el.form = form;
    chat.el.input = input;
    chat.el.send = send;
    chat.el.suggest = suggest;
    chat.el.picker = picker;
    chat.el.pickerSearch = pickerSearch;
    chat.el.pickerList = pickerList;

    // transfer
    var transfer = make('form', 'transfer-form');
    transfer.noValidate = true;
    transfer.hidden = true;
    var tSelId = panel.id + '-transfer-to';
    var tLabel = make('label', '', 'Transfer to');
    tLabel.htmlFor = tSelId;
    var tSelect = make('select', 'transfer-target');
    tSelect.id = tSelId;
    var nLabel = make('label', '', 'Note for the next operator (not shown to the visitor)');
    nLabel.htmlFor = panel.id + '-transfer-note';
    var tNote = make('textarea', 'transfer-note');
    tNote.id = panel.id + '-transfer-note';
    tNote.rows = 2;
    tNote.maxLength = 1000;
    var tErr = make('p', 'error');
    tErr.hidden = true;
    var tRow = make('div', 'row-actions');
    var tGo = make('button', 'primary transfer-go', 'Transfer');
    tGo.type = 'submit';
    var tCancel = button('secondary', 'Cancel', function () { transfer.hidden = true; });
    tRow.appendChild(tGo);
    tRow.appendChild(tCancel);
    [tLabel, tSelect, nLabel, tNote, tErr, tRow].forEach(function (n) { transfer.appendChild(n); });
    chat.el.transfer = transfer;
    chat.el.tSelect = tSelect;
    chat.el.tNote = tNote;
    chat.el.tErr = tErr;
    chat.el.tGo = tGo;

    // wrap-up (after the end)
    var wrap = make('form', 'wrapup-form');
    wrap.noValidate = true;
    wrap.hidden = true;
    wrap.appendChild(make('p', 'wrapup-title', 'Wrap-up'));
    var cLabel = make('label', '', 'Category');
    cLabel.htmlFor = panel.id + '-wrap-cat';
    var catHolder = make('div', 'wrapup-cat');
    var wNoteLabel = make('label', '', 'Note');
    wNoteLabel.htmlFor = panel.id + '-wrap-note';
    var wNote = make('textarea', 'wrapup-note');
    wNote.id = panel.id + '-wrap-note';
    wNote.rows = 2;
    wNote.maxLength = 2000;
    var wErr = make('p', 'error');
    wErr.hidden = true;
    var wSave = make('button', 'primary wrapup-save', 'Save wrap-up');
    wSave.type = 'submit';
    [cLabel, catHolder, wNoteLabel, wNote, wErr, wSave].forEach(function (n) { wrap.appendChild(n); });
    var wrapDone = make('p', 'wrapup-done');
    wrapDone.hidden = true;
    var ratingLine = make('p', 'rating-line');
    ratingLine.hidden = true;
    chat.el.wrap = wrap;
    chat.el.catHolder = catHolder;
    chat.el.wNote = wNote;
    chat.el.wErr = wErr;
    chat.el.wSave = wSave;
    chat.el.wrapDone = wrapDone;
    chat.el.ratingLine = ratingLine;

    var actions = make('div', 'chat-actions');
    var transferBtn = button('secondary transfer-btn', 'Transfer');
    var endBtn = button('danger end-btn', 'End chat');
    var closeBtn = button('secondary dismiss-btn', 'Close');
    closeBtn.hidden = true;
    actions.appendChild(transferBtn);
    actions.appendChild(endBtn);
    actions.appendChild(closeBtn);
    chat.el.transferBtn = transferBtn;
    chat.el.endBtn = endBtn;
    chat.el.closeBtn = closeBtn;

    [head, list, typing, err, form, transfer, ratingLine, wrap, wrapDone, actions].forEach(function (n) { panel.appendChild(n); });

    input.addEventListener('input', function () {
      onInput(chat);
      updateSuggest(chat);
    });
    input.addEventListener('keydown', function (e) { onComposeKey(chat, e); });
    input.addEventListener('blur', function () {
      setTimeout(function () { if (document.activeElement !== input) { chat.el.suggest.hidden = true; } }, 150);
    });
    input.addEventListener('focus', function () { markRead(chat); });
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      sendMessage(chat);
    });
    cannedBtn.addEventListener('click', function () { togglePicker(chat); });
    pickerSearch.addEventListener('input', function () { renderPicker(chat); });
    pickerSearch.addEventListener('keydown', function (e) {
      if (e.key === 'Escape') {
        picker.hidden = true;
        input.focus();
      } else if (e.key === 'Enter') {
        e.preventDefault();
        var first = pickerList.querySelector('button');
        if (first) { first.click(); }
      }
    });
    transferBtn.addEventListener('click', function () { openTransfer(chat); });
    transfer.addEventListener('submit', function (e) {
      e.preventDefault();
      doTransfer(chat);
    });
    wrap.addEventListener('submit', function (e) {
      e.preventDefault();
      saveWrapup(chat);
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

  function createMonitor(c) {
    var chat = newChatState(c.chat_id, 'monitor');
    chat.el = {};
    var panel = make('section', 'card chat-panel monitor-panel');
    panel.setAttribute('data-chat-id', String(c.chat_id));
    panel.id = 'monitor-panel-' + String(c.chat_id).replace(/[^0-9A-Za-z_-]/g, '');
    chat.el.panel = panel;
    var head = buildHead(chat, 'Monitoring');
    chat.el.badge.classList.add('monitoring');
    var list = make('ol', 'messages');
    list.setAttribute('aria-live', 'polite');
    var typing = make('p', 'typing');
    var err = make('p', 'error chat-error');
    err.hidden = true;
    chat.el.list = list;
    chat.el.typing = typing;
    chat.el.err = err;
    var form = make('form', 'compose whisper-compose');
    form.noValidate = true;
    var inputId = panel.id + '-whisper';
    var label = make('label', 'sr-only', 'Whisper to the operator');
    label.htmlFor = inputId;
    var input = make('textarea', 'whisper-input');
    input.id = inputId;
    input.rows = 2;
    input.maxLength = 4000;
    input.placeholder = 'Whisper to the operator (the visitor never sees it)…';
    var send = make('button', 'primary whisper-btn', 'Whisper');
    send.type = 'submit';
    form.appendChild(label);
    form.appendChild(input);
    form.appendChild(send);
    chat.el.form = form;
    chat.el.input = input;
    var ratingLine = make('p', 'rating-line');
    ratingLine.hidden = true;
    chat.el.ratingLine = ratingLine;
    var wrapDone = make('p', 'wrapup-done');
    wrapDone.hidden = true;
    chat.el.wrapDone = wrapDone;
    var actions = make('div', 'chat-actions');
    var takeBtn = button('primary takeover-btn', 'Take over', function () { takeover(chat.id, takeBtn); });
    var stopBtn = button('secondary stop-monitor-btn', 'Stop monitoring', function () { stopMonitor(chat.id); });
    actions.appendChild(takeBtn);
    actions.appendChild(stopBtn);
    chat.el.takeBtn = takeBtn;
    [head, list, typing, err, form, ratingLine, wrapDone, actions].forEach(function (n) { panel.appendChild(n); });
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      whisper(chat);
    });
    input.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        whisper(chat);
      }
    });
    state.monitors.set(chat.id, chat);
    el.monitorPanels.appendChild(panel);
    return chat;
  }

  function removeChat(id) {
    var chat = state.chats.get(id);
    if (!chat) { return; }
    clearChatTimers(chat);
    if (chat.el.panel.parentNode) { chat.el.panel.parentNode.removeChild(chat.el.panel); }
    state.chats.delete(id);
    renderChatCount();
  }

  function removeMonitor(id) {
    var chat = state.monitors.get(id);
    if (!chat) { return; }
    clearChatTimers(chat);
    if (chat.el.panel.parentNode) { chat.el.panel.parentNode.removeChild(chat.el.panel); }
    state.monitors.delete(id);
    renderChatCount();
  }

  function fillHead(chat, c) {
    chat.c = c;
    chat.name = typeof c.name === 'string' ? c.name : chat.name;
    setText(chat.el.name, chat.name || 'Visitor');
    chat.el.panel.setAttribute('aria-label', (chat.mode === 'monitor' ? 'Monitoring chat with ' : 'Chat with ') + (chat.name || 'visitor'));
    setText(chat.el.email, c.email ? c.email : '');
    chat.el.email.hidden = !c.email;
    setText(chat.el.question, c.question ? c.question : '');
    chat.el.question.hidden = !c.question;
    setText(chat.el.dept, c.department || '');
    chat.el.dept.hidden = !c.department;
    if (c.department) { addDepartments([c.department]); }
    var opName = '';
    if (c.operator && (chat.mode !== 'mine' || !isMe(c.operator))) {
      opName = 'Operator: ' + operatorLabel(c.operator);
    }
    setText(chat.el.op, opName);
    var events = Array.isArray(c.events) ? c.events.slice() : [];
    events.sort(function (a, b) { return (a && b && typeof a.id === 'number' && typeof b.id === 'number') ? a.id - b.id : 0; });
    events.forEach(function (ev) { addEvent(chat, ev); });
    if (c.state === 'ended') { setEnded(chat); }
    if (c.rating && typeof c.rating === 'object') { showRating(chat, c.rating); }
    if (c.wrapup && typeof c.wrapup === 'object') { showWrapup(chat, c.wrapup); }
    if (c.receipts && typeof c.receipts === 'object') { applyReceipt(chat, c.receipts); }
    var cats = findCategories(c);
    if (cats) { chat.categories = cats; }
  }

  function operatorLabel(op) {
    if (op && typeof op === 'object') { return str(op.display_name || op.username); }
    var s = str(op);
    for (var i = 0; i < state.operators.length; i++) {
      if (state.operators[i].username === s) { return state.operators[i].display_name || s; }
    }
    return s;
  }

  function upsertChat(c) {
    if (!c || typeof c !== 'object' || c.chat_id === undefined || c.chat_id === null) { return; }
    if (state.dismissed.has(c.chat_id)) { return; }
    var chat = state.chats.get(c.chat_id) || createChat(c);
    fillHead(chat, c);
    renderChatCount();
    if (state.focusChat === chat.id) { focusChat(chat); }
    markRead(chat);
  }

  function upsertMonitor(c) {
    if (!c || typeof c !== 'object' || c.chat_id === undefined || c.chat_id === null) { return; }
    var chat = state.monitors.get(c.chat_id) || createMonitor(c);
    fillHead(chat, c);
    renderChatCount();
  }

  function onChatObject(c) {
    if (!c || typeof c !== 'object') { return; }
    var id = c.chat_id;
    // the server says whether this copy is for monitoring; older answers: compare names
    var mine = typeof c.monitoring === 'boolean' ? !c.monitoring : (!c.operator || isMe(c.operator));
    if (!mine && (c.monitoring === true || state.monitoring.has(id))) {
      state.monitoring.add(id);
      upsertMonitor(c);
      return;
    }
    if (mine && c.state !== 'queued') {
      if (state.monitors.has(id)) {
        // taken over: it is ours now
        state.monitoring.delete(id);
        removeMonitor(id);
      }
      upsertChat(c);
      return;
    }
    if (state.chats.has(id)) {
      // no longer ours (requeued / someone else's)
      removeChat(id);
    }
  }

  function onChatRemoved(d) {
    if (!d || d.chat_id === undefined) { return; }
    var chat = state.chats.get(d.chat_id);
    if (chat) {
      notice('The chat with ' + (chat.name || 'a visitor') + ' is no longer yours (transferred or taken over).');
      removeChat(d.chat_id);
    }
    if (state.monitors.has(d.chat_id)) {
      state.monitoring.delete(d.chat_id);
      removeMonitor(d.chat_id);
    }
  }

  function focusChat(chat) {
    state.focusChat = null;
    try {
      if (state.view !== 'work') { selectView('work'); }
      chat.el.panel.scrollIntoView({ block: 'nearest' });
      if (!chat.ended) { chat.el.input.focus(); }
    } catch (e) { /* ignore */ }
  }

  function storedEvent(ev, type) {
    if (!ev || typeof ev !== 'object') { return; }
    if (!ev.kind) { ev.kind = type; }
    var chat = state.chats.get(ev.chat_id);
    var mon = state.monitors.get(ev.chat_id);
    if (!chat && !mon) {
      if (!state.dismissed.has(ev.chat_id)) { resync(); }
      return;
    }
    if (chat) { addEvent(chat, ev); }
    if (mon) { addEvent(mon, ev); }
  }

  function renderMsg(chat, from, author, text, ts, id) {
    var li = make('li', 'msg ' + (from === 'operator' ? 'from-operator' : 'from-visitor'));
    if (typeof id === 'number') { li.setAttribute('data-id', String(id)); }
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

  function renderSystem(chat, text, cls) {
    var li = make('li', 'msg system' + (cls ? ' ' + cls : ''), text);
    chat.el.list.appendChild(li);
    chat.el.list.scrollTop = chat.el.list.scrollHeight;
    return li;
  }

  function renderNote(chat, cls, title, body, ts) {
    var li = make('li', 'msg note ' + cls);
    var meta = make('span', 'msg-meta');
    meta.appendChild(make('span', 'note-title', title));
    var t = formatTime(ts);
    if (t) { meta.appendChild(make('time', 'msg-time', ' · ' + t)); }
    li.appendChild(meta);
    if (body) { li.appendChild(make('p', 'msg-text', body)); }
    chat.el.list.appendChild(li);
    chat.el.list.scrollTop = chat.el.list.scrollHeight;
    return li;
  }

  function addEvent(chat, ev) {
    if (!ev || typeof ev !== 'object' || typeof ev.id !== 'number') { return; }
    if (chat.seen.has(ev.id)) { return; } // never render a stored event twice
    chat.seen.add(ev.id);
    if (ev.id > chat.lastId) { chat.lastId = ev.id; }
    if (ev.from === 'visitor' && ev.id > chat.lastVisitorId) { chat.lastVisitorId = ev.id; }
    var myName = state.me ? (state.me.display_name || state.me.username) : null;
    switch (ev.kind) {
      case 'started':
        renderMsg(chat, 'visitor', ev.author || chat.name, ev.text, ev.ts, ev.id);
        markRead(chat);
        break;
      case 'message':
        if (ev.from === 'visitor') {
          showVisitorTyping(chat, false);
          markRead(chat);
        }
        renderMsg(chat, ev.from === 'operator' ? 'operator' : 'visitor', ev.author, ev.text, ev.ts, ev.id);
        updateReceipt(chat);
        break;
      case 'joined':
        renderSystem(chat, (chat.mode === 'mine' && ev.author && ev.author === myName ? 'You (' + ev.author + ')' : (ev.author || 'An operator')) + ' joined the chat');
        break;
      case 'requeued':
        renderSystem(chat, 'Back in the queue' + (ev.text ? ': ' + ev.text : ''));
        break;
      case 'ended':
        renderSystem(chat, ev.from === 'visitor' ? 'The visitor ended the chat' :
          ev.from === 'system' ? 'The chat was closed' : 'Chat ended by operator');
        setEnded(chat);
        break;
      case 'whisper':
        renderNote(chat, 'whisper', 'Whisper from ' + (ev.author || 'a supervisor') + ' (not shown to the visitor)', ev.text, ev.ts);
        break;
      case 'transfer':
        var to = str(ev.to_operator_name || ev.to_operator || ev.to || ev.to_department);
        var title = 'Transfer' + (ev.author ? ' by ' + ev.author : '') + (to ? ' to ' + operatorLabel(to) : '') +
          ' (operators only)';
        var body = str(ev.note) ? 'Note: ' + str(ev.note) : str(ev.text);
        renderNote(chat, 'transfer', title, body, ev.ts);
        break;
      case 'wrapup':
        var cat = str(ev.category) || (ev.wrapup && str(ev.wrapup.category));
        var wnote = str(ev.note) || (ev.wrapup && str(ev.wrapup.note)) || str(ev.text);
        renderNote(chat, 'wrapup', 'Wrap-up' + (ev.author ? ' by ' + ev.author : '') + (cat ? ': ' + cat : ''), wnote, ev.ts);
        if (chat.mode === 'mine' && cat) { showWrapup(chat, { category: cat, note: wnote }); }
        break;
      case 'rating':
        if (typeof ev.rating === 'number') { showRating(chat, { rating: ev.rating, comment: ev.comment || ev.text }); }
        break;
      default:
        break;
    }
  }

  function showRating(chat, rating) {
    if (!chat.el.ratingLine || typeof rating.rating !== 'number') { return; }
    var text = 'Visitor rating: ' + rating.rating + '/5 ' + '★★★★★'.slice(0, Math.max(0, Math.min(5, rating.rating)));
    if (rating.comment) { text += ' — “' + str(rating.comment) + '”'; }
    setText(chat.el.ratingLine, text);
    chat.el.ratingLine.hidden = false;
  }

  function showWrapup(chat, w) {
    chat.wrapped = true;
    if (!chat.el.wrapDone) { return; }
    setText(chat.el.wrapDone, 'Wrap-up: ' + str(w.category) + (w.note ? ' — ' + str(w.note) : ''));
    chat.el.wrapDone.hidden = false;
    if (chat.el.wrap) { chat.el.wrap.hidden = true; }
  }

  function updateReceipt(chat) {
    var mine = chat.el.list.querySelectorAll('.msg.from-operator[data-id]');
    var last = mine.length ? mine[mine.length - 1] : null;
    var text = '';
    if (last) {
      var id = Number(last.getAttribute('data-id'));
      if (chat.receipt.read >= id) {
        text = 'Read';
      } else if (chat.receipt.delivered >= id) {
        text = 'Delivered';
      }
    }
    var old = chat.el.list.querySelector('.receipt');
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

  function applyReceipt(chat, d) {
    if (typeof d.delivered_up_to === 'number' && d.delivered_up_to > chat.receipt.delivered) { chat.receipt.delivered = d.delivered_up_to; }
    if (typeof d.read_up_to === 'number' && d.read_up_to > chat.receipt.read) { chat.receipt.read = d.read_up_to; }
    if (chat.receipt.read > chat.receipt.delivered) { chat.receipt.delivered = chat.receipt.read; }
    updateReceipt(chat);
  }

  /* POST /read when the chat is on screen and the visitor said something new */
  function markRead(chat) {
    if (chat.mode !== 'mine' || chat.ended || chat.leaving || chat.lastVisitorId <= chat.readSent) { return; }
    if (state.view !== 'work' || !pageVisible()) { return; }
    clearTimeout(chat.readTimer);
    chat.readTimer = setTimeout(function () {
      var upTo = chat.lastId;
      if (chat.lastVisitorId <= chat.readSent || chat.ended || chat.leaving || !state.chats.has(chat.id)) { return; }
      chat.readSent = upTo;
      chat.reading = request('POST', chatUrl(chat.id, 'read'), { up_to: upTo }).then(function (r) {
        if (!r.ok && r.status !== 404 && chat.readSent === upTo) { chat.readSent = 0; }
      });
    }, 200);
  }

  function setEnded(chat) {
    if (chat.ended) { return; }
    chat.ended = true;
    clearTimeout(chat.readTimer);
    if (chat.mode === 'transcript') { return; }
    if (chat.mode === 'mine') { stopTyping(chat, false); }
    showVisitorTyping(chat, false);
    chat.el.panel.classList.add('ended');
    setText(chat.el.badge, 'Ended');
    chat.el.badge.classList.add('ended');
    if (chat.el.form) { chat.el.form.hidden = true; }
    if (chat.mode === 'mine') {
      chat.el.endBtn.hidden = true;
      chat.el.transferBtn.hidden = true;
      chat.el.transfer.hidden = true;
      chat.el.closeBtn.hidden = false;
      if (!chat.wrapped) { openWrapup(chat); }
    } else if (chat.mode === 'monitor') {
      chat.el.takeBtn.hidden = true;
    }
    renderChatCount();
  }

  function showVisitorTyping(chat, on) {
    clearTimeout(chat.typingShowTimer);
    if (!chat.el.typing) { return; }
    if (on && !chat.ended) {
      setText(chat.el.typing, (chat.name || 'The visitor') + ' is typing…');
      chat.typingShowTimer = setTimeout(function () { setText(chat.el.typing, ''); }, TYPING_SHOW_MS);
    } else {
      setText(chat.el.typing, '');
    }
  }

  function sendTyping(chat, on) {
    request('POST', chatUrl(chat.id, 'typing'), { typing: on });
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
    var v = chat.el.input.value.trim();
    if (!v || v.charAt(0) === '/') { // a shortcut being typed is not a reply yet
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
    chat.el.suggest.hidden = true;
    stopTyping(chat);
    var myName = state.me ? (state.me.display_name || state.me.username) : 'You';
    var li = renderMsg(chat, 'operator', myName, text, Date.now());
    li.classList.add('pending');
    request('POST', chatUrl(chat.id, 'messages'), { text: text }).then(function (r) {
      if (r.ok && r.data && typeof r.data.id === 'number') {
        if (chat.seen.has(r.data.id)) {
          if (li.parentNode) { li.parentNode.removeChild(li); } // the stream was faster
        } else {
          chat.seen.add(r.data.id);
          if (r.data.id > chat.lastId) { chat.lastId = r.data.id; }
          li.setAttribute('data-id', String(r.data.id));
          li.classList.remove('pending');
        }
        updateReceipt(chat);
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
    // what is on screen has been read: say so before the chat closes
    clearTimeout(chat.readTimer);
    var flush = chat.lastVisitorId > chat.readSent ?
      request('POST', chatUrl(chat.id, 'read'), { up_to: chat.lastId }) : Promise.resolve();
    chat.readSent = Math.max(chat.readSent, chat.lastId);
    flush.then(function () {
      return request('POST', chatUrl(chat.id, 'end'));
    }).then(function (r) {
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

  /* ---------- canned responses in the composer ---------- */

  function shortcutOf(c) {
    return str(c.shortcut).replace(/^\/+/, '');
  }

  function slashToken(input) {
    var pos = input.selectionStart === null ? input.value.length : input.selectionStart;
    var before = input.value.slice(0, pos);
    var m = /(^|\s)\/([^\s\/]*)$/.exec(before);
    if (!m) { return null; }
    return { start: pos - m[2].length - 1, end: pos, word: m[2] };
  }

  function cannedMatches(word) {
    var w = word.toLowerCase();
    var list = state.canned.filter(function (c) { return shortcutOf(c).toLowerCase().indexOf(w) === 0; });
    list.sort(function (a, b) {
      var ea = shortcutOf(a).toLowerCase() === w ? 0 : 1;
      var eb = shortcutOf(b).toLowerCase() === w ? 0 : 1;
      return ea - eb || shortcutOf(a).length - shortcutOf(b).length;
    });
    return list.slice(0, 8);
  }

  function updateSuggest(chat) {
    var box = chat.el.suggest;
    var tok = slashToken(chat.el.input);
    if (!tok || state.canned.length === 0) {
      box.hidden = true;
      return;
    }
    var list = cannedMatches(tok.word);
    clear(box);
    if (!list.length) {
      box.hidden = true;
      return;
    }
    chat.suggestIndex = 0;
    list.forEach(function (c, i) {
      var li = make('li', 'canned-option' + (i === 0 ? ' active' : ''));
      li.setAttribute('role', 'option');
      li.setAttribute('data-index', String(i));
      li.appendChild(make('span', 'canned-short', '/' + shortcutOf(c)));
      li.appendChild(make('span', 'canned-title-text', str(c.title)));
      li.addEventListener('mousedown', function (e) {
        e.preventDefault(); // keep the focus in the textarea
        expandToken(chat, c);
      });
      box.appendChild(li);
    });
    chat.suggestList = list;
    box.hidden = false;
  }

  function moveSuggest(chat, delta) {
    var items = chat.el.suggest.querySelectorAll('.canned-option');
    if (!items.length) { return; }
    chat.suggestIndex = (chat.suggestIndex + delta + items.length) % items.length;
    for (var i = 0; i < items.length; i++) { items[i].classList.toggle('active', i === chat.suggestIndex); }
  }

  function insertText(input, start, end, text) {
    var v = input.value;
    input.value = v.slice(0, start) + text + v.slice(end);
    var caret = start + text.length;
    try { input.setSelectionRange(caret, caret); } catch (e) { /* ignore */ }
  }

  function expandToken(chat, c) {
    var tok = slashToken(chat.el.input);
    if (!tok) { return; }
    insertText(chat.el.input, tok.start, tok.end, str(c.text));
    chat.el.suggest.hidden = true;
    onInput(chat);
    chat.el.input.focus();
  }

  function onComposeKey(chat, e) {
    var box = chat.el.suggest;
    if (!box.hidden && chat.suggestList && chat.suggestList.length) {
      if (e.key === 'Tab' || (e.key === 'Enter' && !e.shiftKey && !e.isComposing)) {
        e.preventDefault();
        expandToken(chat, chat.suggestList[chat.suggestIndex || 0]);
        return;
      }
      if (e.key === 'ArrowDown') { e.preventDefault(); moveSuggest(chat, 1); return; }
      if (e.key === 'ArrowUp') { e.preventDefault(); moveSuggest(chat, -1); return; }
      if (e.key === 'Escape') { e.preventDefault(); box.hidden = true; return; }
    }
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendMessage(chat);
    }
  }

  function togglePicker(chat) {
    var p = chat.el.picker;
    if (!p.hidden) {
      p.hidden = true;
      return;
    }
    chat.el.suggest.hidden = true;
    chat.el.pickerSearch.value = '';
    renderPicker(chat);
    p.hidden = false;
    loadCanned().then(function () { if (!p.hidden) { renderPicker(chat); } });
    chat.el.pickerSearch.focus();
  }

  function renderPicker(chat) {
    var q = chat.el.pickerSearch.value.trim().toLowerCase();
    var list = state.canned.filter(function (c) {
      return !q || shortcutOf(c).toLowerCase().indexOf(q) !== -1 || str(c.title).toLowerCase().indexOf(q) !== -1 ||
        str(c.text).toLowerCase().indexOf(q) !== -1;
    });
    clear(chat.el.pickerList);
    if (!list.length) {
      chat.el.pickerList.appendChild(make('li', 'muted canned-none', state.canned.length ? 'No match.' : 'No canned responses yet.'));
      return;
    }
    list.slice(0, 30).forEach(function (c) {
      var li = make('li');
      var b = button('canned-pick', null, function () {
        var input = chat.el.input;
        var s = input.selectionStart === null ? input.value.length : input.selectionStart;
        var en = input.selectionEnd === null ? s : input.selectionEnd;
        insertText(input, s, en, str(c.text));
        chat.el.picker.hidden = true;
        onInput(chat);
        input.focus();
      });
      b.appendChild(make('span', 'canned-short', '/' + shortcutOf(c)));
      b.appendChild(make('span', 'canned-title-text', str(c.title)));
      b.appendChild(make('span', 'canned-preview', str(c.text)));
      li.appendChild(b);
      chat.el.pickerList.appendChild(li);
    });
  }

  // a click outside a composer closes its canned-response picker
  document.addEventListener('click', function (e) {
    state.chats.forEach(function (chat) {
      if (!chat.el.picker || chat.el.picker.hidden) { return; }
      var t = e.target;
      if (t && t.closest && (t.closest('.compose-input') === chat.el.picker.parentNode ||
          t === chat.el.form.querySelector('.canned-btn'))) { return; }
      chat.el.picker.hidden = true;
    });
  });

  /* ---------- transfer ---------- */

  function openTransfer(chat) {
    if (!chat.el.transfer.hidden) {
      chat.el.transfer.hidden = true;
      return;
    }
    showError(chat.el.tErr, '');
    fillTransferTargets(chat);
    chat.el.transfer.hidden = false;
    loadOperators().then(function () { fillTransferTargets(chat); });
    chat.el.tSelect.focus();
  }

  function fillTransferTargets(chat) {
    var sel = chat.el.tSelect;
    var keep = sel.value;
    clear(sel);
    var ops = make('optgroup');
    ops.label = 'Operators';
    state.operators.forEach(function (o) {
      if (isMe(o.username)) { return; }
      var p = o.presence === 'online' || o.presence === 'away' ? o.presence : 'offline';
      var load = typeof o.chats === 'number' ? ', ' + o.chats + (typeof o.max_chats === 'number' ? '/' + o.max_chats : '') + ' chats' : '';
      var opt = make('option', '', (o.display_name || o.username) + ' (' + p + load + ')');
      opt.value = 'op:' + o.username;
      opt.disabled = p !== 'online';
      ops.appendChild(opt);
    });
    var deps = make('optgroup');
    deps.label = 'Departments';
    state.departments.forEach(function (d) {
      var opt = make('option', '', d);
      opt.value = 'dep:' + d;
      deps.appendChild(opt);
    });
    if (ops.childNodes.length) { sel.appendChild(ops); }
    if (deps.childNodes.length) { sel.appendChild(deps); }
    if (!sel.options.length) {
      var none = make('option', '', 'No one to transfer to');
      none.value = '';
      sel.appendChild(none);
    }
    if (keep) { sel.value = keep; }
    if (!sel.value || (sel.selectedOptions[0] && sel.selectedOptions[0].disabled)) {
      for (var i = 0; i < sel.options.length; i++) {
        if (!sel.options[i].disabled && sel.options[i].value) { sel.selectedIndex = i; break; }
      }
    }
  }

  function doTransfer(chat) {
    var v = chat.el.tSelect.value;
    if (!v) {
      showError(chat.el.tErr, 'Choose an operator or a department.');
      return;
    }
    var body = {};
    if (v.indexOf('op:') === 0) { body.to_operator = v.slice(3); } else { body.to_department = v.slice(4); }
    var note = chat.el.tNote.value.trim();
    if (note) { body.note = note; }
    chat.el.tGo.disabled = true;
    // No read receipt may overtake the transfer (it would find the chat gone): stop them,
    // and let one already on its way arrive first.
    chat.leaving = true;
    clearTimeout(chat.readTimer);
    Promise.resolve(chat.reading).then(function () {
      return request('POST', chatUrl(chat.id, 'transfer'), body);
    }).then(function (r) {
      chat.el.tGo.disabled = false;
      chat.leaving = false;
      if (r.ok) {
        notice('Chat with ' + (chat.name || 'the visitor') + ' transferred to ' +
          (body.to_operator ? operatorLabel(body.to_operator) : body.to_department) + '.');
        chat.el.tNote.value = '';
        chat.el.transfer.hidden = true;
        removeChat(chat.id);
        return;
      }
      showError(chat.el.tErr, r.status === 409 ?
        (r.data && r.data.error ? r.data.error : 'That operator is offline or already at their maximum of chats.') :
        errorText(r, 'Transfer failed'));
    });
  }

  /* ---------- wrap-up ---------- */

  function openWrapup(chat) {
    var holder = chat.el.catHolder;
    clear(holder);
    var cats = chat.categories || state.categories;
    var id = chat.el.panel.id + '-wrap-cat';
    var input;
    if (cats && cats.length) {
      input = make('select', 'wrapup-category');
      var first = make('option', '', 'Choose…');
      first.value = '';
      input.appendChild(first);
      cats.forEach(function (c) {
        var o = make('option', '', c);
        o.value = c;
        input.appendChild(o);
      });
    } else {
      input = make('input', 'wrapup-category');
      input.type = 'text';
      input.maxLength = 100;
      input.placeholder = 'e.g. Sales question';
    }
    input.id = id;
    holder.appendChild(input);
    chat.el.wCat = input;
    chat.el.wrap.hidden = false;
  }

  function saveWrapup(chat) {
    var category = chat.el.wCat ? chat.el.wCat.value.trim() : '';
    if (!category) {
      showError(chat.el.wErr, 'Choose a category.');
      return;
    }
    var body = { category: category };
    var note = chat.el.wNote.value.trim();
    if (note) { body.note = note; }
    chat.el.wSave.disabled = true;
    request('POST', chatUrl(chat.id, 'wrapup'), body).then(function (r) {
      chat.el.wSave.disabled = false;
      if (r.ok) {
        showError(chat.el.wErr, '');
        showWrapup(chat, body);
        return;
      }
      showError(chat.el.wErr, errorText(r, 'Wrap-up not saved'));
    });
  }

  /* ---------- supervisors: live chats, monitor, whisper, take over ---------- */

  function loadLive() {
    var session = state.session;
    request('GET', API + '/live').then(function (r) {
      if (session !== state.session || !r.ok || !r.data || !Array.isArray(r.data.chats)) { return; }
      state.live = r.data.chats.filter(function (c) { return c && typeof c === 'object'; });
      renderLive();
    });
  }

  function renderLive() {
    clear(el.liveBody);
    state.live.forEach(function (c) {
      var tr = make('tr', 'live-row');
      tr.setAttribute('data-chat-id', String(c.chat_id));
      tr.appendChild(make('td', 'live-name', c.name));
      tr.appendChild(make('td', 'live-operator', c.operator ? operatorLabel(c.operator) : '—'));
      tr.appendChild(make('td', '', c.department || '—'));
      tr.appendChild(make('td', 'live-state', c.state));
      var known = typeof c.since === 'number' && c.since > 0;
      var since = make('td', 'num', known ? formatDuration((Date.now() - c.since) / 1000) : '—');
      if (known) { since.setAttribute('data-since-ms', String(c.since)); }
      tr.appendChild(since);
      var act = make('td', 'live-actions');
      var watching = state.monitoring.has(c.chat_id);
      var mine = isMe(c.operator);
      var mon = button('secondary small monitor-btn', watching ? 'Monitoring' : 'Monitor', function () { startMonitor(c.chat_id, mon); });
      mon.disabled = watching || mine || c.state !== 'active';
      var take = button('secondary small takeover-btn', 'Take over', function () { takeover(c.chat_id, take); });
      take.disabled = mine || c.state === 'ended';
      act.appendChild(mon);
      act.appendChild(take);
      tr.appendChild(act);
      el.liveBody.appendChild(tr);
    });
    setText(el.liveCount, state.live.length);
    el.liveEmpty.hidden = state.live.length > 0;
  }

  function startMonitor(id, btn) {
    btn.disabled = true;
    request('POST', chatUrl(id, 'monitor'), { on: true }).then(function (r) {
      if (!r.ok) {
        btn.disabled = false;
        notice(errorText(r, 'Could not monitor this chat'));
        return;
      }
      state.monitoring.add(id);
      setText(btn, 'Monitoring');
      // the chat object arrives on the stream; if it does not, ask once
      setTimeout(function () {
        if (state.monitoring.has(id) && !state.monitors.has(id)) {
          request('GET', chatUrl(id, 'transcript')).then(function (t) {
            if (t.ok && t.data && state.monitoring.has(id) && !state.monitors.has(id)) { upsertMonitor(t.data); }
          });
        }
      }, 1500);
    });
  }

  function stopMonitor(id) {
    request('POST', chatUrl(id, 'monitor'), { on: false }).then(function () {
      state.monitoring.delete(id);
      removeMonitor(id);
      if (state.view === 'live') { loadLive(); }
    });
  }

  function takeover(id, btn) {
    if (btn) { btn.disabled = true; }
    request('POST', chatUrl(id, 'takeover')).then(function (r) {
      if (btn) { btn.disabled = false; }
      if (!r.ok) {
        notice(errorText(r, 'Could not take over the chat'));
        return;
      }
      state.monitoring.delete(id);
      removeMonitor(id);
      state.focusChat = id;
      notice('You took over the chat.');
      selectView('work');
      if (state.chats.has(id)) {
        focusChat(state.chats.get(id));
      } else {
        resync();
      }
    });
  }

  function whisper(chat) {
    var text = chat.el.input.value.trim();
    if (!text || chat.ended) { return; }
    chat.el.input.value = '';
    request('POST', chatUrl(chat.id, 'whisper'), { text: text }).then(function (r) {
      if (r.ok) {
        showError(chat.el.err, '');
        return;
      }
      chat.el.input.value = text;
      showError(chat.el.err, errorText(r, 'Whisper not sent'));
    });
  }

  /* ---------- inbox ---------- */

  function setInboxUnread(n) {
    state.inboxUnread = n;
    setText(el.inboxBadge, n);
    el.inboxBadge.hidden = !(n > 0);
    el.inboxBadge.classList.toggle('hot', n > 0);
  }

  function loadInbox() {
    var session = state.session;
    request('GET', API + '/inbox').then(function (r) {
      if (session !== state.session || !r.ok || !r.data || !Array.isArray(r.data.messages)) { return; }
      renderInbox(r.data.messages.filter(function (m) { return m && typeof m === 'object'; }));
    });
  }

  function renderInbox(messages) {
    clear(el.inboxList);
    var unread = 0;
    messages.forEach(function (m) {
      if (!m.read) { unread++; }
      var li = make('li', 'card inbox-item' + (m.read ? '' : ' unread'));
      li.setAttribute('data-message-id', String(m.id));
      var head = make('div', 'inbox-head');
      head.appendChild(make('strong', 'inbox-name', m.name));
      head.appendChild(make('span', 'inbox-email', m.email));
      if (m.department) { head.appendChild(make('span', 'tag', m.department)); }
      head.appendChild(make('span', 'inbox-time muted', formatDateTime(m.ts)));
      li.appendChild(head);
      li.appendChild(make('p', 'inbox-message', m.message));
      var actions = make('div', 'row-actions');
      li.appendChild(actions);
      if (typeof m.email === 'string' && m.email.indexOf('@') > 0) {
        // mailto: + the encoded address: never a script URL, whatever the visitor typed
        var reply = make('a', 'secondary small reply-link', 'Reply by email');
        reply.href = 'mailto:' + encodeURIComponent(m.email) + '?subject=' + encodeURIComponent('Your message to us');
        reply.rel = 'noopener';
        actions.appendChild(reply);
      }
      if (!m.read) {
        var b = button('secondary small mark-read-btn', 'Mark as read', function () {
          b.disabled = true;
          request('POST', API + '/inbox/' + encodeURIComponent(m.id) + '/read').then(function (r) {
            if (r.ok) {
              m.read = true;
              li.classList.remove('unread');
              if (b.parentNode) { b.parentNode.removeChild(b); }
              setInboxUnread(Math.max(0, state.inboxUnread - 1));
            } else {
              b.disabled = false;
              notice(errorText(r, 'Could not mark it read'));
            }
          });
        });
        actions.appendChild(b);
      }
      el.inboxList.appendChild(li);
    });
    el.inboxEmpty.hidden = messages.length > 0;
    setInboxUnread(unread);
  }

  /* ---------- canned responses (list for all, edits for supervisors/admins) ---------- */

  function loadCanned() {
    var session = state.session;
    return request('GET', API + '/canned').then(function (r) {
      if (session !== state.session || !r.ok || !r.data || !Array.isArray(r.data.canned)) { return; }
      state.canned = r.data.canned.filter(function (c) { return c && typeof c === 'object'; });
      renderCannedTable();
    });
  }

  function renderCannedTable() {
    clear(el.cannedBody);
    var sup = isSup();
    state.canned.forEach(function (c) {
      var tr = make('tr', 'canned-row');
      tr.setAttribute('data-canned-id', String(c.id));
      tr.appendChild(make('td', 'canned-short', '/' + shortcutOf(c)));
      tr.appendChild(make('td', 'canned-title-cell', c.title));
      tr.appendChild(make('td', 'canned-text-cell', c.text));
      if (sup) {
        var act = make('td', 'canned-actions');
        act.appendChild(button('secondary small canned-edit', 'Edit', function () { editCanned(c); }));
        var del = button('danger small canned-delete', 'Delete', function () {
          if (del.getAttribute('data-confirm') !== '1') {
            del.setAttribute('data-confirm', '1');
            setText(del, 'Confirm delete');
            setTimeout(function () { del.removeAttribute('data-confirm'); setText(del, 'Delete'); }, 4000);
            return;
          }
          del.disabled = true;
          request('DELETE', API + '/canned/' + encodeURIComponent(c.id)).then(function (r) {
            if (!r.ok) {
              del.disabled = false;
              notice(errorText(r, 'Could not delete'));
            }
            loadCanned();
          });
        });
        act.appendChild(del);
        tr.appendChild(act);
      }
      el.cannedBody.appendChild(tr);
    });
    el.cannedEmpty.hidden = state.canned.length > 0;
  }

  function resetCannedForm() {
    state.cannedEdit = null;
    el.cannedShortcut.value = '';
    el.cannedTitle.value = '';
    el.cannedText.value = '';
    setText(el.cannedFormTitle, 'Add a canned response');
    setText(el.cannedSave, 'Add');
    el.cannedCancel.hidden = true;
    showError(el.cannedError, '');
  }

  function editCanned(c) {
    state.cannedEdit = c.id;
    el.cannedShortcut.value = shortcutOf(c);
    el.cannedTitle.value = str(c.title);
    el.cannedText.value = str(c.text);
    setText(el.cannedFormTitle, 'Edit /' + shortcutOf(c));
    setText(el.cannedSave, 'Save');
    el.cannedCancel.hidden = false;
    el.cannedText.focus();
  }

  el.cannedCancel.addEventListener('click', resetCannedForm);

  el.cannedForm.addEventListener('submit', function (e) {
    e.preventDefault();
    var body = {
      shortcut: el.cannedShortcut.value.trim().replace(/^\/+/, ''),
      title: el.cannedTitle.value.trim(),
      text: el.cannedText.value.trim()
    };
    if (!body.shortcut || /\s/.test(body.shortcut)) {
      showError(el.cannedError, 'The shortcut is one word, without spaces.');
      return;
    }
    if (!body.title) { body.title = body.shortcut; }
    if (!body.text) {
      showError(el.cannedError, 'Enter the text to insert.');
      return;
    }
    el.cannedSave.disabled = true;
    var editing = state.cannedEdit;
    var req = editing === null ?
      request('POST', API + '/canned', body) :
      request('PUT', API + '/canned/' + encodeURIComponent(editing), body);
    req.then(function (r) {
      el.cannedSave.disabled = false;
      if (r.ok) {
        resetCannedForm();
        notice(editing === null ? 'Canned response added.' : 'Canned response saved.');
        loadCanned();
        return;
      }
      showError(el.cannedError, errorText(r, 'Not saved'));
    });
  });

  /* ---------- transcript search ---------- */

  function fillSelect(sel, values) {
    var keep = sel.value;
    while (sel.options.length > 1) { sel.remove(1); }
    values.forEach(function (v) {
      var o = make('option', '', v.label);
      o.value = v.value;
      sel.appendChild(o);
    });
    sel.value = keep;
  }

  function fillSearchOptions() {
    var fill = function () {
      fillSelect(el.sOperator, state.operators.map(function (o) {
        return { value: o.username, label: (o.display_name || o.username) + (o.display_name ? ' (' + o.username + ')' : '') };
      }));
      fillSelect(el.sDepartment, state.departments.map(function (d) { return { value: d, label: d }; }));
    };
    fill();
    loadOperators().then(fill);
  }

  function dayStart(value) {
    var d = new Date(value + 'T00:00:00');
    return isNaN(d.getTime()) ? null : d.getTime();
  }

  el.searchForm.addEventListener('submit', function (e) {
    e.preventDefault();
    var params = new URLSearchParams();
    var q = el.sQ.value.trim();
    var name = el.sName.value.trim();
    if (q) { params.set('q', q); }
    if (name) { params.set('name', name); }
    if (el.sOperator.value) { params.set('operator', el.sOperator.value); }
    if (el.sDepartment.value) { params.set('department', el.sDepartment.value); }
    if (el.sFrom.value) {
      var from = dayStart(el.sFrom.value);
      if (from !== null) { params.set('from', String(from)); }
    }
    if (el.sTo.value) {
      var to = dayStart(el.sTo.value);
      if (to !== null) { params.set('to', String(to + 86400000 - 1)); }
    }
    showError(el.searchError, '');
    el.searchBtn.disabled = true;
    var session = state.session;
    request('GET', API + '/search?' + params.toString()).then(function (r) {
      el.searchBtn.disabled = false;
      if (session !== state.session) { return; }
      if (!r.ok || !r.data || !Array.isArray(r.data.results)) {
        showError(el.searchError, errorText(r, 'Search failed'));
        return;
      }
      renderResults(r.data.results.filter(function (x) { return x && typeof x === 'object'; }));
    });
  });

  function renderResults(results) {
    clear(el.searchBody);
    results.forEach(function (res) {
      var tr = make('tr', 'result-row');
      tr.setAttribute('data-chat-id', String(res.chat_id));
      tr.appendChild(make('td', 'num', formatDateTime(res.started_ms)));
      tr.appendChild(make('td', 'result-name', res.name));
      tr.appendChild(make('td', '', res.operator ? operatorLabel(res.operator) : '—'));
      tr.appendChild(make('td', '', res.department || '—'));
      tr.appendChild(make('td', 'result-snippet', res.snippet));
      var act = make('td');
      act.appendChild(button('secondary small open-transcript', 'Open', function () { openTranscript(res.chat_id); }));
      tr.appendChild(act);
      el.searchBody.appendChild(tr);
    });
    el.searchTable.hidden = results.length === 0;
    setText(el.searchSummary, results.length === 0 ? 'No transcripts match.' :
      results.length + (results.length === 1 ? ' transcript matches.' : ' transcripts match.'));
    el.searchSummary.hidden = false;
  }

  function openTranscript(id) {
    request('GET', chatUrl(id, 'transcript')).then(function (r) {
      if (!r.ok || !r.data) {
        showError(el.searchError, errorText(r, 'Could not open the transcript'));
        return;
      }
      var c = r.data;
      var view = newChatState(id, 'transcript');
      view.el = { list: el.transcriptEvents, panel: el.transcriptView };
      clear(el.transcriptEvents);
      setText(el.transcriptTitle, 'Transcript: ' + str(c.name || 'visitor'));
      var meta = [];
      if (c.email) { meta.push(str(c.email)); }
      if (c.department) { meta.push('Department: ' + str(c.department)); }
      if (c.operator) { meta.push('Operator: ' + operatorLabel(c.operator)); }
      if (c.state) { meta.push('State: ' + str(c.state)); }
      setText(el.transcriptMeta, meta.join(' · '));
      var events = Array.isArray(c.events) ? c.events.slice() : [];
      events.sort(function (a, b) { return (a && b && typeof a.id === 'number' && typeof b.id === 'number') ? a.id - b.id : 0; });
      events.forEach(function (ev) { addEvent(view, ev); });
      var extra = [];
      if (c.wrapup && typeof c.wrapup === 'object') { extra.push('Wrap-up: ' + str(c.wrapup.category) + (c.wrapup.note ? ' — ' + str(c.wrapup.note) : '')); }
      if (c.rating && typeof c.rating === 'object') { extra.push('Rating: ' + str(c.rating.rating) + '/5' + (c.rating.comment ? ' — “' + str(c.rating.comment) + '”' : '')); }
      setText(el.transcriptExtra, extra.join('  ·  '));
      el.transcriptExtra.hidden = extra.length === 0;
      el.transcriptView.hidden = false;
      try { el.transcriptView.scrollIntoView({ block: 'nearest' }); } catch (e) { /* ignore */ }
    });
  }

  el.transcriptClose.addEventListener('click', function () { el.transcriptView.hidden = true; });

  /* ---------- account and two-factor enrolment ---------- */

  function renderAccount() {
    var me = state.me || {};
    setText(el.acctName, me.display_name || me.username || '');
    setText(el.acctUser, me.display_name ? '(' + str(me.username) + ')' : '');
    setText(el.acctRole, me.role || '');
    setText(el.acctDepartments, Array.isArray(me.departments) && me.departments.length ? me.departments.join(', ') : 'all');
    setText(el.acctTotp, me.totp_enabled ? 'on' : (me.totp_required ? 'required, not set up' : 'off'));
    el.totpEnable.hidden = me.totp_enabled === true;
  }

  el.totpEnable.addEventListener('click', function () { showEnrol(false); });

  function base64Utf8(text) {
    var bytes = new TextEncoder().encode(text);
    var bin = '';
    for (var i = 0; i < bytes.length; i += 0x8000) {
      bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(bin);
  }

  function showEnrol(forced) {
    if (forced) {
      if (state.enrolForced && !el.enrolView.hidden) { return; }
      state.enrolForced = true;
      // nothing else works until enrolment is done: stop the stream and the polling
      state.session++;
      if (state.es) { state.es.close(); state.es = null; }
      stopTimers();
    }
    el.enrolRequired.hidden = !forced;
    el.enrolCancel.hidden = forced;
    el.enrolLogout.hidden = !forced;
    el.enrolStart.hidden = true;
    el.enrolScan.hidden = true;
    el.enrolDone.hidden = true;
    el.enrolCode.value = '';
    el.enrolQr.removeAttribute('src');
    setText(el.enrolSecret, '');
    showError(el.enrolError, '');
    showView('enrol');
    beginEnrol();
  }

  function beginEnrol() {
    el.enrolBegin.disabled = true;
    request('POST', API + '/totp/enroll').then(function (r) {
      el.enrolBegin.disabled = false;
      if (!r.ok || !r.data || typeof r.data.secret !== 'string') {
        el.enrolStart.hidden = false;
        showError(el.enrolError, errorText(r, 'Could not start the enrolment'));
        return;
      }
      var svg = typeof r.data.qr_svg === 'string' ? r.data.qr_svg : '';
      if (/^\s*(<\?xml[^>]*>\s*)?<svg[\s>]/i.test(svg)) {
        // shown as an image: a data: URL, never inserted as markup
        el.enrolQr.src = 'data:image/svg+xml;base64,' + base64Utf8(svg);
        el.enrolQr.hidden = false;
      } else {
        el.enrolQr.hidden = true;
      }
      setText(el.enrolSecret, r.data.secret.replace(/\s+/g, '').replace(/(.{4})(?=.)/g, '$1 '));
      el.enrolSecret.setAttribute('data-secret', r.data.secret.replace(/\s+/g, ''));
      el.enrolStart.hidden = true;
      el.enrolScan.hidden = false;
      showError(el.enrolError, '');
      try { el.enrolCode.focus(); } catch (e) { /* ignore */ }
    });
  }

  el.enrolBegin.addEventListener('click', beginEnrol);

  el.enrolForm.addEventListener('submit', function (e) {
    e.preventDefault();
    var code = el.enrolCode.value.replace(/\s+/g, '');
    if (!/^\d{6,8}$/.test(code)) {
      showError(el.enrolError, 'Enter the code your app shows (6 digits).');
      return;
    }
    el.enrolConfirm.disabled = true;
    request('POST', API + '/totp/confirm', { code: code }).then(function (r) {
      el.enrolConfirm.disabled = false;
      if (r.ok && r.data && Array.isArray(r.data.recovery_codes)) {
        clear(el.recoveryCodes);
        r.data.recovery_codes.forEach(function (c) {
          el.recoveryCodes.appendChild(make('li', 'recovery-code', str(c)));
        });
        el.enrolScan.hidden = true;
        el.enrolDone.hidden = false;
        el.enrolCancel.hidden = true;
        showError(el.enrolError, '');
        if (state.me) { state.me.totp_enabled = true; }
        renderAccount();
        return;
      }
      el.enrolCode.value = '';
      showError(el.enrolError, r.status === 400 ?
        'That code is not right. Check that your phone shows the right time, and try the next code.' :
        errorText(r, 'Could not confirm'));
    });
  });

  el.enrolFinish.addEventListener('click', function () {
    clear(el.recoveryCodes);
    if (state.enrolForced) {
      request('GET', API + '/me').then(function (r) {
        if (r.ok && r.data) {
          startApp(r.data);
        } else {
          endSession('Please sign in again.');
        }
      });
    } else {
      showView('app');
      selectView('account');
    }
  });

  el.enrolCancel.addEventListener('click', function () {
    if (state.enrolForced) { return; }
    showView('app');
    selectView('account');
  });

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
