//! `jitgate audit verify`: walks every instance's chain and names the file and line of each
//! break. What it can tell, from the line where a link fails and the `seq` numbers around it:
//! a changed line (its successor's link no longer matches it), removed lines (a gap in
//! `seq`), inserted or reordered lines (`seq` goes back or repeats). A recording named by an
//! `ssh.exit` line is checked against the SHA-256 that line carries.
//!
//! What no chain can tell by itself: lines cut from the very end of the newest file while no
//! gateway writes after them (nothing links to them yet). A running gateway's next line does
//! link to them, and copies shipped elsewhere (the PostgreSQL store, a SIEM) keep them.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use super::log::{all_chains, link, GENESIS};

/// Stop listing problems after this many (the count is still reported).
const PROBLEMS_SHOWN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.what)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// (instance, files, lines) per chain.
    pub chains: Vec<(String, usize, u64)>,
    pub recordings: usize,
    pub problems: Vec<Problem>,
    pub problem_count: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, file: &Path, line: usize, what: String) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_SHOWN {
            self.problems.push(Problem {
                file: file.to_path_buf(),
                line,
                what,
            });
        }
    }
}

/// Verifies every chain in `dir`.
pub fn verify_dir(dir: &Path) -> std::io::Result<Report> {
    let mut report = Report::default();
    for (instance, files) in all_chains(dir)? {
        let mut chain = Chain::default();
        let mut lines = 0u64;
        for file in &files {
            let text = fs::read(file)?;
            let body = text.strip_suffix(b"\n").unwrap_or(&text);
            if body.is_empty() {
                continue;
            }
            for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                lines += 1;
                if let Some(what) = chain.next(line, &mut |name, sha| {
                    report.recordings += 1;
                    check_recording(dir, name, sha)
                }) {
                    report.problem(file, i + 1, what);
                }
            }
        }
        report.chains.push((instance, files.len(), lines));
    }
    Ok(report)
}

fn check_recording(dir: &Path, name: &str, sha: &str) -> Option<String> {
    // Names are written by the gateway as `recordings/<file>`; anything else is not ours.
    if name.contains("..") || name.starts_with('/') {
        return Some(format!(
            "names a recording outside the audit directory: {name}"
        ));
    }
    match fs::read(dir.join(name)) {
        Err(e) => Some(format!("its recording {name} cannot be read: {e}")),
        Ok(bytes) if link(&bytes) != sha => Some(format!(
            "its recording {name} was changed (SHA-256 differs from the one recorded)"
        )),
        Ok(_) => None,
    }
}

/// One chain's state while walking it.
#[derive(Default)]
struct Chain {
    /// The previous line's link and seq; None before the first line.
    last: Option<(String, u64)>,
}

impl Chain {
    /// Checks one line; returns what is wrong with it, if anything. Whatever is wrong, the
    /// walk goes on from this line, so each break is reported once.
    fn next(
        &mut self,
        line: &[u8],
        recording: &mut dyn FnMut(&str, &str) -> Option<String>,
    ) -> Option<String> {
        let own = link(line);
        let parsed: Option<serde_json::Value> = serde_json::from_slice(line).ok();
        let Some(v) = parsed else {
            self.last = None;
            return Some("not a JSON object: the line was changed or cut".to_string());
        };
        let seq = v.get("seq").and_then(|s| s.as_u64());
        let prev = v.get("prev").and_then(|p| p.as_str()).map(str::to_string);
        let version = v.get("v").and_then(|x| x.as_u64());
        let result = match (seq, prev, version) {
            (_, _, Some(ver)) if ver != 1 => Some(format!("schema version {ver} is not known")),
            (Some(seq), Some(prev), _) => self.link_problem(seq, &prev),
            _ => Some("has no seq or prev field: the line was changed".to_string()),
        };
        let recording_problem = match (
            v.get("recording").and_then(|r| r.as_str()),
            v.get("recording_sha256").and_then(|r| r.as_str()),
        ) {
            (Some(name), Some(sha)) => recording(name, sha),
            _ => None,
        };
        self.last = seq.map(|s| (own, s));
        match (result, recording_problem) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        }
    }

    fn link_problem(&self, seq: u64, prev: &str) -> Option<String> {
        match &self.last {
            None if prev == GENESIS && seq == 0 => None,
            None if seq == 0 => Some("the first line does not start the chain".to_string()),
            None => Some(format!(
                "the chain starts at seq {seq}: the lines before it (or the files holding \
                 them) were removed"
            )),
            Some((last_link, last_seq)) => {
                if prev == last_link && seq == last_seq + 1 {
                    None
                } else if seq == last_seq + 1 {
                    Some(format!(
                        "does not link to the line before it (seq {last_seq}): that line was \
                         changed, or this one was"
                    ))
                } else if seq > last_seq + 1 {
                    let n = seq - last_seq - 1;
                    Some(format!(
                        "{n} line(s) before this one were removed (seq {last_seq} is followed \
                         by {seq})"
                    ))
                } else {
                    Some(format!(
                        "lines were inserted or reordered here (seq {seq} after {last_seq})"
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::event::{Body, Event, Record};
    use super::super::log::{instance_files, Writer};
    use super::*;
    use std::time::SystemTime;

    fn log_with(lines: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), "gw").unwrap();
        for n in 0..lines {
            w.push(&Record {
                time: SystemTime::now(),
                session: None,
                body: Body::Core(Event::SessionWarning {
                    message: format!("line {n}"),
                }),
            });
        }
        w.flush().unwrap();
        let file = instance_files(dir.path(), "gw").unwrap().remove(0);
        (dir, file)
    }

    fn edit(file: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        f(&mut lines);
        fs::write(file, lines.join("\n") + "\n").unwrap();
    }

    fn problems(dir: &Path) -> Vec<(usize, String)> {
        let report = verify_dir(dir).unwrap();
        report
            .problems
            .iter()
            .map(|p| (p.line, p.what.clone()))
            .collect()
    }

    #[test]
    fn an_untouched_log_verifies() {
        let (dir, _) = log_with(5);
        let report = verify_dir(dir.path()).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.chains, vec![("gw".to_string(), 1, 5)]);
    }

    #[test]
    fn an_edited_line_is_named() {
        let (dir, file) = log_with(5);
        edit(&file, |l| l[2] = l[2].replace("line 2", "line X"));
        let p = problems(dir.path());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, 4);
        assert!(p[0].1.contains("changed"), "{p:?}");
    }

    #[test]
    fn a_deleted_line_is_named() {
        let (dir, file) = log_with(5);
        edit(&file, |l| {
            l.remove(2);
        });
        let p = problems(dir.path());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, 3);
        assert!(
            p[0].1.contains("1 line(s) before this one were removed"),
            "{p:?}"
        );
    }

    #[test]
    fn an_inserted_line_is_named() {
        let (dir, file) = log_with(5);
        edit(&file, |l| {
            let copy = l[1].clone();
            l.insert(3, copy);
        });
        let p = problems(dir.path());
        assert!(!p.is_empty());
        assert_eq!(p[0].0, 4, "{p:?}");
        assert!(p[0].1.contains("inserted or reordered"), "{p:?}");
    }

    #[test]
    fn swapped_lines_are_named() {
        let (dir, file) = log_with(5);
        edit(&file, |l| l.swap(1, 2));
        let p = problems(dir.path());
        assert!(!p.is_empty());
        assert_eq!(p[0].0, 2, "{p:?}");
    }

    #[test]
    fn a_removed_first_line_is_named() {
        let (dir, file) = log_with(3);
        edit(&file, |l| {
            l.remove(0);
        });
        let p = problems(dir.path());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, 1);
        assert!(p[0].1.contains("starts at seq 1"), "{p:?}");
    }
}
