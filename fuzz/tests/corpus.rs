//! Every harness over its committed corpus (`fuzz/corpus/<target>/`: the seeds plus every input
//! that once crashed) and over the seeds as built now; on stable, in seconds.

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The files of a target's corpus, sorted (so a failure names the same file every run).
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, harness) = nvmfd_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let files = corpus(target);
    let seeds = files
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .count();
    assert!(seeds > 0, "no seeds in {}", corpus_dir(target).display());
    for f in &files {
        let data = std::fs::read(f).expect("a corpus file");
        eprintln!("{target}: {}", f.display());
        harness(&data);
    }
    for (t, name, data) in nvmfd_fuzz::seeds::all() {
        if t == target {
            eprintln!("{target}: seed {name}");
            harness(&data);
        }
    }
}

#[test]
fn pdu_corpus() {
    replay("pdu");
}

#[test]
fn tcp_conn_corpus() {
    replay("tcp_conn");
}

#[test]
fn capsule_corpus() {
    replay("capsule");
}

#[test]
fn discovery_corpus() {
    replay("discovery");
}

#[test]
fn yaml_corpus() {
    replay("yaml");
}

/// Every target has a test above.
#[test]
fn every_target_is_replayed() {
    let names: Vec<&str> = nvmfd_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["pdu", "tcp_conn", "capsule", "discovery", "yaml"]);
}

/// Rewrites `fuzz/corpus/<target>/seed-*` from [`nvmfd_fuzz::seeds`]:
/// `cargo test -p nvmfd-fuzz -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes the seed corpus"]
fn write_seed_corpus() {
    for (target, name, data) in nvmfd_fuzz::seeds::all() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("create the corpus folder");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("write a seed");
    }
}
