/*
 * Palisade chat loader.
 *
 * The customer adds one tag to their pages:
 *   <script src="https://APPLIANCE/widget.js" async></script>
 *
 * At page load it adds a chat button and a hidden iframe on the chat page (served by
 * the appliance, from the appliance's own origin). The iframe does all the work:
 * it reports page views for the live visitor list, listens for operator invitations,
 * and holds the chat. The host page and the chat cannot read each other; the only
 * channel is postMessage, checked against the appliance's exact origin and the
 * iframe's exact window in both directions, never sent to "*".
 *
 * What the loader tells the chat page: {palisade:1, type:"page", url, title, referrer}
 * on load and whenever the URL changes (history navigation), and {type:"panel", open}
 * when the visitor opens or closes the chat panel. What it accepts from the chat page:
 * "status" (online or not: the button label), "open" (an invitation arrived, or a chat
 * is in progress), "close" (minimise).
 *
 * Works under a strict host-page CSP: no inline script, no style attributes
 * (styling through the CSSOM only), no innerHTML, no network requests of its own.
 */
(function () {
  'use strict';

  var script = document.currentScript;
  if (!script || !script.src) {
    return;
  }
  var ORIGIN;
  try {
    ORIGIN = new URL(script.src).origin;
  } catch (e) {
    return;
  }
  if (!ORIGIN || ORIGIN === 'null') {
    return;
  }

  var BUTTON_ID = 'palisade-chat-button';
  var FRAME_ID = 'palisade-chat-frame';
  var LABEL_ONLINE = 'Chat with us';
  var LABEL_OFFLINE = 'Leave a message';
  var ACCENT = '#2456d6';
  var MAX_URL = 2000;
  var MAX_TITLE = 300;

  function css(el, props) {
    for (var k in props) {
      if (Object.prototype.hasOwnProperty.call(props, k)) {
        el.style[k] = props[k];
      }
    }
  }

  function clip(s, n) {
    s = typeof s === 'string' ? s : '';
    return s.length > n ? s.slice(0, n) : s;
  }

  function init() {
    if (document.getElementById(BUTTON_ID)) {
      return; // loaded twice
    }

    var open = false;
    var frameReady = false;
    var lastUrl = null;
    var pageTimer = null;

    var button = document.createElement('button');
    button.id = BUTTON_ID;
    button.type = 'button';
    button.textContent = LABEL_ONLINE;
    button.setAttribute('aria-expanded', 'false');
    button.setAttribute('aria-controls', FRAME_ID);
    css(button, {
      position: 'fixed',
      right: '20px',
      bottom: '20px',
      zIndex: '2147483000',
      margin: '0',
      padding: '12px 20px',
      border: '0',
      borderRadius: '999px',
      background: ACCENT,
      color: '#ffffff',
      font: '600 15px/1.2 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
      letterSpacing: 'normal',
      textTransform: 'none',
      boxShadow: '0 6px 20px rgba(16, 24, 64, 0.28)',
      cursor: 'pointer'
    });

    // Created at once (hidden): the chat page tracks page views and receives invitations.
    var frame = document.createElement('iframe');
    frame.id = FRAME_ID;
    frame.title = 'Live chat';
    frame.src = ORIGIN + '/chat';
    frame.setAttribute('referrerpolicy', 'no-referrer');
    css(frame, {
      display: 'none',
      position: 'fixed',
      right: '20px',
      bottom: '78px',
      zIndex: '2147483000',
      width: '360px',
      height: '540px',
      maxWidth: 'calc(100vw - 40px)',
      maxHeight: 'calc(100vh - 100px)',
      border: '0',
      borderRadius: '14px',
      background: '#ffffff',
      boxShadow: '0 12px 40px rgba(16, 24, 64, 0.30)',
      colorScheme: 'normal'
    });

    function post(msg) {
      if (!frameReady) {
        return;
      }
      msg.palisade = 1;
      try {
        frame.contentWindow.postMessage(msg, ORIGIN);
      } catch (e) { /* ignore */ }
    }

    function pageInfo() {
      return {
        type: 'page',
        url: clip(String(location.href), MAX_URL),
        title: clip(String(document.title || ''), MAX_TITLE),
        referrer: clip(String(document.referrer || ''), MAX_URL)
      };
    }

    function sendPage(force) {
      var info = pageInfo();
      if (!force && info.url === lastUrl) {
        return;
      }
      lastUrl = info.url;
      post(info);
    }

    // History navigation (single-page sites): report the new URL once the title settled.
    function pageChanged() {
      clearTimeout(pageTimer);
      pageTimer = setTimeout(function () { sendPage(false); }, 250);
    }

    function setOpen(value, takeFocus) {
      open = value;
      frame.style.display = open ? 'block' : 'none';
      button.setAttribute('aria-expanded', open ? 'true' : 'false');
      post({ type: 'panel', open: open });
      if (open && takeFocus) {
        try {
          frame.focus();
        } catch (e) { /* ignore */ }
      }
    }

    button.addEventListener('click', function () {
      setOpen(!open, true);
    });
    button.addEventListener('mouseenter', function () {
      button.style.filter = 'brightness(1.1)';
    });
    button.addEventListener('mouseleave', function () {
      button.style.filter = '';
    });
    button.addEventListener('focus', function () {
      button.style.outline = '3px solid rgba(36, 86, 214, 0.45)';
      button.style.outlineOffset = '2px';
    });
    button.addEventListener('blur', function () {
      button.style.outline = '';
    });

    // The chat page (re)loaded: tell it who we are, where we are, and whether it shows.
    frame.addEventListener('load', function () {
      frameReady = true;
      post({ type: 'hello' });
      post({ type: 'panel', open: open });
      sendPage(true);
    });

    ['pushState', 'replaceState'].forEach(function (name) {
      var original = window.history && window.history[name];
      if (typeof original !== 'function') {
        return;
      }
      window.history[name] = function () {
        var result = original.apply(this, arguments);
        pageChanged();
        return result;
      };
    });
    window.addEventListener('popstate', pageChanged);
    window.addEventListener('hashchange', pageChanged);

    // Messages from the chat page: exact origin and exact window only.
    window.addEventListener('message', function (event) {
      if (event.origin !== ORIGIN || event.source !== frame.contentWindow) {
        return;
      }
      var data = event.data;
      if (!data || typeof data !== 'object' || data.palisade !== 1) {
        return;
      }
      if (data.type === 'status' && typeof data.online === 'boolean') {
        button.textContent = data.online ? LABEL_ONLINE : LABEL_OFFLINE;
      } else if (data.type === 'open') {
        if (!open) {
          setOpen(true, false); // an invitation or a chat in progress: show, don't steal focus
        }
      } else if (data.type === 'close') {
        setOpen(false, false);
        try {
          button.focus();
        } catch (e) { /* ignore */ }
      }
    });

    document.body.appendChild(frame);
    document.body.appendChild(button);
  }

  if (document.body) {
    init();
  } else {
    document.addEventListener('DOMContentLoaded', init);
  }
})();
