//! The startup `options` parameter (`-c name=value` settings, as libpq's PGOPTIONS): jitgate
//! takes its own `jitgate.reason` out of it and passes everything else to the target.

/// What PostgreSQL's `pg_split_opts` splits on: the C locale's `isspace()`, ASCII only (a
/// no-break space or any other Unicode space is part of a word to the server).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r')
}

/// Splits like the PostgreSQL backend does (`pg_split_opts`, src/backend/utils/init/postinit.c):
/// on unescaped spaces, with backslash escaping the next character. A lone backslash at the
/// very end is an empty word, to it and to us.
fn split(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            c if is_space(c) => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A word as `split` reads it back. An empty word (only ever the last one, see `split`) is a
/// lone backslash.
fn escape(word: &str) -> String {
    if word.is_empty() {
        return "\\".to_string();
    }
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c == '\\' || is_space(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The reason given as `-c jitgate.reason=…` (or `--jitgate.reason=…`), and the options to
/// forward without it (`None` when nothing is left).
pub fn take_reason(options: &str) -> (Option<String>, Option<String>) {
    let words = split(options);
    let mut reason = None;
    let mut keep: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        let (setting, consumed) = if word == "-c" {
            (words.get(i + 1).map(String::as_str), 2)
        } else if let Some(rest) = word.strip_prefix("-c") {
            (Some(rest), 1)
        } else if let Some(rest) = word.strip_prefix("--") {
            (Some(rest), 1)
        } else {
            (None, 1)
        };
        match setting.and_then(|s| s.split_once('=')) {
            Some((name, value)) if name.eq_ignore_ascii_case("jitgate.reason") => {
                reason = Some(value.to_string())
            }
            _ => keep.extend(
                words[i..(i + consumed).min(words.len())]
                    .iter()
                    .map(|w| escape(w)),
            ),
        }
        i += consumed;
    }
    let rest = if keep.is_empty() {
        None
    } else {
        Some(keep.join(" "))
    };
    (reason, rest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reason_is_taken_and_the_rest_forwarded() {
        let (reason, rest) = take_reason("-c jitgate.reason=INC-42 -c search_path=app");
        assert_eq!(reason.as_deref(), Some("INC-42"));
        assert_eq!(rest.as_deref(), Some("-c search_path=app"));
        let (reason, rest) = take_reason("-cjitgate.reason=fix\\ the\\ thing");
        assert_eq!(reason.as_deref(), Some("fix the thing"));
        assert_eq!(rest, None);
        let (reason, rest) = take_reason("--jitgate.reason=x --work_mem=64MB");
        assert_eq!(reason.as_deref(), Some("x"));
        assert_eq!(rest.as_deref(), Some("--work_mem=64MB"));
        let (reason, rest) = take_reason("-c application_name=a\\ b");
        assert_eq!(reason, None);
        assert_eq!(rest.as_deref(), Some("-c application_name=a\\ b"));
    }

    /// Found by `fuzz/`'s `pg_options` target: a trailing lone backslash is an empty word to
    /// PostgreSQL, and forwarding must keep it (as the lone backslash it was).
    #[test]
    fn a_trailing_empty_word_is_forwarded() {
        assert_eq!(split("-c \\"), vec!["-c".to_string(), String::new()]);
        let (reason, rest) = take_reason("-c jitgate.reason=x -c \\");
        assert_eq!(reason.as_deref(), Some("x"));
        let rest = rest.unwrap();
        assert_eq!(split(&rest), vec!["-c".to_string(), String::new()]);
    }

    /// PostgreSQL splits on the C locale's `isspace()` only (space, \t, \n, \v, \f, \r): a
    /// no-break space or another Unicode space is part of a word and must stay in it.
    #[test]
    fn only_ascii_spaces_split_words() {
        assert_eq!(
            split("-c application_name=a\u{a0}b\u{2003}c"),
            vec![
                "-c".to_string(),
                "application_name=a\u{a0}b\u{2003}c".to_string()
            ]
        );
        assert_eq!(split("a\u{b}b"), vec!["a".to_string(), "b".to_string()]);
        let (_, rest) = take_reason("-c application_name=a\u{a0}b");
        assert_eq!(rest.as_deref(), Some("-c application_name=a\u{a0}b"));
    }
}
