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

// The visitor-controlled fields. One line each: how a payload gets in (`start`: a
// pre-chat form field; `send`: a call made after the chat started, through the visitor
// API object `v`), what the server keeps of it, and where the views show it
// (view → CSS selector inside that view's container, or a transcript JSON path).
// A field another issue adds (page URL/title/referrer, user agent, rating comment,
// offline message) becomes one more line here, plus its selector in the views showing it.
export const FIELDS = [
  { field: 'name', start: (p) => ({ name: prechat(p) }), kept: prechat, shown: { queue: '.queue-name', panel: '.chat-name', panelAuthor: '.msg.from-visitor .msg-author', typing: '.typing', chat: '.msg.from-visitor .msg-author', json: 'author' } },
  { field: 'email', start: (p) => ({ email: emailify(p) }), kept: emailify, shown: { panel: '.chat-email', operatorJson: 'email' } },
  { field: 'question', start: (p) => ({ question: prechat(p) }), kept: prechat, shown: { queue: '.queue-question', panel: '.chat-question', panelMessage: '.msg.from-visitor .msg-text', chat: '.msg.from-visitor .msg-text', json: 'started.text' } },
  { field: 'message', send: (v, p) => v.post('/api/v1/visitor/messages', { text: p }), kept: (p) => p.trimEnd(), shown: { panelMessage: '.msg.from-visitor .msg-text', chat: '.msg.from-visitor .msg-text', json: 'message.text' } },
  // { field: 'page_title', send: (v, p) => v.post('/api/v1/visitor/pageview', { url: '/x', title: p }), kept: prechat, shown: { visitors: '.visitor-page-title' } },
];
