//! `tokentap status`: the coverage view as a table (or JSON lines) for people.
//!
//! Receives: [`ProcessCoverage`] rows. Emits: text. It runs without loading any probe, so
//! "hooked" says whether tokentap's agent attaches to that stack (it has the functions'
//! locations in that file); the agent's own `tokentap_process_tls_coverage` gauge reflects what
//! it has actually attached.

use std::{fmt::Write as _, path::Path};

use serde_json::json;

use super::coverage::{
    Coverage, LlmEndpoints, ProcScanner, ProcessCoverage, StackUse, scan_mapped,
};
use crate::discovery;

/// Every process with an established TCP connection.
pub fn scan_all(proc_root: &Path, endpoints: &LlmEndpoints) -> Vec<ProcessCoverage> {
    let mut scanner = ProcScanner::new(proc_root, endpoints);
    discovery::all_pids(proc_root)
        .into_iter()
        .filter_map(|pid| scanner.process(pid, |pid, m| scan_mapped(proc_root, pid, m)))
        .collect()
}

/// The coverage of one stack use as `tokentap status` judges it.
pub fn status_coverage(s: &StackUse) -> Coverage {
    if s.hookable {
        Coverage::Hooked
    } else {
        Coverage::Unsupported
    }
}

/// One line per process and stack.
pub fn render_table(rows: &[ProcessCoverage]) -> String {
    let mut lines: Vec<[String; 6]> = vec![[
        "PID".into(),
        "EXECUTABLE".into(),
        "TLS STACK".into(),
        "HOOKED".into(),
        "TCP".into(),
        "LLM ENDPOINTS (443 or --provider IP:PORT)".into(),
    ]];
    for row in rows {
        let endpoints = if row.connections.to_llm_endpoints.is_empty() {
            "-".to_owned()
        } else {
            row.connections
                .to_llm_endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut stacks: Vec<(String, String)> = row
            .stacks
            .iter()
            .map(|s| {
                let hooked = match status_coverage(s) {
                    Coverage::Hooked => "yes",
                    _ if row.connections.to_llm_endpoints.is_empty() => "no",
                    _ => "NO (unsupported TLS to LLM endpoint)",
                };
                (s.stack.as_str().to_owned(), hooked.to_owned())
            })
            .collect();
        stacks.dedup();
        if stacks.is_empty() {
            stacks.push(("none".into(), "-".into()));
        }
        for (stack, hooked) in stacks {
            lines.push([
                row.pid.to_string(),
                row.executable.clone(),
                stack,
                hooked,
                row.connections.established.to_string(),
                endpoints.clone(),
            ]);
        }
    }
    let mut widths = [0usize; 6];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (i, (cell, w)) in l.iter().zip(widths).enumerate() {
            if i + 1 == l.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One JSON object per process.
pub fn render_json(rows: &[ProcessCoverage]) -> String {
    let mut out = String::new();
    for row in rows {
        let stacks: Vec<_> = row
            .stacks
            .iter()
            .map(|s| {
                json!({
                    "stack": s.stack.as_str(),
                    "coverage": status_coverage(s).as_str(),
                    "file": s.path,
                })
            })
            .collect();
        let value = json!({
            "pid": row.pid,
            "executable": row.executable,
            "coverage": if row.stacks.is_empty() { Some(Coverage::NoTls.as_str()) } else { None },
            "stacks": stacks,
            "tcp_established": row.connections.established,
            "llm_endpoints": row.connections.to_llm_endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        out.push_str(&value.to_string());
        out.push('\n');
    }
    out
}
