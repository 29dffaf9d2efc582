//! The checked-in `crds/` must equal what `secmetrics crds` prints, so that GitOps users who
//! apply `crds/` get exactly the schema the operator was built with.

#[test]
fn checked_in_crds_match_generated() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/secmetrics.io.yaml");
    let checked_in = std::fs::read_to_string(path).expect("read crds/secmetrics.io.yaml");
    let generated = secmetrics::api::crds_yaml().expect("generate CRDs");
    assert!(
        checked_in == generated,
        "crds/secmetrics.io.yaml is out of date: run `cargo run -- crds > crds/secmetrics.io.yaml`"
    );
}

#[test]
fn binary_prints_the_same_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secmetrics")).arg("crds").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), secmetrics::api::crds_yaml().unwrap());
}
