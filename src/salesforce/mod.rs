//! The OAuth 2.0 client side of the broker: everything Valo says to a customer's Salesforce
//! org (authorize URL, token exchange, refresh, introspection, revocation), plus the URL
//! policy that keeps those calls on Salesforce hosts.
//!
//! Protocol facts follow Salesforce Help ("OAuth 2.0 Web Server Flow", "Refresh Token Flow",
//! "Refresh Token Rotation", "OAuth flow errors", "Token Introspection Endpoint", "Identity
//! URLs"; https://help.salesforce.com) and RFC 6749, RFC 7636, RFC 7009, RFC 7662; the
//! facts the code relies on are collected in `docs/salesforce.md`.
//!
//! Secrets (client secret, tokens, codes, PKCE verifiers) live in [`secrecy::SecretString`]
//! and never reach `Debug`, `Display`, errors or logs.

mod client;
mod error;
mod hosts;
mod identity;
mod signature;

pub use client::{
    AppCredentials, AuthorizeRequest, ClientSettings, CredentialCheck, Introspection,
    RefreshAnswer, SalesforceClient, TokenGrant,
};
pub use error::{ErrorClass, SalesforceError};
pub use hosts::{HostPolicy, UrlField, UrlPolicyError};
pub use identity::{parse_identity_url, to_18_char_id};
pub use signature::verify_signature;
