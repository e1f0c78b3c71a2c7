//! valo-oauth: the OAuth 2.0 broker between Valo and its customers' Salesforce orgs.
//!
//! Data flows one way: [`http`] → [`broker`] → ([`salesforce`], [`webhooks`], [`store`],
//! [`crypto`]).
//! Nothing below `http` knows about axum; nothing but `store` knows SQL.

pub mod app;
pub mod broker;
pub mod config;
pub mod crypto;
pub mod http;
pub mod metrics;
pub mod salesforce;
pub mod store;
pub mod telemetry;
pub mod webhooks;
