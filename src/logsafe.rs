//! Client-chosen text, made safe to print: the one place where values a client (or a target)
//! chose — ssh exec commands, subsystem names, `-L` destinations, env names, startup-packet
//! fields, upstream error texts — are escaped and length-capped before they reach a log line
//! or a refusal.
//!
//! tracing's fmt layer escapes nothing in a `%value` field, so a command holding `\n` would
//! forge a second log line, and one holding `\x1b[…` would repaint the operator's terminal.
//! [`Untrusted`] writes the value in double quotes (so a value holding ` allowed=true` cannot
//! pass for another field), with `\` and `"` escaped, controls and invisible format characters
//! as `\n` / `\xNN` / `\u{NNNN}`, bytes that are not UTF-8 as `\xNN`, and at most
//! [`MAX_CHARS`] characters of output before a closing `…`.

use std::fmt::{self, Write as _};

/// Longest escaped text written before it is cut (the quotes and `…` not counted).
pub const MAX_CHARS: usize = 256;

/// Cap for texts only the operator reads that may be long for a good reason (a target's
/// error output): still bounded, but long enough to diagnose from.
pub const MAX_DIAGNOSTIC_CHARS: usize = 4096;

/// A client-chosen value; its `Display` is the escaped, quoted, capped form.
#[derive(Clone, Copy)]
pub struct Untrusted<'a> {
    bytes: &'a [u8],
    max: usize,
}

impl<'a> Untrusted<'a> {
    pub fn new(text: &'a str) -> Self {
        Untrusted::bytes(text.as_bytes())
    }

    /// Raw bytes (an exec command need not be UTF-8).
    pub fn bytes(bytes: &'a [u8]) -> Self {
        Untrusted {
            bytes,
            max: MAX_CHARS,
        }
    }

    /// A target's error text for the operator's log: escaped alike, cut at
    /// [`MAX_DIAGNOSTIC_CHARS`] instead.
    pub fn diagnostic(text: &'a str) -> Self {
        Untrusted {
            bytes: text.as_bytes(),
            max: MAX_DIAGNOSTIC_CHARS,
        }
    }
}

impl<'a> From<&'a str> for Untrusted<'a> {
    fn from(text: &'a str) -> Self {
        Untrusted::new(text)
    }
}

/// An owned client-chosen value (for error types that outlive the input); prints as
/// [`Untrusted`] does.
#[derive(Clone, PartialEq, Eq)]
pub struct Owned(String);

impl Owned {
    pub fn new(text: &str) -> Self {
        Owned(text.to_owned())
    }

    /// The raw value, for comparisons; never print it.
    pub fn raw(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Owned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Untrusted::new(&self.0), f)
    }
}

impl fmt::Debug for Owned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shorthand for `Untrusted::new(text)`.
pub fn untrusted(text: &str) -> Untrusted<'_> {
    Untrusted::new(text)
}

/// Shorthand for `Untrusted::diagnostic(text)`.
pub fn diagnostic(text: &str) -> Untrusted<'_> {
    Untrusted::diagnostic(text)
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = self.max;
        let mut out = String::with_capacity(self.bytes.len().min(max) + 2);
        let mut written = 0usize;
        let mut cut = false;
        'chunks: for chunk in self.bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                let piece = escape_char(c);
                let width = piece.chars().count();
                if written + width > max {
                    cut = true;
                    break 'chunks;
                }
                written += width;
                out.push_str(&piece);
            }
            for b in chunk.invalid() {
                if written + 4 > max {
                    cut = true;
                    break 'chunks;
                }
                written += 4;
                let _ = write!(out, "\\x{b:02x}");
            }
        }
        f.write_char('"')?;
        f.write_str(&out)?;
        if cut {
            f.write_char('…')?;
        }
        f.write_char('"')
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One character as it is printed: itself if it is harmless, else an ASCII escape.
fn escape_char(c: char) -> String {
    match c {
        '\\' => "\\\\".into(),
        '"' => "\\\"".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        c if c.is_ascii_control() => format!("\\x{:02x}", u32::from(c)),
        c if c.is_control() || is_invisible_format(c) => format!("\\u{{{:04x}}}", u32::from(c)),
        c => c.to_string(),
    }
}

/// Characters that are not controls but still change how a line reads: line and paragraph
/// separators, zero-width characters, bidirectional overrides (the "Trojan Source" set,
/// CVE-2021-42574), the BOM and interlinear annotation marks.
fn is_invisible_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00ad | 0x061c | 0x180e | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x206f
            | 0xfeff | 0xfff9..=0xfffb
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        Untrusted::new(s).to_string()
    }

    #[test]
    fn harmless_text_is_only_quoted() {
        assert_eq!(esc("ls -la /tmp"), "\"ls -la /tmp\"");
        assert_eq!(esc("ünïcødé ✓"), "\"ünïcødé ✓\"");
        assert_eq!(esc(""), "\"\"");
    }

    #[test]
    fn newlines_escapes_and_quotes_cannot_forge_lines_or_fields() {
        let forged = "id\n2025-01-01T00:00:00Z  INFO jitgate: event=\"access.granted\"";
        let out = esc(forged);
        assert!(!out.contains('\n'), "{out}");
        assert_eq!(
            out,
            "\"id\\n2025-01-01T00:00:00Z  INFO jitgate: event=\\\"access.granted\\\"\""
        );
        assert_eq!(esc("\x1b[31mred\x1b[0m"), "\"\\x1b[31mred\\x1b[0m\"");
        assert_eq!(esc("a\r\tb\0c\x7f"), "\"a\\r\\tb\\x00c\\x7f\"");
        assert_eq!(esc("back\\slash"), "\"back\\\\slash\"");
        // C1 controls, bidi overrides, separators, zero-width.
        assert_eq!(esc("\u{85}\u{9b}"), "\"\\u{0085}\\u{009b}\"");
        assert_eq!(
            esc("a\u{202e}b\u{2028}c\u{200b}d\u{feff}"),
            "\"a\\u{202e}b\\u{2028}c\\u{200b}d\\u{feff}\""
        );
    }

    #[test]
    fn invalid_utf8_bytes_are_hex() {
        assert_eq!(
            Untrusted::bytes(b"ok\xff\xfe\n").to_string(),
            "\"ok\\xff\\xfe\\n\""
        );
    }

    #[test]
    fn long_values_are_cut_without_splitting_an_escape() {
        let long = "x".repeat(1000);
        let out = esc(&long);
        assert_eq!(out, format!("\"{}…\"", "x".repeat(MAX_CHARS)));
        let exact = "y".repeat(MAX_CHARS);
        assert_eq!(esc(&exact), format!("\"{exact}\""));
        // Escapes count by their printed length and are never cut in half.
        let controls = "\x01".repeat(200);
        let out = esc(&controls);
        assert_eq!(out, format!("\"{}…\"", "\\x01".repeat(MAX_CHARS / 4)));
        let wide = "é".repeat(300);
        assert_eq!(esc(&wide).chars().count(), MAX_CHARS + 3);
        let stderr = "line\n".repeat(1000);
        let out = diagnostic(&stderr).to_string();
        assert_eq!(out.chars().count(), MAX_DIAGNOSTIC_CHARS + 3);
        assert!(!out.contains('\n'));
    }
}
