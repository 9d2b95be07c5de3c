//! `--log-exchanges PATH|-`: one JSON line per exchange record.
//!
//! Receives: finished [`ExchangeRecord`]s (after the enrichers: cost, anomalies, content).
//! Emits: each as one line of JSON to stdout (`-`) or to a file rotated by size: when a line
//! would take the file past `max_bytes`, `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`,
//! and so on up to `PATH.{files}` (older ones are deleted). Write errors are counted and
//! logged (the first, then every 1000th), never fatal: the file is reopened on the next line.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use crate::{exchanges::RecordSink, llm::ExchangeRecord};

pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_FILES: usize = 5;

/// Where lines go.
enum Target {
    Stdout,
    File {
        path: PathBuf,
        max_bytes: u64,
        files: usize,
        /// The open file and its size; `None` after an error, reopened on the next line.
        open: Option<(BufWriter<File>, u64)>,
    },
}

pub struct ExchangeLog {
    target: Target,
    /// Lines not written.
    pub write_errors: u64,
    /// Lines written.
    pub lines: u64,
    /// `tokentap_exchange_log_write_errors_total`, when exported.
    error_counter: Option<prometheus::IntCounter>,
}

impl ExchangeLog {
    /// `-` is stdout; anything else a file, rotated past `max_bytes`, keeping `files` old ones.
    pub fn new(path: &Path, max_bytes: u64, files: usize) -> Self {
        let target = if path == Path::new("-") {
            Target::Stdout
        } else {
            Target::File {
                path: path.to_owned(),
                max_bytes: max_bytes.max(1),
                files,
                open: None,
            }
        };
        Self {
            target,
            write_errors: 0,
            lines: 0,
            error_counter: None,
        }
    }

    /// Also counts write errors in `tokentap_exchange_log_write_errors_total` of `registry`.
    pub fn with_error_metric(mut self, registry: &prometheus::Registry) -> Self {
        let counter = prometheus::IntCounter::new(
            "tokentap_exchange_log_write_errors_total",
            "Exchange records that could not be written to --log-exchanges.",
        )
        .expect("valid counter definition");
        if let Err(e) = registry.register(Box::new(counter.clone())) {
            log::warn!("tokentap_exchange_log_write_errors_total not registered: {e}");
        }
        self.error_counter = Some(counter);
        self
    }

    fn count_error(&mut self) {
        self.write_errors += 1;
        if let Some(c) = &self.error_counter {
            c.inc();
        }
    }

    /// Opens the file now, so a bad path is reported at start.
    pub fn open(&mut self) -> io::Result<()> {
        if let Target::File { path, open, .. } = &mut self.target {
            *open = Some(open_append(path)?);
        }
        Ok(())
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match &mut self.target {
            Target::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Target::File {
                path,
                max_bytes,
                files,
                open,
            } => {
                let len = line.len() as u64;
                if let Some((w, size)) = open.as_mut()
                    && *size > 0
                    && *size + len > *max_bytes
                {
                    w.flush()?;
                    *open = None;
                    rotate(path, *files)?;
                }
                if open.is_none() {
                    *open = Some(open_append(path)?);
                }
                let Some((w, size)) = open.as_mut() else {
                    return Err(io::Error::other("log file not open"));
                };
                let result = w.write_all(line).and_then(|()| w.flush());
                if result.is_err() {
                    *open = None;
                } else {
                    *size += len;
                }
                result
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    // Owner-only: with --capture-content the file holds prompts and completions.
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?
    };
    let size = f.metadata()?.len();
    Ok((BufWriter::new(f), size))
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// `PATH.{files-1}` → `PATH.{files}`, …, `PATH` → `PATH.1`; with `files` 0, `PATH` is removed.
fn rotate(path: &Path, files: usize) -> io::Result<()> {
    if files == 0 {
        return fs::remove_file(path);
    }
    let _ = fs::remove_file(numbered(path, files));
    for n in (1..files).rev() {
        let from = numbered(path, n);
        if from.exists() {
            fs::rename(&from, numbered(path, n + 1))?;
        }
    }
    fs::rename(path, numbered(path, 1))
}

impl RecordSink for ExchangeLog {
    fn record(&mut self, record: &ExchangeRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                self.count_error();
                log::warn!("--log-exchanges: cannot serialise a record: {e}");
                return;
            }
        };
        line.push(b'\n');
        match self.write_line(&line) {
            Ok(()) => self.lines += 1,
            Err(e) => {
                self.count_error();
                if self.write_errors % 1000 == 1 {
                    log::warn!(
                        "--log-exchanges: {} lines not written so far: {e}",
                        self.write_errors
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tokentap-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn record(n: u32) -> ExchangeRecord {
        ExchangeRecord {
            provider: "openai".into(),
            pid: n,
            ..ExchangeRecord::default()
        }
    }

    #[test]
    fn one_json_line_per_record() {
        let dir = temp_dir("lines");
        let path = dir.join("x.jsonl");
        let mut log = ExchangeLog::new(&path, DEFAULT_MAX_BYTES, DEFAULT_FILES);
        log.open().expect("open");
        log.record(&record(1));
        log.record(&record(2));
        let text = fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["pid"], 2);
        assert_eq!(log.lines, 2);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = temp_dir("rotate");
        let path = dir.join("x.jsonl");
        let line_len = serde_json::to_vec(&record(100)).expect("json").len() as u64 + 1;
        // Two lines per file.
        let mut log = ExchangeLog::new(&path, 2 * line_len, 3);
        for n in 100..120 {
            log.record(&record(n));
        }
        assert_eq!(log.write_errors, 0);
        let pids = |p: &Path| -> Vec<u64> {
            fs::read_to_string(p)
                .expect("read")
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("json")["pid"]
                        .as_u64()
                        .expect("pid")
                })
                .collect()
        };
        assert_eq!(pids(&path), [118, 119]);
        assert_eq!(pids(&numbered(&path, 1)), [116, 117]);
        assert_eq!(pids(&numbered(&path, 3)), [112, 113]);
        assert!(!numbered(&path, 4).exists());
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            assert!(fs::metadata(&p).expect("meta").len() <= 2 * line_len);
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn write_errors_are_counted_not_fatal() {
        let dir = temp_dir("errors");
        let path = dir.join("missing-dir").join("x.jsonl");
        let registry = prometheus::Registry::new();
        let mut log = ExchangeLog::new(&path, 1000, 2).with_error_metric(&registry);
        assert!(log.open().is_err());
        log.record(&record(1));
        log.record(&record(2));
        assert_eq!((log.write_errors, log.lines), (2, 0));
        assert_eq!(
            log.error_counter.as_ref().map(prometheus::IntCounter::get),
            Some(2)
        );
        // The directory appears: the next line is written.
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        log.record(&record(3));
        assert_eq!((log.write_errors, log.lines), (2, 1));
        let _ = fs::remove_dir_all(dir);
    }
}
