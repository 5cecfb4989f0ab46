//! The OpenAPI 3.1 document of the HTTP routes (`docs/openapi.json`), served at `GET /openapi.json`.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use super::body::{full_body, Response};

/// `docs/openapi.json`, compiled into the binary.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

/// Returns the OpenAPI document as `application/json`.
pub fn document() -> Response {
    let mut response = http::Response::new(full_body(Bytes::from_static(DOCUMENT.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use http::Method;
    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::*;
    use crate::http::router::{route, ListenerKind};

    const LISTENERS: [ListenerKind; 3] =
        [ListenerKind::Agent, ListenerKind::Api, ListenerKind::Ops];

    /// Methods tried against every route template; the router uses no others.
    const METHODS: [Method; 7] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];

    fn parsed() -> Value {
        serde_json::from_str(DOCUMENT).expect("docs/openapi.json is valid JSON")
    }

    /// Returns every path template that `Route::template` can return, read
    /// from the router's source, so a new route is seen without a list to update.
    fn router_templates() -> Vec<String> {
        let source = include_str!("router.rs");
        let start = source
            .find("pub fn template(&self)")
            .expect("router.rs defines Route::template");
        let end = start
            + source[start..]
                .find("\npub fn route(")
                .expect("router.rs defines route() after Route::template");
        let mut templates: Vec<String> = source[start..end]
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|literal| literal.starts_with('/'))
            .map(str::to_owned)
            .collect();
        templates.sort();
        templates.dedup();
        templates
    }

    /// Replaces each `{parameter}` of a template with a sample segment.
    fn sample_path(template: &str) -> String {
        template
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') && segment.ends_with('}') {
                    "sample"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Returns the listener whose routes an operation describes, from its tags.
    fn documented_listener(operation: &Value) -> ListenerKind {
        let tags = operation["tags"].as_array().cloned().unwrap_or_default();
        if tags.iter().any(|tag| tag == "ops") {
            ListenerKind::Ops
        } else if tags.iter().any(|tag| tag == "agent-listener") {
            ListenerKind::Agent
        } else {
            ListenerKind::Api
        }
    }

    #[test]
    fn document_is_openapi_3_1() {
        let doc = parsed();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].is_object(), "the document has no paths");
        assert!(
            doc["components"]["securitySchemes"]["bearerAuth"].is_object(),
            "the document has no bearerAuth security scheme"
        );
    }

    #[test]
    fn router_templates_are_found() {
        let templates = router_templates();
        assert!(
            templates.contains(&"/v1/agents".to_owned()),
            "parsing router.rs found {templates:?}"
        );
        assert!(
            templates.contains(&"/openapi.json".to_owned()),
            "parsing router.rs found {templates:?}"
        );
    }

    #[test]
    fn every_route_is_documented() {
        let doc = parsed();
        let mut missing = Vec::new();
        for template in router_templates() {
            let path = sample_path(&template);
            let mut routed = false;
            for listener in LISTENERS {
                for method in &METHODS {
                    let Ok(found) = route(listener, method, &path) else {
                        continue;
                    };
                    if found.template() != template {
                        continue;
                    }
                    routed = true;
                    let key = method.as_str().to_ascii_lowercase();
                    if doc["paths"][&template][&key].is_null() {
                        missing.push(format!("{method} {template}"));
                    }
                }
            }
            assert!(
                routed,
                "no listener routes {path} to the template {template}"
            );
        }
        missing.sort();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "routes missing from docs/openapi.json: {missing:?}"
        );
    }

    #[test]
    fn every_documented_operation_is_routed() {
        let doc = parsed();
        let paths = doc["paths"].as_object().expect("paths is an object");
        for (template, item) in paths {
            let path = sample_path(template);
            for (key, operation) in item.as_object().expect("a path item is an object") {
                let Ok(method) = Method::from_bytes(key.to_ascii_uppercase().as_bytes()) else {
                    continue;
                };
                if !METHODS.contains(&method) {
                    continue;
                }
                let listener = documented_listener(operation);
                let found = route(listener, &method, &path);
                assert!(
                    matches!(&found, Ok(r) if r.template() == template),
                    "docs/openapi.json documents {method} {template} on the {} listener, which routes it to {found:?}",
                    listener.as_str()
                );
            }
        }
    }

    #[tokio::test]
    async fn document_served_as_json() {
        let response = document();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, DOCUMENT.as_bytes());
    }
}
