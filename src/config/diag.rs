//! Configuration problems with their position in the file, printed as
//! `FILE:LINE:COL: message`, one line per problem; and the translation of the `toml`
//! deserializer's errors (multi-line, with a snippet) into such one-line problems.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Byte range in the configuration text; `0..0` when there is no better place.
    pub span: Range<usize>,
    /// One plain sentence, no newline.
    pub message: String,
}

impl Problem {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Problem {
        Problem {
            span,
            message: message.into(),
        }
    }
}

/// Everything wrong with one configuration text. Never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    path: PathBuf,
    text: Arc<str>,
    problems: Vec<Problem>,
}

impl ConfigErrors {
    /// Problems are sorted by position (stably, so problems at the same place keep
    /// their order). `problems` should not be empty.
    pub fn new(path: &Path, text: impl Into<Arc<str>>, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| p.span.start);
        ConfigErrors {
            path: path.to_owned(),
            text: text.into(),
            problems,
        }
    }

    /// A single problem without a useful position: it is reported at 1:1.
    pub fn single(path: &Path, text: impl Into<Arc<str>>, message: impl Into<String>) -> Self {
        Self::new(path, text, vec![Problem::new(0..0, message)])
    }

    /// The path as it was given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration text the spans point into.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// In order of position.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// 1-based line and column (in characters) of byte offset `offset` in the text.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text, offset)
    }

    /// One `FILE:LINE:COL: message` line per problem, in order of position.
    pub fn lines(&self) -> Vec<String> {
        self.problems.iter().map(|p| self.line(p)).collect()
    }

    fn line(&self, p: &Problem) -> String {
        let (line, col) = self.line_col(p.span.start);
        format!("{}:{line}:{col}: {}", self.path.display(), p.message)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&self.line(p))?;
        }
        Ok(())
    }
}

/// 1-based line and column (counted in characters) of byte `offset` in `text`. An offset
/// past the end points just after the last character; one inside a character points at it.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

// ---------------------------------------------------------------------------------------
// Deserializer errors

/// Turns the deserializer's (multi-line, snippet-carrying) error into one plain line.
pub(super) fn from_toml_error(err: &toml::de::Error, text: &str) -> Problem {
    let span = err.span().unwrap_or(0..0);
    let message = one_line(err.message());
    let keys = error_keys(err);
    // "duplicate key" does not say which: quote the key from the text.
    let snippet = text
        .get(span.clone())
        .filter(|s| !s.is_empty() && !s.contains('\n'));
    let message = if let (true, Some(snippet)) = (message.starts_with("duplicate "), snippet) {
        format!("{message} {}", quote_once(snippet))
    } else if let Some(rest) = message.strip_prefix("unknown field `") {
        match rest.split_once("`, ") {
            Some((key, expected)) => format!(
                "unknown key \"{key}\" {}; {}",
                describe_table(&keys),
                expected.replace('`', "")
            ),
            None => message.clone(),
        }
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.trim_end_matches('`');
        format!("missing key \"{key}\" {}", describe_table(&keys))
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        let what = match rest.split_once(", expected ") {
            Some((found, expected)) => format!(
                "found {}, expected {}",
                plain_type(found),
                plain_type(expected)
            ),
            None => rest.replace('`', ""),
        };
        if keys.is_empty() {
            format!("wrong type: {what}")
        } else {
            format!("{} has the wrong type: {what}", keys.join("."))
        }
    } else if keys.is_empty() {
        message.clone()
    } else {
        format!("{}: {}", keys.join("."), message.replace('`', "\""))
    };
    Problem::new(span, message)
}

/// The key path of the table or value the error is about (`["limits", "idle_timeout"]`).
/// `toml` only shows it in its `Display` output when the error carries no input text.
fn error_keys(err: &toml::de::Error) -> Vec<String> {
    let mut bare = err.clone();
    bare.set_input(None);
    let shown = bare.to_string();
    if shown.lines().count() <= err.message().lines().count() {
        return Vec::new();
    }
    shown
        .lines()
        .last()
        .and_then(|line| line.strip_prefix("in `"))
        .and_then(|line| line.strip_suffix('`'))
        .map(|path| path.split('.').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// "in [limits]", "in [[listener]]", "in upstream.api.backends", "at the top level".
fn describe_table(keys: &[String]) -> String {
    let joined = keys.join(".");
    match keys {
        [] => "at the top level".to_owned(),
        [k] if k == "listener" || k == "route" => format!("in [[{k}]]"),
        [_] => format!("in [{joined}]"),
        [u, _] if u == "upstream" => format!("in [{joined}]"),
        [u, _, s] if u == "upstream" && matches!(s.as_str(), "health" | "outlier" | "retry") => {
            format!("in [{joined}]")
        }
        _ => format!("in {joined}"),
    }
}

/// serde's type words in TOML's vocabulary, without backticks.
fn plain_type(s: &str) -> String {
    // Integers beyond i64 are shown as "integer `N` as i128".
    let s = s
        .replace('`', "")
        .replace(" as i128", " (too large)")
        .replace(" as u128", " (too large)");
    if s.starts_with("struct ") || s == "map" || s == "a map" {
        return "a table".to_owned();
    }
    match s.as_str() {
        "i64" | "u64" | "i32" | "u32" | "usize" => "an integer".to_owned(),
        "sequence" => "array".to_owned(),
        "a sequence" => "an array".to_owned(),
        _ => s,
    }
}

/// `"web"` for `web` and for `"web"`.
fn quote_once(s: &str) -> String {
    if s.starts_with('"') && s.ends_with('"') && s.len() >= 2 {
        s.to_owned()
    } else {
        format!("\"{s}\"")
    }
}

fn one_line(s: &str) -> String {
    s.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let text = "ab\ncdé\n\nxyz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 1), (1, 2));
        assert_eq!(line_col(text, 2), (1, 3));
        assert_eq!(line_col(text, 3), (2, 1));
        // 'é' is two bytes; the character after it is column 4.
        assert_eq!(line_col(text, 5), (2, 3));
        assert_eq!(line_col(text, 6), (2, 3));
        assert_eq!(line_col(text, 7), (2, 4));
        assert_eq!(line_col(text, 8), (3, 1));
        assert_eq!(line_col(text, 9), (4, 1));
        assert_eq!(line_col(text, 11), (4, 3));
        assert_eq!(line_col(text, 100), (4, 4));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn display_sorted_one_line_each() {
        let text = "a = 1\nb = 2\n";
        let errors = ConfigErrors::new(
            Path::new("conf/x.toml"),
            text,
            vec![
                Problem::new(10..11, "second"),
                Problem::new(4..5, "first"),
                Problem::new(10..11, "third"),
            ],
        );
        assert_eq!(
            errors.to_string(),
            "conf/x.toml:1:5: first\nconf/x.toml:2:5: second\nconf/x.toml:2:5: third"
        );
        assert_eq!(errors.lines().len(), 3);
        assert_eq!(errors.problems()[0].message, "first");
    }

    #[test]
    fn single_points_at_start() {
        let errors = ConfigErrors::single(Path::new("./s.toml"), "x = 1", "--workers: bad");
        assert_eq!(
            errors.lines(),
            vec!["./s.toml:1:1: --workers: bad".to_owned()]
        );
    }
}
