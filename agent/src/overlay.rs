//! Files seen through overlayfs (containers' root filesystems): which layer file is mapped.
//!
//! Receives: an open file a process maps, the path it has in that process, and the process's
//! `/proc/PID/mountinfo`. Emits: the device and inode of the layer file under the overlay, or
//! nothing when the file is not on overlayfs or its layer file cannot be verified.
//!
//! Why: a uprobe binds to the inode *under* the overlay (the kernel resolves an overlay file to
//! its layer file), while `/proc/PID/map_files` and `stat` name the overlay's own device. Two
//! containers of one image have two overlay mounts sharing the image's lower layers: the same
//! libssl inode appears under two devices. Keyed by the overlay's identity, the agent attached
//! twice; every call then ran the programs twice, and each second return found its arguments
//! already taken (counted as `call_args_missing`, a loss that did not happen).
//!
//! How: the overlay mount is found in the process's mountinfo by the file's device number; its
//! layers (upper first, then the lower ones in order) are named there as the mounter gave them,
//! which for container runtimes is the host's mount namespace, reached as `/proc/1/root` (or
//! the agent's own root when that is refused). The
//! first layer holding the file's path is the file the kernel uses. It is accepted only if its
//! inode number, size and modification time equal what the overlay reports (overlayfs passes
//! a layer file's inode number through when all layers share one filesystem; with `xino`, or a
//! file copied up from a lower layer, the numbers differ and the overlay's own identity is kept,
//! which costs a second attachment but never a miss). The result only names the file for
//! de-duplication: the probes are still attached through the process's own mapping, so a
//! forged mountinfo entry can at worst make the agent think a file is hooked that is not, and
//! the inode check makes even that require an inode-number collision across filesystems.

use std::{
    fs::{File, Metadata},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Component, Path, PathBuf},
};

/// `statfs` type of overlayfs.
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// An overlay mount as one process's `/proc/PID/mountinfo` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayMount {
    /// Device number of the overlay (what `stat` reports for its files).
    pub dev_major: u32,
    pub dev_minor: u32,
    /// The directory of the overlay that is mounted (`/` unless a bind mount of a subtree).
    pub root: PathBuf,
    /// Where it is mounted, in the process's mount namespace.
    pub mount_point: PathBuf,
    /// Layer directories, upper first, then the lower ones in lookup order (data-only lower
    /// layers excluded: lookups never find files in them).
    pub layers: Vec<PathBuf>,
}

/// The overlay mounts in a mountinfo text. Lines that are not overlay mounts, or malformed,
/// are skipped.
pub fn parse_overlay_mounts(mountinfo: &str) -> Vec<OverlayMount> {
    mountinfo.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<OverlayMount> {
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let (_id, _parent) = (fields.next()?, fields.next()?);
    let (major, minor) = fields.next()?.split_once(':')?;
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let mut tail = after.split(' ');
    if tail.next()? != "overlay" {
        return None;
    }
    let _source = tail.next()?;
    let options = tail.next()?;
    let mut upper = None;
    let mut lower = Vec::new();
    for option in options.split(',') {
        if let Some(v) = option.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(unescape(v)));
        } else if let Some(v) = option.strip_prefix("lowerdir=") {
            lower.extend(split_lowerdir(&unescape(v)));
        } else if let Some(v) = option.strip_prefix("lowerdir+=") {
            // The new mount API shows one lower layer per option.
            lower.push(PathBuf::from(unescape(v)));
        }
    }
    if lower.is_empty() {
        return None;
    }
    Some(OverlayMount {
        dev_major: major.parse().ok()?,
        dev_minor: minor.parse().ok()?,
        root: PathBuf::from(root),
        mount_point: PathBuf::from(mount_point),
        layers: upper.into_iter().chain(lower).collect(),
    })
}

/// `lowerdir=` as overlayfs shows it: layers separated by `:`, a literal colon escaped as
/// `\:`, and data-only layers after `::`, which are left out.
fn split_lowerdir(value: &str) -> Vec<PathBuf> {
    let mut layers = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&':') => {
                current.push(':');
                chars.next();
            }
            ':' if chars.peek() == Some(&':') => break,
            ':' => layers.push(PathBuf::from(std::mem::take(&mut current))),
            c => current.push(c),
        }
    }
    layers.push(PathBuf::from(current));
    layers.retain(|l| !l.as_os_str().is_empty());
    layers
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = octal
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path of `path` (as the process sees it) inside each layer of `mount`, in lookup order;
/// `None` when the path is not below the mount point or climbs out of it.
pub fn layer_paths(mount: &OverlayMount, path: &Path) -> Option<Vec<PathBuf>> {
    let rel = path.strip_prefix(&mount.mount_point).ok()?;
    let inside = mount.root.join(rel);
    let mut clean = PathBuf::new();
    for component in inside.components() {
        match component {
            Component::Normal(c) => clean.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(mount.layers.iter().map(|l| l.join(&clean)).collect())
}

/// What the overlay reports for a file, to check a layer file against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenAs {
    pub inode: u64,
    pub size: u64,
    pub mtime: (i64, i64),
}

impl SeenAs {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            inode: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// The first of `candidates` that exists is the layer file; its (device, inode) if it is the
/// file the overlay showed. `host_root` prefixes the candidates (the mounter's root).
pub fn verified_layer_file(
    host_root: &Path,
    candidates: &[PathBuf],
    seen: SeenAs,
) -> Option<(u64, u64)> {
    for candidate in candidates {
        let rel = candidate.strip_prefix("/").unwrap_or(candidate);
        let Ok(meta) = std::fs::symlink_metadata(host_root.join(rel)) else {
            continue;
        };
        // The first layer that has the name decides, whatever it holds.
        return (meta.is_file() && SeenAs::of(&meta) == seen).then(|| (meta.dev(), meta.ino()));
    }
    None
}

/// The (device, inode) of the layer file under `file`, which process `pid` maps at `path`;
/// `None` if the file is not on overlayfs or its layer file cannot be verified.
pub fn layer_file_identity(
    proc_root: &Path,
    pid: u32,
    file: &File,
    path: &Path,
) -> Option<(u64, u64)> {
    if !is_overlayfs(file) {
        return None;
    }
    let meta = file.metadata().ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let mountinfo = std::fs::read_to_string(proc_root.join(format!("{pid}/mountinfo"))).ok()?;
    let mount = parse_overlay_mounts(&mountinfo)
        .into_iter()
        .find(|m| (m.dev_major, m.dev_minor) == (major, minor))?;
    let candidates = layer_paths(&mount, path)?;
    let seen = SeenAs::of(&meta);
    // The host's root as init sees it; where that is refused (no ptrace access to pid 1, as
    // in some sandboxes), the agent's own root, which is the host's when it runs there.
    [proc_root.join("1/root"), PathBuf::from("/")]
        .iter()
        .find_map(|root| verified_layer_file(root, &candidates, seen))
}

fn is_overlayfs(file: &File) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid descriptor and a buffer of the right type for the kernel to fill.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    // SAFETY: filled by the kernel when rc == 0.
    rc == 0 && unsafe { st.assume_init() }.f_type == OVERLAYFS_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERD: &str = "\
1203 1150 0:412 / / rw,relatime master:377 - overlay overlay rw,lowerdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/88/fs:/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/87/fs,upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/91/fs,workdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/91/work
1204 1203 0:414 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1210 1203 253:1 /var/lib/kubelet/pods/x/etc-hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw";

    #[test]
    fn containerd_root_filesystem() {
        let mounts = parse_overlay_mounts(CONTAINERD);
        assert_eq!(mounts.len(), 1, "proc and ext4 lines are not overlays");
        let m = &mounts[0];
        assert_eq!((m.dev_major, m.dev_minor), (0, 412));
        assert_eq!(m.mount_point, Path::new("/"));
        let snap = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
        assert_eq!(
            m.layers,
            [91, 88, 87]
                .iter()
                .map(|n| PathBuf::from(format!("{snap}/{n}/fs")))
                .collect::<Vec<_>>(),
            "upper first, then the lower layers in order"
        );
        assert_eq!(
            layer_paths(m, Path::new("/usr/lib/libssl.so.3")).expect("below the mount")[2],
            PathBuf::from(format!("{snap}/87/fs/usr/lib/libssl.so.3"))
        );
    }

    #[test]
    fn escapes_read_only_mounts_and_data_only_layers() {
        let line = r"36 35 0:39 /sub /mnt/my\040root ro - overlay overlay ro,lowerdir=/l\0541\:x:/l2::/data,uuid=on";
        let m = &parse_overlay_mounts(line)[0];
        assert_eq!(m.mount_point, Path::new("/mnt/my root"));
        assert_eq!(m.root, Path::new("/sub"));
        assert_eq!(
            m.layers,
            vec![PathBuf::from("/l,1:x"), PathBuf::from("/l2")],
            "no upper layer; an escaped comma and colon; the data-only layer left out"
        );
        assert_eq!(
            layer_paths(m, Path::new("/mnt/my root/lib/a.so")).expect("below the mount")[1],
            Path::new("/l2/sub/lib/a.so")
        );
        assert_eq!(layer_paths(m, Path::new("/elsewhere/a.so")), None);
        assert_eq!(layer_paths(m, Path::new("/mnt/my root/../../etc/x")), None);
    }

    #[test]
    fn new_mount_api_lists_lower_layers_one_by_one() {
        let line =
            "40 1 0:50 / /m rw - overlay none rw,lowerdir+=/a,lowerdir+=/b,upperdir=/u,workdir=/w";
        assert_eq!(
            parse_overlay_mounts(line)[0].layers,
            ["/u", "/a", "/b"].map(PathBuf::from)
        );
        assert!(parse_overlay_mounts("40 1 0:50 / /m rw - overlay none rw,upperdir=/u").is_empty());
        assert!(parse_overlay_mounts("garbage").is_empty());
        assert!(parse_overlay_mounts("1 2 x / /m rw - overlay none lowerdir=/a").is_empty());
    }

    #[test]
    fn the_first_layer_with_the_name_decides_and_must_match() {
        let dir = std::env::temp_dir().join(format!("tokentap-overlay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for layer in ["upper", "lower1", "lower2"] {
            std::fs::create_dir_all(dir.join(layer).join("lib")).expect("scratch files");
        }
        std::fs::write(dir.join("lower1/lib/libssl.so.3"), b"lower one").expect("scratch files");
        std::fs::write(dir.join("lower2/lib/libssl.so.3"), b"lower two, hidden")
            .expect("scratch files");
        let meta = std::fs::metadata(dir.join("lower1/lib/libssl.so.3")).expect("scratch files");
        let candidates: Vec<PathBuf> = ["upper", "lower1", "lower2"]
            .iter()
            .map(|l| dir.join(l).join("lib/libssl.so.3"))
            .collect();
        let seen = SeenAs::of(&meta);
        assert_eq!(
            verified_layer_file(Path::new("/"), &candidates, seen),
            Some((meta.dev(), meta.ino())),
            "the upper layer lacks it: the first lower layer holds it"
        );
        let other = SeenAs {
            size: seen.size + 1,
            ..seen
        };
        assert_eq!(
            verified_layer_file(Path::new("/"), &candidates, other),
            None,
            "a size the overlay did not report: not this file, and no guessing further down"
        );
        std::fs::write(dir.join("upper/lib/libssl.so.3"), b"lower one").expect("scratch files");
        assert_eq!(
            verified_layer_file(Path::new("/"), &candidates, seen),
            None,
            "a copy in the upper layer hides the lower file and has another inode"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
