//! The runtime objects of every configured tenant, built once at start-up: its JWT
//! verifier, compiled mapping, Ameyo client and the identity of its Ameyo server.
//! Building them is also the check that each tenant's settings work (key files read,
//! mapping compiled, client built), so `check-config` and `serve` share this path.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::Url;

use crate::ameyo::client::{AmeyoClient, SessionStore};
use crate::ameyo::mapping::Mapper;
use crate::config::{ConfigError, Settings, TenantSettings, invalid};
use crate::http::auth::JwtVerifier;

/// One IdP connection to one Ameyo contact center, ready to use.
pub struct Tenant {
    pub id: String,
    pub settings: TenantSettings,
    pub jwt: Option<JwtVerifier>,
    pub mapper: Arc<Mapper>,
    pub client: Arc<AmeyoClient>,
    /// The Ameyo server, normalised (lower-case scheme://host:port with the default port
    /// made explicit, no path), so tenants on one server share an ownership scope for
    /// Ameyo userIds.
    pub server: String,
}

/// Build every tenant, in configuration order. `sessions(tenant_id)`: where that
/// tenant's processes share the Ameyo session (None: process-local). Errors name the
/// key, numbered like [`Settings::validate`]'s (`tenants[0].jwt: ...`).
pub fn build(
    settings: &Settings,
    sessions: &dyn Fn(&str) -> Option<Arc<dyn SessionStore>>,
) -> Result<Vec<Arc<Tenant>>, ConfigError> {
    // (issuer, audience) -> the tenant that claimed it: a token valid for a pair that
    // two tenants share could select either of them.
    let mut jwt_owners: HashMap<(&str, &str), &str> = HashMap::new();
    let mut tenants = Vec::with_capacity(settings.tenants.len());
    for (i, t) in settings.tenants.iter().enumerate() {
        let key = |k: &str| format!("tenants[{i}].{k}");
        let jwt = match &t.jwt {
            Some(j) => {
                let verifier = JwtVerifier::from_settings(j).map_err(|m| invalid(key("jwt"), m))?;
                if let Some(other) =
                    jwt_owners.insert((j.issuer.as_str(), j.audience.as_str()), t.id.as_str())
                {
                    return Err(invalid(
                        key("jwt"),
                        format!(
                            "issuer and audience ('{}', '{}') already used by tenant '{other}'",
                            j.issuer, j.audience
                        ),
                    ));
                }
                Some(verifier)
            }
            None => None,
        };
        let a = &t.ameyo;
        let server = server_key(&a.base_url).map_err(|m| invalid(key("ameyo.base_url"), m))?;
        if let Some(ca) = &a.ca_file {
            std::fs::read(ca)
                .map_err(|e| invalid(key("ameyo.ca_file"), format!("{}: {e}", ca.display())))?;
        }
        let mapper = Mapper::from_ameyo(a).map_err(|e| match e.split_once(": ") {
            // `from_ameyo` starts its message with the key under [tenants.ameyo].
            Some((sub, message)) => invalid(key(&format!("ameyo.{sub}")), message),
            None => invalid(key("ameyo"), e),
        })?;
        let client =
            AmeyoClient::new(&t.id, a, sessions(&t.id)).map_err(|m| invalid(key("ameyo"), m))?;
        tenants.push(Arc::new(Tenant {
            id: t.id.clone(),
            settings: t.clone(),
            jwt,
            mapper: Arc::new(mapper),
            client,
            server,
        }));
    }
    Ok(tenants)
}

/// `scheme://host:port` of an Ameyo base URL, lower-case, the default port made
/// explicit, without user info or path: two spellings of one server give one key.
pub fn server_key(base_url: &str) -> Result<String, String> {
    let u = Url::parse(base_url.trim()).map_err(|e| e.to_string())?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("must be an http or https URL with a host".into());
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("must be an http or https URL with a host")?;
    let port = u
        .port_or_known_default()
        .ok_or("must be an http or https URL with a host")?;
    Ok(format!(
        "{}://{}:{port}",
        u.scheme(),
        host.trim_end_matches('.').to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes";

    fn settings(tenants: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(&format!(
            r#"
[sync]
password_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
[database]
url = "postgres://scim@localhost/ameyo_scim"
{tenants}
"#
        ))
    }

    /// A tenant whose `[tenants.ameyo]` section is open at the end, for more keys.
    fn tenant(id: &str, digest: &str, jwt: &str) -> String {
        format!(
            r#"
[[tenants]]
id = "{id}"
token_sha256 = [{digest}]
{jwt}
[tenants.ameyo]
base_url = "https://CC.example.com/prefix/"
contact_center_id = 1
login_user = "admin"
login_password = "pw"
"#
        )
    }

    fn jwt(issuer: &str, audience: &str) -> String {
        format!(
            "[tenants.jwt]\nissuer = \"{issuer}\"\naudience = \"{audience}\"\n\
             algorithms = [\"HS256\"]\nhs_secret = \"{SECRET}\"\n"
        )
    }

    fn build_error(tenants: &str) -> String {
        let s = settings(tenants).expect("the values alone are valid");
        match build(&s, &|_| None) {
            Ok(_) => panic!("built: {tenants}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builds_every_tenant_once_with_its_objects() {
        let s = settings(
            &(tenant("a", &format!("\"{DIGEST}\""), "")
                + &tenant("b", "", &jwt("https://idp/", "x"))
                    .replace("contact_center_id = 1", "contact_center_id = 2")),
        )
        .unwrap();
        let asked = std::sync::Mutex::new(Vec::new());
        let tenants = build(&s, &|id| {
            asked.lock().unwrap().push(id.to_string());
            None
        })
        .unwrap();
        assert_eq!(*asked.lock().unwrap(), ["a", "b"]);
        let ids: Vec<&str> = tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(tenants[0].jwt.is_none() && tenants[1].jwt.is_some());
        assert_eq!(tenants[1].settings.ameyo.contact_center_id, 2);
        assert_eq!(tenants[0].server, "https://cc.example.com:443");
        assert_eq!(
            tenants[0].server, tenants[1].server,
            "one server, one scope"
        );
    }

    #[test]
    fn a_shared_issuer_and_audience_is_refused() {
        let e = build_error(
            &(tenant("a", "", &jwt("https://idp/", "x"))
                + &tenant("b", "", &jwt("https://idp/", "x"))),
        );
        assert_eq!(
            e,
            "invalid configuration: tenants[1].jwt: issuer and audience ('https://idp/', 'x') \
             already used by tenant 'a'"
        );
        // Either one alone may be shared.
        let s = settings(
            &(tenant("a", "", &jwt("https://idp/", "x"))
                + &tenant("b", "", &jwt("https://idp/", "y"))
                + &tenant("c", "", &jwt("https://other/", "x"))),
        )
        .unwrap();
        assert_eq!(build(&s, &|_| None).unwrap().len(), 3);
    }

    #[test]
    fn mistakes_that_need_building_are_reported_under_their_key() {
        let t = |extra: &str| tenant("acme", &format!("\"{DIGEST}\""), "") + extra;
        let cases = [
            (
                tenant("acme", "", "[tenants.jwt]\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"XS256\"]\nhs_secret = \"s\"\n"),
                "tenants[0].jwt: unknown algorithm 'XS256'".to_string(),
            ),
            (
                tenant("acme", "", &jwt("i", "a").replace(SECRET, "short")),
                "tenants[0].jwt: hs_secret must be at least 32 bytes".into(),
            ),
            (
                t("[tenants.ameyo.mapping]\nuser_id_attribute = \"nosuch\"\n"),
                "tenants[0].ameyo.mapping: user_id_attribute: unknown SCIM attribute 'nosuch'"
                    .into(),
            ),
            (
                t("[[tenants.ameyo.mapping.rules]]\nattribute = \"title\"\nmatches = \"(\"\nuser_type = \"Supervisor\"\n"),
                "tenants[0].ameyo.mapping: rules[0]: matches: regex parse error".into(),
            ),
            (
                t("[tenants.ameyo.mapping]\ndefault_user_type = \"Wizard\"\n"),
                "tenants[0].ameyo.mapping: default_user_type 'Wizard' is not one of".into(),
            ),
            (
                t("[tenants.ameyo.mapping]\ndefault_user_type = \"Administrator\"\n"),
                "tenants[0].ameyo.mapping: default_user_type 'Administrator' is not in allowed_user_types"
                    .into(),
            ),
            (
                t("allowed_user_types = [\"Agent\", \"Boss\"]\n"),
                "tenants[0].ameyo.allowed_user_types: user type 'Boss' is not one of".into(),
            ),
            (
                t("allowed_contact_center_ids = [2]\n"),
                "tenants[0].ameyo.contact_center_id: 1 is not in allowed_contact_center_ids (2)"
                    .into(),
            ),
            (
                t("allowed_contact_center_ids = [1, -1]\n"),
                "tenants[0].ameyo.allowed_contact_center_ids: every entry must be a positive integer"
                    .into(),
            ),
            (
                t("allowed_contact_center_ids = [1]\n[[tenants.ameyo.mapping.rules]]\nattribute = \"title\"\nmatches = \"x\"\ncontact_center_id = 5\n"),
                "tenants[0].ameyo.mapping: rules[0]: contact_center_id 5 is not in allowed_contact_center_ids (1)"
                    .into(),
            ),
            (
                t("ca_file = \"/nonexistent/ameyo-ca.pem\"\n"),
                "tenants[0].ameyo.ca_file: /nonexistent/ameyo-ca.pem: ".into(),
            ),
        ];
        for (text, want) in cases {
            let e = build_error(&text);
            assert!(e.contains(&want), "wanted {want:?} in {e:?}");
        }
    }

    #[test]
    fn an_administrator_may_be_allowed_explicitly() {
        let s = settings(
            &(tenant("acme", &format!("\"{DIGEST}\""), "")
                + "allowed_user_types = [\"Agent\", \"administrator\"]\n\
                   [tenants.ameyo.mapping]\ndefault_user_type = \"Administrator\"\n"),
        )
        .unwrap();
        assert_eq!(build(&s, &|_| None).unwrap().len(), 1);
    }

    #[test]
    fn server_keys_normalise_spellings_of_one_server() {
        let same = [
            "https://cc.example.com",
            "HTTPS://CC.Example.COM:443/",
            "https://admin:pw@cc.example.com/ameyo/",
            "https://cc.example.com.:443",
        ];
        for u in same {
            assert_eq!(server_key(u).unwrap(), "https://cc.example.com:443", "{u}");
        }
        assert_eq!(
            server_key("http://cc.example.com").unwrap(),
            "http://cc.example.com:80"
        );
        assert_eq!(
            server_key("https://cc.example.com:8443").unwrap(),
            "https://cc.example.com:8443"
        );
        assert_eq!(
            server_key("http://[::1]:8089/x").unwrap(),
            "http://[::1]:8089"
        );
        assert_eq!(server_key("http://10.0.0.5").unwrap(), "http://10.0.0.5:80");
        assert!(server_key("ftp://cc.example.com").is_err());
        assert!(server_key("not a url").is_err());
    }
}
