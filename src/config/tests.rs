//! Loading end to end: defaults, layers, production requirements and error naming.

use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)], dir: &Path) -> EnvMap {
    let mut m: EnvMap = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    m.entry("VALO_OAUTH_DATA_DIR".into())
        .or_insert_with(|| dir.display().to_string());
    m
}

fn tmp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("valo-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tmp();
    load(&dir.join("none.toml"), None, &env(pairs, &dir))
}

#[test]
fn development_defaults_generate_private_secrets() {
    let dir = tmp();
    let s = load(&dir.join("none.toml"), None, &env(&[], &dir)).unwrap();
    assert_eq!(s.env, Environment::Development);
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        s.callback_url(),
        "http://localhost:8080/oauth2/v1/callback/salesforce"
    );
    assert_eq!(s.warnings.len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("dev-api-jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let debug = format!("{s:?}");
    let secret = match &s.api_auth.key {
        ApiKey::Hs256(k) => k.expose_secret().to_owned(),
        ApiKey::PublicKeyPem(_) => unreachable!(),
    };
    assert!(
        !debug.contains(&secret),
        "Debug redacts the API secret: {debug}"
    );
    let key = std::fs::read_to_string(dir.join("dev-encryption-keys")).unwrap();
    let key_material = key.trim().split_once(':').unwrap().1;
    assert!(!debug.contains(key_material), "Debug redacts the keys");
    // The second start reuses them, silently.
    let again = load(&dir.join("none.toml"), None, &env(&[], &dir)).unwrap();
    assert!(again.warnings.is_empty());
    assert_eq!(again.broker.keyring.primary_key_id(), "dev1");
}

#[test]
fn production_refuses_missing_keys() {
    let err = load_env(&[("VALO_OAUTH_ENV", "production")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_PUBLIC_URL");
    let err = load_env(&[
        ("VALO_OAUTH_ENV", "production"),
        ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_ENCRYPTION_KEYS");
    let key = Keyring::generate_key_spec("k1");
    let err = load_env(&[
        ("VALO_OAUTH_ENV", "production"),
        ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
        ("VALO_OAUTH_ENCRYPTION_KEYS", key.expose_secret()),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_API_JWT_SECRET");
    let ok = load_env(&[
        ("VALO_OAUTH_ENV", "production"),
        ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
        ("VALO_OAUTH_ENCRYPTION_KEYS", key.expose_secret()),
        (
            "VALO_OAUTH_API_JWT_SECRET",
            "0123456789abcdef0123456789abcdef",
        ),
    ])
    .unwrap();
    assert_eq!(ok.log_format, LogFormat::Json);
    assert_eq!(
        ok.callback_url(),
        "https://api.valo.ai/oauth2/v1/callback/salesforce"
    );
}

#[test]
fn bad_values_name_the_setting_without_echoing_secrets() {
    let err = load_env(&[("VALO_OAUTH_LISTEN", "nonsense")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_LISTEN");
    assert!(err.problem.contains("nonsense"));
    let err = load_env(&[("DATABASE_URL", "mysql://u:hunter2@h/db")]).unwrap_err();
    assert_eq!(err.setting, "DATABASE_URL");
    assert!(!err.to_string().contains("hunter2"));
    let err = load_env(&[("VALO_OAUTH_ENCRYPTION_KEYS", "k1:c2hvcnRzZWNyZXQ=")]).unwrap_err();
    assert!(!err.to_string().contains("c2hvcnRzZWNyZXQ"));
    let err = load_env(&[("VALO_OAUTH_API_JWT_SECRET", "short")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_API_JWT_SECRET");
    let err =
        load_env(&[("VALO_OAUTH_RETURN_TO_ORIGINS", "https://app.valo.ai/path")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_RETURN_TO_ORIGINS");
    let err = load_env(&[("VALO_OAUTH_LOGIN_HOSTS", "http://")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_LOGIN_HOSTS");
    let err = load_env(&[("VALO_OAUTH_REFRESH_WAIT_MS", "5000")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_REFRESH_WAIT_MS");
    let err = load_env(&[("VALO_OAUTH_REFRESH_LEASE_GRACE_SECS", "19")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_REFRESH_LEASE_GRACE_SECS");
}

#[test]
fn layers_file_then_env_and_secret_files() {
    let dir = tmp();
    let secret_file = dir.join("jwt");
    std::fs::write(&secret_file, "from-a-file-0123456789abcdef012345\n").unwrap();
    let file = dir.join("extra.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:9000\"\nreturn_to_origins = [\"https://app.valo.ai\"]\napi_jwt_secret_file = {:?}\n",
            secret_file.display().to_string()
        ),
    )
    .unwrap();
    let s = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap();
    assert_eq!(s.listen.port(), 9000);
    assert_eq!(
        s.broker.return_to_origins,
        vec!["https://app.valo.ai".to_owned()]
    );
    match &s.api_auth.key {
        ApiKey::Hs256(k) => assert_eq!(k.expose_secret(), "from-a-file-0123456789abcdef012345"),
        ApiKey::PublicKeyPem(_) => unreachable!(),
    }
    let s = load(
        &dir.join("none.toml"),
        Some(&file),
        &env(&[("VALO_OAUTH_LISTEN", "127.0.0.1:9100")], &dir),
    )
    .unwrap();
    assert_eq!(s.listen.port(), 9100);
    std::fs::write(&file, "lisen = \"x\"\n").unwrap();
    let err = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap_err();
    assert!(err.problem.contains("unknown setting \"lisen\""), "{err}");
}

#[test]
fn the_internal_listener_is_optional_and_checked() {
    let one = load_env(&[]).unwrap();
    assert_eq!(one.internal_listen, None, "one listener by default");
    let two = load_env(&[("VALO_OAUTH_INTERNAL_LISTEN", "127.0.0.1:8081")]).unwrap();
    assert_eq!(two.internal_listen.unwrap().to_string(), "127.0.0.1:8081");
    let same = load_env(&[("VALO_OAUTH_INTERNAL_LISTEN", "127.0.0.1:8080")]).unwrap_err();
    assert!(
        same.to_string().contains("VALO_OAUTH_INTERNAL_LISTEN")
            && same.to_string().contains("VALO_OAUTH_LISTEN"),
        "{same}"
    );
    let bad = load_env(&[("VALO_OAUTH_INTERNAL_LISTEN", "8081")]).unwrap_err();
    assert!(
        bad.to_string().contains("VALO_OAUTH_INTERNAL_LISTEN"),
        "{bad}"
    );
}

// --- figment: precedence, secret files, errors as one line -----------------------------------

/// One setting per section: its key, a value for the file and one for the environment, and
/// how to read it back from the settings.
type Probe = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Settings) -> String,
);

const PROBES: [Probe; 9] = [
    ("listen", "\"127.0.0.1:9001\"", "127.0.0.1:9002", |s| {
        s.listen.to_string()
    }),
    ("db_max_connections", "11", "12", |s| {
        s.db_max_connections.to_string()
    }),
    ("api_jwt_audience", "\"file-aud\"", "env-aud", |s| {
        s.api_auth.audience.clone()
    }),
    ("log", "\"debug\"", "trace", |s| s.log.clone()),
    (
        "return_to_origins",
        "[\"https://file.valo.ai\"]",
        "https://env.valo.ai",
        |s| s.broker.return_to_origins.join(","),
    ),
    ("salesforce_max_in_flight", "31", "32", |s| {
        s.broker.salesforce.max_in_flight.to_string()
    }),
    ("keepalive_concurrency", "5", "6", |s| {
        s.broker.tokens.keepalive_concurrency.to_string()
    }),
    ("max_concurrent_requests", "7", "8", |s| {
        s.protection.max_concurrent_requests.to_string()
    }),
    ("audit_retention_days", "2", "3", |s| {
        (s.broker.audit.retention.as_secs() / 86_400).to_string()
    }),
];

#[test]
fn each_section_takes_the_environment_over_the_file_over_the_default() {
    let dir = tmp();
    let defaults = load_env(&[]).unwrap();
    let file = dir.join("layer.toml");
    for (key, in_file, in_env, read) in PROBES {
        std::fs::write(&file, format!("{key} = {in_file}\n")).unwrap();
        let from_file = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap();
        let expected = in_file.trim_matches(['"', '[', ']']);
        assert_eq!(read(&from_file), expected, "{key} from the file");
        assert_ne!(read(&defaults), expected, "{key}: the default differs");
        let name = env_var_name(key);
        let from_env = load(
            &dir.join("none.toml"),
            Some(&file),
            &env(&[(name.as_str(), in_env)], &dir),
        )
        .unwrap();
        assert_eq!(read(&from_env), in_env, "{name} over the file");
        // config/default.toml is the layer below --config.
        let under = dir.join("under.toml");
        std::fs::write(&under, format!("{key} = {in_file}\n")).unwrap();
        let from_default_file = load(&under, None, &env(&[], &dir)).unwrap();
        assert_eq!(
            read(&from_default_file),
            expected,
            "{key} from default.toml"
        );
    }
}

#[test]
fn secrets_come_from_files_named_by_file_variables() {
    let dir = tmp();
    let key = Keyring::generate_key_spec("f1");
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, format!("{}\n", key.expose_secret())).unwrap();
    let db_file = dir.join("db");
    let db_url = format!("sqlite://{}/from-file.db", dir.display());
    std::fs::write(&db_file, format!("{db_url}\r\n")).unwrap();
    let s = load_env(&[
        (
            "VALO_OAUTH_ENCRYPTION_KEYS_FILE",
            keys_file.to_str().unwrap(),
        ),
        ("DATABASE_URL_FILE", db_file.to_str().unwrap()),
    ])
    .unwrap();
    assert_eq!(s.broker.keyring.primary_key_id(), "f1");
    assert_eq!(s.database_url.expose_secret(), db_url);
    // Only the trailing newline goes (the API secret is used as it is).
    let jwt_file = dir.join("jwt");
    std::fs::write(&jwt_file, " a-secret-from-a-file-0123456789abcdef\r\n").unwrap();
    let s = load_env(&[("VALO_OAUTH_API_JWT_SECRET_FILE", jwt_file.to_str().unwrap())]).unwrap();
    match &s.api_auth.key {
        ApiKey::Hs256(k) => assert_eq!(k.expose_secret(), " a-secret-from-a-file-0123456789abcdef"),
        ApiKey::PublicKeyPem(_) => unreachable!(),
    }

    // A bad value read from a file is named by the variable that named the file, unechoed.
    let short = dir.join("short");
    std::fs::write(&short, "hunter2\n").unwrap();
    let err = load_env(&[("VALO_OAUTH_API_JWT_SECRET_FILE", short.to_str().unwrap())]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_API_JWT_SECRET_FILE");
    assert!(err.problem.contains("32 bytes"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    // Both in one layer is refused; a missing file is named.
    let err = load_env(&[
        (
            "VALO_OAUTH_API_JWT_SECRET",
            "0123456789abcdef0123456789abcdef",
        ),
        ("VALO_OAUTH_API_JWT_SECRET_FILE", short.to_str().unwrap()),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_API_JWT_SECRET_FILE");
    assert!(
        err.problem.contains("VALO_OAUTH_API_JWT_SECRET, not both"),
        "{err}"
    );
    assert!(!err.to_string().contains("0123456789abcdef"), "{err}");
    let missing = dir.join("missing");
    let err =
        load_env(&[("VALO_OAUTH_WEBHOOK_SECRET_FILE", missing.to_str().unwrap())]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_WEBHOOK_SECRET_FILE");
    assert!(err.problem.starts_with("cannot read "), "{err}");

    // The environment's value wins over the file layer's secret file.
    let file = dir.join("secrets.toml");
    let line = format!("encryption_keys_file = '{}'\n", keys_file.display());
    std::fs::write(&file, line).unwrap();
    let other = Keyring::generate_key_spec("e1");
    let s = load(
        &dir.join("none.toml"),
        Some(&file),
        &env(
            &[("VALO_OAUTH_ENCRYPTION_KEYS", other.expose_secret())],
            &dir,
        ),
    )
    .unwrap();
    assert_eq!(s.broker.keyring.primary_key_id(), "e1");
}

#[test]
fn figment_errors_are_one_line_naming_the_setting() {
    let dir = tmp();
    let one_line = |err: &ConfigError| {
        let line = format!("valo-oauth: configuration error: {err}");
        assert!(!line.contains('\n'), "{line}");
        line
    };
    // A malformed number in the environment.
    let err = load_env(&[("VALO_OAUTH_DB_MAX_CONNECTIONS", "ten")]).unwrap_err();
    assert_eq!(
        one_line(&err),
        "valo-oauth: configuration error: VALO_OAUTH_DB_MAX_CONNECTIONS: \"ten\" is not a whole number"
    );
    let err = load_env(&[("VALO_OAUTH_AUDIT_FLUSH_MS", "1s")]).unwrap_err();
    assert_eq!(err.setting, "VALO_OAUTH_AUDIT_FLUSH_MS");
    assert_eq!(err.problem, "\"1s\" is not a whole number of milliseconds");
    let err = load_env(&[("VALO_OAUTH_KEEPALIVE_SWEEP_SECS", "0")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "VALO_OAUTH_KEEPALIVE_SWEEP_SECS: must be greater than zero"
    );
    let err = load_env(&[("VALO_OAUTH_MIGRATE_ON_START", "yes")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "VALO_OAUTH_MIGRATE_ON_START: \"yes\" is not true or false"
    );
    let err = load_env(&[("VALO_OAUTH_BODY_LIMIT_BYTES", " ")]).unwrap_err();
    assert_eq!(err.to_string(), "VALO_OAUTH_BODY_LIMIT_BYTES: must be set");

    // In a file: the key and the file.
    let file = dir.join("bad.toml");
    std::fs::write(&file, "idle_timeout_secs = \"soon\"\n").unwrap();
    let err = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap_err();
    assert_eq!(
        err.setting,
        format!("idle_timeout_secs in {}", file.display())
    );
    assert!(
        err.problem
            .contains("\"soon\" is not a whole number of seconds"),
        "{err}"
    );

    // An unknown key names the key and the file; broken TOML is one line without the text.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9000\"\nwebhok_url = \"https://x\"\n",
    )
    .unwrap();
    let err = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap_err();
    assert_eq!(err.setting, file.display().to_string());
    assert_eq!(err.problem, "unknown setting \"webhok_url\"");
    std::fs::write(
        &file,
        "database_url = \"postgres://u:hunter2@h/db\nlog = 1\n",
    )
    .unwrap();
    let err = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap_err();
    let line = one_line(&err);
    assert!(line.contains("invalid TOML at line 1"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
    // A --config file that does not exist.
    let err = load(
        &dir.join("none.toml"),
        Some(&dir.join("absent.toml")),
        &env(&[], &dir),
    )
    .unwrap_err();
    assert!(err.problem.starts_with("cannot read"), "{err}");
    // A secret of the wrong type is not echoed.
    std::fs::write(&file, "api_jwt_secret = { value = \"hunter2\" }\n").unwrap();
    let err = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap_err();
    assert_eq!(err.setting, format!("api_jwt_secret in {}", file.display()));
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn the_settings_listed_are_the_readme_table() {
    let names = environment_names();
    let readme: Vec<&str> = include_str!("../../README.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|n| n.starts_with("VALO_OAUTH_") || n.starts_with("DATABASE_URL"))
        .collect();
    for name in &readme {
        assert!(names.iter().any(|n| n == name), "{name} is not listed");
    }
    let secrets = [
        "DATABASE_URL",
        "VALO_OAUTH_ENCRYPTION_KEYS",
        "VALO_OAUTH_API_JWT_SECRET",
        "VALO_OAUTH_WEBHOOK_SECRET",
    ];
    for secret in secrets {
        assert!(names.contains(&format!("{secret}_FILE")), "{secret}_FILE");
    }
    // VALO_OAUTH_CONFIG, each setting of the table, and the four files.
    assert_eq!(names.len(), 1 + readme.len() + secrets.len(), "{names:?}");
}
