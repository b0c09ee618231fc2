//! `phygate token`: app-token tools for HQ engineers, technicians and tests. Generate a signing
//! key and its JWKS, mint a token for a user, render it as the QR code the app would show,
//! verify a token as the gateway would, and compute an NFC card hash.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};

use crate::link::jwks::{
    generate_key, jwks_json, signing_key_from_base64url, signing_key_to_base64url, KeySet,
};
use crate::link::token::{
    is_printable_text, mint, verify, Claims, Purpose, VerifyContext, SUB_LEN,
};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Generate an Ed25519 signing key: writes DIR/KID.key (private, keep it at HQ) and adds the
    /// public key to DIR/jwks.json (what gateways get in config or on the keys topic).
    Keygen {
        #[arg(long)]
        kid: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Mint a token for an app user; prints it (or the app URL carrying it).
    Mint {
        /// The private key file written by `keygen`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        kid: String,
        /// The app user id (`sub`).
        #[arg(long)]
        user: String,
        /// The tenant (`aud`).
        #[arg(long)]
        tenant: String,
        /// Limit the token to these stores (repeat).
        #[arg(long = "store")]
        stores: Vec<String>,
        #[arg(long, value_enum)]
        purpose: Option<PurposeArg>,
        /// Lifetime (at most 5m).
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Wrap the token in this app URL as `?t=` (so a phone's own camera opens the app).
        #[arg(long)]
        url: Option<String>,
        /// Also write the QR code the app would show, as a PNG.
        #[arg(long)]
        png: Option<PathBuf>,
    },
    /// Check a token (or an app URL carrying one) as a gateway of `store` would; prints the verdict.
    Verify {
        token: String,
        #[arg(long)]
        jwks: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        store: String,
    },
    /// The card hash of an NFC UID under the tenant card key (docs/protocols.md §6), e.g. to build a
    /// member map at HQ.
    CardHash {
        /// The tenant card key, base64url of 32 bytes.
        #[arg(long)]
        card_key: String,
        /// The UID as hex, e.g. 04A1B2C3D4E5F6.
        #[arg(long)]
        uid: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PurposeArg {
    Entry,
    Checkin,
    Link,
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Keygen { kid, dir } => keygen(&kid, &dir),
        TokenCommand::Mint {
            key,
            kid,
            user,
            tenant,
            stores,
            purpose,
            ttl,
            url,
            png,
        } => {
            if ttl > Duration::from_secs(300) || ttl.is_zero() {
                bail!("--ttl must be between 1s and 5m (gateways refuse longer-lived tokens)");
            }
            if !is_printable_text(&user, SUB_LEN) {
                bail!(
                    "--user must be {}-{} characters of printable text, without control \
                     characters or spaces at either end (gateways refuse other user ids)",
                    SUB_LEN.start(),
                    SUB_LEN.end()
                );
            }
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let signing = signing_key_from_base64url(&text)
                .context("not a key written by `phygate token keygen`")?;
            let pur = purpose.map(|p| match p {
                PurposeArg::Entry => Purpose::Entry,
                PurposeArg::Checkin => Purpose::Checkin,
                PurposeArg::Link => Purpose::Link,
            });
            let stores = (!stores.is_empty()).then_some(stores);
            let claims = Claims::fresh(&user, &tenant, pur, stores, ttl);
            let token = mint(&signing, &kid, &claims);
            let content = match url {
                Some(u) => format!("{u}{}t={token}", if u.contains('?') { '&' } else { '?' }),
                None => token,
            };
            if let Some(png) = png {
                write_qr_png(&content, &png)?;
                eprintln!("QR code written to {}", png.display());
            }
            crate::outln!("{content}")?;
            Ok(())
        }
        TokenCommand::Verify {
            token,
            jwks,
            tenant,
            store,
        } => {
            let text = std::fs::read_to_string(&jwks)
                .with_context(|| format!("reading {}", jwks.display()))?;
            let keys = KeySet::from_jwks_json(&text)?;
            // The gateway's own rule, so the verdict printed is the one a scan would get.
            let Some(token) = crate::link::token::extract_token(&token) else {
                bail!(
                    "not an app token: it neither contains `{}` (how a compact JWT's `{{\"` header \
                     begins) nor has a token's three-segment shape with a JSON header (a gateway \
                     forwards such a code to HQ as it is)",
                    crate::link::token::JWT_PREFIX
                );
            };
            let ctx = VerifyContext {
                tenant: &tenant,
                store: &store,
                now_unix: unix_now(),
                skew_s: 30,
            };
            let checked = verify(token, &keys, &ctx);
            crate::outln!("{}", checked.verdict.as_str())?;
            if let Some(c) = checked.claims {
                crate::outln!(
                    "user {} · expires in {} s · purpose {}",
                    c.sub,
                    c.exp - ctx.now_unix,
                    c.pur.map_or("none", Purpose::as_str)
                )?;
            }
            Ok(())
        }
        TokenCommand::CardHash { card_key, uid } => {
            let key = crate::link::cardhash::parse_card_key(&card_key)?;
            let uid = hex(&uid)?;
            crate::outln!("{}", crate::link::cardhash::card_hash(&key, &uid))?;
            Ok(())
        }
    }
}

fn keygen(kid: &str, dir: &Path) -> anyhow::Result<()> {
    if kid.is_empty()
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("--kid must be letters, digits, '-', '_' or '.'");
    }
    std::fs::create_dir_all(dir)?;
    let key_path = dir.join(format!("{kid}.key"));
    if key_path.exists() {
        bail!(
            "{} exists: pick another kid (keys are never overwritten)",
            key_path.display()
        );
    }
    let (signing, jwk) = generate_key(kid);
    write_private(&key_path, &signing_key_to_base64url(&signing))?;
    let jwks_path = dir.join("jwks.json");
    let mut keys: Vec<serde_json::Value> = match std::fs::read_to_string(&jwks_path) {
        Ok(text) => {
            let doc: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", jwks_path.display()))?;
            doc["keys"].as_array().cloned().unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    keys.push(jwk);
    std::fs::write(&jwks_path, serde_json::to_string_pretty(&jwks_json(&keys))?)?;
    crate::outln!("private key: {} (keep it at HQ)", key_path.display())?;
    crate::outln!(
        "public keys: {} ({} kid(s))",
        jwks_path.display(),
        keys.len()
    )?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{text}")?;
    Ok(())
}

/// The QR code for `content` as a PNG: 8 px per module and the 4-module quiet zone a scanner needs.
pub fn write_qr_png(content: &str, path: &Path) -> anyhow::Result<()> {
    let image = qr_image(content, 8)?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The QR code for `content`, dark modules black, `scale` px per module, with its quiet zone.
pub fn qr_image(content: &str, scale: u32) -> anyhow::Result<image::GrayImage> {
    let code =
        qrcode::QrCode::new(content.as_bytes()).context("the content does not fit in a QR code")?;
    let width = code.width() as u32;
    let quiet = 4;
    let side = (width + 2 * quiet) * scale;
    let colors = code.to_colors();
    Ok(image::GrayImage::from_fn(side, side, |x, y| {
        let (mx, my) = (x / scale, y / scale);
        let dark = mx >= quiet
            && my >= quiet
            && mx < quiet + width
            && my < quiet + width
            && colors[((my - quiet) * width + (mx - quiet)) as usize] == qrcode::Color::Dark;
        image::Luma([if dark { 0 } else { 255 }])
    }))
}

fn hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if s.len() % 2 != 0 || s.is_empty() {
        bail!("--uid must be an even number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .with_context(|| format!("{:?} is not hex", &s[i..i + 2]))
        })
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
