//! `GET /openapi.json`: an OpenAPI 3.1 document that names every route the router serves, whose
//! `$ref`s all resolve, and whose documented operations are really served. The property-based
//! check of responses against the schemas is `ops/schemathesis.sh` (a live server and a fuzzer).

use std::collections::BTreeSet;

use cognomega_testkit::{init_tracing, Backend, TestApp};
use serde_json::Value;

/// The file where every route is registered.
const ROUTES_RS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/producers/src/routes/mod.rs");

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every `(method, path)` the router registers, read from the `.route(PATH, METHOD(handler)…)`
/// calls of `producers/src/routes/mod.rs`, so a route added there without an `#[utoipa::path]`
/// (and an entry in the document's `paths(…)`) fails this test. Wildcards (`{*key}`) are named
/// as OpenAPI names them (`{key}`).
fn served_routes() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(ROUTES_RS).expect("read routes/mod.rs");
    for unsupported in [".nest(", ".route_service(", ".nest_service("] {
        assert!(
            !src.contains(unsupported),
            "routes/mod.rs uses {unsupported}: teach served_routes() to read it"
        );
    }
    let mut routes = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let open = rest.find('"').expect("a path literal after .route(");
        let len = rest[open + 1..].find('"').expect("the path literal's end");
        let path = rest[open + 1..open + 1 + len].replace("{*", "{");
        rest = &rest[open + 1 + len + 1..];
        // The method router runs to the parenthesis closing `.route(`.
        let mut depth = 0usize;
        let mut ident_start = None;
        for (i, c) in rest.char_indices() {
            match c {
                '(' => {
                    if depth == 0 {
                        let ident = &rest[ident_start.unwrap_or(i)..i];
                        let method = ident.rsplit("::").next().unwrap_or(ident);
                        assert!(
                            METHODS.contains(&method),
                            "cannot read the method router of {path}: {ident:?}"
                        );
                        routes.insert((method.to_owned(), path.clone()));
                    }
                    depth += 1;
                }
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => {
                    ident_start.get_or_insert(i);
                    continue;
                }
                _ => {}
            }
            ident_start = None;
        }
    }
    assert!(routes.len() > 20, "read only {routes:?} from {ROUTES_RS}");
    routes
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

/// Every `$ref` in `value`, with where it was found.
fn refs<'a>(value: &'a Value, at: &str, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push((at.to_owned(), r)),
                    _ => refs(v, &format!("{at}/{k}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// A response object, following its `$ref`.
fn resolve<'a>(doc: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{r} does not resolve")),
        None => response,
    }
}

async fn fetch_document(app: &TestApp) -> anyhow::Result<Value> {
    let resp = app.client.get(app.url("/openapi.json")).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().contains_key("x-request-id"));
    Ok(resp.json().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_route() -> anyhow::Result<()> {
    init_tracing();
    let app = TestApp::spawn_with(Backend::Sqlite, false).await?;
    let doc = fetch_document(&app).await?;

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi = {version:?}");

    let served = served_routes();
    let documented = documented_routes(&doc);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the document (add #[utoipa::path] and list the handler in \
         routes/openapi.rs): {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );

    // Operation ids are unique, and every link names one of them.
    let mut ids = BTreeSet::new();
    for (method, path) in &documented {
        let id = doc["paths"][path][method]["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id), "operationId {id} is used twice");
    }
    let mut links = 0;
    for (method, path) in &documented {
        for response in doc["paths"][path][method]["responses"]
            .as_object()
            .into_iter()
            .flat_map(|r| r.values())
        {
            for link in response["links"]
                .as_object()
                .into_iter()
                .flat_map(|l| l.values())
            {
                let target = link["operationId"].as_str().unwrap_or_default();
                assert!(ids.contains(target), "{method} {path} links to {target:?}");
                links += 1;
            }
        }
    }
    assert!(links > 0, "no links for stateful testing");

    let mut found = Vec::new();
    refs(&doc, "#", &mut found);
    assert!(found.len() > 50, "only {} $refs", found.len());
    for (at, r) in &found {
        assert!(
            r.starts_with("#/") && doc.pointer(&r[1..]).is_some(),
            "{at}: $ref {r} does not resolve"
        );
    }
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_errors_and_headers_are_declared() -> anyhow::Result<()> {
    init_tracing();
    let app = TestApp::spawn_with(Backend::Sqlite, false).await?;
    let doc = fetch_document(&app).await?;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["admin_key"]["type"], "apiKey");
    assert_eq!(schemes["admin_key"]["in"], "header");
    assert_eq!(schemes["admin_key"]["name"], "X-Admin-Key");

    let envelope = &doc["components"]["schemas"]["ErrorEnvelope"];
    assert_eq!(
        envelope["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    let body = &doc["components"]["schemas"]["ErrorBody"]["required"];
    for field in ["code", "message", "request_id"] {
        assert!(body.as_array().is_some_and(|r| r.contains(&field.into())));
    }
    let too_many = &doc["components"]["responses"]["TooManyRequests"];
    for header in [
        "Retry-After",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    ] {
        assert!(
            too_many["headers"].get(header).is_some(),
            "429 lacks {header}"
        );
    }

    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let name = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().expect("responses");
            let security: Vec<&str> = op["security"]
                .as_array()
                .map(|reqs| {
                    reqs.iter()
                        .flat_map(|r| r.as_object().into_iter().flat_map(|o| o.keys()))
                        .map(String::as_str)
                        .collect()
                })
                .unwrap_or_default();
            assert!(security.len() <= 1, "{name} names {security:?}");
            for scheme in &security {
                assert!(schemes.get(*scheme).is_some(), "{name}: unknown {scheme}");
                assert!(responses.contains_key("401"), "{name} lacks 401");
            }
            let admin = path.starts_with("/admin/")
                || path.starts_with("/credits/adj")
                || path == "/exports";
            assert_eq!(
                security == ["admin_key"],
                admin,
                "{name}: security {security:?}"
            );
            // Every authenticated tenant route and guest issuance is rate limited.
            if security == ["bearer"] || path == "/auth/guest" {
                assert_eq!(
                    responses.get("429").and_then(|r| r["$ref"].as_str()),
                    Some("#/components/responses/TooManyRequests"),
                    "{name} lacks the shared 429"
                );
            }
            for (status, response) in responses {
                let response = resolve(&doc, response);
                assert!(
                    response["headers"]["X-Request-Id"]["required"] == true,
                    "{name} {status} lacks X-Request-Id"
                );
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorEnvelope",
                        "{name} {status} is not the error envelope"
                    );
                }
            }
        }
    }
    app.stop().await
}

/// Every documented operation is really served: called without credentials (path parameters
/// filled with a placeholder), it answers with one of its documented statuses, never the
/// router's own `not_found` / `method_not_allowed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_operations_answer_with_documented_statuses() -> anyhow::Result<()> {
    init_tracing();
    let app = TestApp::spawn_with(Backend::Sqlite, false).await?;
    let doc = fetch_document(&app).await?;
    for (method, path) in documented_routes(&doc) {
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let request = match method.as_str() {
            "get" => app.client.get(app.url(&concrete)),
            "post" => app.client.post(app.url(&concrete)),
            other => panic!("{other} {path}: no such method is served"),
        };
        let resp = request.send().await?;
        let status = resp.status().as_u16().to_string();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            !matches!(code, "not_found" | "method_not_allowed"),
            "{method} {path}: the router does not serve it ({code})"
        );
        let documented = &doc["paths"][&path][&method]["responses"];
        assert!(
            documented.get(&status).is_some(),
            "{method} {concrete}: {status} {body} is not a documented status"
        );
    }
    app.stop().await
}

/// The document in the repository (`docs/openapi.json`: for readers and client generators,
/// and what the edge shape serves as its `GET /openapi.json`).
const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

/// `docs/openapi.json` is the document the server serves. After changing a route, rewrite it
/// with `COGNOMEGA_WRITE_OPENAPI=1 cargo test --test openapi`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_document_is_current() -> anyhow::Result<()> {
    init_tracing();
    let app = TestApp::spawn_with(Backend::Sqlite, false).await?;
    let served = fetch_document(&app).await?;
    if std::env::var_os("COGNOMEGA_WRITE_OPENAPI").is_some() {
        let mut text = serde_json::to_string_pretty(&served)?;
        text.push('\n');
        std::fs::write(COMMITTED, text)?;
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(COMMITTED)?)?;
    assert!(
        committed == served,
        "docs/openapi.json differs from the served document: rewrite it with \
         COGNOMEGA_WRITE_OPENAPI=1 cargo test --test openapi"
    );
    Ok(())
}
