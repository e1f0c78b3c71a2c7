//! The authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3): [`AuthorizeRequest`] and
//! [`SalesforceClient::authorize_url`], which checks its parameters and builds the URL the
//! browser is sent to. No HTTP call happens here.
//!
//! Not here: the callback's code exchange (`token`).

use url::Url;

use super::SalesforceClient;
use crate::salesforce::SalesforceError;

/// Parameters of the authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3). No `Debug`:
/// `state` is a CSRF secret until the callback.
pub struct AuthorizeRequest<'a> {
    pub login_url: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    /// Space-separated, e.g. `api refresh_token offline_access`.
    pub scopes: &'a str,
    pub state: &'a str,
    /// base64url(SHA-256(verifier)), unpadded (RFC 7636 §4.2).
    pub code_challenge: &'a str,
    pub login_hint: Option<&'a str>,
    /// `login`, `consent`, `select_account`, space-separated.
    pub prompt: Option<&'a str>,
}

impl SalesforceClient {
    /// `{login_url}/services/oauth2/authorize?response_type=code&client_id&redirect_uri&code_challenge&code_challenge_method=S256&state&scope[&login_hint][&prompt]`
    /// (RFC 6749 §4.1.1, RFC 7636 §4.3), properly percent-encoded (spaces as `%20`).
    pub fn authorize_url(&self, req: &AuthorizeRequest<'_>) -> Result<Url, SalesforceError> {
        let origin = self.login_origin(req.login_url)?;
        let bad = |why: &str| SalesforceError::Request(why.to_owned());
        if req.client_id.is_empty() {
            return Err(bad("client_id is empty"));
        }
        Url::parse(req.redirect_uri).map_err(|_| bad("redirect_uri is not a valid URL"))?;
        if req.state.is_empty() {
            return Err(bad("state is empty"));
        }
        // RFC 7636 §4.2: S256 challenge = BASE64URL(SHA256(verifier)), 43 characters.
        if req.code_challenge.len() != 43
            || !req
                .code_challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "code_challenge is not an unpadded base64url SHA-256 digest",
            ));
        }
        if let Some(prompt) = req.prompt {
            let valid = !prompt.trim().is_empty()
                && prompt
                    .split(' ')
                    .all(|p| matches!(p, "login" | "consent" | "select_account"));
            if !valid {
                return Err(bad(
                    "prompt must be login, consent or select_account (space-separated)",
                ));
            }
        }
        let mut params: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", req.client_id),
            ("redirect_uri", req.redirect_uri),
            ("code_challenge", req.code_challenge),
            ("code_challenge_method", "S256"),
            ("state", req.state),
            ("scope", req.scopes),
        ];
        if let Some(hint) = req.login_hint {
            params.push(("login_hint", hint));
        }
        if let Some(prompt) = req.prompt {
            params.push(("prompt", prompt));
        }
        let query = params
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut url = Url::parse(&format!("{origin}/services/oauth2/authorize"))
            .map_err(|_| bad("cannot build the authorize URL"))?;
        url.set_query(Some(&query));
        Ok(url)
    }
}

/// Percent-encodes a query value, spaces as `%20` (form encoding writes them as `+`, and a
/// literal `+` as `%2B`, so every `+` in the output is a space).
fn percent_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn authorize_url_is_complete_and_encoded() {
        let c = client();
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let req = AuthorizeRequest {
            login_url: "https://Acme.my.salesforce.com/",
            client_id: CLIENT_ID,
            redirect_uri: "https://valo.example.com/oauth/callback?x=1&y=2",
            scopes: "api refresh_token offline_access",
            state: "st+ate/=",
            code_challenge: challenge,
            login_hint: Some("user+1@example.com"),
            prompt: Some("login consent"),
        };
        let url = c.authorize_url(&req).unwrap();
        let s = url.as_str();
        assert!(
            s.starts_with("https://acme.my.salesforce.com/services/oauth2/authorize?response_type=code&client_id=3MVG9-client-id&redirect_uri=https%3A%2F%2Fvalo.example.com%2Foauth%2Fcallback%3Fx%3D1%26y%3D2&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=st%2Bate%2F%3D&scope=api%20refresh_token%20offline_access"),
            "{s}"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            get(&pairs, "scope"),
            Some("api refresh_token offline_access")
        );
        assert_eq!(get(&pairs, "state"), Some("st+ate/="));
        assert_eq!(get(&pairs, "login_hint"), Some("user+1@example.com"));
        assert_eq!(get(&pairs, "prompt"), Some("login consent"));
        assert_eq!(
            get(&pairs, "redirect_uri"),
            Some("https://valo.example.com/oauth/callback?x=1&y=2")
        );

        let minimal = AuthorizeRequest {
            login_hint: None,
            prompt: None,
            ..req
        };
        let url = c.authorize_url(&minimal).unwrap();
        assert!(!url.as_str().contains("login_hint") && !url.as_str().contains("prompt"));

        let bad_login = AuthorizeRequest {
            login_url: "https://acme.lightning.force.com",
            ..minimal
        };
        let e = c.authorize_url(&bad_login).unwrap_err();
        assert!(e.to_string().contains("my.salesforce.com"), "{e}");
        for bad in [
            AuthorizeRequest {
                code_challenge: "short",
                ..minimal
            },
            AuthorizeRequest {
                prompt: Some("none"),
                ..minimal
            },
            AuthorizeRequest {
                state: "",
                ..minimal
            },
            AuthorizeRequest {
                redirect_uri: "not a url",
                ..minimal
            },
        ] {
            assert!(matches!(
                c.authorize_url(&bad),
                Err(SalesforceError::Request(_))
            ));
        }
    }
}
