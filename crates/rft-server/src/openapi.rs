//! `/openapi.json`: an OpenAPI 3.1 document generated from the route table, so it cannot drift
//! from what is served.

use indexmap::IndexMap;
use serde::Serialize;

/// The document.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Document {
    /// `3.1.0`.
    pub(crate) openapi: &'static str,
    /// Title, version, description.
    pub(crate) info: Info,
    /// The bearer scheme.
    pub(crate) components: Components,
    /// Every route needs the bearer key (when the server has keys).
    pub(crate) security: Vec<IndexMap<&'static str, Vec<String>>>,
    /// Path → method → operation.
    pub(crate) paths: IndexMap<String, IndexMap<&'static str, Operation>>,
}

/// `info`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Info {
    /// `OpenRFT`.
    pub(crate) title: &'static str,
    /// The crate's version.
    pub(crate) version: &'static str,
    /// One line on what it serves.
    pub(crate) description: &'static str,
}

/// `components`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Components {
    /// `{bearer: {type: http, scheme: bearer}}`.
    #[serde(rename = "securitySchemes")]
    pub(crate) security_schemes: IndexMap<&'static str, SecurityScheme>,
}

/// An HTTP auth scheme.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SecurityScheme {
    /// `http`.
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    /// `bearer`.
    pub(crate) scheme: &'static str,
}

/// One method of one path.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Operation {
    /// The handler's path, `files_upload`.
    #[serde(rename = "operationId")]
    pub(crate) operation_id: String,
    /// What it does.
    pub(crate) summary: &'static str,
    /// The `{…}` segments of the path.
    pub(crate) parameters: Vec<Parameter>,
    /// A JSON or multipart body, for the routes that take one.
    #[serde(rename = "requestBody", skip_serializing_if = "Option::is_none")]
    pub(crate) request_body: Option<RequestBody>,
    /// `200` and `default`.
    pub(crate) responses: IndexMap<&'static str, Described>,
}

/// A path parameter.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Parameter {
    /// Its name.
    pub(crate) name: String,
    /// `path`.
    #[serde(rename = "in")]
    pub(crate) location: &'static str,
    /// Always true.
    pub(crate) required: bool,
    /// `{type: string}`.
    pub(crate) schema: Schema,
}

/// A request body.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestBody {
    /// Always true.
    pub(crate) required: bool,
    /// Media type → schema.
    pub(crate) content: IndexMap<&'static str, MediaType>,
}

/// A media type's schema.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MediaType {
    /// `{type: object}` (the shapes are OpenAI's; docs/api.md lists them).
    pub(crate) schema: Schema,
}

/// A (minimal) schema.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Schema {
    /// `string` or `object`.
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
}

/// A response's description.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Described {
    /// What comes back.
    pub(crate) description: &'static str,
}

impl Document {
    /// The document of `routes` and `more` (`(method, path, handler, summary)`; `more` are
    /// routes mounted from another crate, Tinker's).
    pub(crate) fn of(
        routes: &[(&'static str, &'static str, &'static str, &'static str)],
        more: &[(&'static str, String, &'static str, &'static str)],
    ) -> Document {
        let mut paths: IndexMap<String, IndexMap<&'static str, Operation>> = IndexMap::new();
        let all = routes
            .iter()
            .map(|&(method, path, handler, summary)| {
                (method, path.to_owned(), handler.to_owned(), summary)
            })
            .chain(more.iter().map(|(method, path, handler, summary)| {
                let id = format!("{handler}{}", path.replace(['/', '{', '}'], "_"));
                (*method, path.clone(), id, *summary)
            }));
        for (method, path, handler, summary) in all {
            let path = path.as_str();
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
                } else if path == "/api/v1/forward_backward" || path == "/api/v1/forward" {
                    "application/x-protobuf"
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
                (
                    "200",
                    Described {
                        description:
                            "The object, a list page, or an SSE stream (chat with stream: true)",
                    },
                ),
                (
                    "default",
                    Described {
                        description: "An error: {\"error\": {message, type, param, code}}",
                    },
                ),
            ]);
            let operation = Operation {
                operation_id: handler.replace(" :: ", "_").replace("::", "_"),
                summary,
                parameters,
                request_body,
                responses,
            };
            paths
                .entry(path.to_owned())
                .or_default()
                .insert(method, operation);
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
