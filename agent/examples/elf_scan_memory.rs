//! What one ELF scan costs in memory: scans the files given and prints the process's peak RSS
//! (VmHWM) before and after each, with the scan's result.
//!
//! ```text
//! cargo run --release -p tokentap --example elf_scan_memory -- /path/to/large/binary ...
//! ```

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: elf_scan_memory FILE...");
        std::process::exit(2);
    }
    for path in files {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let before = peak_rss_kib();
        let started = std::time::Instant::now();
        let result = tokentap::tls_stacks::elf_symbols::scan_file(&file, &[]);
        let took = started.elapsed();
        let after = peak_rss_kib();
        match result {
            Ok(info) => println!(
                "{path}: {size} bytes, peak RSS {before} -> {after} KiB, {took:?}; SSL functions {}, rustls {}, Go {}",
                info.ssl_functions.len(),
                info.rustls,
                info.go
            ),
            Err(e) => println!("{path}: {size} bytes, peak RSS {before} -> {after} KiB: {e}"),
        }
    }
}
