//! What every API object shares: list pages, metadata, deletion answers, models.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// OpenAI's `metadata`: at most 16 string pairs (checked by the server), in the order given.
pub type Metadata = IndexMap<String, String>;

/// A page of a cursor list: `{object: "list", data, has_more, first_id, last_id}`. Event lists
/// have no cursor ids (`cursor` is `None` and nothing is written for them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    /// Always `"list"`.
    pub object: String,
    /// The objects of this page.
    pub data: Vec<T>,
    /// Whether more objects follow.
    pub has_more: bool,
    /// The first and last ids of the page, where the list has them.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
}

/// The ids a client pages with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The first object's id; null on an empty page.
    pub first_id: Option<String>,
    /// The last object's id; null on an empty page.
    pub last_id: Option<String>,
}

impl<T> List<T> {
    /// A page with cursor ids taken from its first and last objects.
    pub fn with_cursor(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> &str) -> List<T> {
        let cursor = Cursor {
            first_id: data.first().map(|o| id(o).to_owned()),
            last_id: data.last().map(|o| id(o).to_owned()),
        };
        List {
            object: "list".into(),
            data,
            has_more,
            cursor: Some(cursor),
        }
    }

    /// A page without cursor ids (events).
    pub fn plain(data: Vec<T>, has_more: bool) -> List<T> {
        List {
            object: "list".into(),
            data,
            has_more,
            cursor: None,
        }
    }
}

/// `GET /v1/models` entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The name chat completions take.
    pub id: String,
    /// Always `"model"`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// `openrft` for base models, `user` for fine-tuned ones.
    pub owned_by: String,
    /// For a LoRA adapter loaded at run time (`/v1/load_lora_adapter`), the base model it is
    /// applied over, as vLLM lists it; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Model {
    /// A model entry.
    pub fn new(id: impl Into<String>, created: i64, owned_by: &str) -> Model {
        Model {
            id: id.into(),
            object: "model".into(),
            created,
            owned_by: owned_by.into(),
            parent: None,
        }
    }
}

/// The answer of a `DELETE`: `{id, object, deleted}` (files) or, for evals and runs, their own
/// id field names (`eval_id`, `run_id`) beside `object` and `deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    /// The deleted object's id, under the field name its kind uses.
    #[serde(flatten)]
    pub id: DeletedId,
    /// `file`, `eval.deleted` or `eval.run.deleted`.
    pub object: String,
    /// Always true.
    pub deleted: bool,
}

/// The id field of a [`Deleted`] answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeletedId {
    /// `id`.
    #[serde(rename = "id")]
    Id(String),
    /// `eval_id`.
    #[serde(rename = "eval_id")]
    Eval(String),
    /// `run_id`.
    #[serde(rename = "run_id")]
    Run(String),
}
