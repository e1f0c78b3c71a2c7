//! The OpenAPI document generated from the code (served at `GET /openapi.json`, printed by
//! `valo-oauth openapi`) against the code it describes — the routes, the bearer security of
//! the internal API, the problem codes (`ProblemCode::ALL`), the callback error codes of our
//! own (`FlowErrorCode::OWN`), and `$ref`s — and the committed `docs/openapi.json` against it.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;
use valo_oauth::broker::flow::FlowErrorCode;
use valo_oauth::http::auth::Scope;
use valo_oauth::http::problem::ProblemCode;
use valo_testkit::app::TestApp;

const COMMITTED: &str = include_str!("../../docs/openapi.json");

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// Every route of `src/http/*::router()`, with the scope each internal operation needs.
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    (
        "/v1/tenants/{tenant}/salesforce-app",
        "put",
        Some("apps:write"),
    ),
    (
        "/v1/tenants/{tenant}/salesforce-app",
        "get",
        Some("apps:write"),
    ),
    (
        "/v1/tenants/{tenant}/salesforce-app",
        "delete",
        Some("apps:write"),
    ),
    (
        "/v1/tenants/{tenant}/authorizations",
        "post",
        Some("connections:write"),
    ),
    (
        "/v1/tenants/{tenant}/connections",
        "get",
        Some("connections:read"),
    ),
    (
        "/v1/tenants/{tenant}/connections/{id}",
        "get",
        Some("connections:read"),
    ),
    (
        "/v1/tenants/{tenant}/connections/{id}",
        "delete",
        Some("connections:write"),
    ),
    (
        "/v1/tenants/{tenant}/connections/{id}/access-token",
        "post",
        Some("tokens:read"),
    ),
    (
        "/v1/tenants/{tenant}/connections/{id}/reauthorize",
        "post",
        Some("connections:write"),
    ),
    ("/v1/salesforce/eca-settings", "get", Some("apps:write")),
    ("/v1/tenants/{tenant}/audit", "get", Some("audit:read")),
    ("/oauth2/v1/callback/salesforce", "get", None),
    ("/healthz", "get", None),
    ("/readyz", "get", None),
    ("/metrics", "get", None),
    ("/openapi.json", "get", None),
];

fn spec() -> Value {
    valo_oauth::http::openapi::document()
}

/// The committed file is the generator's output, byte for byte.
fn check_committed(committed: &str) -> Result<(), String> {
    if committed == valo_oauth::http::openapi::json() {
        Ok(())
    } else {
        Err(
            "docs/openapi.json differs from the document the code generates; regenerate it \
             with `cargo run --bin valo-oauth -- openapi > docs/openapi.json`"
                .into(),
        )
    }
}

#[test]
fn the_committed_document_is_the_generated_one() {
    check_committed(COMMITTED).unwrap();
    let mut stale: Value = serde_json::from_str(COMMITTED).unwrap();
    stale["info"]["version"] = "0.0.0-stale".into();
    assert!(
        check_committed(&serde_json::to_string_pretty(&stale).unwrap()).is_err(),
        "a stale docs/openapi.json accepted"
    );
}

/// The `(path, method)` pairs the document declares.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut found = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for method in METHODS {
            if item.contains_key(method) {
                found.insert((path.clone(), method.to_owned()));
            }
        }
    }
    found
}

/// Follows a local `$ref` (`#/…`) to its target.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// The value itself, or what its `$ref` points to.
fn deref<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r).unwrap_or_else(|| panic!("unresolved $ref {r}")),
        None => value,
    }
}

/// Every problem code the service can answer, from the code's own closed set.
fn problem_codes_in_code() -> BTreeSet<String> {
    ProblemCode::ALL
        .iter()
        .map(|code| code.as_str().to_owned())
        .collect()
}

/// The callback error codes of the service's own (Salesforce's pass through).
fn callback_codes_in_code() -> BTreeSet<String> {
    FlowErrorCode::OWN
        .iter()
        .map(|code| code.as_str().to_owned())
        .collect()
}

fn string_set(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn check_version(doc: &Value) -> Result<(), String> {
    match doc["openapi"].as_str() {
        Some(v) if v.starts_with("3.1.") => Ok(()),
        other => Err(format!("openapi must be 3.1.x, is {other:?}")),
    }
}

fn check_routes(doc: &Value) -> Result<(), String> {
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(p, m, _)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    let documented = operations(doc);
    same_sets(
        &expected,
        &documented,
        "routes without docs",
        "docs without routes",
    )
}

/// `Ok` when `left` and `right` hold the same items; else an error listing the items only
/// in `left` and those only in `right`, under those names.
fn same_sets<T: Ord + std::fmt::Debug>(
    left: &BTreeSet<T>,
    right: &BTreeSet<T>,
    only_left: &str,
    only_right: &str,
) -> Result<(), String> {
    let in_left: Vec<_> = left.difference(right).collect();
    let in_right: Vec<_> = right.difference(left).collect();
    if in_left.is_empty() && in_right.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{only_left}: {in_left:?}; {only_right}: {in_right:?}"
        ))
    }
}

fn check_security(doc: &Value) -> Result<(), String> {
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    if scheme["type"] != "http" || scheme["scheme"] != "bearer" {
        return Err(format!(
            "bearerAuth must be an http bearer scheme: {scheme}"
        ));
    }
    for (path, method, scope) in ROUTES {
        let op = &doc["paths"][*path][*method];
        let security = op["security"].as_array().cloned().unwrap_or_default();
        match scope {
            Some(scope) => {
                let expected = serde_json::json!([{ "bearerAuth": [scope] }]);
                if Value::Array(security) != expected {
                    return Err(format!(
                        "{method} {path} must declare security {expected}, declares {}",
                        op["security"]
                    ));
                }
                for status in ["401", "403"] {
                    if op["responses"].get(status).is_none() {
                        return Err(format!("{method} {path} lacks a {status} response"));
                    }
                }
                let unauthenticated = deref(doc, &op["responses"]["401"]);
                if unauthenticated["headers"].get("WWW-Authenticate").is_none() {
                    return Err(format!("{method} {path}: the 401 lacks WWW-Authenticate"));
                }
            }
            None => {
                if !security.is_empty() {
                    return Err(format!(
                        "{method} {path} is public but declares {security:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_problem_codes(doc: &Value) -> Result<(), String> {
    let emitted = problem_codes_in_code();
    let documented =
        string_set(&doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]);
    same_sets(
        &emitted,
        &documented,
        "problem codes emitted but not documented",
        "documented but never emitted",
    )
}

fn check_callback_codes(doc: &Value) -> Result<(), String> {
    let emitted = callback_codes_in_code();
    let schema = &doc["components"]["schemas"]["CallbackError"];
    let mut documented = BTreeSet::new();
    for alternative in schema["anyOf"].as_array().into_iter().flatten() {
        if let Some(values) = alternative.get("enum") {
            documented.extend(string_set(values));
        }
    }
    let missing: Vec<_> = emitted.difference(&documented).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("callback error codes not documented: {missing:?}"))
    }
}

fn check_refs(doc: &Value) -> Result<(), String> {
    fn walk(doc: &Value, value: &Value, at: &str, bad: &mut Vec<String>, count: &mut usize) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "$ref" {
                        *count += 1;
                        let target = child.as_str().unwrap_or_default();
                        if !target.starts_with("#/") || resolve(doc, target).is_none() {
                            bad.push(format!("{at}: {target}"));
                        }
                    } else {
                        walk(doc, child, &format!("{at}/{key}"), bad, count);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(doc, child, &format!("{at}/{i}"), bad, count);
                }
            }
            _ => {}
        }
    }
    let mut bad = Vec::new();
    let mut count = 0;
    walk(doc, doc, "#", &mut bad, &mut count);
    if count == 0 {
        return Err("the document has no $ref at all (was the walk broken?)".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("unresolved $refs: {bad:?}"))
    }
}

/// One test per check of the document: `name => check`.
macro_rules! document_checks {
    ($($name:ident => $check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $check(&spec()).unwrap();
            }
        )+
    };
}

document_checks! {
    is_openapi_3_1 => check_version,
    documents_exactly_the_routes => check_routes,
    internal_operations_declare_bearer_security_401_and_403 => check_security,
    every_problem_code_is_documented => check_problem_codes,
    every_callback_error_code_is_documented => check_callback_codes,
    every_ref_resolves => check_refs,
}

/// Removes `key` from the JSON object `value`.
fn remove_key(value: &mut Value, key: &str) {
    value.as_object_mut().unwrap().remove(key);
}

/// Each check fails on a document that is wrong in the way it guards against.
#[test]
fn the_checks_catch_wrong_documents() {
    let good = spec();

    let mut doc = good.clone();
    doc["openapi"] = "3.0.3".into();
    assert!(check_version(&doc).is_err(), "3.0 accepted");

    let mut doc = good.clone();
    remove_key(
        &mut doc["paths"]["/v1/tenants/{tenant}/connections/{id}"],
        "delete",
    );
    assert!(check_routes(&doc).is_err(), "a missing operation accepted");

    let mut doc = good.clone();
    doc["paths"]["/v1/tenants/{tenant}/connections"]["post"] =
        doc["paths"]["/v1/tenants/{tenant}/connections"]["get"].clone();
    assert!(check_routes(&doc).is_err(), "an extra operation accepted");

    let mut doc = good.clone();
    doc["paths"]["/v1/removed"] = serde_json::json!({"get": {"responses": {}}});
    assert!(check_routes(&doc).is_err(), "an extra path accepted");

    let mut doc = good.clone();
    remove_key(
        &mut doc["paths"]["/v1/tenants/{tenant}/authorizations"]["post"],
        "security",
    );
    assert!(check_security(&doc).is_err(), "missing security accepted");

    let mut doc = good.clone();
    doc["paths"]["/v1/tenants/{tenant}/connections"]["get"]["security"] =
        serde_json::json!([{"bearerAuth": ["tokens:read"]}]);
    assert!(check_security(&doc).is_err(), "a wrong scope accepted");

    for status in ["401", "403"] {
        let mut doc = good.clone();
        remove_key(
            &mut doc["paths"]["/v1/tenants/{tenant}/connections/{id}/access-token"]["post"]["responses"],
            status,
        );
        assert!(check_security(&doc).is_err(), "a missing {status} accepted");
    }

    let mut doc = good.clone();
    doc["paths"]["/healthz"]["get"]["security"] = serde_json::json!([{"bearerAuth": []}]);
    assert!(
        check_security(&doc).is_err(),
        "a public route with security accepted"
    );

    let mut doc = good.clone();
    let codes = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array_mut()
        .unwrap();
    codes.retain(|c| c != "needs_reauthorization");
    assert!(
        check_problem_codes(&doc).is_err(),
        "a missing problem code accepted"
    );

    let mut doc = good.clone();
    doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array_mut()
        .unwrap()
        .push("never_emitted_code".into());
    assert!(
        check_problem_codes(&doc).is_err(),
        "a never-emitted problem code accepted"
    );

    let mut doc = good.clone();
    for alternative in doc["components"]["schemas"]["CallbackError"]["anyOf"]
        .as_array_mut()
        .unwrap()
    {
        if let Some(values) = alternative.get_mut("enum") {
            values
                .as_array_mut()
                .unwrap()
                .retain(|c| c != "no_refresh_token");
        }
    }
    assert!(
        check_callback_codes(&doc).is_err(),
        "a missing callback code accepted"
    );

    let mut doc = good.clone();
    remove_key(&mut doc["components"]["schemas"], "Timestamp");
    assert!(check_refs(&doc).is_err(), "a dangling $ref accepted");

    let mut doc = good;
    doc["paths"]["/healthz"]["get"]["responses"]["200"] =
        serde_json::json!({"$ref": "https://example.com/x.json"});
    assert!(check_refs(&doc).is_err(), "an external $ref accepted");
}

backend_tests! {
    /// The scope each operation declares (`security` of its annotation) is the one its
    /// handler enforces (`Granted<needs::…>`): every other scope together gets 403, the
    /// declared one alone gets past authorization. The two are written apart, so this is
    /// what keeps them from drifting.
    #[tokio::test]
    async fn every_operation_enforces_the_scope_it_declares(db) {
        let app = TestApp::spawn(&db).await;
        let doc = spec();
        let id = uuid::Uuid::new_v4().to_string();
        let mut checked = 0;
        for (path, method) in operations(&doc) {
            let Some(declared) = doc["paths"][&path][&method]["security"][0]["bearerAuth"][0].as_str()
            else {
                continue;
            };
            let concrete = path.replace("{tenant}", "acme").replace("{id}", &id);
            let verb = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let others: Vec<&str> = Scope::ALL
                .iter()
                .map(|scope| scope.as_str())
                .filter(|scope| *scope != declared)
                .collect();
            let refused = app.send_as(verb.clone(), &concrete, &others.join(" ")).await;
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{method} {path} without {declared}");
            let allowed = app.send_as(verb, &concrete, declared).await.status();
            assert!(
                allowed != StatusCode::FORBIDDEN && allowed != StatusCode::UNAUTHORIZED,
                "{method} {path} with {declared}: {allowed}"
            );
            checked += 1;
        }
        assert_eq!(checked, ROUTES.iter().filter(|(_, _, scope)| scope.is_some()).count());
        app.stop().await;
    }

    /// `/openapi.json` serves the generated document; `/docs` renders it from this origin only.
    #[tokio::test]
    async fn the_document_and_its_offline_docs_page_are_served(db) {
        let app = TestApp::spawn(&db).await;
        let get = |path: &str| app.client.get(app.url(path)).send();
        let served = get("/openapi.json").await.unwrap();
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(served.text().await.unwrap(), valo_oauth::http::openapi::json());

        let page = get("/docs").await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
        for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "style-src 'self'"] {
            assert!(csp.contains(directive), "{directive} missing from {csp}");
        }
        let html = page.text().await.unwrap();
        assert!(html.contains("src=\"/docs/docs.js\"") && html.contains("href=\"/docs/docs.css\""));
        for asset in ["/docs/docs.js", "/docs/docs.css"] {
            let answer = get(asset).await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK, "{asset}");
            assert!(answer.headers().contains_key("content-security-policy"), "{asset}");
            let text = answer.text().await.unwrap();
            assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "{asset} names another origin");
        }
        assert!(!html.contains("https://") && !html.contains("http://"), "the page names another origin");
        let missing = get("/docs/swagger.js").await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        app.stop().await;
    }
}
