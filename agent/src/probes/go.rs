//! Attaching to Go executables: `crypto/tls.(*Conn).Write`/`.Read` entries, a uprobe on each
//! `RET` instruction of `Read` (never uretprobes: Go moves stacks), and `.Close`.
//!
//! Where the probes go is decided by the pure [`crate::go_binary`]; this is the kernel edge.
//! Every executable is looked at once per (device, inode): one attach covers every process
//! running it, and a file that is not Go, or Go without `crypto/tls`, is remembered as such.

use std::collections::{HashMap, HashSet};

use aya::programs::{UProbe, uprobe::UProbeLinkId, uprobe::UProbeScope};
use tokentap_common::programs;

use super::{AttachError, AttachOutcome, AttachedLibrary, Probes, error_chain, program};
use crate::{
    discovery::LibraryFile,
    go_binary::{self, GoBinaryError, GoTlsHooks},
};

/// The Go kernel programs, loaded with the others.
pub(super) const GO_PROGRAMS: [&str; 4] = [
    programs::GO_TLS_WRITE_ENTER,
    programs::GO_TLS_READ_ENTER,
    programs::GO_TLS_READ_RETURN,
    programs::GO_TLS_CLOSE,
];

/// What was decided about each executable file.
#[derive(Debug, Default)]
pub(super) struct GoExecutables {
    /// Not Go, or Go without `crypto/tls`: nothing to hook, nothing to report.
    ignored: HashSet<(u64, u64)>,
    /// Go with `crypto/tls` that cannot be hooked, and why (reported once).
    unsupported: HashMap<(u64, u64), (String, String)>,
}

impl Probes {
    /// Hooks Go's `crypto/tls` in the executable `exe`, if it is a Go program that links it.
    pub(super) fn attach_go_executable(
        &mut self,
        exe: &LibraryFile,
    ) -> Result<AttachOutcome, AttachError> {
        let key = (exe.dev, exe.inode);
        if self.attached.contains_key(&key)
            || self.go.ignored.contains(&key)
            || self.go.unsupported.contains_key(&key)
        {
            return Ok(AttachOutcome::AlreadyAttached);
        }
        let reject = |this: &mut Self, reason: String| {
            this.go
                .unsupported
                .insert(key, (exe.display.clone(), reason.clone()));
            Err(AttachError {
                display: exe.display.clone(),
                reason,
            })
        };
        // Reads the headers, and the symbol table and two functions only of Go programs.
        let hooks = match go_binary::analyse(&object::ReadCache::new(&exe.file)) {
            Ok(hooks) => hooks,
            Err(GoBinaryError::NotGo | GoBinaryError::NoCryptoTls) => {
                self.go.ignored.insert(key);
                return Ok(AttachOutcome::NothingToHook);
            }
            Err(e) => return reject(self, e.to_string()),
        };
        let links = match attach_hooks(self, exe, &hooks) {
            Ok(links) => links,
            Err(e) => return reject(self, e),
        };
        let attached = AttachedLibrary {
            kind: exe.kind,
            display: match hooks.found_in {
                go_binary::FunctionTable::Symtab => format!("{} ({})", exe.display, hooks.version),
                // Say so: a stripped binary's functions come from Go's own table.
                found_in => format!(
                    "{} ({}, {})",
                    exe.display,
                    hooks.version,
                    found_in.section_name()
                ),
            },
            functions: vec![go_binary::WRITE_SYMBOL, go_binary::READ_SYMBOL]
                .into_iter()
                .chain(hooks.close.map(|_| go_binary::CLOSE_SYMBOL))
                .collect(),
        };
        log::debug!(
            "{}: {links} uprobes ({} on RET instructions of Read)",
            attached.display,
            hooks.read.returns.len()
        );
        self.attached.insert(key, attached.clone());
        Ok(AttachOutcome::Attached(attached))
    }

    /// Go executables with `crypto/tls` that could not be hooked: (where, why).
    pub fn go_unsupported(&self) -> impl Iterator<Item = (&str, &str)> {
        self.go
            .unsupported
            .values()
            .map(|(display, why)| (display.as_str(), why.as_str()))
    }
}

/// Attaches all of `hooks`, returns first so that no entry is stashed without its returns
/// being watched; on any failure detaches what it attached. Returns the number of probes.
fn attach_hooks(
    probes: &mut Probes,
    exe: &LibraryFile,
    hooks: &GoTlsHooks,
) -> Result<usize, String> {
    let mut plan: Vec<(&'static str, u64)> = Vec::new();
    plan.extend(
        hooks
            .read
            .returns
            .iter()
            .map(|&o| (programs::GO_TLS_READ_RETURN, o)),
    );
    plan.push((programs::GO_TLS_WRITE_ENTER, hooks.write));
    plan.push((programs::GO_TLS_READ_ENTER, hooks.read.entry));
    if let Some(close) = hooks.close {
        plan.push((programs::GO_TLS_CLOSE, close));
    }
    let target = exe.fd_path();
    let mut done: Vec<(&'static str, UProbeLinkId)> = Vec::new();
    for &(name, offset) in &plan {
        let attached = program::<UProbe>(&mut probes.ebpf, name)
            .map_err(|e| e.to_string())
            .and_then(|prog| {
                prog.attach(offset, &target, UProbeScope::AllProcesses)
                    .map_err(|e| error_chain(&e))
            });
        match attached {
            Ok(link) => done.push((name, link)),
            Err(e) => {
                for (name, link) in done {
                    if let Ok(prog) = program::<UProbe>(&mut probes.ebpf, name) {
                        let _ = prog.detach(link);
                    }
                }
                return Err(format!("{name} at file offset {offset:#x}: {e}"));
            }
        }
    }
    Ok(plan.len())
}
