//! The model is pure Rust on top of privmem-core and privmem-mem: it must
//! not pull in the KVM backend or kvm-ioctls (`cargo tree` of its normal
//! dependencies, transitively).

use std::process::Command;

#[test]
fn model_does_not_depend_on_the_kvm_backend() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "privmem-model",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-f",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(names.contains(&"privmem-mem"), "{tree}");
    for banned in ["privmem-kvm", "kvm-ioctls", "kvm-bindings"] {
        assert!(
            !names.contains(&banned),
            "privmem-model pulls in {banned}:\n{tree}"
        );
    }
}
