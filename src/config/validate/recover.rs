//! The first stage of validation: TOML text to `RawConfig`, reporting every unknown key
//! and mistyped value rather than the deserializer's first error alone.
//!
//! The text is parsed once into a document that keeps every span. Deserializing it stops
//! at the first error; the key (or array element) the error points at is then taken out
//! of the document and deserializing starts over, until it succeeds or a problem cannot be
//! located. A document that needed only unknown keys taken out deserializes to the same
//! `RawConfig` the user meant, so the semantic checks run on it too; one that lost a value
//! of the wrong type may lack a key the checks would then miss, so they do not run and
//! only the first stage's problems are reported.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::super::diag::{Problem, from_toml_error};
use super::super::raw::RawConfig;

/// Enough for any file a person wrote; a bound so a pathological one cannot loop long.
const MAX_PROBLEMS: usize = 100;

/// What the first stage found.
pub(super) struct Recovered {
    /// The raw configuration, when the semantic checks may run on it.
    pub raw: Option<RawConfig>,
    pub problems: Vec<Problem>,
    /// Spans of the tables an unknown key was taken out of: a required key missing
    /// there is most likely that key misspelt, already reported.
    pub misspelt_in: Vec<Range<usize>>,
}

pub(super) fn deserialize(text: &str) -> Recovered {
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // Recovery from a syntax error may misread the rest: report the syntax alone.
        let mut problems: Vec<Problem> = syntax.iter().map(|e| from_toml_error(e, text)).collect();
        problems.dedup();
        return Recovered {
            raw: None,
            problems,
            misspelt_in: Vec::new(),
        };
    }
    let mut misspelt_in = Vec::new();
    let mut problems = Vec::new();
    let mut only_unknown_keys = true;
    // Keys taken out, with the span of their table: a "missing key" error for one of
    // them that follows is an echo of the problem already reported.
    let mut removed: Vec<(String, Range<usize>)> = Vec::new();
    while problems.len() < MAX_PROBLEMS {
        let err = match RawConfig::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) => {
                return Recovered {
                    raw: only_unknown_keys.then_some(raw),
                    problems,
                    misspelt_in,
                };
            }
            Err(err) => err,
        };
        let Some(span) = err.span() else {
            problems.push(from_toml_error(&err, text));
            break;
        };
        let message = err.message();
        let unknown = message.starts_with("unknown field");
        let echo = message
            .strip_prefix("missing field `")
            .map(|rest| rest.trim_end_matches('`'))
            .is_some_and(|key| removed.iter().any(|(k, table)| k == key && *table == span));
        if !echo {
            problems.push(from_toml_error(&err, text));
        }
        only_unknown_keys &= unknown;
        let root = doc.span();
        match take_out(doc.get_mut(), root, &span) {
            Some(Taken::Key(_, table)) if unknown => misspelt_in.push(table),
            Some(Taken::Key(key, table)) => removed.push((key, table)),
            Some(Taken::Element) => {}
            None => break,
        }
    }
    Recovered {
        raw: None,
        problems,
        misspelt_in,
    }
}

/// What `take_out` removed.
enum Taken {
    /// A key, and the span of the table it was in.
    Key(String, Range<usize>),
    /// An element of an array.
    Element,
}

/// Removes from `table` (whose span is `own`) the innermost entry or array element that
/// `span` points at: its key, its value, or (a table's header, where a missing key is
/// reported) the table itself. None when nothing matched. Searches the whole tree: a
/// `[section]`'s span covers only its header, not the keys below it.
fn take_out<'i>(table: &mut DeTable<'i>, own: Range<usize>, span: &Range<usize>) -> Option<Taken> {
    let mut hit: Option<Spanned<toml::de::DeString<'i>>> = None;
    for (k, v) in table.iter_mut() {
        let (ks, vs) = (k.span(), v.span());
        let deeper = match v.get_mut() {
            DeValue::Table(t) => take_out(t, vs.clone(), span),
            DeValue::Array(a) => take_out_of_array(a, span),
            _ => None,
        };
        if deeper.is_some() {
            return deeper;
        }
        if hit.is_none() && (within(span, &ks) || within(span, &vs)) {
            hit = Some(k.clone());
        }
    }
    let key = hit?;
    let name = key.get_ref().to_string();
    table.remove(&key);
    Some(Taken::Key(name, own))
}

fn take_out_of_array<'i>(a: &mut DeArray<'i>, span: &Range<usize>) -> Option<Taken> {
    let mut hit = None;
    for (i, e) in a.as_mut().iter_mut().enumerate() {
        let own = e.span();
        let deeper = match e.get_mut() {
            DeValue::Table(t) => take_out(t, own, span),
            DeValue::Array(inner) => take_out_of_array(inner, span),
            _ => None,
        };
        if deeper.is_some() {
            return deeper;
        }
        if hit.is_none() && within(span, &e.span()) {
            hit = Some(i);
        }
    }
    let i = hit?;
    let mut kept = DeArray::new();
    for (j, e) in std::mem::replace(a, DeArray::new()).iter().enumerate() {
        if j != i {
            kept.push(e.clone());
        }
    }
    *a = kept;
    Some(Taken::Element)
}

/// Does `inner` lie within `outer` (an empty `inner` at its start counts)?
fn within(inner: &Range<usize>, outer: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && !(outer.is_empty() && inner != outer)
}
