//! Transcript downloads for the visitor: plain text, and static HTML without script or
//! style, every visitor- or operator-supplied string escaped.

use super::{bearer, chat_of_token};
use crate::app::App;
use crate::http::{content, error, Resp};
use crate::storage::{EventKind, Sender, StoredEvent};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};

/// Escape text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(ms: i64) -> String {
    let (y, m, d, h, mi, s) = crate::cli::explain::civil(ms.div_euclid(1000));
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

fn line(ev: &StoredEvent, visitor: &str) -> Option<(String, String)> {
    let who = match ev.from {
        Sender::Visitor => visitor.to_string(),
        Sender::Operator => ev.author.clone(),
        Sender::System => "Palisade".to_string(),
    };
    let what = match ev.kind {
        EventKind::Started => format!("started the chat: {}", ev.text),
        EventKind::Joined => "joined the chat".to_string(),
        EventKind::Message => ev.text.clone(),
        EventKind::Requeued => ev.text.clone(),
        EventKind::Ended => "ended the chat".to_string(),
        EventKind::Whisper | EventKind::Transfer | EventKind::Wrapup => return None,
    };
    Some((format!("[{}] {who}", time(ev.ts)), what))
}

pub async fn download(app: &App, req: &Request<Incoming>, html: bool) -> Resp {
    if bearer(req).is_none() {
        return error(StatusCode::UNAUTHORIZED, "missing chat token");
    }
    let chat = match chat_of_token(app, req).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let events = match app.storage.events_after(chat.id, 0).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "transcript read failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the transcript could not be read",
            );
        }
    };
    let lines: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| line(e, &chat.visitor.name))
        .collect();
    let (body, ctype, ext) = if html {
        let mut s = String::from("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Chat transcript</title>\n</head>\n<body>\n");
        s.push_str(&format!(
            "<h1>Chat transcript #{}</h1>\n<p>{}</p>\n<ol>\n",
            chat.id.0,
            escape_html(&time(chat.created_ms))
        ));
        for (who, what) in &lines {
            s.push_str(&format!(
                "<li><strong>{}</strong>: {}</li>\n",
                escape_html(who),
                escape_html(what)
            ));
        }
        s.push_str("</ol>\n</body>\n</html>\n");
        (s, "text/html; charset=utf-8", "html")
    } else {
        let mut s = format!(
            "Chat transcript #{}\n{}\n\n",
            chat.id.0,
            time(chat.created_ms)
        );
        for (who, what) in &lines {
            s.push_str(&format!("{who}: {what}\n"));
        }
        (s, "text/plain; charset=utf-8", "txt")
    };
    let mut r = content(StatusCode::OK, ctype, body);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"chat-{}.{ext}\"",
        chat.id.0
    )) {
        h.insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_markup_character() {
        assert_eq!(
            escape_html("<img src=x onerror=\"a('b')\">&"),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }
}
