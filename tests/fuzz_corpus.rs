//! The fuzz targets' seed corpus (and every case a fuzzer found, added to
//! it), replayed on each `cargo test`: none may panic.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus folder") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panicked", path.display());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn the_config_corpus_loads_without_panicking() {
    replay("config", spark::fuzzing::config);
}

#[test]
fn the_mail_corpus_renders_without_panicking() {
    replay("mail", spark::fuzzing::mail);
}

#[test]
fn the_render_corpus_renders_within_its_fuel() {
    replay("render", spark::fuzzing::render);
}
