//! The deployment files agree with the binary: every container command line in every
//! Kubernetes manifest and overlay patch under `deploy/kubernetes` parses with the agent's own
//! argument parser and passes its validation, and the image, ports and node name line up.
//!
//! Unprivileged; reads files only.

use std::{
    fs,
    path::{Path, PathBuf},
};

use clap::Parser;
use tokentap::cli::{Cli, Command};
use yaml_rust2::{Yaml, YamlLoader};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// Every `.yaml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn load(path: &Path) -> Vec<Yaml> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(node: &Yaml) -> Option<Vec<String>> {
    node.as_vec().map(|v| {
        v.iter()
            .map(|s| match s {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                other => panic!("a command or args entry must be a scalar, got {other:?}"),
            })
            .collect()
    })
}

/// Every container spec (`containers`, `initContainers`) anywhere in `node`, including the
/// `value` of JSON patch operations.
fn containers<'a>(node: &'a Yaml, out: &mut Vec<&'a Yaml>) {
    match node {
        Yaml::Hash(h) => {
            for (k, v) in h {
                if matches!(k.as_str(), Some("containers" | "initContainers"))
                    && let Some(list) = v.as_vec()
                {
                    out.extend(list.iter().filter(|c| c.as_hash().is_some()));
                }
                containers(v, out);
            }
        }
        Yaml::Array(a) => a.iter().for_each(|n| containers(n, out)),
        _ => {}
    }
}

/// JSON patch operations (`- op: ..., path: ...`) that set a command line directly, which this
/// test could not check against a container.
fn command_line_json_patches(doc: &Yaml) -> Vec<String> {
    doc.as_vec()
        .into_iter()
        .flatten()
        .filter_map(|op| op["path"].as_str())
        .filter(|p| p.contains("/command") || p.contains("/args"))
        .map(str::to_owned)
        .collect()
}

/// The Dockerfile's runtime stage: its ENTRYPOINT (exec form) and CMD.
struct Image {
    entrypoint: Vec<String>,
}

fn exec_form(line: &str, instruction: &str) -> Option<Vec<String>> {
    let rest = line.strip_prefix(instruction)?.trim();
    let inner = rest.strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .collect(),
    )
}

fn image() -> Image {
    let text =
        fs::read_to_string(repo_root().join("deploy/Dockerfile")).expect("deploy/Dockerfile");
    // The last ENTRYPOINT is the image's.
    let entrypoint = text
        .lines()
        .rev()
        .find_map(|l| exec_form(l, "ENTRYPOINT"))
        .expect("the Dockerfile has an exec-form ENTRYPOINT");
    Image { entrypoint }
}

/// The argument vector a container runs: `command` (else the image's ENTRYPOINT) + `args`.
fn argv(container: &Yaml, image: &Image) -> Vec<String> {
    let mut argv = strings(&container["command"]).unwrap_or_else(|| image.entrypoint.clone());
    argv.extend(strings(&container["args"]).unwrap_or_default());
    argv
}

fn is_tokentap(container: &Yaml, image: &Image) -> bool {
    let image_name = container["image"].as_str().unwrap_or("");
    let image_name = image_name.split(['@', ':']).next().unwrap_or("");
    image_name.rsplit('/').next() == Some("tokentap")
        || strings(&container["command"])
            .and_then(|c| c.first().cloned())
            .is_some_and(|c| c == image.entrypoint[0])
}

/// Parses `argv` as the agent does (without reading a --config file) and validates it.
fn check_command_line(argv: &[String]) -> Result<Cli, String> {
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    cli.capture.validate()?;
    Ok(cli)
}

#[test]
fn every_container_command_line_is_accepted_by_the_agent() {
    let image = image();
    let files = yaml_files(&repo_root().join("deploy/kubernetes"));
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(repo_root())
            .unwrap_or(file)
            .display()
            .to_string();
        for doc in load(file) {
            for path in command_line_json_patches(&doc) {
                failures.push(format!(
                    "{rel}: JSON patch on {path}: set command lines with a strategic-merge patch (a container list) so this test sees them"
                ));
            }
            let mut found = Vec::new();
            containers(&doc, &mut found);
            for c in found {
                if c["command"].is_badvalue() && c["args"].is_badvalue() {
                    continue; // a patch that does not touch the command line
                }
                if !is_tokentap(c, &image) {
                    continue;
                }
                let argv = argv(c, &image);
                if argv.first() != image.entrypoint.first() {
                    failures.push(format!(
                        "{rel}: container {:?} runs {:?}, but the image's binary is {:?}",
                        c["name"].as_str(),
                        argv.first(),
                        image.entrypoint[0]
                    ));
                }
                match check_command_line(&argv) {
                    Ok(_) => checked.push(format!("{rel}: {}", argv.join(" "))),
                    Err(e) => failures.push(format!("{rel}: `{}`: {e}", argv.join(" "))),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        checked.iter().any(|c| c.contains("base/daemonset.yaml")),
        "the base DaemonSet's command line was not found: {checked:?}"
    );
    eprintln!("{}", checked.join("\n"));
}

#[test]
fn the_check_rejects_what_the_agent_rejects() {
    let image = image();
    let mut argv = image.entrypoint.clone();
    argv.extend(["agent", "--listen", "0.0.0.0:9464"].map(String::from));
    check_command_line(&argv).expect("a valid command line");
    let mut bogus = argv.clone();
    bogus.push("--no-such-flag".into());
    assert!(check_command_line(&bogus).is_err());
    let mut invalid = argv.clone();
    invalid.extend(["--ring-buffer-bytes", "1000"].map(String::from));
    let err = check_command_line(&invalid).expect_err("not a power of two");
    assert!(err.contains("--ring-buffer-bytes"), "{err}");
}

/// The DaemonSet's pieces agree: the agent listens where the probes, the Service and the
/// scrape annotations look, and gets the node name from the downward API.
#[test]
fn daemonset_ports_probes_and_node_name_agree() {
    let image = image();
    let docs = load(&repo_root().join("deploy/kubernetes/base/daemonset.yaml"));
    let ds = &docs[0];
    let pod = &ds["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    let cli = check_command_line(&argv(c, &image)).expect("valid command line");
    let Some(Command::Agent(agent)) = cli.command else {
        panic!("the DaemonSet must run `tokentap agent` explicitly");
    };
    let listen_port = i64::from(agent.listen.port());
    let metrics_port = c["ports"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .and_then(|p| p["containerPort"].as_i64());
    assert_eq!(
        metrics_port,
        Some(listen_port),
        "containerPort `metrics` = --listen port"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(listen_port.to_string().as_str())
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{probe}"
        );
    }
    let node_name = c["env"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|e| e["name"].as_str() == Some("NODE_NAME"))
        .expect("NODE_NAME in env");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("spec.nodeName")
    );
    assert_eq!(pod["spec"]["hostPID"].as_bool(), Some(true));
    // --proc-root points at the host's /proc mount.
    let proc_mount = c["volumeMounts"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str() == cli.capture.proc_root.to_str())
        .unwrap_or_else(|| {
            panic!(
                "no volume mounted at --proc-root {:?}",
                cli.capture.proc_root
            )
        });
    assert_eq!(proc_mount["readOnly"].as_bool(), Some(true));
    let service = &load(&repo_root().join("deploy/kubernetes/base/service.yaml"))[0];
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("metrics")
    );
}

/// The Dockerfile builds what the manifests run: sources it copies exist and are not in
/// .dockerignore, `COPY --from` names a stage, and the binary lands at the ENTRYPOINT.
#[test]
fn dockerfile_stages_and_paths_exist() {
    let root = repo_root();
    let text = fs::read_to_string(root.join("deploy/Dockerfile")).expect("deploy/Dockerfile");
    let ignored: Vec<String> = fs::read_to_string(root.join(".dockerignore"))
        .expect(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut stages = Vec::new();
    let mut copied_to = Vec::new();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("FROM") => {
                if let [_, _, as_kw, name] = words[..]
                    && as_kw.eq_ignore_ascii_case("as")
                {
                    stages.push(name.to_owned());
                }
            }
            Some("COPY") => {
                let from = words.iter().find_map(|w| w.strip_prefix("--from="));
                let paths: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (dest, sources) = paths.split_last().expect("COPY has a destination");
                match from {
                    Some(stage) => {
                        assert!(
                            stages.iter().any(|s| s == stage),
                            "COPY --from={stage}: no such stage"
                        );
                        copied_to.push((*dest).to_owned());
                    }
                    None => {
                        for src in sources {
                            assert!(
                                root.join(src).exists(),
                                "COPY {src}: missing in the repository"
                            );
                            let top = src.trim_end_matches('/');
                            assert!(
                                !ignored.iter().any(|i| i == top),
                                "COPY {src}: excluded by .dockerignore"
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    let entry = &image().entrypoint[0];
    assert!(
        copied_to.iter().any(|d| d == entry),
        "the runtime stage copies the binary to the ENTRYPOINT {entry}: {copied_to:?}"
    );
    for needed in ["target", ".git"] {
        assert!(
            ignored.iter().any(|i| i == needed),
            ".dockerignore keeps {needed} out of the context"
        );
    }
}
