//! Finding the libraries to hook: OpenSSL's libssl, and the dynamic loader (whose debugger
//! hook says when a process has loaded a new library).
//!
//! Receives: a pid (or nothing, for the host's standard library directories). Emits:
//! [`LibraryFile`]s: an open file descriptor on the exact file, with its kind, device and
//! inode, so that each distinct file is attached once however many processes or paths share
//! it.
//!
//! A path in `/proc/PID/maps` is only a name inside that process's mount namespace, and a
//! container controls it. Files are therefore opened through `/proc/PID/map_files/` (the very
//! file that is mapped) or, where that is not permitted, resolved with `openat2` and
//! `RESOLVE_IN_ROOT` beneath `/proc/PID/root`, and accepted only if their device and inode
//! match what the kernel reports as mapped. A crafted path cannot steer a probe onto a file
//! outside the container.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

/// A file mapped into a process, as `/proc/PID/maps` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    /// `major:minor` as the kernel prints it (hex).
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    pub path: PathBuf,
}

/// Parses `/proc/PID/maps`. Anonymous and pseudo mappings and deleted files are skipped.
pub fn parse_maps(text: &str) -> Vec<MappedFile> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MappedFile> {
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let _offset = field();
    let dev = field();
    let inode: u64 = field().parse().ok()?;
    let path = rest.trim_start_matches(' ');
    if inode == 0 || !path.starts_with('/') || path.ends_with(" (deleted)") {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    Some(MappedFile {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_owned(),
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode,
        path: PathBuf::from(path),
    })
}

/// What a library file is to tokentap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LibraryKind {
    /// OpenSSL's libssl (or BoringSSL's shared one, same functions): the TLS hooks go here.
    OpenSsl,
    /// glibc's or musl's dynamic loader: `_dl_debug_state` reports library loads.
    DynamicLoader,
    /// A process's executable, hooked if it is a Go program linking `crypto/tls`.
    GoExecutable,
    /// Another executable or library with OpenSSL or BoringSSL compiled in (Node.js, a static
    /// build): hooked at the file offsets its symbol tables give
    /// ([`crate::tls_stacks::elf_symbols`]).
    EmbeddedOpenSsl,
}

impl LibraryKind {
    /// Whether TLS plaintext is captured from this file (not the loader).
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            LibraryKind::OpenSsl | LibraryKind::EmbeddedOpenSsl | LibraryKind::GoExecutable
        )
    }
}

/// The kind of library a path names, if tokentap hooks it.
pub fn classify(path: &Path) -> Option<LibraryKind> {
    if is_openssl_libssl(path) {
        return Some(LibraryKind::OpenSsl);
    }
    let name = path.file_name()?.as_bytes();
    (name.starts_with(b"ld-linux") || name.starts_with(b"ld-musl") || name == b"ld64.so.2")
        .then_some(LibraryKind::DynamicLoader)
}

/// Whether a file name is OpenSSL's libssl (`libssl.so`, `libssl.so.3`, `libssl.so.1.1`), and
/// not NSS's similarly named `libssl3.so`.
pub fn is_openssl_libssl(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.as_bytes().starts_with(b"libssl.so"))
        .unwrap_or(false)
}

/// One distinct library file, held open.
#[derive(Debug)]
pub struct LibraryFile {
    pub kind: LibraryKind,
    pub file: File,
    pub dev: u64,
    pub inode: u64,
    /// Where it was found, for people: `/usr/lib/.../libssl.so.3`, or the path inside a
    /// process with its pid.
    pub display: String,
    /// File offsets of the hooked functions, for files whose functions are not attached by
    /// name ([`LibraryKind::EmbeddedOpenSsl`]); empty otherwise.
    pub offsets: Vec<(&'static str, u64)>,
}

impl LibraryFile {
    /// A path the kernel resolves to exactly this open file (for `perf_event_open`).
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    fn from_file(kind: LibraryKind, file: File, display: String) -> io::Result<Self> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Self {
            kind,
            dev: meta.dev(),
            inode: meta.ino(),
            file,
            display,
            offsets: Vec::new(),
        })
    }

    /// A file on overlayfs is named by the layer file under it, where the uprobes land, so
    /// that containers sharing an image layer share one attachment ([`crate::overlay`]).
    fn named_by_layer(mut self, proc_root: &Path, pid: u32, path: &Path) -> Self {
        if let Some((dev, inode)) =
            crate::overlay::layer_file_identity(proc_root, pid, &self.file, path)
        {
            log::debug!(
                "{}: overlay file, layer file is device {dev:#x} inode {inode}",
                self.display
            );
            (self.dev, self.inode) = (dev, inode);
        }
        self
    }
}

/// Why a mapped library could not be opened safely.
#[derive(Debug, thiserror::Error)]
pub enum OpenLibraryError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "{path} resolves to inode {found} inside pid {pid}'s root, but inode {mapped} is mapped"
    )]
    InodeMismatch {
        pid: u32,
        path: String,
        found: u64,
        mapped: u64,
    },
}

/// The libraries `pid` has mapped that tokentap hooks, opened safely. Errors for single files are
/// returned alongside, so one bad entry never hides the others.
pub fn process_libraries(
    proc_root: &Path,
    pid: u32,
) -> io::Result<(Vec<LibraryFile>, Vec<OpenLibraryError>)> {
    let maps = std::fs::read_to_string(proc_root.join(format!("{pid}/maps")))?;
    let mut seen = Vec::new();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for m in parse_maps(&maps) {
        // Per device: two files of one process may share an inode number on different mounts.
        let id = (m.dev_major, m.dev_minor, m.inode);
        if seen.contains(&id) {
            continue;
        }
        let Some(kind) = classify(&m.path) else {
            // Any other executable mapping may have OpenSSL compiled in (scanned once per file;
            // a file's read-only mappings come first and must not mark it as seen).
            if m.perms.contains('x') {
                seen.push(id);
                match embedded_openssl(proc_root, pid, &m) {
                    Ok(Some(lib)) => found.push(lib),
                    Ok(None) => {}
                    // Most such files have no TLS at all: not worth a warning every rescan.
                    Err(e) => log::debug!("pid {pid}: {}: {e}", m.path.display()),
                }
            }
            continue;
        };
        seen.push(id);
        match open_mapped(proc_root, pid, &m, kind) {
            Ok(lib) => found.push(lib),
            Err(e) => errors.push(e),
        }
    }
    unless_gone(proc_root, pid, (found, errors))
}

/// A process that exits while it is scanned makes its files fail to open: that is not a
/// problem with its libraries. When the process is gone by the time they failed, the scan
/// says the process is gone (as if its maps had been unreadable) instead.
fn unless_gone(
    proc_root: &Path,
    pid: u32,
    scanned: (Vec<LibraryFile>, Vec<OpenLibraryError>),
) -> io::Result<(Vec<LibraryFile>, Vec<OpenLibraryError>)> {
    if !scanned.1.is_empty() && !proc_root.join(pid.to_string()).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the process exited during the scan",
        ));
    }
    Ok(scanned)
}

/// A mapped file with OpenSSL's functions defined in it, with their file offsets.
fn embedded_openssl(
    proc_root: &Path,
    pid: u32,
    m: &MappedFile,
) -> Result<Option<LibraryFile>, OpenLibraryError> {
    let file = open_mapped_file(proc_root, pid, m)?;
    let info = crate::tls_stacks::elf_symbols::scan_cached(&file)?;
    if !info.hookable_ssl() {
        return Ok(None);
    }
    let display = match &info.symbols_from {
        Some(debug) => format!(
            "{} (pid {pid}, symbols from {})",
            m.path.display(),
            debug.display()
        ),
        None => format!("{} (pid {pid})", m.path.display()),
    };
    let mut lib = LibraryFile::from_file(LibraryKind::EmbeddedOpenSsl, file, display)?
        .named_by_layer(proc_root, pid, &m.path);
    lib.offsets = info.ssl_functions.clone();
    Ok(Some(lib))
}

fn open_mapped(
    proc_root: &Path,
    pid: u32,
    m: &MappedFile,
    kind: LibraryKind,
) -> Result<LibraryFile, OpenLibraryError> {
    let display = format!("{} (pid {pid})", m.path.display());
    let file = open_mapped_file(proc_root, pid, m)?;
    Ok(LibraryFile::from_file(kind, file, display)?.named_by_layer(proc_root, pid, &m.path))
}

/// Opens the file behind a mapping of `pid` without following paths outside its root.
pub fn open_mapped_file(
    proc_root: &Path,
    pid: u32,
    m: &MappedFile,
) -> Result<File, OpenLibraryError> {
    // The mapped file itself; needs CAP_SYS_ADMIN (or ptrace access on newer kernels).
    let by_range = proc_root.join(format!("{pid}/map_files/{:x}-{:x}", m.start, m.end));
    if let Ok(file) = File::open(&by_range) {
        return Ok(file);
    }
    let root = File::open(proc_root.join(format!("{pid}/root")))?;
    let file = openat2_in_root(&root, &m.path)?;
    let found = file.metadata()?.ino();
    if found != m.inode {
        return Err(OpenLibraryError::InodeMismatch {
            pid,
            path: m.path.display().to_string(),
            found,
            mapped: m.inode,
        });
    }
    Ok(file)
}

/// Opens `path` read-only as if `root` were `/`: `..` and absolute symlinks stay inside it.
fn openat2_in_root(root: &File, path: &Path) -> io::Result<File> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid dirfd, NUL-terminated path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// The directories where distributions install libssl, for this architecture.
pub fn standard_library_dirs() -> Vec<PathBuf> {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/usr/lib/{multiarch}"),
        format!("/lib/{multiarch}"),
        "/usr/lib64".into(),
        "/lib64".into(),
        "/usr/lib".into(),
        "/lib".into(),
        "/usr/local/lib".into(),
        "/usr/local/lib64".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// Hooked libraries in the standard directories beneath `root` (`/`, or `/proc/1/root` to see the
/// host from a container), opened within that root.
pub fn standard_libraries(root: &Path) -> Vec<LibraryFile> {
    let Ok(root_dir) = File::open(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dir in standard_library_dirs() {
        let Ok(entries) = std::fs::read_dir(root.join(dir.strip_prefix("/").unwrap_or(&dir)))
        else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| dir.join(e.file_name()))
            .filter(|p| classify(p).is_some())
            .collect();
        names.sort();
        for path in names {
            let Some(kind) = classify(&path) else {
                continue;
            };
            if let Ok(file) = openat2_in_root(&root_dir, &path) {
                let display = if root == Path::new("/") {
                    path.display().to_string()
                } else {
                    format!("{}{}", root.display(), path.display())
                };
                if let Ok(lib) = LibraryFile::from_file(kind, file, display) {
                    out.push(lib);
                }
            }
        }
    }
    out
}

/// The executable `pid` runs, opened through `/proc/PID/exe` (the very file, whatever the
/// process's mount namespace), as a candidate Go program.
pub fn process_executable(proc_root: &Path, pid: u32) -> io::Result<LibraryFile> {
    let link = proc_root.join(format!("{pid}/exe"));
    let file = File::open(&link)?;
    let path = std::fs::read_link(&link).unwrap_or(link);
    Ok(LibraryFile::from_file(
        LibraryKind::GoExecutable,
        file,
        format!("{} (pid {pid})", path.display()),
    )?
    .named_by_layer(proc_root, pid, &path))
}

/// An OpenSSL library given on the command line.
pub fn libssl_at(path: &Path) -> io::Result<LibraryFile> {
    let file = File::open(path)?;
    LibraryFile::from_file(LibraryKind::OpenSsl, file, path.display().to_string())
}

/// Pids of all processes, from `/proc`.
pub fn all_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1311 /usr/bin/python3.11
7f0e1c000000-7f0e1c021000 rw-p 00000000 00:00 0 
7f0e1d2a0000-7f0e1d2c0000 r--p 00000000 fd:01 26431 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0e1d2c0000-7f0e1d31c000 r-xp 00020000 fd:01 26431 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0e1d400000-7f0e1d401000 r-xp 00000000 fd:01 4242 /opt/my libs/libssl.so.1.1
7f0e1d500000-7f0e1d501000 r-xp 00000000 fd:01 4343 /usr/lib/x86_64-linux-gnu/libssl3.so
7f0e1d600000-7f0e1d601000 r-xp 00000000 fd:01 4444 /tmp/libssl.so.3 (deleted)
7ffd5e9f1000-7ffd5ea12000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn parses_maps_and_picks_openssl() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 5, "{maps:#?}");
        let ssl: Vec<_> = maps.iter().filter(|m| is_openssl_libssl(&m.path)).collect();
        assert_eq!(ssl.len(), 3);
        assert_eq!(ssl[0].inode, 26431);
        assert_eq!((ssl[0].dev_major, ssl[0].dev_minor), (0xfd, 1));
        assert_eq!(ssl[1].start, 0x7f0e1d2c0000);
        assert_eq!(ssl[2].path, Path::new("/opt/my libs/libssl.so.1.1"));
    }

    #[test]
    fn nss_libssl3_is_not_openssl() {
        assert!(!is_openssl_libssl(Path::new("/usr/lib/libssl3.so")));
        assert!(is_openssl_libssl(Path::new("/usr/lib/libssl.so")));
        assert!(!is_openssl_libssl(Path::new("/usr/lib/libcrypto.so.3")));
        assert_eq!(
            classify(Path::new("/lib64/ld-linux-x86-64.so.2")),
            Some(LibraryKind::DynamicLoader)
        );
        assert_eq!(
            classify(Path::new("/lib/ld-musl-x86_64.so.1")),
            Some(LibraryKind::DynamicLoader)
        );
        assert_eq!(classify(Path::new("/usr/lib/libc.so.6")), None);
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tokentap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn resolution_stays_inside_the_root() {
        // A "container" root whose libssl path is an absolute symlink to a file outside it.
        let base = temp_dir("root");
        let outside = base.join("host-secret.so");
        std::fs::write(&outside, b"host").expect("write");
        let root = base.join("rootfs");
        std::fs::create_dir_all(root.join("lib")).expect("mkdir");
        symlink(&outside, root.join("lib/libssl.so.3")).expect("symlink");
        let root_file = File::open(&root).expect("open root");
        let err = openat2_in_root(&root_file, Path::new("/lib/libssl.so.3"));
        assert!(
            err.is_err(),
            "an absolute symlink must resolve inside the root"
        );
        // `..` cannot climb out either.
        assert!(openat2_in_root(&root_file, Path::new("/../host-secret.so")).is_err());
        // A real file inside the root opens.
        std::fs::write(root.join("lib/libssl.so.1.1"), b"inside").expect("write");
        assert!(openat2_in_root(&root_file, Path::new("/lib/libssl.so.1.1")).is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A fake `/proc` with one process `PID` whose root is `rootfs` and whose maps are `maps`;
    /// without `map_files`, so the path in the maps is what gets resolved.
    fn fake_proc(base: &Path, rootfs: &Path, maps: &str) -> PathBuf {
        let proc_root = base.join("proc");
        std::fs::create_dir_all(proc_root.join(PID.to_string())).expect("mkdir");
        std::fs::write(proc_root.join(format!("{PID}/maps")), maps).expect("maps");
        symlink(rootfs, proc_root.join(format!("{PID}/root"))).expect("root link");
        proc_root
    }

    const PID: u32 = 4321;

    fn maps_line(path: &str, inode: u64) -> String {
        format!("7f0e1d2c0000-7f0e1d31c000 r-xp 00020000 fd:01 {inode} {path}\n")
    }

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat").ino()
    }

    /// A container's maps can name any path; what gets hooked is always a file inside the
    /// container's root that is the mapped inode, or nothing.
    #[test]
    fn crafted_maps_paths_never_open_files_outside_the_container_root() {
        let base = temp_dir("crafted");
        // The host: a libssl that exists only outside the container.
        let host_lib = base.join("host/usr/lib/x86_64-linux-gnu/libssl.so.3");
        std::fs::create_dir_all(host_lib.parent().expect("dir")).expect("mkdir");
        std::fs::write(&host_lib, b"host libssl").expect("write");
        let host_inode = inode(&host_lib);
        // The container: its own libssl, and symlinks that try to point out.
        let rootfs = base.join("rootfs");
        let lib_dir = rootfs.join("lib");
        std::fs::create_dir_all(&lib_dir).expect("mkdir");
        let own = lib_dir.join("libssl.so.1.1");
        std::fs::write(&own, b"container libssl").expect("write");
        let own_inode = inode(&own);
        symlink(&host_lib, lib_dir.join("libssl.so.abs")).expect("symlink");
        symlink(
            "../../host/usr/lib/x86_64-linux-gnu/libssl.so.3",
            lib_dir.join("libssl.so.rel"),
        )
        .expect("symlink");

        let host_path = host_lib.to_str().expect("utf-8 path");
        let climbing = format!("/../../../../../..{host_path}");
        let crafted = [
            // A host path that does not exist in the container.
            maps_line("/usr/lib/x86_64-linux-gnu/libssl.so.3", host_inode),
            // The host file's absolute path on this machine, and climbing out with `..`.
            maps_line(host_path, host_inode),
            maps_line(&climbing, host_inode),
            // Symlinks inside the root that point outside it (absolute and relative).
            maps_line("/lib/libssl.so.abs", host_inode),
            maps_line("/lib/libssl.so.rel", host_inode),
            // The container's own file named with the host file's inode: not what is mapped.
            maps_line("/lib/libssl.so.1.1", host_inode),
        ];
        for (i, line) in crafted.iter().enumerate() {
            let dir = base.join(format!("case-{i}"));
            let proc_root = fake_proc(&dir, &rootfs, line);
            let (libs, errors) = process_libraries(&proc_root, PID).expect("maps read");
            assert!(libs.is_empty(), "{line}: opened {libs:?}");
            assert_eq!(errors.len(), 1, "{line}: the refusal is reported");
        }
        // `..` is clamped at the container's root rather than refused: it finds the
        // container's file, and that one is accepted when its inode is the mapped one.
        let proc_root = fake_proc(
            &base.join("own"),
            &rootfs,
            &maps_line("/../../../lib/libssl.so.1.1", own_inode),
        );
        let (libs, errors) = process_libraries(&proc_root, PID).expect("maps read");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(libs.len(), 1);
        assert_eq!(libs[0].inode, own_inode);
        assert_ne!(libs[0].inode, host_inode);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn finds_libraries_in_standard_dirs_of_a_root() {
        let root = temp_dir("std");
        let dir = root.join("usr/lib");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("libssl.so.3"), b"x").expect("write");
        std::fs::write(dir.join("libssl3.so"), b"nss").expect("write");
        std::fs::write(dir.join("ld-linux-x86-64.so.2"), b"ld").expect("write");
        let libs = standard_libraries(&root);
        assert_eq!(libs.len(), 2);
        assert_eq!(libs[0].kind, LibraryKind::DynamicLoader);
        let libs: Vec<_> = libs
            .into_iter()
            .filter(|l| l.kind == LibraryKind::OpenSsl)
            .collect();
        assert!(
            libs[0].display.ends_with("/usr/lib/libssl.so.3"),
            "{}",
            libs[0].display
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    /// OpenSSL under another file name (as inside Node or a static build) is found by its
    /// symbols and carries the functions' file offsets; a file without them is not offered.
    #[test]
    fn openssl_inside_another_file_is_found_by_symbols() {
        let base = temp_dir("embedded");
        let libssl = PathBuf::from(format!(
            "/usr/lib/{}-linux-gnu/libssl.so.3",
            std::env::consts::ARCH
        ));
        let embedded = base.join("libapp-with-tls.so");
        std::fs::copy(&libssl, &embedded).expect("copy libssl (the tests need OpenSSL 3)");
        let plain = base.join("libplain.so");
        std::fs::write(&plain, b"\x7fELF not really").expect("write");
        let inode = |p: &Path| std::fs::metadata(p).expect("stat").ino();
        let proc_root = base.join("proc");
        std::fs::create_dir_all(proc_root.join("42")).expect("mkdir");
        symlink("/", proc_root.join("42/root")).expect("symlink");
        std::fs::write(
            proc_root.join("42/maps"),
            // As the loader maps a file: its read-only headers first, then its code.
            format!(
                "7effffff0000-7effffff1000 r--p 00000000 fd:01 {} {}\n\
                 7f0000000000-7f0000001000 r-xp 00000000 fd:01 {} {}\n\
                 7f0000002000-7f0000003000 r-xp 00000000 fd:01 {} {}\n\
                 7f0000004000-7f0000005000 r--p 00000000 fd:01 {} {}\n",
                inode(&embedded),
                embedded.display(),
                inode(&embedded),
                embedded.display(),
                inode(&plain),
                plain.display(),
                inode(&embedded),
                embedded.display(),
            ),
        )
        .expect("write maps");
        let (libs, errors) = process_libraries(&proc_root, 42).expect("maps");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(libs.len(), 1, "{libs:?}");
        assert_eq!(libs[0].kind, LibraryKind::EmbeddedOpenSsl);
        let names: Vec<&str> = libs[0].offsets.iter().map(|(f, _)| *f).collect();
        for f in [
            "SSL_read",
            "SSL_read_ex",
            "SSL_write",
            "SSL_write_ex",
            "SSL_free",
        ] {
            assert!(names.contains(&f), "{f} in {names:?}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn opens_a_process_executable_itself() {
        let exe = process_executable(Path::new("/proc"), std::process::id()).expect("own exe");
        let own = std::fs::metadata(std::env::current_exe().expect("own path")).expect("stat");
        assert_eq!((exe.dev, exe.inode), (own.dev(), own.ino()));
        assert_eq!(exe.kind, LibraryKind::GoExecutable);
        assert!(
            exe.display
                .ends_with(&format!("(pid {})", std::process::id()))
        );
    }

    #[test]
    fn own_process_maps_are_readable() {
        // This test binary maps no libssl, but its dynamic loader.
        let (libs, errors) =
            process_libraries(Path::new("/proc"), std::process::id()).expect("read own maps");
        assert!(
            libs.iter().all(|l| l.kind == LibraryKind::DynamicLoader),
            "{libs:?}"
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// A fake /proc tree: `pid/maps` naming a libssl, and `pid/root` holding it.
    fn fake_process(proc_root: &Path, pid: u32, with_library: bool) {
        let dir = proc_root.join(pid.to_string());
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        let lib = root.join("usr/lib/libssl.so.3");
        std::fs::write(&lib, b"fake libssl").expect("write");
        let inode = std::fs::metadata(&lib).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        if !with_library {
            std::fs::remove_file(&lib).expect("rm");
        }
        let maps = format!(
            "7f0000000000-7f0000001000 r-xp 00000000 08:01 {} /usr/lib/libssl.so.3\n",
            inode.unwrap_or(1)
        );
        std::fs::write(dir.join("maps"), maps).expect("write maps");
    }

    #[test]
    fn vanished_proc_entries_are_errors_not_panics() {
        let proc_root = temp_dir("fakeproc");
        fake_process(&proc_root, 100, true);
        fake_process(&proc_root, 200, false);
        std::fs::create_dir_all(proc_root.join("self")).expect("mkdir");
        assert_eq!(all_pids(&proc_root), vec![100, 200]);
        // The library is there (opened through the root, its inode checked).
        let (libs, errors) = process_libraries(&proc_root, 100).expect("maps readable");
        assert_eq!((libs.len(), errors.len()), (1, 0), "{errors:?}");
        // The mapped file is gone from the root: one error for that entry, no panic.
        let (libs, errors) = process_libraries(&proc_root, 200).expect("maps readable");
        assert_eq!((libs.len(), errors.len()), (0, 1));
        // The process exits after its maps were read, before its files were opened: gone,
        // not a library problem (the agent logs these quietly).
        let scanned = process_libraries(&proc_root, 200).expect("maps readable");
        std::fs::remove_dir_all(proc_root.join("200")).expect("rm");
        let gone = unless_gone(&proc_root, 200, scanned).expect_err("gone");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert!(unless_gone(&proc_root, 200, (Vec::new(), Vec::new())).is_ok());
        // The process is gone between listing and reading.
        std::fs::remove_dir_all(proc_root.join("100")).expect("rm");
        assert!(process_libraries(&proc_root, 100).is_err());
        assert!(process_libraries(&proc_root, 999).is_err());
        // The whole tree is gone.
        std::fs::remove_dir_all(&proc_root).expect("rm");
        assert!(all_pids(&proc_root).is_empty());
    }

    #[test]
    fn processes_vanishing_during_scans_never_panic() {
        let proc_root = temp_dir("churnproc");
        for pid in 1..=200 {
            fake_process(&proc_root, pid, pid % 2 == 0);
        }
        let remover = {
            let proc_root = proc_root.clone();
            std::thread::spawn(move || {
                for pid in 1..=200u32 {
                    let _ = std::fs::remove_dir_all(proc_root.join(pid.to_string()));
                }
            })
        };
        let mut scanned = 0;
        while !remover.is_finished() || scanned == 0 {
            for pid in all_pids(&proc_root) {
                // Ok or Err depending on the race; never a panic.
                let _ = process_libraries(&proc_root, pid);
                scanned += 1;
            }
        }
        remover.join().expect("remover");
        assert!(all_pids(&proc_root).is_empty());
        let _ = std::fs::remove_dir_all(&proc_root);
    }
}
