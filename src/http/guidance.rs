//! What each result page of the callback tells a customer's Salesforce admin: in plain
//! words, what happened and what to change where (the External Client App's OAuth settings,
//! its Security settings, its Policies tab, the login URL registered with Valo) — or that
//! trying again is all it takes. One entry per [`FailureReason`]; the pages in `pages.rs`
//! render them.
//!
//! The menu paths follow Salesforce Help "Create an External Client App"
//! (https://help.salesforce.com/s/articleView?id=sf.create_a_local_external_client_app.htm),
//! "Configure the External Client App OAuth Settings" and "Manage External Client App
//! Policies" (Permitted Users, IP Relaxation); the error codes "OAuth flow errors"
//! (https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_flow_errors.htm).
//!
//! Not here: HTML (the pages escape every string of this module), the error codes of the
//! redirect contract (`crate::broker::flow`).

use crate::broker::flow::FailureReason;

/// Where an admin finds the app in Salesforce Setup.
const APP_SETTINGS: &str = "In Salesforce Setup, open External Client App Manager, open Valo's app, and choose Edit Settings";
const APP_POLICIES: &str = "In Salesforce Setup, open External Client App Manager, open Valo's app, and choose Edit Policies";

/// The words of one result page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guidance {
    /// The page's heading.
    pub title: &'static str,
    /// What happened, in one or two sentences.
    pub what_happened: String,
    /// What to do, step by step (rendered as an ordered list).
    pub steps: Vec<String>,
}

/// What the page may mention besides the reason.
pub struct Context<'a> {
    /// This deployment's callback URL (the ECA must list it exactly).
    pub callback_url: &'a str,
    /// The description that came with the error (Salesforce's, sanitised, or ours).
    pub description: &'a str,
}

fn steps<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.into_iter().map(str::to_owned).collect()
}

/// The guidance for a failed flow.
pub fn for_failure(reason: FailureReason, context: &Context<'_>) -> Guidance {
    use FailureReason as R;
    let try_again = "Go back to Valo and start the Salesforce connection again.";
    match reason {
        R::AccessDenied => Guidance {
            title: "Access was not allowed",
            what_happened: "Salesforce reports that access was denied: the Deny button was chosen on Salesforce's \"Allow Access?\" page, or Salesforce denied it for this user.".into(),
            steps: steps([
                try_again,
                "On Salesforce's \"Allow Access?\" page, choose Allow.",
            ]),
        },
        R::AppNotFound => Guidance {
            title: "Salesforce did not find Valo's app in this org",
            what_happened: "The External Client App is local: it exists only in the org that created it, and the sign-in went to another org (often because the login URL is login.salesforce.com and the browser was signed in to a different org).".into(),
            steps: steps([
                "In Valo, set the login URL to your org's My Domain, for example https://yourcompany.my.salesforce.com (Salesforce Setup → My Domain shows it).",
                "Sign in with a user of the org where the External Client App was created.",
                try_again,
            ]),
        },
        R::AppBlocked => Guidance {
            title: "Valo's app is blocked in this org",
            what_happened: "An administrator of the org has blocked the External Client App, so Salesforce refuses every sign-in to it.".into(),
            steps: steps([
                "Ask your Salesforce administrator to unblock the app: in Setup, open Connected Apps OAuth Usage (or External Client App Manager), find Valo's app and choose Unblock.",
                try_again,
            ]),
        },
        R::UserNotPermitted => Guidance {
            title: "This Salesforce user may not use Valo's app",
            what_happened: "The External Client App's policies allow only pre-approved users, and this user is not one of them.".into(),
            steps: steps([
                &format!("{APP_POLICIES}. Under OAuth Policies, Plugin Policies, either set Permitted Users to \"All users may self-authorize\", or keep \"Admin approved users are pre-authorized\" and add this user's profile or permission set to the app."),
                try_again,
            ]),
        },
        R::ApprovalError => Guidance {
            title: "Salesforce could not approve the connection",
            what_happened: "Salesforce reported a general approval error (OAUTH_APPROVAL_ERROR_GENERIC). It most often comes from the app's policies: the user is not permitted, or an IP restriction applies.".into(),
            steps: steps([
                &format!("{APP_POLICIES}. Check that Permitted Users lets this user in (\"All users may self-authorize\", or the user's profile or permission set is assigned), and that IP Relaxation fits where the user connects from."),
                try_again,
            ]),
        },
        R::InvalidScope => Guidance {
            title: "Valo's app does not offer the access Valo asks for",
            what_happened: "Salesforce refused the requested OAuth scopes: the External Client App does not have all of them selected.".into(),
            steps: steps([
                &format!("{APP_SETTINGS}. Under OAuth Settings, Selected OAuth Scopes, add \"Manage user data via APIs (api)\" and \"Perform requests at any time (refresh_token, offline_access)\", then save."),
                try_again,
            ]),
        },
        R::InvalidRequest => Guidance {
            title: "Salesforce refused the sign-in request",
            what_happened: format!("Salesforce found the sign-in request invalid ({}). This usually means the External Client App's Security settings differ from Valo's setup guide.", non_empty(context.description, "no details given")),
            steps: steps([
                &format!("{APP_SETTINGS}. Under Security, turn on \"Require secret for Web Server Flow\", \"Require secret for Refresh Token Flow\", \"Require Proof Key for Code Exchange (PKCE) extension for Supported Authorization Flows\" and \"Enable Refresh Token Rotation\", then save."),
                "Changes to an External Client App can take up to 10 minutes to reach every Salesforce server; wait, then try again.",
                try_again,
            ]),
        },
        R::RedirectUriMismatch => Guidance {
            title: "Valo's app has a different callback URL",
            what_happened: "The Callback URL in the External Client App is not the one this service uses, so Salesforce would not send the sign-in back to Valo.".into(),
            steps: vec![
                format!("{APP_SETTINGS}. Under OAuth Settings, set Callback URL to exactly {} (no extra spaces or trailing slash), then save.", context.callback_url),
                "Changes to an External Client App can take up to 10 minutes to reach every Salesforce server; wait, then try again.".into(),
                try_again.into(),
            ],
        },
        R::UnknownConsumerKey => Guidance {
            title: "Salesforce does not know Valo's consumer key",
            what_happened: "The Consumer Key registered with Valo does not belong to an External Client App of the org signed in to: it was mistyped, belongs to another app or org, or the app was deleted.".into(),
            steps: steps([
                &format!("{APP_SETTINGS}. Under OAuth Settings, choose Consumer Key and Secret and copy the Consumer Key."),
                "In Valo, paste it as the consumer key of your Salesforce app (and check that the login URL is your org's My Domain).",
                try_again,
            ]),
        },
        R::WrongConsumerSecret => Guidance {
            title: "Salesforce refused Valo's consumer secret",
            what_happened: "The sign-in worked, but Salesforce refused the Consumer Secret registered with Valo when Valo asked for the tokens: it was mistyped, or the secret was rotated.".into(),
            steps: steps([
                &format!("{APP_SETTINGS}. Under OAuth Settings, choose Consumer Key and Secret and copy the Consumer Secret."),
                "In Valo, paste it as the consumer secret of your Salesforce app.",
                try_again,
            ]),
        },
        R::LoginRestricted => Guidance {
            title: "Salesforce does not allow this sign-in from here or now",
            what_happened: "Salesforce refused the sign-in because of an IP restriction or login hours: the user's profile, the org's network access, or the app's IP policy does not allow it from this network or at this time.".into(),
            steps: steps([
                &format!("{APP_POLICIES}. Under OAuth Policies, set IP Relaxation to \"Relax IP restrictions\" (or allow the network the user connects from in the profile's Login IP Ranges)."),
                "If the user's profile has Login Hours, connect within them.",
                try_again,
            ]),
        },
        R::OtherSalesforceError => Guidance {
            title: "Salesforce refused the connection",
            what_happened: format!("Salesforce said: {}", non_empty(context.description, "no details given")),
            steps: steps([
                "Check the External Client App against Valo's setup guide: Callback URL, the OAuth scopes, and the Security settings (secret required, PKCE, refresh token rotation).",
                try_again,
                "If it keeps failing, contact Valo support with the support reference below.",
            ]),
        },
        R::NoRefreshToken => Guidance {
            title: "Salesforce gave no lasting access",
            what_happened: "Salesforce connected, but without a refresh token, so Valo would lose access within hours. The External Client App lacks the scope that grants lasting access.".into(),
            steps: steps([
                &format!("{APP_SETTINGS}. Under OAuth Settings, Selected OAuth Scopes, add \"Perform requests at any time (refresh_token, offline_access)\" (and keep \"Manage user data via APIs (api)\"), then save."),
                &format!("{APP_POLICIES}. Under OAuth Policies, set Refresh Token Policy to \"Refresh token is valid until revoked\" (or a long expiry)."),
                try_again,
            ]),
        },
        R::CodeRefused => Guidance {
            title: "The sign-in could not be completed",
            what_happened: "Salesforce refused to complete the sign-in: it took too long, or the sign-in link was used twice.".into(),
            steps: steps([try_again]),
        },
        R::AppRemoved => Guidance {
            title: "Valo's Salesforce app was removed",
            what_happened: "The Salesforce app registered with Valo was removed while the sign-in was under way.".into(),
            steps: steps([
                "In Valo, register the External Client App's Consumer Key and Secret again.",
                try_again,
            ]),
        },
        R::DifferentUser => Guidance {
            title: "Signed in as another Salesforce user",
            what_happened: non_empty(context.description, "This reconnect was completed by another Salesforce user than the connection's.").to_owned(),
            steps: steps([
                "Log out of Salesforce in this browser (or use a private window).",
                "Go back to Valo, choose Reconnect again, and sign in as the connection's user.",
            ]),
        },
        R::UnusableAnswer => Guidance {
            title: "Salesforce's answer could not be used",
            what_happened: "Salesforce answered in a way this service cannot use, so nothing was stored.".into(),
            steps: steps([
                try_again,
                "If it keeps failing, contact Valo support with the support reference below.",
            ]),
        },
        R::InvalidSignature => Guidance {
            title: "Salesforce's answer could not be verified",
            what_happened: "Salesforce's answer carried a signature that does not match the Consumer Secret registered with Valo, so it was refused and nothing was stored. The registered secret may belong to another app, or it was rotated.".into(),
            steps: steps([
                &format!("{APP_SETTINGS}. Under OAuth Settings, choose Consumer Key and Secret, and copy both again."),
                "In Valo, paste them as the consumer key and secret of your Salesforce app.",
                try_again,
                "If it keeps failing, contact Valo support with the support reference below.",
            ]),
        },
        R::UpstreamUnavailable => Guidance {
            title: "Salesforce is not answering right now",
            what_happened: "Salesforce was unreachable, too slow, or failing while the connection was being completed. Nothing is wrong with your settings.".into(),
            steps: steps(["Wait a minute.", try_again]),
        },
        R::ServiceUnavailable => Guidance {
            title: "Valo could not complete the connection",
            what_happened: "Valo's service had a temporary problem while completing the connection. Nothing is wrong with your settings.".into(),
            steps: steps([
                "Wait a minute.",
                try_again,
                "If it keeps failing, contact Valo support with the support reference below.",
            ]),
        },
    }
}

fn non_empty<'a>(text: &'a str, otherwise: &'a str) -> &'a str {
    if text.trim().is_empty() {
        otherwise
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_says_what_happened_and_what_to_do() {
        let context = Context {
            callback_url: "https://api.valo.ai/oauth2/v1/callback/salesforce",
            description: "",
        };
        for reason in FailureReason::ALL {
            let g = for_failure(reason, &context);
            assert!(!g.title.is_empty(), "{reason:?}");
            assert!(g.what_happened.len() > 20, "{reason:?}");
            assert!(!g.steps.is_empty(), "{reason:?}");
        }
        let mismatch = for_failure(FailureReason::RedirectUriMismatch, &context);
        assert!(mismatch.steps[0].contains(context.callback_url));
    }
}
