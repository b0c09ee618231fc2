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

/// The 1-based line of `text` that starts with `marker` (once).
fn line_with(text: &str, marker: &str) -> usize {
    let lines: Vec<usize> = (1..)
        .zip(text.lines())
        .filter(|(_, l)| l.starts_with(marker))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(lines.len(), 1, "{marker:?} on lines {lines:?}");
    lines[0]
}

/// A config with a mistake in nearly every table, and the files it names: a CA that is
/// missing, a client certificate and key that are not PEM, an outbox under a regular file
/// (root may write anywhere, so a read-only directory would not do).
fn broken_config(dir: &std::path::Path) -> String {
    std::fs::write(dir.join("not-pem.crt"), "this is no certificate\n").unwrap();
    std::fs::write(dir.join("a-file"), "").unwrap();
    format!(
        r#"tenant = "acme"
store = "s1"
colour = "blue"

[[station]]
id = "gate-1"
role = "gate"

[[station]]
id = "gate-2"
role = "gaet"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "gate-1"
port = "/dev/phygate/scanner0"
baud = "fast"
buad = 9600

[[device]]
kind = "gate"
id = "gate-a"
station = "gate-1"
port = "/dev/phygate/gate0"
unit = 0

[[device]]
kind = "gate"
id = "gate-b"
station = "gate-2"
port = 5
unit = 300

[outbox]
path = "{dir}/a-file/outbox/phygate.db"

[mqtt]
host = "hq.example"

[mqtt.tls]
ca = "{dir}/missing-ca.pem"
cert = "{dir}/not-pem.crt"
key = "{dir}/not-pem.crt"

[identity]
card_key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

[status]
required = ["gate-b", "scanner-1"]
"#,
        dir = dir.display()
    )
}

/// Regression (issue 10): check-config listed errors one table per run, put a device's type
/// errors on its `[[device]]` line, and passed configs `run` could not start.
#[test]
fn check_config_lists_every_mistake_in_one_run_each_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = broken_config(dir.path());
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, &text).unwrap();
    let out = phygate(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = [
        ("colour = ", "colour", "unknown key `colour`"),
        ("role = \"gaet\"", "station[1].role", "did you mean `gate`?"),
        (
            "baud = \"fast\"",
            "device[0].baud",
            "expected a whole number",
        ),
        ("buad = ", "device[0].buad", "did you mean `baud`?"),
        (
            "unit = 0",
            "device[1].unit",
            "0 is not a Modbus unit address (1-247)",
        ),
        (
            "port = 5",
            "device[2].port",
            "expected a string, found the number 5",
        ),
        (
            "unit = 300",
            "device[2].unit",
            "300 is not a Modbus unit address (1-247)",
        ),
        ("path = ", "outbox.path", "a-file is not a directory"),
        ("ca = ", "mqtt.tls.ca", "cannot read"),
        ("cert = ", "mqtt.tls.cert", "holds no PEM certificate"),
        ("key = ", "mqtt.tls.key", "holds no PEM private key"),
        (
            "card_key = ",
            "identity.card_key",
            "this looks like hex; give base64url",
        ),
    ];
    for (marker, field, message) in expected {
        let line = line_with(&text, marker);
        let want = format!("{}:{line}:1: field `{field}`: ", path.display());
        let found = stderr.lines().find(|l| l.trim_start().starts_with(&want));
        assert!(
            found.is_some_and(|l| l.contains(message)),
            "no {want}…{message}\n{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("has {} errors:", expected.len())),
        "only these, nothing twice: {stderr}"
    );
    assert!(
        !stderr.contains("u32") && !stderr.contains("u8") && !stderr.contains("Raw"),
        "no Rust names: {stderr}"
    );
    assert!(
        !dir.path().join("a-file").is_dir() && std::fs::read_dir(dir.path()).unwrap().count() == 3,
        "checking leaves nothing behind"
    );
}

/// Regression: a device that failed to parse was not "declared", so `[status] required` naming
/// it reported a second, false error.
#[test]
fn a_device_that_fails_to_parse_is_still_declared() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phygate.toml");
    let text = GOOD.replace("port = \"/dev/phygate/scanner0\"", "port = 5")
        + "\n[status]\nrequired = [\"scanner-1\"]\n";
    std::fs::write(&path, text).unwrap();
    let out = phygate(&["check-config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("1 error:"), "{stderr}");
    assert!(stderr.contains("field `device[0].port`"), "{stderr}");
    assert!(!stderr.contains("is declared"), "{stderr}");
}

/// `run` checks what check-config checks, and refuses to start with the same list.
#[test]
fn run_refuses_a_broken_config_with_the_same_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken_config(dir.path())).unwrap();
    let check = phygate(&["check-config", path.to_str().unwrap()]);
    let run = phygate(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    let listed = |out: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("  "))
            .map(str::to_string)
            .collect()
    };
    assert!(listed(&check).len() >= 8);
    assert_eq!(listed(&run), listed(&check));
}

/// The config the package installs, and each hardware profile, pass check-config once the
/// files they name exist.
#[test]
fn the_shipped_example_and_profiles_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["paris-01".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), key.serialize_pem()).unwrap();
    let here = format!("{}/", dir.path().display());
    let example = std::fs::read_to_string("hw/phygate.example.toml")
        .unwrap()
        .replace("/etc/phygate/", &here)
        .replace("/var/lib/phygate/", &here);
    let mut configs = vec![("phygate.example.toml".to_string(), example)];
    for profile in std::fs::read_dir("hw/profiles").unwrap() {
        let profile = profile.unwrap().path();
        let text = format!(
            "tenant = \"acme\"\nstore = \"s1\"\n[[station]]\nid = \"entrance\"\nrole = \"gate\"\n\
             [[station]]\nid = \"beauty-kiosk\"\nrole = \"kiosk\"\n[outbox]\npath = \"{here}p.db\"\n\
             [mqtt]\nhost = \"h\"\n{}",
            std::fs::read_to_string(&profile).unwrap()
        );
        configs.push((profile.file_name().unwrap().to_string_lossy().into(), text));
    }
    assert!(configs.len() >= 5, "the example and the four profiles");
    for (name, text) in configs {
        let path = dir.path().join(&name);
        std::fs::write(&path, text).unwrap();
        let out = phygate(&["check-config", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
