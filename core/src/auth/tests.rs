//! Issue/verify round trips, every refusal with its own error, rotation, JWKS shape, key
//! storage and redaction. Malicious tokens are crafted by hand, byte for byte.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use rsa::sha2::Sha256;
use serde_json::{json, Value};

use super::*;
use crate::time::UnixMillis;

const ISS: &str = "https://api.cognomega.test";
const AUD: &str = "cognomega";
const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
const NOW_S: i64 = 1_700_000_000;
const TTL: Duration = Duration::from_secs(3600);

/// Four keys (`k0`..`k3`), generated once for the whole module: RSA key generation is the
/// slow part of these tests, and two threads halve it on the two-core machines.
fn keys() -> &'static [SigningKey] {
    static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pairs: Vec<_> = (0..2)
            .map(|t| {
                std::thread::spawn(move || {
                    [2 * t, 2 * t + 1].map(|i| {
                        let kid = KeyId::parse(&format!("k{i}")).expect("valid kid");
                        SigningKey::generate(kid).expect("key generation")
                    })
                })
            })
            .collect();
        pairs
            .into_iter()
            .flat_map(|h| h.join().expect("keygen thread"))
            .collect()
    })
}

fn key(i: usize) -> SigningKey {
    keys()[i].clone()
}

fn ring() -> KeyRing {
    KeyRing::new(key(0))
}

fn validation() -> Validation {
    Validation::new(ISS, AUD)
}

fn claims() -> Claims {
    ClaimsBuilder::new(ISS, AUD, TTL).build("user-1", "tenant-1", Tier::Guest, "jti-1", NOW)
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(value: &Value) -> String {
    b64(serde_json::to_vec(value).expect("json"))
}

/// `header.payload` signed with `key` (RS256), whatever the header claims.
fn rs256_token(header: &Value, payload: &Value, key: &SigningKey) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(payload));
    let signature = key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64(signature))
}

fn claims_json() -> Value {
    serde_json::to_value(claims()).expect("claims json")
}

fn check(token: &str) -> Result<Claims, AuthError> {
    verify(token, &ring().jwks(), &validation(), NOW)
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
}

// --- round trip -------------------------------------------------------------------------

#[test]
fn issue_then_verify_round_trips() {
    let ring = ring();
    let token = ring.issue(&claims()).expect("issue");
    assert_eq!(
        decode_part(&token, 0),
        json!({"alg": "RS256", "typ": "JWT", "kid": "k0"})
    );
    let verified = verify(&token, &ring.jwks(), &validation(), NOW).expect("verifies");
    assert_eq!(verified, claims());
    assert_eq!(ring.verify(&token, &validation(), NOW), Ok(claims()));
}

#[test]
fn verifies_with_a_jwks_read_back_from_json() {
    // The edge host only ever has the JWKS document from KV, never a private key.
    let ring = ring();
    let token = ring.issue(&claims()).expect("issue");
    let stored = serde_json::to_string(&ring.jwks()).expect("jwks json");
    let jwks: Jwks = serde_json::from_str(&stored).expect("jwks parses");
    assert_eq!(verify(&token, &jwks, &validation(), NOW), Ok(claims()));
}

#[test]
fn optional_nbf_round_trips() {
    let claims =
        ClaimsBuilder::new(ISS, AUD, TTL)
            .with_not_before()
            .build("u", "t", Tier::Pro, "j", NOW);
    let token = ring().issue(&claims).expect("issue");
    assert_eq!(check(&token).expect("verifies").nbf, Some(NOW_S));
}

// --- header attacks -----------------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    let payload = b64_json(&claims_json());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64_json(&json!({"alg": alg, "kid": "k0"}));
        assert_eq!(
            check(&format!("{header}.{payload}.")),
            Err(AuthError::AlgNone)
        );
        // Also with a (stolen) signature attached.
        let real = ring().issue(&claims()).expect("issue");
        let signature = real.rsplit('.').next().expect("signature");
        assert_eq!(
            check(&format!("{header}.{payload}.{signature}")),
            Err(AuthError::AlgNone)
        );
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    // The classic confusion attack: HMAC keyed with our public key, which anyone can fetch.
    let jwk = key(0).public_jwk();
    let pem = jwk.to_public_key_pem().expect("public pem");
    let jwk_json = serde_json::to_vec(&jwk).expect("jwk json");
    for secret in [pem.as_bytes(), jwk_json.as_slice()] {
        let input = format!(
            "{}.{}",
            b64_json(&json!({"alg": "HS256", "typ": "JWT", "kid": "k0"})),
            b64_json(&claims_json())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac key");
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", b64(mac.finalize().into_bytes()));
        assert_eq!(
            check(&token),
            Err(AuthError::SymmetricAlg {
                alg: "HS256".into()
            })
        );
    }
}

#[test]
fn other_hmac_algs_are_symmetric() {
    for alg in ["HS384", "HS512", "hs256"] {
        let token = rs256_token(&json!({"alg": alg, "kid": "k0"}), &claims_json(), &key(0));
        assert_eq!(
            check(&token),
            Err(AuthError::SymmetricAlg { alg: alg.into() })
        );
    }
}

#[test]
fn any_other_alg_is_unsupported() {
    // Even when the signature is a valid RS256 one: the header must say exactly RS256.
    for alg in [
        "RS384", "RS512", "PS256", "ES256", "EdDSA", "rs256", "RS256 ", "",
    ] {
        let token = rs256_token(&json!({"alg": alg, "kid": "k0"}), &claims_json(), &key(0));
        assert_eq!(
            check(&token),
            Err(AuthError::UnsupportedAlg { alg: alg.into() }),
            "alg {alg:?}"
        );
    }
    let long = "X".repeat(100);
    let token = rs256_token(&json!({"alg": long, "kid": "k0"}), &claims_json(), &key(0));
    assert_eq!(
        check(&token),
        Err(AuthError::UnsupportedAlg {
            alg: "X".repeat(16)
        })
    );
}

#[test]
fn missing_kid_is_refused() {
    let token = rs256_token(&json!({"alg": "RS256"}), &claims_json(), &key(0));
    assert_eq!(check(&token), Err(AuthError::MissingKid));
}

#[test]
fn unknown_kid_is_refused() {
    // Properly signed, by a key we never published.
    let stranger = ClaimsBuilder::new(ISS, AUD, TTL).build("u", "t", Tier::Guest, "j", NOW);
    let token = KeyRing::new(key(1)).issue(&stranger).expect("issue");
    assert_eq!(
        check(&token),
        Err(AuthError::UnknownKid {
            kid: Some(KeyId::parse("k1").expect("kid"))
        })
    );
    let token = rs256_token(
        &json!({"alg": "RS256", "kid": "../../etc/passwd"}),
        &claims_json(),
        &key(0),
    );
    assert_eq!(check(&token), Err(AuthError::UnknownKid { kid: None }));
}

#[test]
fn critical_header_extensions_are_refused() {
    let token = rs256_token(
        &json!({"alg": "RS256", "kid": "k0", "crit": ["exp"]}),
        &claims_json(),
        &key(0),
    );
    assert!(matches!(check(&token), Err(AuthError::Malformed { .. })));
}

// --- signature ------------------------------------------------------------------------------

#[test]
fn tampered_payload_fails_the_signature() {
    let token = ring().issue(&claims()).expect("issue");
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims_json();
    forged["tier"] = json!("pro");
    let token = format!("{}.{}.{}", parts[0], b64_json(&forged), parts[2]);
    assert_eq!(check(&token), Err(AuthError::BadSignature));
}

#[test]
fn tampered_header_fails_the_signature() {
    let mut ring = KeyRing::new(key(0));
    ring.rotate(key(1)).expect("rotate");
    let token = ring.issue(&claims()).expect("issue");
    let parts: Vec<&str> = token.split('.').collect();
    let jwks = ring.jwks();
    // Point the header at the other published key: same alg, still refused.
    for header in [
        json!({"alg": "RS256", "typ": "JWT", "kid": "k0"}),
        json!({"alg": "RS256", "typ": "JWS", "kid": "k1"}),
    ] {
        let token = format!("{}.{}.{}", b64_json(&header), parts[1], parts[2]);
        assert_eq!(
            verify(&token, &jwks, &validation(), NOW),
            Err(AuthError::BadSignature)
        );
    }
}

#[test]
fn signature_by_another_key_or_mangled_is_refused() {
    let header = json!({"alg": "RS256", "kid": "k0"});
    let by_k1 = rs256_token(&header, &claims_json(), &key(1));
    assert_eq!(check(&by_k1), Err(AuthError::BadSignature));

    let good = ring().issue(&claims()).expect("issue");
    let (input, signature) = good.rsplit_once('.').expect("parts");
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).expect("b64");
    bytes[10] ^= 1;
    assert_eq!(
        check(&format!("{input}.{}", b64(&bytes))),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        check(&format!("{input}.{}", b64(&bytes[..100]))),
        Err(AuthError::BadSignature)
    );
    assert_eq!(check(&format!("{input}.")), Err(AuthError::BadSignature));
}

// --- claims -----------------------------------------------------------------------------------

#[test]
fn expired_tokens_are_refused_after_the_leeway() {
    let token = ring().issue(&claims()).expect("issue");
    let exp = NOW_S + 3600;
    let strict = validation().with_leeway(Duration::ZERO);
    let at = |secs: i64| UnixMillis(secs * 1000);
    let jwks = ring().jwks();
    assert!(verify(&token, &jwks, &strict, at(exp - 1)).is_ok());
    assert_eq!(
        verify(&token, &jwks, &strict, at(exp)),
        Err(AuthError::Expired { exp })
    );
    // The default leeway tolerates a minute of clock skew, not more.
    assert!(verify(&token, &jwks, &validation(), at(exp + 59)).is_ok());
    assert_eq!(
        verify(&token, &jwks, &validation(), at(exp + 60)),
        Err(AuthError::Expired { exp })
    );
}

#[test]
fn not_yet_valid_tokens_are_refused() {
    let mut future = claims_json();
    future["nbf"] = json!(NOW_S + 600);
    let token = rs256_token(&json!({"alg": "RS256", "kid": "k0"}), &future, &key(0));
    assert_eq!(
        check(&token),
        Err(AuthError::NotYetValid {
            valid_from: NOW_S + 600
        })
    );
    let later = UnixMillis((NOW_S + 600) * 1000);
    assert!(verify(&token, &ring().jwks(), &validation(), later).is_ok());

    // Issued in the future (beyond the leeway) is refused the same way.
    let early = ClaimsBuilder::new(ISS, AUD, TTL).build(
        "u",
        "t",
        Tier::Guest,
        "j",
        UnixMillis((NOW_S + 120) * 1000),
    );
    let token = ring().issue(&early).expect("issue");
    assert_eq!(
        check(&token),
        Err(AuthError::NotYetValid {
            valid_from: NOW_S + 120
        })
    );
}

#[test]
fn wrong_issuer_is_refused() {
    let other =
        ClaimsBuilder::new("https://evil.test", AUD, TTL).build("u", "t", Tier::Guest, "j", NOW);
    let token = ring().issue(&other).expect("issue");
    assert_eq!(check(&token), Err(AuthError::WrongIssuer));
}

#[test]
fn wrong_audience_is_refused() {
    let other = ClaimsBuilder::new(ISS, "another-app", TTL).build("u", "t", Tier::Guest, "j", NOW);
    let token = ring().issue(&other).expect("issue");
    assert_eq!(check(&token), Err(AuthError::WrongAudience));
    // An audience array is not our format.
    let mut array = claims_json();
    array["aud"] = json!([AUD]);
    let token = rs256_token(&json!({"alg": "RS256", "kid": "k0"}), &array, &key(0));
    assert!(matches!(check(&token), Err(AuthError::Malformed { .. })));
}

// --- shape --------------------------------------------------------------------------------------

#[test]
fn malformed_tokens_are_refused() {
    let header = b64_json(&json!({"alg": "RS256", "kid": "k0"}));
    let payload = b64_json(&claims_json());
    let cases = [
        String::new(),
        "abc".into(),
        "a.b".into(),
        format!("{header}.{payload}.sig.extra"),
        format!(".{payload}.sig"),
        format!("{header}..sig"),
        format!("!!!.{payload}.sig"),
        format!("{header}=.{payload}.sig"),
        format!("{}.{payload}.sig", b64("not json")),
        format!("{}.{payload}.sig", b64_json(&json!({"kid": "k0"}))),
        format!(
            "{}.{payload}.sig",
            b64_json(&json!({"alg": 256, "kid": "k0"}))
        ),
        format!("{}.{payload}.sig", b64_json(&json!(["RS256"]))),
        format!("{}.{payload}.sig", b64_json(&json!(["RS256", "k0"]))),
        format!(
            "{}.{payload}.sig",
            b64(r#"{"alg":"RS256","alg":"none","kid":"k0"}"#)
        ),
        format!("{header}.{payload}.not*base64"),
        format!("{header}.{}.sig", "A".repeat(MAX_TOKEN_BYTES)),
    ];
    for token in cases {
        assert!(
            matches!(check(&token), Err(AuthError::Malformed { .. })),
            "{token:.80} gave {:?}",
            check(&token)
        );
    }
}

#[test]
fn signed_garbage_claims_are_malformed() {
    let header = json!({"alg": "RS256", "kid": "k0"});
    let mut missing = claims_json();
    missing.as_object_mut().expect("object").remove("tenant");
    let mut bad_tier = claims_json();
    bad_tier["tier"] = json!("root");
    // serde alone would accept the claims as a positional array; JWT requires an object.
    let as_array = json!([
        ISS,
        AUD,
        "user-1",
        "tenant-1",
        "guest",
        NOW_S,
        null,
        NOW_S + 3600,
        "jti-1"
    ]);
    assert!(serde_json::from_value::<Claims>(as_array.clone()).is_ok());
    for payload in [missing, bad_tier, as_array, json!("just a string")] {
        let token = rs256_token(&header, &payload, &key(0));
        assert!(matches!(check(&token), Err(AuthError::Malformed { .. })));
    }
}

#[test]
fn error_codes_are_distinct_and_snake_case() {
    let errors = [
        AuthError::Malformed { reason: "x" },
        AuthError::AlgNone,
        AuthError::SymmetricAlg {
            alg: "HS256".into(),
        },
        AuthError::UnsupportedAlg {
            alg: "ES256".into(),
        },
        AuthError::MissingKid,
        AuthError::UnknownKid { kid: None },
        AuthError::BadSignature,
        AuthError::Expired { exp: 0 },
        AuthError::NotYetValid { valid_from: 0 },
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
    ];
    let codes: BTreeSet<&str> = errors.iter().map(AuthError::code).collect();
    assert_eq!(codes.len(), errors.len());
    for code in codes {
        assert!(
            code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{code}"
        );
    }
}

// --- rotation --------------------------------------------------------------------------------

#[test]
fn rotation_keeps_old_tokens_until_their_key_ages_out() {
    let mut ring = KeyRing::new(key(0));
    let old = ring.issue(&claims()).expect("issue");

    ring.rotate(key(1)).expect("rotate");
    let newer = ring.issue(&claims()).expect("issue");
    assert_eq!(decode_part(&newer, 0)["kid"], "k1");
    assert!(ring.verify(&old, &validation(), NOW).is_ok());

    ring.rotate(key(2)).expect("rotate");
    assert!(ring.verify(&old, &validation(), NOW).is_ok());
    assert!(ring.verify(&newer, &validation(), NOW).is_ok());

    ring.rotate(key(3)).expect("rotate");
    let jwks = ring.jwks();
    let kids: Vec<&str> = jwks.keys().iter().map(|k| k.kid().as_str()).collect();
    assert_eq!(kids, ["k3", "k2", "k1"]);
    assert_eq!(
        ring.verify(&old, &validation(), NOW),
        Err(AuthError::UnknownKid {
            kid: Some(KeyId::parse("k0").expect("kid"))
        })
    );
    assert!(ring.verify(&newer, &validation(), NOW).is_ok());
}

#[test]
fn rings_refuse_duplicate_kids() {
    let mut ring = KeyRing::new(key(0));
    ring.rotate(key(1)).expect("rotate");
    assert_eq!(
        ring.rotate(key(0)),
        Err(KeyError::DuplicateKid(KeyId::parse("k0").expect("kid")))
    );
    assert_eq!(ring.current().kid().as_str(), "k1");
    assert!(KeyRing::from_parts(key(0), vec![key(1), key(0)]).is_err());

    let restored = KeyRing::from_parts(key(0), vec![key(1), key(2), key(3)]).expect("ring");
    let kids: Vec<&str> = restored
        .previous()
        .iter()
        .map(|k| k.kid().as_str())
        .collect();
    assert_eq!(kids, ["k1", "k2"]);
}

// --- JWKS ------------------------------------------------------------------------------------

#[test]
fn jwks_is_a_standard_document() {
    let mut ring = KeyRing::new(key(0));
    ring.rotate(key(1)).expect("rotate");
    let json = serde_json::to_value(ring.jwks()).expect("json");
    let keys = json["keys"].as_array().expect("keys array");
    assert_eq!(json.as_object().expect("object").len(), 1);
    assert_eq!(keys.len(), 2);
    for (jwk, kid) in keys.iter().zip(["k1", "k0"]) {
        let fields: BTreeSet<&str> = jwk
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            BTreeSet::from(["alg", "e", "kid", "kty", "n", "use"])
        );
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["kid"], kid);
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["e"], "AQAB");
        let n = jwk["n"].as_str().expect("n");
        assert!(!n.contains('=') && !n.contains('+') && !n.contains('/'));
        assert_eq!(URL_SAFE_NO_PAD.decode(n).expect("n b64").len(), 256);
    }
    // Serialized field order is the conventional one.
    let text = serde_json::to_string(&ring.jwks()).expect("json");
    assert!(text.starts_with(r#"{"keys":[{"kty":"RSA","kid":"k1","use":"sig","alg":"RS256","n":""#));
}

#[test]
fn jwks_parsing_is_strict() {
    let good = serde_json::to_value(KeyRing::new(key(0)).jwks()).expect("json");
    let jwk = good["keys"][0].clone();
    let with = |field: &str, value: Value| {
        let mut k = jwk.clone();
        k[field] = value;
        json!({ "keys": [k] })
    };
    let small_n = b64([0xC5u8; 128]); // a 1024-bit modulus
    for bad in [
        with("alg", json!("HS256")),
        with("kty", json!("EC")),
        with("use", json!("enc")),
        with("n", json!(small_n)),
        with("n", json!("not base64!")),
        with("e", json!("")),
        with("kid", json!("bad kid")),
        json!({ "keys": [jwk.clone(), jwk.clone()] }),
    ] {
        assert!(
            serde_json::from_value::<Jwks>(bad.clone()).is_err(),
            "{bad}"
        );
    }
    assert!(serde_json::from_value::<Jwks>(good).is_ok());
}

// --- key storage ----------------------------------------------------------------------------

#[test]
fn pkcs8_pem_round_trips() {
    let original = key(0);
    let pem = original.to_pkcs8_pem().expect("pem");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let restored =
        SigningKey::from_pkcs8_pem(original.kid().clone(), &pem).expect("pem parses back");
    assert_eq!(restored.public_jwk(), original.public_jwk());
    // A token from the restored key verifies against the original's published keys.
    let token = KeyRing::new(restored).issue(&claims()).expect("issue");
    assert_eq!(check(&token), Ok(claims()));
}

#[test]
fn bad_pem_is_refused() {
    let kid = KeyId::parse("k9").expect("kid");
    assert!(matches!(
        SigningKey::from_pkcs8_pem(kid.clone(), "not a pem"),
        Err(KeyError::Pem(_))
    ));
    let public = key(0).public_jwk().to_public_key_pem().expect("pem");
    assert!(matches!(
        SigningKey::from_pkcs8_pem(kid, &public),
        Err(KeyError::Pem(_))
    ));
}

#[test]
fn debug_never_shows_private_keys() {
    let key = key(0);
    let pem = key.to_pkcs8_pem().expect("pem");
    let mut ring = KeyRing::new(key.clone());
    ring.rotate(self::key(1)).expect("rotate");
    for shown in [format!("{key:?}"), format!("{key:#?}"), format!("{ring:?}")] {
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        // No line of the PEM body, nor any long run of key-looking digits, leaks.
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!shown.contains(line), "{shown}");
        }
        assert!(shown.len() < 400, "{shown}");
    }
    assert_eq!(
        format!("{key:?}"),
        r#"SigningKey { kid: KeyId("k0"), bits: 2048, private_key: "<redacted>" }"#
    );
}

#[test]
fn key_ids_are_parsed() {
    assert!(KeyId::parse("2025-01-01.a_b").is_ok());
    assert!(KeyId::parse("").is_err());
    assert!(KeyId::parse("has space").is_err());
    assert!(KeyId::parse("quote\"").is_err());
    assert!(KeyId::parse(&"k".repeat(65)).is_err());
    assert!(serde_json::from_str::<KeyId>("\"a/b\"").is_err());
}

#[test]
fn bearer_from_the_header_or_a_browser_websocket_subprotocol() {
    use super::bearer_token;
    assert_eq!(bearer_token(Some("Bearer abc"), []), Some("abc"));
    assert_eq!(bearer_token(Some("bearer  abc "), []), Some("abc"));
    assert_eq!(bearer_token(Some("Basic abc"), []), None);
    assert_eq!(bearer_token(Some("Bearer "), []), None);
    // A header, even a bad one, is the only place looked at.
    assert_eq!(
        bearer_token(Some("Basic abc"), ["cognomega, bearer.xyz"]),
        None
    );
    assert_eq!(bearer_token(None, ["cognomega, bearer.xyz"]), Some("xyz"));
    assert_eq!(bearer_token(None, ["cognomega", "bearer.xyz"]), Some("xyz"));
    assert_eq!(bearer_token(None, ["cognomega, bearer."]), None);
    assert_eq!(bearer_token(None, ["cognomega"]), None);
    assert_eq!(bearer_token(None, []), None);
}
