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

/// The kind of a scanned code. `AppToken` is exactly what `token::extract_token` takes for a
/// token attempt (any code containing `eyJ`, see `token::JWT_PREFIX`): the link forwards the
/// payload of every other kind to HQ verbatim, so this must never say anything else for a code
/// the verifier would look at. The token rule lives there alone.
pub fn classify_code(payload: &str) -> CodeKind {
    if super::token::extract_token(payload).is_some() {
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
        assert_eq!(
            classify_code("https://www.youtube.com/watch?v=abc&t=42"),
            CodeKind::Url
        );
        // Anything containing the JWT prefix is a token attempt, whatever its shape.
        for attempt in [
            "eyJ.a.b.c",
            "eyJ",
            "x eyJ y",
            "https://shop.example/p?s=eyJ9",
        ] {
            assert_eq!(classify_code(attempt), CodeKind::AppToken, "{attempt}");
        }
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
