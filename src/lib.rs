//! valo-oauth: the OAuth 2.0 broker between Valo and its customers' Salesforce orgs.
//!
//! Data flows one way: [`http`] → [`broker`] → ([`salesforce`], [`store`], [`crypto`]).
//! Nothing below `http` knows about axum; nothing but `store` knows SQL.

pub mod store;
