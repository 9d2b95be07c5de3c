//! Process facts that name a service: the `OTEL_SERVICE_NAME` in `/proc/PID/environ` and the
//! systemd unit in `/proc/PID/cgroup`.
//!
//! The environment holds secrets (API keys, tokens): only the one variable is kept, the rest
//! is never stored or logged, and at most [`MAX_ENVIRON_BYTES`] are read.

use std::{fs::File, io::Read, path::Path};

/// The variable that overrides a process's `service.name` (the OpenTelemetry SDKs' own).
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";
/// Bytes of `/proc/PID/environ` read at most.
pub const MAX_ENVIRON_BYTES: u64 = 64 * 1024;
/// Longest service name kept from the environment.
const MAX_SERVICE_NAME: usize = 256;

/// The value of `var` in a NUL-separated environment block; `None` when absent or empty.
pub fn env_var(environ: &[u8], var: &str) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(var.as_bytes())?.strip_prefix(b"=")?;
        let value = value.get(..MAX_SERVICE_NAME).unwrap_or(value);
        let value = String::from_utf8_lossy(value).trim().to_owned();
        (!value.is_empty()).then_some(value)
    })
}

/// `OTEL_SERVICE_NAME` of a process, read from `proc_root/PID/environ` (bounded).
pub fn read_service_name_env(proc_root: &Path, pid: u32) -> Option<String> {
    let file = File::open(proc_root.join(format!("{pid}/environ"))).ok()?;
    let mut block = Vec::new();
    file.take(MAX_ENVIRON_BYTES).read_to_end(&mut block).ok()?;
    env_var(&block, SERVICE_NAME_VAR)
}

/// The systemd service a `/proc/PID/cgroup` file puts the process in: the innermost
/// `NAME.service` segment (cgroup v2's `0::` line first, then v1's `name=systemd`), without the
/// suffix. Container scopes (`docker-<id>.scope`) and sessions are not services.
pub fn systemd_unit(cgroup: &str) -> Option<String> {
    let unit_of = |path: &str| {
        path.rsplit('/')
            .find_map(|segment| segment.strip_suffix(".service"))
            .filter(|unit| !unit.is_empty())
            .map(str::to_owned)
    };
    let mut v1 = None;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if hierarchy == "0" && controllers.is_empty() {
            if let Some(unit) = unit_of(path) {
                return Some(unit);
            }
        } else if controllers == "name=systemd" {
            v1 = unit_of(path);
        }
    }
    v1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_service_name_is_taken_from_the_environment() {
        let block = b"PATH=/usr/bin\0OPENAI_API_KEY=sk-secret\0OTEL_SERVICE_NAME=checkout-api\0OTEL_SERVICE_NAME_X=no\0";
        assert_eq!(
            env_var(block, SERVICE_NAME_VAR).as_deref(),
            Some("checkout-api")
        );
        assert_eq!(env_var(b"XOTEL_SERVICE_NAME=a\0", SERVICE_NAME_VAR), None);
        assert_eq!(env_var(b"OTEL_SERVICE_NAME=\0", SERVICE_NAME_VAR), None);
        assert_eq!(env_var(b"OTEL_SERVICE_NAME_X=a", SERVICE_NAME_VAR), None);
        let long = [b"OTEL_SERVICE_NAME=".as_slice(), &[b'a'; 10_000]].concat();
        assert_eq!(
            env_var(&long, SERVICE_NAME_VAR).map(|v| v.len()),
            Some(MAX_SERVICE_NAME)
        );
    }

    #[test]
    fn environ_is_read_from_the_proc_tree() {
        let dir = std::env::temp_dir().join(format!("tokentap-environ-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("7")).expect("dir");
        std::fs::write(dir.join("7/environ"), b"A=1\0OTEL_SERVICE_NAME=billing\0").expect("w");
        assert_eq!(read_service_name_env(&dir, 7).as_deref(), Some("billing"));
        assert_eq!(read_service_name_env(&dir, 8), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn systemd_units_from_cgroup_files() {
        assert_eq!(
            systemd_unit("0::/system.slice/nginx.service\n").as_deref(),
            Some("nginx")
        );
        assert_eq!(
            systemd_unit(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/llm-batch.service\n"
            )
            .as_deref(),
            Some("llm-batch")
        );
        assert_eq!(
            systemd_unit("12:memory:/system.slice/x.service\n1:name=systemd:/system.slice/getty@tty1.service\n")
                .as_deref(),
            Some("getty@tty1")
        );
        for none in [
            "0::/system.slice/docker-3f0a.scope\n",
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/\n",
            "garbage",
        ] {
            assert_eq!(systemd_unit(none), None, "{none}");
        }
    }
}
