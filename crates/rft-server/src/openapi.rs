//! `/openapi.json`: an OpenAPI 3.1 document generated from the route table, so it cannot drift
//! from what is served.

use indexmap::IndexMap;
use serde::Serialize;

/// The document.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    /// `3.1.0`.
    pub openapi: &'static str,
    /// Title, version, description.
    pub info: Info,
    /// The bearer scheme.
    pub components: Components,
    /// Every route needs the bearer key (when the server has keys).
    pub security: Vec<IndexMap<&'static str, Vec<String>>>,
    /// Path → method → operation.
    pub paths: IndexMap<&'static str, IndexMap<&'static str, Operation>>,
}

/// `info`.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// `OpenRFT`.
    pub title: &'static str,
    /// The crate's version.
    pub version: &'static str,
    /// One line on what it serves.
    pub description: &'static str,
}

/// `components`.
#[derive(Debug, Clone, Serialize)]
pub struct Components {
    /// `{bearer: {type: http, scheme: bearer}}`.
    #[serde(rename = "securitySchemes")]
    pub security_schemes: IndexMap<&'static str, SecurityScheme>,
}

/// An HTTP auth scheme.
#[derive(Debug, Clone, Serialize)]
pub struct SecurityScheme {
    /// `http`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `bearer`.
    pub scheme: &'static str,
}

/// One method of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    /// The handler's path, `files_upload`.
    #[serde(rename = "operationId")]
    pub operation_id: String,
    /// What it does.
    pub summary: &'static str,
    /// The `{…}` segments of the path.
    pub parameters: Vec<Parameter>,
    /// A JSON or multipart body, for the routes that take one.
    #[serde(rename = "requestBody", skip_serializing_if = "Option::is_none")]
    pub request_body: Option<RequestBody>,
    /// `200` and `default`.
    pub responses: IndexMap<&'static str, Described>,
}

/// A path parameter.
#[derive(Debug, Clone, Serialize)]
pub struct Parameter {
    /// Its name.
    pub name: String,
    /// `path`.
    #[serde(rename = "in")]
    pub location: &'static str,
    /// Always true.
    pub required: bool,
    /// `{type: string}`.
    pub schema: Schema,
}

/// A request body.
#[derive(Debug, Clone, Serialize)]
pub struct RequestBody {
    /// Always true.
    pub required: bool,
    /// Media type → schema.
    pub content: IndexMap<&'static str, MediaType>,
}

/// A media type's schema.
#[derive(Debug, Clone, Serialize)]
pub struct MediaType {
    /// `{type: object}` (the shapes are OpenAI's; docs/api.md lists them).
    pub schema: Schema,
}

/// A (minimal) schema.
#[derive(Debug, Clone, Serialize)]
pub struct Schema {
    /// `string` or `object`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// A response's description.
#[derive(Debug, Clone, Serialize)]
pub struct Described {
    /// What comes back.
    pub description: &'static str,
}

impl Document {
    /// The document of `routes` (`(method, path, handler, summary)`).
    pub fn of(routes: &[(&'static str, &'static str, &'static str, &'static str)]) -> Document {
        let mut paths: IndexMap<&'static str, IndexMap<&'static str, Operation>> = IndexMap::new();
        for &(method, path, handler, summary) in routes {
            let parameters = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(|name| Parameter {
                    name: name.to_owned(),
                    location: "path",
                    required: true,
                    schema: Schema { kind: "string" },
                })
                .collect();
            // Action routes (cancel, pause, resume) take no body.
            let takes_body = method == "post"
                && !path.contains("/cancel")
                && !path.contains("/pause")
                && !path.contains("/resume");
            let request_body = takes_body.then(|| {
                let media = if path == "/v1/files" {
                    "multipart/form-data"
                } else {
                    "application/json"
                };
                RequestBody {
                    required: true,
                    content: IndexMap::from([(
                        media,
                        MediaType {
                            schema: Schema { kind: "object" },
                        },
                    )]),
                }
            });
            let responses = IndexMap::from([
                ("200", Described {
                    description: "The object, a list page, or an SSE stream (chat with stream: true)",
                }),
                ("default", Described {
                    description: "An error: {\"error\": {message, type, param, code}}",
                }),
            ]);
            let operation = Operation {
                operation_id: handler.replace(" :: ", "_").replace("::", "_"),
                summary,
                parameters,
                request_body,
                responses,
            };
            paths.entry(path).or_default().insert(method, operation);
        }
        Document {
            openapi: "3.1.0",
            info: Info {
                title: "OpenRFT",
                version: env!("CARGO_PKG_VERSION"),
                description: "OpenAI's fine-tuning, graders, evals, files, models and chat API, self-hosted (docs/api.md)",
            },
            components: Components {
                security_schemes: IndexMap::from([(
                    "bearer",
                    SecurityScheme {
                        kind: "http",
                        scheme: "bearer",
                    },
                )]),
            },
            security: vec![IndexMap::from([("bearer", Vec::new())])],
            paths,
        }
    }
}
