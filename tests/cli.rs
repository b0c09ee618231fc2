//! The command line as a technician uses it.

use std::process::Command;

fn phygate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_phygate"))
        .args(args)
        .output()
        .unwrap()
}

const GOOD: &str = r#"tenant = "acme"
store = "s1"

[[station]]
id = "gate-1"
role = "gate"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "gate-1"
port = "/dev/phygate/scanner0"

[mqtt]
host = "hq.example"
"#;

#[test]
fn check_config_accepts_a_good_file_and_says_what_would_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phygate.toml");
    std::fs::write(&path, GOOD).unwrap();
    let out = phygate(&["check-config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scanner on /dev/phygate/scanner0"), "{text}");
    assert!(text.contains("phygate/v1/acme/s1/events"), "{text}");
}

#[test]
fn check_config_names_file_line_and_field_of_each_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        GOOD.replace(
            "port = \"/dev/phygate/scanner0\"",
            "port = \"/dev/phygate/scanner0\"\nbuad = 9600",
        ),
    )
    .unwrap();
    let out = phygate(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!(
            "{}:13:1: field `device[0].buad`: unknown key `buad`; did you mean `baud`?",
            path.display()
        )),
        "{text}"
    );

    std::fs::write(
        &path,
        GOOD.replace("station = \"gate-1\"\nport", "station = \"gate-2\"\nport")
            .replace("host = \"hq.example\"", "host = \"\""),
    )
    .unwrap();
    let out = phygate(&["check-config", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("2 errors"), "{text}");
    assert!(
        text.contains(":11:1: field `device[0].station`: no station \"gate-2\""),
        "{text}"
    );
    assert!(text.contains("field `mqtt.host`"), "{text}");
}

#[test]
fn run_with_a_missing_config_fails_clearly() {
    let out = phygate(&["run", "--config", "/nonexistent/phygate.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}
