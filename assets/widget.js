/*
 * Palisade chat loader.
 *
 * The customer adds one tag to their pages:
 *   <script src="https://APPLIANCE/widget.js" async></script>
 *
 * It adds a chat button and, on click, shows the chat page (served by the
 * appliance, from the appliance's own origin) in an iframe. The host page and
 * the chat cannot read each other; the only channel is postMessage, checked
 * against the appliance's exact origin in both directions.
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

  function css(el, props) {
    for (var k in props) {
      if (Object.prototype.hasOwnProperty.call(props, k)) {
        el.style[k] = props[k];
      }
    }
  }

  function init() {
    if (document.getElementById(BUTTON_ID)) {
      return; // loaded twice
    }

    var open = false;

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
      height: '520px',
      maxWidth: 'calc(100vw - 40px)',
      maxHeight: 'calc(100vh - 100px)',
      border: '0',
      borderRadius: '14px',
      background: '#ffffff',
      boxShadow: '0 12px 40px rgba(16, 24, 64, 0.30)',
      colorScheme: 'normal'
    });

    function setOpen(value) {
      open = value;
      frame.style.display = open ? 'block' : 'none';
      button.setAttribute('aria-expanded', open ? 'true' : 'false');
      if (open) {
        try {
          frame.focus();
        } catch (e) { /* ignore */ }
      }
    }

    button.addEventListener('click', function () {
      setOpen(!open);
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

    // Tell the chat page who we are: it answers to event.origin only.
    frame.addEventListener('load', function () {
      try {
        frame.contentWindow.postMessage({ palisade: 1, type: 'hello' }, ORIGIN);
      } catch (e) { /* ignore */ }
    });

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
      } else if (data.type === 'close') {
        setOpen(false);
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
