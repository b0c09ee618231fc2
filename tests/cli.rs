//! The command line as a technician uses it.

mod common;

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
fn regression_check_config_speaks_words_not_rust_debug_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phygate.toml");
    std::fs::write(&path, GOOD).unwrap();
    let out = phygate(&["check-config", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    for words in [
        "station gate-1 (gate)",
        "terminator CR, AIM ids off",
        "synchronous full, quota 256 MiB, max age 7 days",
        "batches of up to 500 events / 256 KiB",
    ] {
        assert!(text.contains(words), "{words:?} not in:\n{text}");
    }
    for debug in ["Cr,", "(Gate)", "Full", "7days", "Some(", "None"] {
        assert!(!text.contains(debug), "{debug:?} in:\n{text}");
    }
}

#[test]
fn regression_check_config_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phygate.toml");
    std::fs::write(&path, GOOD).unwrap();
    // `phygate check-config x.toml | head -c 10`, with the reader already gone.
    let out = Command::new(env!("CARGO_BIN_EXE_phygate"))
        .args(["check-config", path.to_str().unwrap()])
        .stdout(common::closed_pipe())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
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
        text.contains(&format!("{}:13: field `buad`", path.display())),
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
        text.contains(":8: field `device[0].station`: no station \"gate-2\""),
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

#[test]
fn token_verify_gives_the_gateways_verdicts_and_refuses_a_suffixed_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(phygate(&["token", "keygen", "--kid", "k1", "--dir", d]));
    let key = format!("{d}/k1.key");
    let jwks = format!("{d}/jwks.json");
    let mint = |user: &str| {
        ok(phygate(&[
            "token", "mint", "--key", &key, "--kid", "k1", "--user", user, "--tenant", "acme",
        ]))
        .trim()
        .to_owned()
    };
    let verify = |code: &str| {
        let out = phygate(&[
            "token", "verify", code, "--jwks", &jwks, "--tenant", "acme", "--store", "s1",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let first = stdout.lines().next().unwrap_or_default().to_owned();
        (out.status.success(), first)
    };
    let token = mint("alice");
    assert_eq!(verify(&token), (true, "valid".into()));
    assert_eq!(
        verify(&format!("https://app.example/e?t={token}")),
        (true, "valid".into())
    );
    let (signed, _) = token.rsplit_once('.').unwrap();
    for code in [
        format!("{token}.x"),
        format!("{token}=="),
        format!("]Q1{token}"),
        format!("https://app.example/e#t={token}"),
        signed.to_owned(),
    ] {
        assert_eq!(verify(&code), (true, "malformed".into()), "{code}");
    }
    // No JWT prefix: not a token (a gateway forwards it as a plain code).
    let (success, _) = verify("4006381333931");
    assert!(!success);
    // `mint` refuses what `verify` would call malformed.
    let out = phygate(&[
        "token", "mint", "--key", &key, "--kid", "k1", "--user", "bob\n", "--tenant", "acme",
    ]);
    assert!(!out.status.success(), "a user id with a newline was minted");
}
