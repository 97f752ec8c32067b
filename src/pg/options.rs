//! The startup `options` parameter (`-c name=value` settings, as libpq's PGOPTIONS): jitgate
//! takes its own `jitgate.reason` out of it and passes everything else to the target.

/// Splits like the PostgreSQL backend does (`pg_split_opts`): on unescaped whitespace,
/// with backslash escaping the next character.
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
            c if c.is_whitespace() => {
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

fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c == '\\' || c.is_whitespace() {
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
}
