//! Shared YAML loading for `config` (jitgate.yaml) and `policy` (policies/*.yaml).
//!
//! Parses with serde-saphyr and turns every problem (syntax, unknown field, bad value,
//! semantic check) into a [`LocatedMessage`] that prints as `file:line:col: message`.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{Location, MessageFormatter, Spanned};

/// One problem in one YAML file, with the position it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedMessage {
    pub file: PathBuf,
    /// 1-based; 0 when the parser could not tell (then `line` and `column` are not printed).
    pub line: u64,
    /// 1-based, in characters.
    pub column: u64,
    pub message: String,
}

impl LocatedMessage {
    pub(crate) fn at(file: &Path, location: Location, message: impl Into<String>) -> Self {
        LocatedMessage {
            file: file.to_path_buf(),
            line: location.line(),
            column: location.column(),
            message: message.into(),
        }
    }

    /// `file:line:col`, the prefix of the message (also used to point at a first definition).
    pub(crate) fn position(&self) -> String {
        if self.line == 0 {
            self.file.display().to_string()
        } else {
            format!("{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

impl fmt::Display for LocatedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.position(), self.message)
    }
}

/// Displays a list of located messages, one per line (used by the layers' `Invalid` errors).
pub(crate) struct MessageList<'a>(pub(crate) &'a [LocatedMessage]);

impl fmt::Display for MessageList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, message) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{message}")?;
        }
        Ok(())
    }
}

/// Deserialize one YAML document. An empty document (or only comments) gives `None`.
///
/// Serde stops at the first structural problem (syntax, unknown field, wrong type), so this
/// reports exactly one; semantic checks on the result can then report all of theirs.
pub(crate) fn parse<T: DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<Option<T>, LocatedMessage> {
    // Strict booleans: `require_reason: no` would otherwise be YAML 1.1's `false`, and
    // `yes`/`on` surprises are worse in an access policy than a clear error.
    let options = serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
    };
    serde_saphyr::from_str_with_options::<Option<T>>(text, options).map_err(|error| {
        let message = serde_saphyr::DefaultMessageFormatter.format_message(&error);
        LocatedMessage::at(
            file,
            error.location().unwrap_or(Location::UNKNOWN),
            printable(&message),
        )
    })
}

/// Collects the semantic problems of one file.
pub(crate) struct Problems<'a> {
    file: &'a Path,
    found: Vec<LocatedMessage>,
}

impl<'a> Problems<'a> {
    pub(crate) fn new(file: &'a Path) -> Self {
        Problems {
            file,
            found: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.found.len()
    }

    pub(crate) fn at(&mut self, location: Location, message: impl Into<String>) {
        self.found
            .push(LocatedMessage::at(self.file, location, message));
    }

    /// Runs a check on a located value; a failure is recorded at the value's position.
    pub(crate) fn check<T, U>(
        &mut self,
        value: &Spanned<T>,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match check(&value.value) {
            Ok(ok) => Some(ok),
            Err(message) => {
                self.at(value.referenced, message);
                None
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<LocatedMessage> {
        self.found
    }
}

/// A YAML mapping whose keys keep their positions, in document order (for `targets:`).
/// Duplicate keys are already rejected by the parser. An empty value (`targets:`) is not a
/// mapping: wrap it in `Option`.
#[derive(Debug)]
pub(crate) struct SpannedMap<V>(pub(crate) Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SpannedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = SpannedMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(SpannedMap(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// `field` as a humantime duration (`90s`, `10m`, `1h 30m`) within `min..=max`.
pub(crate) fn duration_in(
    field: &str,
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let value = humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "{field}: invalid duration `{}` ({e}); write e.g. 30s, 10m, 1h",
            printable(text)
        )
    })?;
    if value < min || value > max {
        return Err(format!(
            "{field} must be between {} and {} (got {})",
            humantime::format_duration(min),
            humantime::format_duration(max),
            humantime::format_duration(value)
        ));
    }
    Ok(value)
}

/// `field` as a whole number within `min..=max`. Numbers are read as YAML strings so that
/// a bad one gets this message (and the rest of the file is still checked).
pub(crate) fn integer_in(field: &str, text: &str, min: u32, max: u32) -> Result<u32, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if (u64::from(min)..=u64::from(max)).contains(&n) => u32::try_from(n)
            .map_err(|_| format!("{field} must be a whole number from {min} to {max}")),
        Ok(n) => Err(format!(
            "{field} must be a whole number from {min} to {max} (got {n})"
        )),
        Err(_) => Err(format!(
            "{field} must be a whole number from {min} to {max} (got `{}`)",
            printable(text)
        )),
    }
}

/// `[A-Za-z0-9_.-]+`, at most `max` bytes: names that appear in psql's `user=`/`dbname=`.
pub(crate) fn simple_name(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if text.len() > max {
        return Err(format!(
            "{what} `{}` is longer than {max} characters",
            printable(text)
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{what} `{}` may only contain A-Z, a-z, 0-9, `_`, `.` and `-` (found {bad:?})",
            printable(text)
        ));
    }
    Ok(())
}

/// Non-empty, at most `max` bytes, no control characters (names passed on to a target).
pub(crate) fn plain_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if text.len() > max {
        return Err(format!(
            "{what} `{}` is longer than {max} bytes",
            printable(text)
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{what} `{}` must not contain control characters",
            printable(text)
        ));
    }
    Ok(())
}

/// Text safe to print in one line of an error: control characters are escaped.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: Spanned<String>,
        items: Option<SpannedMap<Spanned<String>>>,
    }

    #[test]
    fn syntax_and_schema_errors_carry_line_and_column() {
        let file = Path::new("x.yaml");
        let err = parse::<Doc>(file, "name: a\nnmae: b\n").err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("x.yaml:2:1: unknown field `nmae`, expected one of name, items".to_string())
        );
        let err = parse::<Doc>(file, "items: {}\n").err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("x.yaml:1:1: missing field `name`".to_string())
        );
    }

    #[test]
    fn empty_document_is_none() {
        let file = Path::new("x.yaml");
        assert!(matches!(parse::<Doc>(file, ""), Ok(None)));
        assert!(matches!(parse::<Doc>(file, "# nothing\n"), Ok(None)));
    }

    #[test]
    fn spanned_map_keeps_key_positions_and_order() -> Result<(), LocatedMessage> {
        let doc = parse::<Doc>(Path::new("x.yaml"), "name: a\nitems:\n  zz: 1\n  aa: 2\n")?;
        let Some(doc) = doc else {
            unreachable!("document is not empty")
        };
        assert_eq!(doc.name.value, "a");
        let keys: Vec<_> = doc
            .items
            .iter()
            .flat_map(|m| &m.0)
            .map(|(k, v)| {
                (
                    k.value.as_str(),
                    k.referenced.line(),
                    k.referenced.column(),
                    v.value.as_str(),
                )
            })
            .collect();
        assert_eq!(keys, vec![("zz", 3, 3, "1"), ("aa", 4, 3, "2")]);
        Ok(())
    }

    #[test]
    fn spanned_map_accepts_an_empty_value() -> Result<(), LocatedMessage> {
        let doc = parse::<Doc>(Path::new("x.yaml"), "name: a\nitems:\n")?;
        assert!(doc.is_some_and(|d| d.items.is_none()));
        Ok(())
    }

    #[test]
    fn helpers_explain_what_is_wrong() {
        let d = |s| Duration::from_secs(s);
        assert_eq!(duration_in("t", "90s", d(1), d(100)), Ok(d(90)));
        assert!(duration_in("t", "90 parsecs", d(1), d(100))
            .is_err_and(|e| e.starts_with("t: invalid duration `90 parsecs`")));
        assert_eq!(
            duration_in("t", "2m", d(1), d(100)),
            Err("t must be between 1s and 1m 40s (got 2m)".to_string())
        );
        assert_eq!(integer_in("n", "5", 1, 10), Ok(5));
        assert_eq!(
            integer_in("n", "0", 1, 10),
            Err("n must be a whole number from 1 to 10 (got 0)".to_string())
        );
        assert!(integer_in("n", "five", 1, 10).is_err());
        assert!(simple_name("name", "a.b-c_d", 63).is_ok());
        assert!(simple_name("name", "a/b", 63).is_err());
        assert!(simple_name("name", "", 63).is_err());
        assert!(plain_text("role", "bad\u{1}", 63).is_err());
        assert_eq!(printable("a\nb"), "a\\nb");
    }
}
