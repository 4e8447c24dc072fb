//! The front-end files (widget, chat page, console, demo page), embedded in the binary.
//!
//! For front-end development only, `PALISADE_ASSETS_DIR=DIR` makes a running daemon read
//! them from `DIR` on every request instead; the shipped units never set it.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::OnceLock;

const EMBEDDED: &[(&str, &str)] = &[
    ("widget.js", include_str!("../assets/widget.js")),
    ("chat.html", include_str!("../assets/chat.html")),
    ("chat.js", include_str!("../assets/chat.js")),
    ("chat.css", include_str!("../assets/chat.css")),
    ("console.html", include_str!("../assets/console.html")),
    ("console.js", include_str!("../assets/console.js")),
    ("console.css", include_str!("../assets/console.css")),
    ("demo-page.html", include_str!("../assets/demo-page.html")),
];

fn dev_dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::var_os("PALISADE_ASSETS_DIR").map(PathBuf::from);
        if let Some(d) = &d {
            tracing::warn!(
                "serving front-end files from {} (development only)",
                d.display()
            );
        }
        d
    })
    .as_ref()
}

/// The named asset's text.
pub fn get(name: &str) -> Cow<'static, str> {
    if let Some(dir) = dev_dir() {
        if let Ok(s) = std::fs::read_to_string(dir.join(name)) {
            return Cow::Owned(s);
        }
    }
    EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| Cow::Borrowed(*s))
        .unwrap_or(Cow::Borrowed(""))
}
