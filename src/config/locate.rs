//! TOML errors as one line that names the file, the line and the key.
//! toml's own messages carry a multi-line excerpt, and errors inside tagged
//! tables (`[source]`, `[sources.NAME]`) point at the table's header rather
//! than the offending key: this finds the key's own line.

use std::path::Path;

use super::ConfigError;

/// One line: the line number from the span, toml's message without its
/// multi-line excerpt.
pub fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().replace('\n', "; ");
    let mut line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
    let span = e.span().unwrap_or(0..0);
    let start = span.start.min(text.len());
    let table = &text[start..span.end.clamp(start, text.len())];
    let off = match message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
        Some(key) => find_key(&text[start..], key),
        // A bad value there: the line holding the value serde quotes.
        None if table.starts_with('[') => bad_value(&message).and_then(|v| find_value(table, &v)),
        None => None,
    };
    if let Some(off) = off {
        line = line_of(text, start + off);
    }
    if message.starts_with("unknown field") {
        let hint = "remove the key or fix its spelling; config/lookout.toml lists every key";
        return ConfigError::Parse { path: path.to_owned(), line, message: format!("{message} ({hint})") };
    }
    // Wrong types and values: name the key written on the offending line.
    let key = text.lines().nth(line.saturating_sub(1)).and_then(|l| l.split_once('=')).map(|(k, _)| k.trim());
    let message = match key {
        Some(k) if !k.is_empty() && !k.starts_with('[') => format!("`{k}`: {message}"),
        _ => message,
    };
    ConfigError::Parse { path: path.to_owned(), line, message }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The value a serde message quotes, as TOML writes it: ``unknown variant
/// `pc` `` -> `"pc"`, `invalid type: string "x"` -> `"x"`, `invalid type:
/// integer `5`` -> `5`.
fn bad_value(message: &str) -> Option<String> {
    if let Some(v) = message.strip_prefix("unknown variant `") {
        return v.split('`').next().map(|v| format!("{v:?}"));
    }
    let rest = message.strip_prefix("invalid type: ")?;
    match rest.split_once(' ')? {
        ("string", v) => v.split(", expected").next().map(str::to_owned),
        (_, v) => v.split('`').nth(1).map(str::to_owned),
    }
}

/// Offset of the first `key = value` line in `text` whose value is `value`.
fn find_value(text: &str, value: &str) -> Option<usize> {
    let mut off = 0;
    for l in text.split_inclusive('\n') {
        if l.split_once('=').is_some_and(|(_, v)| v.split('#').next().unwrap_or("").trim() == value) {
            return Some(off);
        }
        off += l.len();
    }
    None
}

fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut off = 0;
    for l in text.split_inclusive('\n') {
        let t = l.trim_start();
        if t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return Some(off);
        }
        off += l.len();
    }
    None
}
