//! What the edge reads of a request to route it: the app (from the Host name or the body's
//! `model`), and for completions and chat whether it streams, its prompt's prefix and the tokens
//! it may use, all from one pass over the JSON body.

use crate::EdgeError;
use colo_policy::{llm_token_cost, PrefixKey};
use http::{header, HeaderMap, Uri};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Bytes per block of the prefix index: prompts are matched block by block (about 64 tokens).
pub(crate) const PREFIX_BLOCK_BYTES: usize = 256;
/// Blocks of a prompt the prefix index looks at: its first 16 KiB.
pub(crate) const PREFIX_MAX_BLOCKS: usize = 64;

/// Paths of the engines' own control surface: sleeping and waking, weights and adapters,
/// caches, profiling, slots and metrics. Only a machine's agent calls them; a client that could
/// would put a model to sleep under everyone's requests or read another tenant's slots.
const ENGINE_PATHS: &[&str] = &[
    // vLLM (the development endpoints among them exist only in its dev mode)
    "/sleep",
    "/wake_up",
    "/is_sleeping",
    "/collective_rpc",
    "/reset_prefix_cache",
    "/reset_mm_cache",
    "/start_profile",
    "/stop_profile",
    "/pause",
    "/resume",
    "/is_paused",
    "/scale_elastic_ep",
    "/is_scaling_elastic_ep",
    "/server_info",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    // SGLang
    "/release_memory_occupation",
    "/resume_memory_occupation",
    "/flush_cache",
    "/update_weights_from_disk",
    "/update_weights_from_tensor",
    "/update_weights_from_distributed",
    "/init_weights_update_group",
    "/get_server_info",
    "/set_internal_state",
    "/configure_logging",
    "/abort_request",
    "/load_lora_adapter",
    "/unload_lora_adapter",
    // llama-server (its slots hold other requests' prompts)
    "/slots",
    "/props",
    "/lora-adapters",
    // every engine's Prometheus metrics, which the edge reads itself
    "/metrics",
];

/// Whether `path` (without its query) is, or lies under, one of an engine's own control
/// endpoints, which the edge answers 404 instead of passing on. The path is read as an engine's
/// router would read it: percent-escapes decoded, empty and `.` segments dropped, `..` applied.
pub(crate) fn is_engine_path(path: &str) -> bool {
    // The common path, written plainly, is matched as it is, with nothing allocated.
    if !path.contains('%') && !path.contains("//") && !path.contains("/.") {
        return matches_engine_path(path.trim_end_matches('/'));
    }
    let decoded = percent_decoded(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    matches_engine_path(&format!("/{}", segments.join("/")))
}

/// Whether a normalised `path` is, or lies under, one of [`ENGINE_PATHS`] (or SGLang's expert
/// distribution recorder).
fn matches_engine_path(path: &str) -> bool {
    let under = |p: &str| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    // Compared by their second byte first: nearly every request's path starts `/v1/`, which
    // only two of these share, so most comparisons end there.
    let second = path.as_bytes().get(1);
    ENGINE_PATHS.iter().any(|p| p.as_bytes().get(1) == second && under(p))
        || path
            .trim_start_matches('/')
            .split('/')
            .next()
            .is_some_and(|s| s.ends_with("_expert_distribution_record"))
}

/// `path` with its `%XX` escapes decoded (bytes that are not UTF-8 are replaced).
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// OpenAI's endpoints that take a JSON body naming the model.
const POST_ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// Why a request with no app in its Host and no JSON body naming one cannot be routed, when
/// its method or path says more than "bad JSON": a GET of a POST endpoint (405), a path that is
/// no endpoint of OpenAI's (404). `None`: the body is at fault.
pub(crate) fn wrong_endpoint(method: &http::Method, path: &str, domain: &str) -> Option<EdgeError> {
    let path = path.trim_end_matches('/');
    if POST_ENDPOINTS.contains(&path) {
        return (method != http::Method::POST).then(|| EdgeError::MethodNotAllowed {
            path: path.to_string(),
            allow: "POST",
        });
    }
    if path == "/v1/models" || path.starts_with("/v1/models/") {
        return Some(EdgeError::MethodNotAllowed {
            path: path.to_string(),
            allow: "GET",
        });
    }
    Some(EdgeError::UnknownEndpoint {
        path: if path.is_empty() { "/".to_string() } else { path.to_string() },
        domain: domain.to_string(),
    })
}

/// The fields of a request body the edge reads; everything else passes through untouched.
#[derive(Debug, Default)]
pub(crate) struct RequestFacts {
    /// The `model` field, when it is a non-empty string.
    pub model: Option<String>,
    /// `"stream": true`.
    pub stream: bool,
    /// `max_tokens`, or else `max_completion_tokens`, when it is a whole number.
    pub max_tokens: Option<u64>,
    /// The start of the prompt as sent (a string's text, or the JSON of token ids or of the
    /// messages), as much as the prefix index looks at.
    prompt_start: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default, borrow)]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(default, borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
}

// === impl RequestFacts ===

impl RequestFacts {
    /// Reads the body once. An error only when it is not a JSON object.
    pub(crate) fn parse(body: &[u8]) -> Result<RequestFacts, serde_json::Error> {
        // A struct would also be read from a list; only an object names its fields.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(serde::de::Error::custom("the body is not a JSON object"));
        }
        let fields: Fields<'_> = serde_json::from_slice(body)?;
        let string = |raw: Option<&RawValue>| raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        let number = |raw: Option<&RawValue>| raw.and_then(|raw| raw.get().parse::<u64>().ok());
        let prompt = match (fields.prompt, fields.messages) {
            (Some(prompt), _) if prompt.get().starts_with('"') => string(Some(prompt)).map(String::into_bytes),
            (Some(raw), _) | (None, Some(raw)) => Some(raw.get().as_bytes().to_vec()),
            (None, None) => None,
        };
        let prompt_start = prompt.map(|mut bytes| {
            bytes.truncate(PREFIX_BLOCK_BYTES * PREFIX_MAX_BLOCKS);
            bytes
        });
        Ok(RequestFacts {
            model: string(fields.model).filter(|m| !m.is_empty()),
            stream: fields.stream.is_some_and(|raw| raw.get() == "true"),
            max_tokens: number(fields.max_tokens).or_else(|| number(fields.max_completion_tokens)),
            prompt_start,
        })
    }

    /// The app the body names, or why it names none.
    pub(crate) fn app(body: &[u8], domain: &str) -> Result<(String, RequestFacts), EdgeError> {
        // The errors are looked into again only when there is one: the body as a whole value.
        let whole = || serde_json::from_slice::<serde_json::Value>(body).ok();
        let mut facts = Self::parse(body).map_err(|e| EdgeError::BadJson {
            reason: match whole() {
                Some(value) => format!("it is {}, not a JSON object", colo_core::openai::kind(&value)),
                None => e.to_string(),
            },
            domain: domain.to_string(),
        })?;
        match facts.model.take() {
            Some(app) => Ok((app, facts)),
            None => match whole()
                .as_ref()
                .and_then(|v| v.get("model"))
                .filter(|m| !m.is_null() && !m.is_string())
            {
                Some(model) => Err(EdgeError::BadParam(colo_core::openai::BadParam {
                    param: Some("model".into()),
                    message: format!("'model' must be a string naming the app, got {}", colo_core::openai::kind(model)),
                    code: "invalid_value",
                })),
                None => Err(EdgeError::NoModel {
                    domain: domain.to_string(),
                }),
            },
        }
    }

    /// The prefix index's block keys of a completions or chat request's prompt, seeded by its
    /// app; empty when it has no prompt.
    pub(crate) fn prefix(&self, app: &str) -> Vec<PrefixKey> {
        self.prompt_start.as_ref().map_or_else(Vec::new, |prompt| {
            PrefixKey::chain(app.as_bytes(), prompt, PREFIX_BLOCK_BYTES, PREFIX_MAX_BLOCKS)
        })
    }

    /// Tokens the request may use, for a key's per-minute budget.
    pub(crate) fn llm_tokens(&self, body_len: usize) -> u32 {
        llm_token_cost(body_len, self.max_tokens)
    }
}

/// The app named by a Host of `<app>.<domain>`, if the request has one.
/// A target in absolute form (`GET http://app.localhost/...`) names the app by its authority,
/// whatever the Host says (RFC 9112, 3.2.2).
pub(crate) fn app_from_host(headers: &HeaderMap, uri: &Uri, domain: &str) -> Option<String> {
    let host = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => headers.get(header::HOST).and_then(|h| h.to_str().ok())?,
    };
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let app = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!app.is_empty() && !app.contains('.')).then(|| app.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn apps_come_from_host_names() {
        let cases = [
            ("minilm.localhost:8080", Some("minilm")),
            ("minilm.localhost", Some("minilm")),
            ("localhost:8080", None),
            ("127.0.0.1:8080", None),
            ("a.b.localhost", None),
            (".localhost", None),
            ("minilmlocalhost", None),
        ];
        for (host, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(host));
            assert_eq!(
                app_from_host(&headers, &Uri::from_static("/"), "localhost").as_deref(),
                expected,
                "{host}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("other.localhost"));
        let absolute = Uri::from_static("http://minilm.localhost:8080/v1/models");
        assert_eq!(app_from_host(&headers, &absolute, "localhost").as_deref(), Some("minilm"));
    }

    #[test]
    fn engine_control_paths_are_refused_however_written() {
        let refused = [
            "/sleep",
            "/wake_up",
            "/is_sleeping",
            "/sleep/",
            "//sleep",
            "/./sleep",
            "/v1/../sleep",
            "/%73leep",
            "/%2Fwake_up",
            "/collective_rpc",
            "/release_memory_occupation",
            "/resume_memory_occupation",
            "/update_weights_from_disk",
            "/slots",
            "/slots/0",
            "/props",
            "/metrics",
            "/v1/load_lora_adapter",
            "/start_expert_distribution_record",
        ];
        for path in refused {
            assert!(is_engine_path(path), "{path} should be refused");
        }
        let passed = [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
            "/health",
            "/tokenize",
            "/sleepy",
            "/v1/slots",
            "/completion",
            "/",
        ];
        for path in passed {
            assert!(!is_engine_path(path), "{path} should pass");
        }
        let err = EdgeError::EnginePath { path: "/sleep".into() };
        assert_eq!(err.status(), http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn wrong_methods_and_paths_are_named() {
        use http::Method;
        let status = |method: Method, path: &str| wrong_endpoint(&method, path, "localhost").map(|e| e.status().as_u16());
        assert_eq!(status(Method::GET, "/v1/completions"), Some(405));
        assert_eq!(status(Method::PUT, "/v1/chat/completions"), Some(405));
        assert_eq!(
            status(Method::POST, "/v1/embeddings"),
            None,
            "a POST with bad JSON is the body's fault"
        );
        assert_eq!(status(Method::POST, "/v1/embeddings/"), None);
        assert_eq!(status(Method::DELETE, "/v1/models"), Some(405));
        assert_eq!(status(Method::GET, "/v2/whatever"), Some(404));
        assert_eq!(status(Method::GET, "/"), Some(404));
        let err = wrong_endpoint(&Method::GET, "/v1/completions", "localhost").unwrap();
        assert!(err.to_string().contains("POST"), "{err}");
    }

    #[test]
    fn apps_come_from_the_model_field() {
        let app = |body: &[u8]| RequestFacts::app(body, "localhost").map(|(app, _)| app);
        assert_eq!(app(br#"{"model":"minilm","input":"x"}"#).unwrap(), "minilm");
        assert!(matches!(app(b"{"), Err(EdgeError::BadJson { .. })));
        assert!(matches!(app(br#"{"input":"x"}"#), Err(EdgeError::NoModel { .. })));
        let wrong_type = app(br#"{"model":7}"#).unwrap_err().to_string();
        assert_eq!(wrong_type, "'model' must be a string naming the app, got a number");
        let list = app(b"[1,2]").unwrap_err().to_string();
        assert!(list.contains("it is a list, not a JSON object"), "{list}");
        assert!(matches!(app(br#"{"model":""}"#), Err(EdgeError::NoModel { .. })));
        let err = EdgeError::UnknownApp {
            app: "x".into(),
            apps: vec!["a".into(), "b".into()],
        };
        assert_eq!(err.status(), http::StatusCode::NOT_FOUND);
        assert!(err.to_string().contains("apps: a, b"));
    }

    #[test]
    fn facts_by_table() {
        // (body, stream, tokens charged for a body of 400 bytes, has a prompt)
        let cases: Vec<(&str, bool, u32, bool)> = vec![
            (r#"{"model":"a","prompt":"hi","stream":true,"max_tokens":10}"#, true, 110, true),
            (
                r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":5}"#,
                false,
                105,
                true,
            ),
            (r#"{"model":"a","prompt":[1,2,3],"stream":"yes"}"#, false, 356, true),
            (r#"{"model":"a","input":"x","max_tokens":-1}"#, false, 356, false),
        ];
        for (body, stream, tokens, prompted) in cases {
            let facts = RequestFacts::parse(body.as_bytes()).unwrap();
            assert_eq!(facts.stream, stream, "{body}");
            assert_eq!(facts.llm_tokens(400), tokens, "{body}");
            assert_eq!(!facts.prefix("a").is_empty(), prompted, "{body}");
        }
    }

    #[test]
    fn prefixes_agree_block_by_block_and_by_app() {
        let facts = |prompt: &str| RequestFacts::parse(serde_json::json!({"model": "a", "prompt": prompt}).to_string().as_bytes()).unwrap();
        let system = "s".repeat(2 * PREFIX_BLOCK_BYTES);
        let one = facts(&format!("{system} one")).prefix("a");
        let two = facts(&format!("{system} two")).prefix("a");
        assert_eq!(one.len(), 3);
        assert_eq!(one[..2], two[..2], "the shared system prompt's blocks");
        assert_ne!(one[2], two[2]);
        assert_ne!(facts("same").prefix("a"), facts("same").prefix("b"));
        let long = facts(&"x".repeat(100 * PREFIX_BLOCK_BYTES)).prefix("a");
        assert_eq!(long.len(), PREFIX_MAX_BLOCKS);
    }
}
