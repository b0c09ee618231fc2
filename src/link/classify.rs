//! What kind of code a payload is (`data.kind` of `store.qr.scanned`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    AppToken,
    Url,
    Product,
    Other,
}

impl CodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::AppToken => "app_token",
            CodeKind::Url => "url",
            CodeKind::Product => "product",
            CodeKind::Other => "other",
        }
    }
}

/// A compact JWT: three base64url segments, the header a JSON object (`eyJ` = `{"`).
pub fn looks_like_jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let segments: [Option<&str>; 3] = [parts.next(), parts.next(), parts.next()];
    parts.next().is_none()
        && segments.iter().all(|p| {
            p.is_some_and(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        })
        && s.starts_with("eyJ")
}

/// The token in an app URL's `t` query parameter, if any.
pub fn token_in_url(s: &str) -> Option<&str> {
    let (_, query) = s.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("t="))
        .filter(|t| looks_like_jwt(t))
}

pub fn classify_code(payload: &str) -> CodeKind {
    // Whatever the token verifier would take for a token is one here too (an unsigned token,
    // one with spaces around it): the payload of any other kind is forwarded to HQ verbatim.
    if looks_like_jwt(payload)
        || token_in_url(payload).is_some()
        || super::token::extract_token(payload).is_some()
    {
        CodeKind::AppToken
    } else if payload.starts_with("http://") || payload.starts_with("https://") {
        CodeKind::Url
    } else if matches!(payload.len(), 8 | 12 | 13 | 14)
        && payload.bytes().all(|b| b.is_ascii_digit())
    {
        // EAN-8, UPC-A, EAN-13, GTIN-14.
        CodeKind::Product
    } else {
        CodeKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl";
        assert_eq!(classify_code(jwt), CodeKind::AppToken);
        assert_eq!(
            classify_code(&format!("https://app.example/e?x=1&t={jwt}#f")),
            CodeKind::AppToken
        );
        assert_eq!(classify_code("https://shop.example/p/123"), CodeKind::Url);
        assert_eq!(classify_code("4006381333931"), CodeKind::Product);
        assert_eq!(classify_code("HELLO"), CodeKind::Other);
        assert_eq!(classify_code("eyJ.a.b.c"), CodeKind::Other);
    }

    #[test]
    fn regression_every_code_the_verifier_takes_for_a_token_is_withheld() {
        // Found by the hostile-input property test: these were `other` (payload forwarded to
        // HQ) while `token::extract_token` took them for tokens.
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl";
        for code in [
            format!(" {jwt}\r"),
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.".to_string(),
            "eyJ.-.".to_string(),
        ] {
            assert!(
                super::super::token::extract_token(&code).is_some(),
                "{code:?}"
            );
            assert_eq!(classify_code(&code), CodeKind::AppToken, "{code:?}");
        }
    }
}
