// Stored-XSS corpus and the visitor-controlled fields it is sent through.
//
// Each payload, if it ever ran, would set window.__xss, open a dialog, or load a
// /xss-beacon-* URL from the page's own origin (which the CSP would allow): tests/browser/
// xss.mjs watches for all three, for CSP violations, and for elements that came from a
// payload, in every view that shows the field.

/** [class, payload]: no leading/trailing whitespace (fields are trimmed), ≤ 200 chars. */
export const PAYLOADS = [
  // script elements
  ['script', '<script>__xss=1</script>'],
  ['script', '<SCRIPT SRC=/xss-beacon-script.js></SCRIPT>'],
  ['script', '</script><script>__xss=2</script>'],
  ['script', '<scr<script>ipt>__xss=3</scr</script>ipt>'],
  ['script', '<script>alert(document.domain)</script>'],
  ['script', '<svg><script>__xss=4</script></svg>'],
  ['script', '<svg><script href=/xss-beacon-svg-script.js></script></svg>'],
  // event handlers
  ['handler', '<img src=x onerror=__xss=5>'],
  ['handler', '<img src=/xss-beacon-img>'],
  ['handler', '<svg onload=__xss=6>'],
  ['handler', '<svg><animate onbegin=__xss=7 attributeName=x dur=1s>'],
  ['handler', '<body onload=__xss=8>'],
  ['handler', '<details open ontoggle=__xss=9>'],
  ['handler', '<input autofocus onfocus=__xss=10>'],
  ['handler', '<video><source onerror=__xss=11></video>'],
  ['handler', '<audio src=x onerror=__xss=12>'],
  ['handler', '<marquee onstart=__xss=13>x</marquee>'],
  ['handler', '<iframe onload=__xss=14></iframe>'],
  ['handler', '<div onmouseover=__xss=15 style=position:fixed;inset:0>hover me</div>'],
  ['handler', '<select autofocus onfocus=__xss=16></select>'],
  ['handler', '<object data=/xss-beacon-object></object>'],
  ['handler', '<embed src=/xss-beacon-embed>'],
  // URL schemes
  ['url', '<a href="javascript:__xss=17">click</a>'],
  ['url', '<iframe src="javascript:parent.__xss=18"></iframe>'],
  ['url', '<iframe srcdoc="<script>parent.__xss=19</script>"></iframe>'],
  ['url', '<form action=javascript:__xss=20><button>go</button></form>'],
  ['url', '<a href=data:text/html,<script>__xss=21</script>>x</a>'],
  ['url', '<math><a xlink:href=javascript:__xss=22>x</a></math>'],
  ['url', 'javascript:__xss=23'],
  ['url', '<base href=https://evil.example/>'],
  ['url', '<meta http-equiv=refresh content="0;url=javascript:__xss=24">'],
  ['url', '<link rel=stylesheet href=/xss-beacon-link.css>'],
  // attribute break-outs
  ['attribute', '"><img src=x onerror=__xss=25>'],
  ['attribute', "'><svg onload=__xss=26>"],
  ['attribute', '" onmouseover="__xss=27'],
  ['attribute', "' autofocus onfocus='__xss=28"],
  ['attribute', '` onerror=__xss=29 x=`'],
  // encodings
  ['encoding', '&lt;script&gt;__xss=30&lt;/script&gt;'],
  ['encoding', '&#60;img src=x onerror=__xss=31&#62;'],
  ['encoding', '%3Cscript%3E__xss=32%3C/script%3E'],
  ['encoding', '\\u003cscript\\u003e__xss=33\\u003c/script\\u003e'],
  ['encoding', '<img src=x onerror=&#95;&#95;xss=34>'],
  ['encoding', '\uFF1Cscript\uFF1E__xss=35\uFF1C/script\uFF1E'],
  // parser differentials (mXSS)
  ['mxss', '<noscript><p title="</noscript><img src=x onerror=__xss=36>">'],
  ['mxss', '<svg><style><img src=x onerror=__xss=37></style></svg>'],
  ['mxss', '<math><mtext><table><mglyph><style><img src=x onerror=__xss=38>'],
  ['mxss', '<template><script>__xss=39</script></template>'],
  ['mxss', '<!--<img src="--><img src=x onerror=__xss=40//">'],
  ['mxss', '<xmp><img src=x onerror=__xss=41></xmp>'],
  ['mxss', '<textarea></textarea><img src=x onerror=__xss=42>'],
  ['mxss', "<style>@import '/xss-beacon-import.css';</style>"],
  // template / framework syntax
  ['template', "{{constructor.constructor('__xss=43')()}}"],
  ['template', '${__xss=44}'],
  ['template', '<%= __xss=45 %>'],
  ['template', '[click](javascript:__xss=46)'],
  // breaking out of JSON / event-stream framing
  ['framing', '</script>","text":"<img src=x onerror=__xss=47>'],
  ['framing', '"}]}<img src=x onerror=__xss=48>'],
  ['framing', 'a\n\nevent: joined\ndata: {"author":"<img src=x onerror=__xss=49>"}\n\nb'],
  ['framing', 'id: 999\nevent: ended\ndata: {}'],
  // unicode tricks
  ['unicode', '\u202E<img src=x onerror=__xss=50>'],
  ['unicode', '<scr\u200Bipt>__xss=51</scr\u200Bipt>'],
  ['unicode', '\uD83D\uDE00<img src=x onerror=__xss=52>\uD83D\uDE00'],
  // CSS
  ['css', '<div style="background:url(/xss-beacon-css-url)">x</div>'],
  ['css', '<style>*{background:url(/xss-beacon-style)}</style>'],
  // polyglot
  ['polyglot', 'jaVasCript:/*-/*`/*\\`/*\'/*"/**/(/* */oNcliCk=__xss=53 )//</stYle/</titLe/</teXtarEa/</scRipt/--!><sVg/<sVg/oNloAd=__xss=54//>'],
  // DOM clobbering
  ['clobbering', '<form id=palisade-chat-button><input name=id></form>'],
  ['clobbering', '<img name=getElementById><a id=state href=x>'],
];

/** A payload as an email address the server accepts (contains @, no whitespace). */
export function emailify(p) {
  const compact = p.replace(/\s+/g, '');
  return `${compact.slice(0, 200) || 'x'}@xss.example`;
}

/** What the server keeps of a pre-chat field (trimmed; control characters refused). */
function prechat(p) {
  return p.replace(/[\u0000-\u0008\u000B-\u001F\u007F]/g, '').trim();
}

/** What the server keeps of a page URL, title or referrer: not trimmed and not checked to
 * be a URL, control characters (newlines too) dropped. */
export function page(p) {
  return p.replace(/[\u0000-\u001F\u007F-\u009F]/g, '');
}

/** A payload as a User-Agent header can carry it: line breaks become spaces and other
 * characters outside printable ASCII become `?` (the server keeps only such headers). */
export function uaify(p) {
  return p.replace(/[\t\n]/g, ' ').replace(/[^\x20-\x7E]/g, '?').trim();
}

// The visitor-controlled fields. One line each: how a payload gets in, what the server
// keeps of it, and where the views show it.
//   start: (p) => pre-chat form fields          send: (v, p) => a call after the chat started
//   hello: (p) => fields of the first page view (`POST /hello`, before the chat starts)
//   page:  (p) => url/title of a page view: sent in `/hello` for even payloads, in a later
//          `/pageview` for odd ones (the server keeps the first referrer, the latest page)
//   headers: (p) => request headers of `/hello`
//   rate:  (p) => the rating body's fields, sent after the chat ended
//   offline: (p) => leave-a-message fields (`POST /offline-message`, one per payload)
// `shown`: view → where it shows: a CSS selector (some element's text is exactly the kept
// value), `{ sel, attr }` (an attribute is exactly it), `{ sel, has }` / `{ sel, ends }`
// (the text contains / ends with the template, `%` standing for the kept value), `{ sel,
// rest }` (the text after the element's first child element is the template), or for the
// transcript JSON a path (`author`, `email`, `<event kind>.<key>`, `rating.comment`).
export const FIELDS = [
  { field: 'name', start: (p) => ({ name: prechat(p) }), kept: prechat, shown: { queue: '.queue-name', panel: '.chat-name', panelAuthor: '.msg.from-visitor .msg-author', typing: '.typing', chat: '.msg.from-visitor .msg-author', json: 'author', html: { sel: 'li > strong', ends: '] %' } } },
  { field: 'email', start: (p) => ({ email: emailify(p) }), kept: emailify, shown: { panel: '.chat-email', operatorJson: 'email' } },
  { field: 'question', start: (p) => ({ question: prechat(p) }), kept: prechat, shown: { queue: '.queue-question', panel: '.chat-question', panelMessage: '.msg.from-visitor .msg-text', chat: '.msg.from-visitor .msg-text', json: 'started.text', html: { sel: 'li', rest: ': started the chat: %' } } },
  { field: 'message', send: (v, p) => v.post('/api/v1/visitor/messages', { text: p }), kept: (p) => p.trimEnd(), shown: { panelMessage: '.msg.from-visitor .msg-text', chat: '.msg.from-visitor .msg-text', json: 'message.text', html: { sel: 'li', rest: ': %' } } },
  { field: 'page_url', page: (p) => ({ url: p }), kept: page, shown: { visitors: '.v-url', visitorsAttr: { sel: '.v-url', attr: 'title' } } },
  { field: 'page_title', page: (p) => ({ title: p }), kept: page, shown: { visitors: '.v-title' } },
  { field: 'referrer', hello: (p) => ({ referrer: p }), kept: page, shown: { visitors: '.v-referrer', visitorsAttr: { sel: '.v-referrer', attr: 'title' } } },
  { field: 'user_agent', headers: (p) => ({ 'User-Agent': uaify(p) }), kept: uaify, shown: { visitorsAttr: { sel: '.v-ua', attr: 'title' } } },
  { field: 'rating_comment', rate: (p) => ({ comment: prechat(p) }), kept: prechat, shown: { rating: { sel: '.rating-line', has: '\u201C%\u201D' }, operatorJson: 'rating.comment' } },
  { field: 'offline_name', offline: (p) => ({ name: prechat(p) }), kept: prechat, shown: { inbox: '.inbox-name' } },
  { field: 'offline_email', offline: (p) => ({ email: emailify(p) }), kept: emailify, shown: { inbox: '.inbox-email' } },
  { field: 'offline_message', offline: (p) => ({ message: prechat(p) }), kept: prechat, shown: { inbox: '.inbox-message' } },
];
