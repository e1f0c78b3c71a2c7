//! The External Client App settings of Valo's setup guide, served to the Valo UI so that it
//! renders the values this service checks rather than a hard-coded copy: the callback URL,
//! the OAuth scopes with the labels Salesforce shows next to their checkboxes, the Security
//! toggles and the distribution state.
//!
//! Labels follow Salesforce Help "OAuth Tokens and Scopes"
//! (https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_tokens_scopes.htm).
//! Not here: checking a tenant's credentials (`apps`), the flow itself (`flow`).

use super::Broker;

/// One OAuth scope to select in the ECA, with the label Salesforce shows for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthScope {
    /// The scope's value in the authorize request, e.g. `api`.
    pub name: String,
    /// The label of its checkbox in the ECA's OAuth Settings; `None` for a scope this
    /// service has no label for (an operator's addition).
    pub label: Option<&'static str>,
}

/// The settings an ECA needs to work with this deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcaSettings {
    /// The ECA's Callback URL: this deployment's public URL + the callback path.
    pub callback_url: String,
    /// The scopes this service requests (`VALO_OAUTH_SALESFORCE_SCOPES`).
    pub oauth_scopes: Vec<OAuthScope>,
    /// Security: "Require secret for Web Server Flow" (the exchange sends the secret).
    pub require_secret_for_web_server_flow: bool,
    /// Security: "Require secret for Refresh Token Flow" (refreshes send the secret).
    pub require_secret_for_refresh_token_flow: bool,
    /// Security: "Require Proof Key for Code Exchange (PKCE) extension for Supported
    /// Authorization Flows" (every flow sends an S256 challenge, RFC 7636).
    pub require_pkce: bool,
    /// Security: "Enable Refresh Token Rotation" (the refresh path keeps each rotated token).
    pub enable_refresh_token_rotation: bool,
    /// Basic Information: "Local" — the app lives in the customer's own org only.
    pub distribution_state: &'static str,
}

/// Salesforce's label for a scope, as the ECA's "Selected OAuth Scopes" list shows it.
pub fn scope_label(scope: &str) -> Option<&'static str> {
    Some(match scope {
        "api" => "Manage user data via APIs (api)",
        "refresh_token" | "offline_access" => {
            "Perform requests at any time (refresh_token, offline_access)"
        }
        "full" => "Full access (full)",
        "web" => "Manage user data via Web browsers (web)",
        "id" | "profile" | "email" | "address" | "phone" => {
            "Access the identity URL service (id, profile, email, address, phone)"
        }
        "openid" => "Access unique user identifiers (openid)",
        "chatter_api" => "Access Connect REST API resources (chatter_api)",
        "custom_permissions" => "Access custom permissions (custom_permissions)",
        "content" => "Access content resources (content)",
        "lightning" => "Access Lightning applications (lightning)",
        "visualforce" => "Access Visualforce applications (visualforce)",
        "wave_api" => "Access Analytics REST API resources (wave_api)",
        "cdp_query_api" => "Perform ANSI SQL queries on Data Cloud data (cdp_query_api)",
        _ => return None,
    })
}

impl Broker {
    /// The ECA settings this deployment works with. The security toggles are all on: the
    /// service sends the secret on every token request, always uses PKCE and keeps every
    /// rotated refresh token, so turning them on costs nothing and closes doors.
    pub fn eca_settings(&self) -> EcaSettings {
        EcaSettings {
            callback_url: self.settings.callback_url.clone(),
            oauth_scopes: self
                .settings
                .salesforce
                .scopes
                .split_whitespace()
                .map(|name| OAuthScope {
                    name: name.to_owned(),
                    label: scope_label(name),
                })
                .collect(),
            require_secret_for_web_server_flow: true,
            require_secret_for_refresh_token_flow: true,
            require_pkce: true,
            enable_refresh_token_rotation: true,
            distribution_state: "Local",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scope_label;

    #[test]
    fn the_guide_scopes_have_salesforce_labels() {
        assert_eq!(scope_label("api"), Some("Manage user data via APIs (api)"));
        assert_eq!(scope_label("refresh_token"), scope_label("offline_access"));
        assert_eq!(scope_label("made_up"), None);
    }
}
