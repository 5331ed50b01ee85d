//! `/v1/files`: upload (multipart), list, retrieve, delete, content.
//!
//! Contents live in the data folder under the file's id (never under a name the client chose),
//! written durably before the object is recorded. `fine-tune` uploads are checked line by line
//! at upload: the object is `processed`, or `error` with the first problem in `status_details`
//! (file, line, field), and a job naming it fails at `validating_files` with the same message.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::{list_body, new_id, now, parse_limit, parse_order, ApiError, SharedState};

const PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// `POST /v1/files`.
pub async fn upload(
    State(state): State<SharedState>,
    mut multipart: Multipart,
) -> Result<Json<Value>, ApiError> {
    let mut content: Option<(String, Bytes)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        let field = multipart.next_field().await.map_err(|e| {
            ApiError::bad_request(format!("could not read the multipart body: {e}"))
        })?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            let filename = field.file_name().unwrap_or("upload").to_owned();
            let bytes = field.bytes().await.map_err(|e| {
                ApiError::bad_request(format!("could not read the uploaded file: {e}"))
                    .with_param("file")
            })?;
            content = Some((filename, bytes));
        } else {
            let text = field.text().await.map_err(|e| {
                ApiError::bad_request(format!("could not read field '{name}': {e}"))
                    .with_param(name.clone())
            })?;
            fields.insert(name, text);
        }
    }
    let (filename, bytes) = content.ok_or_else(|| {
        ApiError::bad_request("Missing the `file` part of the multipart body.").with_param("file")
    })?;
    let purpose = fields.get("purpose").map(String::as_str).ok_or_else(|| {
        ApiError::bad_request("Missing required parameter: 'purpose'.").with_param("purpose")
    })?;
    if !PURPOSES.contains(&purpose) {
        return Err(ApiError::bad_request(format!(
            "Invalid value for 'purpose': '{purpose}'. Expected one of: {}.",
            PURPOSES.join(", ")
        ))
        .with_param("purpose"));
    }
    let created_at = now();
    let expires_at = match (
        fields.get("expires_after[anchor]"),
        fields.get("expires_after[seconds]"),
    ) {
        (None, None) => None,
        (Some(anchor), Some(seconds)) => {
            if anchor != "created_at" {
                return Err(
                    ApiError::bad_request("expires_after[anchor] must be 'created_at'")
                        .with_param("expires_after[anchor]"),
                );
            }
            match seconds.parse::<i64>() {
                Ok(s) if (3600..=2_592_000).contains(&s) => Some(created_at + s),
                _ => {
                    return Err(ApiError::bad_request(
                        "expires_after[seconds] must be an integer from 3600 to 2592000",
                    )
                    .with_param("expires_after[seconds]"))
                }
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "expires_after needs both expires_after[anchor] and expires_after[seconds]",
            )
            .with_param("expires_after"))
        }
    };
    let id = new_id("file-");
    let (status, details) = if purpose == "fine-tune" {
        match check_fine_tune(&filename, &bytes) {
            Ok(()) => ("processed", None),
            Err(message) => ("error", Some(message)),
        }
    } else {
        ("processed", None)
    };
    let object = json!({
        "id": id,
        "object": "file",
        "bytes": bytes.len(),
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": status,
        "expires_at": expires_at,
        "status_details": details,
    });
    let store = state.store.clone();
    let stored = object.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        store.write_blob(&id, &bytes)?;
        store.insert("file", None, &stored)?;
        Ok(())
    })
    .await
    .map_err(|e| ApiError::internal(format!("upload task failed: {e}")))??;
    Ok(Json(object))
}

/// The first problem of an RFT dataset, with its line and field; `Ok` when every line is a
/// valid row. Rows are parsed as the trainer will parse them.
fn check_fine_tune(filename: &str, bytes: &[u8]) -> Result<(), String> {
    if !filename.ends_with(".jsonl") {
        return Err(format!(
            "{filename}: fine-tuning files must be JSONL (one JSON object per line, named *.jsonl)"
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("{filename}: the file is not UTF-8 text ({e})"))?;
    let mut rows = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        rft_types::DatasetRow::from_json_line(line)
            .map_err(|e| format!("{filename}:{}: {e}", i + 1))?;
        rows += 1;
    }
    if rows == 0 {
        return Err(format!("{filename}: the file has no rows"));
    }
    Ok(())
}

fn existing(state: &SharedState, id: &str) -> Result<Value, ApiError> {
    state
        .store
        .get("file", id)?
        .ok_or_else(|| ApiError::not_found("file", id).with_param("file_id"))
}

/// `GET /v1/files`.
pub async fn list(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = parse_limit(query.get("limit").map(String::as_str), 10_000, 10_000)?;
    let descending = parse_order(query.get("order").map(String::as_str), true)?;
    let purpose = query.get("purpose").cloned();
    let page = state.store.list(
        "file",
        &rft_store::ListQuery {
            descending,
            after: query.get("after").map(String::as_str),
            limit,
            ..Default::default()
        },
        |f| purpose.as_deref().is_none_or(|p| f["purpose"] == p),
    )?;
    Ok(Json(list_body(page)))
}

/// `GET /v1/files/{file_id}`.
pub async fn retrieve(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    existing(&state, &id).map(Json)
}

/// `DELETE /v1/files/{file_id}`.
pub async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    existing(&state, &id)?;
    state.store.delete(&id)?;
    state.store.remove_blob(&id)?;
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

/// `GET /v1/files/{file_id}/content`.
pub async fn content(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = existing(&state, &id)?;
    let path = state.store.file_path(&id);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the content of {id}: {e}")))?;
    let filename = file["filename"].as_str().unwrap_or("content");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    filename.replace(['"', '\\', '\r', '\n'], "_")
                ),
            ),
        ],
        bytes,
    )
        .into_response())
}
