//! Where in the file a problem is: every [`WorkloadError`] names the file,
//! the key path, the line and the value as written.

use std::ops::Range;

use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::WorkloadError;

/// Longest value quoted in an error; longer ones are cut with `...`.
const MAX_VALUE_CHARS: usize = 60;

/// The workload's text and name.
pub(super) struct Source<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
}

impl Source<'_> {
    /// The 1-based line of byte offset `at`.
    pub(super) fn line(&self, at: usize) -> usize {
        let at = at.min(self.text.len());
        self.text.as_bytes()[..at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The text of `span` on one line, cut to [`MAX_VALUE_CHARS`].
    fn quote(&self, span: Range<usize>) -> String {
        let raw = self.text.get(span).unwrap_or("").trim();
        let one_line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() > MAX_VALUE_CHARS {
            let cut: String = one_line.chars().take(MAX_VALUE_CHARS).collect();
            format!("{cut}...")
        } else {
            one_line
        }
    }

    /// A bad value at `span`.
    pub(super) fn err(
        &self,
        key: &str,
        span: Range<usize>,
        why: impl Into<String>,
    ) -> WorkloadError {
        WorkloadError::Key {
            file: self.file.to_string(),
            key: key.to_string(),
            line: self.line(span.start),
            value: self.quote(span),
            why: why.into(),
        }
    }

    /// A bad spanned value.
    pub(super) fn bad<T>(
        &self,
        key: &str,
        v: &Spanned<T>,
        why: impl Into<String>,
    ) -> WorkloadError {
        self.err(key, v.span(), why)
    }

    /// A required key missing from the table at `table` (its span).
    pub(super) fn missing(&self, key: &str, table: Range<usize>, why: &str) -> WorkloadError {
        WorkloadError::Key {
            file: self.file.to_string(),
            key: key.to_string(),
            line: self.line(table.start),
            value: "(missing)".to_string(),
            why: why.to_string(),
        }
    }

    /// A TOML syntax error.
    pub(super) fn syntax(&self, e: &toml::de::Error) -> WorkloadError {
        WorkloadError::Toml {
            file: self.file.to_string(),
            line: self.line(e.span().map_or(0, |s| s.start)),
            why: e.message().trim().to_string(),
        }
    }

    /// A value serde rejected (an unknown key, a wrong type, a bad number):
    /// the key path from `serde_path_to_error`, the value as written there.
    pub(super) fn serde(&self, e: &serde_path_to_error::Error<toml::de::Error>) -> WorkloadError {
        let segments: Vec<&Segment> = e
            .path()
            .iter()
            .filter(|s| !matches!(s, Segment::Map { key } if key.starts_with("$__serde_spanned")))
            .collect();
        let key = key_path(&segments);
        let at = self.locate(&segments).or_else(|| e.inner().span());
        let why = e.inner().message().trim().to_string();
        match at {
            Some(span) => self.err(&key, span, why),
            None => WorkloadError::Key {
                file: self.file.to_string(),
                key,
                line: 1,
                value: "(unknown)".to_string(),
                why,
            },
        }
    }

    /// The span of the value at `path`, if the document has one there.
    fn locate(&self, path: &[&Segment]) -> Option<Range<usize>> {
        let root = DeTable::parse(self.text).ok()?;
        let mut span = root.span();
        let root = DeValue::Table(root.into_inner());
        let mut cur = &root;
        for seg in path {
            let next = match (seg, cur) {
                (Segment::Map { key }, DeValue::Table(t)) => t
                    .iter()
                    .find(|(k, _)| {
                        let k: &str = k.get_ref();
                        k == key.as_str()
                    })
                    .map(|(_, v)| v)?,
                (Segment::Seq { index }, DeValue::Array(a)) => a.get(*index)?,
                _ => return None,
            };
            span = next.span();
            cur = next.get_ref();
        }
        Some(span)
    }
}

/// `vcpu[0].ops[2].gpa` from path segments.
fn key_path(segments: &[&Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    if out.is_empty() {
        "(document)".to_string()
    } else {
        out
    }
}
